"""`export_model`: write, check and atomically commit one export of a kerasae model.

Everything is built in a temporary directory next to the target (same file system): the
SavedModel, the Keras model in it, the TFLite files and the manifest. Each part is checked
(the signature contract, SavedModel vs Keras parity, the reloaded Keras model vs the SavedModel,
TFLite builtins and parity; ONNX files, when asked for, in onnxruntime) before `_commit` renames
the version directory, then the tflite and onnx folders, into place, undoing its renames if one
fails: a reader never sees half a version, and a failed export (disk full included, see
`_write_fault`) leaves earlier versions as they were.
"""

import datetime
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from kerasae import _backend  # noqa: F401
import keras
import numpy as np
import tensorflow as tf

from kerasae.export.errors import ExportError
from kerasae.export.keras_model import rebuild_keras_model, write_keras_model
from kerasae.export.manifest import KERAS_MODEL, existing_versions, write_manifest
from kerasae.export.onnx import _write_onnx, require_onnx
from kerasae.export.parity import NUM_PARITY_IMAGES, _keras_parity, keras_parity_problems
from kerasae.export.saved_model import (_contract_problems, _spec, expected_signatures, num_classes,
                                        saved_model_signatures, score_definition, write_saved_model)
from kerasae.export.variants import _fp16_source, _write_tflite
from kerasae import files, registry
from kerasae.files import library_versions
from kerasae.options import (DEFAULT_EXPORT_DIR, SIGNATURES, VARIANTS, check_name, check_tflite_signatures,
                             check_variants)


def export_model(model, export_dir=DEFAULT_EXPORT_DIR, name=None, version=None, tflite=VARIANTS,
                 representative_data=None, parity_data=None, metrics=None, preset=None, overwrite=False, source=None,
                 strict_parity=False, tflite_signatures=SIGNATURES, fp16_data=None, keras_model=True, onnx=False):
    """Export `model` to <export_dir>/<name>/<version>/ (SavedModel), <export_dir>/<name>/tflite/ (and onnx/).

    `load_keras_model(version_dir)` gives the Keras model back, verified and checked at export to
    reproduce the SavedModel: from assets.extra/model.keras (uncompiled), or with keras_model=False
    rebuilt from the manifest's config and the SavedModel's variables (the weights stored once).

    Args:
        version: integer version; None takes the next after the existing ones (1 for the first).
        tflite: the variants to convert every signature to (a subset of VARIANTS, or a
            comma-separated string); () for the SavedModel alone.
        tflite_signatures: the signatures converted to TFLite (default all; the zoo ships decode only), and
            to ONNX with `onnx`.
        onnx: also write <name>/onnx/<signature>.onnx (tf2onnx), each checked in onnxruntime against the
            SavedModel on parity_data; needs the extra (`pip install "kerasae[onnx]"`, else ImportError).
        representative_data: float32 images [N, H, W, C] to calibrate int8 on (drawn from the
            training data); required when "int8" is asked for.
        fp16_data: training images the fp16 weights are rounded on (kerasae.fp16.plan; at
            least NUM_FP16_CALIBRATION_IMAGES for GPTQ on MNIST-sized inputs); default
            representative_data; neither: nearest rounding, float32 biases. A conditional
            model's calibration labels cycle through its classes (as int8's).
        parity_data: images the TFLite and ONNX files are compared with the SavedModel on (default: the
            first NUM_PARITY_IMAGES of representative_data, else seeded uniform noise).
        metrics, preset, source: recorded in the manifest.
        keras_model: write assets.extra/model.keras (True), or let `load_keras_model` rebuild the
            model from the manifest and the SavedModel's variables (False: half the bytes; the zoo).
        overwrite: replace an existing version; without it an existing version raises FileExistsError.
        strict_parity: fail (rather than keep, flag and warn about) TFLite files outside
            PARITY_TOLERANCES and ONNX files outside ONNX_TOLERANCE; a broken fp32 or ONNX conversion
            (BROKEN_FP32, NaN) always fails.

    `export_dir` (default ./exports) may not lie in the zoo's folder or the installed package (a ValueError;
    `kerasae.files.check_export_dir`). Returns the Path of the version directory. Everything is built in a
    temporary directory next to the target and renamed into place once it is complete and checked; on any error
    nothing is left behind.
    """
    name = check_name(name)
    variants = check_variants(tflite)
    tflite_signatures = check_tflite_signatures(tflite_signatures)
    if not isinstance(onnx, bool):
        raise TypeError(f"onnx must be True or False, got {onnx!r}")
    if onnx:
        require_onnx()
    if not getattr(model, "built", False) or model.family not in registry.FAMILIES:
        raise ValueError(f"export_model needs a built kerasae model, got {type(model).__name__}")
    shape = tuple(model.image_shape)
    if representative_data is not None:
        representative_data = _check_images(representative_data, shape, "representative_data")
    if parity_data is not None:
        parity_data = _check_images(parity_data, shape, "parity_data")
    fp16_data = representative_data if fp16_data is None else _check_images(fp16_data, shape, "fp16_data")
    if "int8" in variants and representative_data is None:
        raise ValueError("int8 TFLite needs representative_data (training images [N, H, W, C] in [0, 1]) to "
                         "calibrate on; pass it (CLI: --representative-data FILE.npz) or drop int8 from tflite")
    if parity_data is None:
        parity_data = (representative_data[:NUM_PARITY_IMAGES] if representative_data is not None else
                       np.random.default_rng(0).random((NUM_PARITY_IMAGES, *shape), dtype=np.float32))
        parity_source = "representative data" if representative_data is not None else "uniform noise"
    else:
        parity_source = "parity_data"

    if version is not None and (isinstance(version, bool) or not isinstance(version, (int, np.integer))
                                or version < 1):
        raise ValueError(f"version must be a positive integer, got {version!r}")
    export_root = files.check_export_dir(export_dir)  # never the zoo's folder or the installed package
    root = export_root / name
    created = [p for p in (export_root, root) if not p.exists()]
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"export_dir: cannot create {root} ({err.strerror or err})") from err
    if version is None:
        version = (existing_versions(root) or [0])[-1] + 1
    target = root / str(int(version))
    if target.exists() and not overwrite:
        _remove_if_empty(created)
        raise FileExistsError(f"{target} already exists; pass overwrite=True (--overwrite) to replace it")

    try:
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-export-", dir=root))  # same filesystem: renames are atomic
    except OSError as err:
        _remove_if_empty(created)
        raise ValueError(f"export_dir: cannot write to {root} ({err.strerror or err})") from err
    try:
        saved_dir, tflite_dir = tmp / "saved_model", (tmp / "tflite" if variants else None)
        onnx_dir = tmp / "onnx" if onnx else None
        model_record = {"class": type(model).__name__, "registered_name": keras.saving.get_registered_name(
            type(model)), "family": model.family, "config": model.get_config()}
        manifest = _build(model, saved_dir, tflite_dir, variants, tflite_signatures, representative_data,
                          parity_data, fp16_data, strict_parity, fp16_dir=tmp / "fp16_source",
                          keras_file=bool(keras_model), model_record=model_record)
        if onnx_dir is not None:  # (an export without ONNX files has no "onnx" part, as before the extra)
            manifest["onnx"] = _write_onnx(saved_dir, onnx_dir, parity_data, strict_parity, tflite_signatures,
                                           classes=num_classes(model))
        for part in ("tflite", "onnx"):
            if manifest.get(part) is not None:
                manifest[part]["parity_data"] = f"{len(parity_data)} images ({parity_source})"
        write_manifest({
            **manifest, "export_id": uuid.uuid4().hex, "name": name, "version": int(version),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "source": None if source is None else str(source), "preset": preset,
            "model": model_record,
            "versions": library_versions(), "metrics": metrics,
            "input_spec": {"x": {**_spec([None, *shape]), "layout": "NHWC", "range": [0.0, 1.0],
                                 "binary_pixels": bool(getattr(model, "binary_data", False))},
                           **({"label": {**_spec([None], "int32"), "range": [0, num_classes(model) - 1],
                                         "bad_label": "NaN outputs for that example"}}
                              if num_classes(model) else {})},
            "latent_dim": model.latent_dim, "score": score_definition(model),
        }, saved_dir, tflite_dir, onnx_dir)

        if target.exists() and not overwrite:  # another export took this version meanwhile
            raise FileExistsError(f"{target} already exists; pass overwrite=True (--overwrite) to replace it")
        _commit(tmp, saved_dir, target, [(tflite_dir, root / "tflite"), (onnx_dir, root / "onnx")])
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_if_empty(created)
        cause = _write_fault(err)
        if cause:
            raise ExportError(f"{target}: writing the export failed: {cause}; nothing was committed, earlier "
                              f"versions, {root / 'tflite'} and {root / 'onnx'} are unchanged") from err
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return target


def _build(model, saved_dir, tflite_dir, variants, tflite_signatures, representative_data, parity_data, fp16_data,
           strict_parity, fp16_dir, keras_file, model_record):
    """Write and check the SavedModel, the Keras model in it and the TFLite files; the manifest's fields on them.

    Raises ExportError when the SavedModel breaks the signature contract or differs from the Keras
    model, when the Keras model reloaded (model.keras, or rebuilt from the SavedModel) differs from
    the SavedModel, or when a TFLite check fails.
    """
    write_saved_model(model, saved_dir)
    loaded = tf.saved_model.load(str(saved_dir))
    loaded_signatures = saved_model_signatures(loaded)
    problems = _contract_problems(loaded_signatures, expected_signatures(model), "SavedModel")
    keras_parity = _keras_parity(model, loaded, parity_data)
    problems += keras_parity_problems(keras_parity, "the Keras model's method")
    if problems:
        raise ExportError("; ".join(problems))
    if keras_file:
        reloaded, stored = files.load_keras_model(write_keras_model(model, saved_dir)), KERAS_MODEL
    else:
        reloaded, stored = rebuild_keras_model(saved_dir, model_record, loaded=loaded), None
    reloaded_parity = _keras_parity(reloaded, loaded, parity_data)
    problems = keras_parity_problems(reloaded_parity, f"{stored or 'the model rebuilt from the SavedModel'} "
                                                      "reloaded")
    if problems:
        raise ExportError("; ".join(problems))
    fp16 = None
    if "fp16" in variants and fp16_data is not None:
        fp16 = _fp16_source(model, fp16_data, fp16_dir, classes=num_classes(model))
    tflite_info = (_write_tflite(saved_dir, tflite_dir, variants, representative_data, parity_data,
                                 strict_parity, tflite_signatures, fp16, classes=num_classes(model), loaded=loaded)
                   if variants else None)
    return {"signatures": loaded_signatures, "savedmodel_vs_keras_max_diff": keras_parity, "tflite": tflite_info,
            "keras_model": {"path": stored, "class": type(reloaded).__name__,
                            "contents": ("config and weights (not compiled, no optimizer state)" if stored else
                                         "rebuilt from this manifest's model config and the SavedModel's "
                                         "variables (not compiled, no optimizer state)"),
                            "load": "kerasae.export.load_keras_model(version_dir)",
                            "savedmodel_vs_reloaded_max_diff": reloaded_parity}}


def _commit(tmp, saved_dir, target, folders):
    """Rename the finished export into place: the version directory first (one rename: readers see all
    of it or nothing), then the tflite and onnx folders ([(built folder or None, target)]). Replaced
    directories go to `tmp` (deleted afterwards); if any rename fails, the ones done are undone, so
    the old state stays whole."""
    done = []

    def move(src, dst):
        os.rename(src, dst)
        done.append((src, dst))

    try:
        if target.exists():
            move(target, tmp / "replaced-version")
        move(saved_dir, target)
        for built, folder in folders:
            if built is not None:
                if folder.exists():
                    move(folder, tmp / f"replaced-{folder.name}")
                move(built, folder)
    except BaseException:
        for src, dst in reversed(done):
            os.rename(dst, src)
        raise


_WRITE_FAULTS = ("No space left on device", "Permission denied", "Read-only file system", "Input/output error",
                 "Disk quota exceeded")


def _write_fault(err):
    """The cause, in words, when `err` is a file system error while writing (disk full, permission denied,
    I/O error) raised by Python or by TensorFlow's writers; None for any other error."""
    if isinstance(err, OSError) and not isinstance(err, (FileExistsError, FileNotFoundError)):
        where = f" ({err.filename})" if err.filename else ""
        return f"{err.strerror or err}{where}"
    if isinstance(err, tf.errors.OpError):
        text = " ".join(str(err).split())
        for cause in _WRITE_FAULTS:
            if cause.lower() in text.lower():
                return f"{cause} ({type(err).__name__}: {text[:300]})"
    return None


def _remove_if_empty(created):
    for path in reversed(created):
        try:
            path.rmdir()
        except OSError:
            pass


def _check_images(x, shape, what):
    x = np.asarray(x)
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(shape) or len(x) == 0:
        raise ValueError(f"{what} must be images [N, {', '.join(map(str, shape))}], got shape {list(x.shape)}")
    x = x.astype(np.float32)
    if not (x.min() >= 0.0 and x.max() <= 1.0):
        raise ValueError(f"{what} must be float images in [0, 1], found [{x.min()}, {x.max()}]")
    return x
