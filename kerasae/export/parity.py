"""Parity: how far a TFLite file is from its SavedModel, and a SavedModel from the Keras model it came from.

The tolerances live here with the measurements they bound. `check_parity` runs TFLite files in
LiteRT against the SavedModel on real images; `_keras_parity` runs every SavedModel signature
against the Keras model's own methods (the model exported, or the model.keras reloaded from
the export). Both report max_diff, which `_diffs` defines.
"""

import warnings
from pathlib import Path

from kerasae import _backend  # noqa: F401
import numpy as np
import tensorflow as tf

from kerasae.export.errors import ExportError, ParityWarning
from kerasae.export.saved_model import _codes, example_labels, keras_outputs, num_classes
from kerasae.export.tflite import run_tflite
from kerasae.options import SIGNATURES

#: Images the TFLite files are compared with the SavedModel on (the issue's 256 test images).
NUM_PARITY_IMAGES = 256
#: Parity tolerances: variant -> (metric, bound, outputs it applies to; None: every output).
#: max_diff is max |tflite - savedmodel| / max(1, max |savedmodel|), per output: the absolute
#: error for outputs within [-1, 1] (images) and the error relative to the output's largest
#: magnitude beyond (logits, codes, scores in nats), because float32 summation order alone moves
#: a 500-nat score by ~1e-4. fp16 is bounded on the images in [0, 1]; its other diffs are recorded.
#: A VQ-VAE's reconstruct quantizes to the nearest code, so a rounding error can flip a code and move a patch of
#: the image by a discrete jump (0.02 seen for fp16 on a Xeon with AMX): its image bounds apply where the
#: file's codes (those of the same variant's encode file) agree with the SavedModel's ("..._where_codes_agree"),
#: and the share of agreeing codes is recorded beside them ("agreement").
PARITY_TOLERANCES = {
    "fp32": ("max_diff", 1e-5, None),
    "fp16": ("max_diff", 1e-3, ("reconstruction", "x_mean")),
    "dynamic": ("mean_abs_diff", 0.02, ("reconstruction",)),
    "int8": ("mean_abs_diff", 0.02, ("reconstruction",)),
}
#: An fp32 file this far off (max_diff), or with a non-finite output, is a broken conversion
#: (e.g. uninitialized variables giving NaN): the export always fails. Milder misses are flagged.
BROKEN_FP32 = 1e-3
#: max_diff allowed between a SavedModel signature and the Keras model method it exports.
KERAS_TOLERANCE = 1e-5


def _keras_parity(model, loaded, images, num_samples=16):
    """max_diff of every SavedModel signature against the Keras model's methods on `images` (with labels cycling
    through a conditional model's classes)."""
    x = tf.constant(images, tf.float32)
    labels = example_labels(len(images), num_classes(model))
    label = {} if labels is None else {"label": tf.constant(labels)}
    z = tf.constant(_codes(loaded, images, labels))
    result = {}
    for signature in ("serving_default", *SIGNATURES):
        feed = {"x": x, **label} if signature not in ("decode", "sample") else {"z": z, **label}
        if signature == "sample":
            one = {} if labels is None else {"label": tf.constant(labels[-1])}  # one class for every sample
            got = loaded.signatures["sample"](num_samples=tf.constant(num_samples, tf.int32), **one)
            feed = {"z": got["z"], **one}
        else:
            got = loaded.signatures[signature](**feed)
        want = keras_outputs(model, signature, **feed)
        result[signature] = {k: _diffs(np.asarray(got[k]), np.asarray(want[k], np.float32))["max_diff"]
                             for k in sorted(want)}
    return result


def keras_parity_problems(keras_parity, what):
    """Messages for the outputs of a `_keras_parity` result beyond KERAS_TOLERANCE; `what` names the model."""
    return [f"SavedModel {sig} {key} differs from {what} by {diff:.3g}"
            for sig, outputs in keras_parity.items() for key, diff in outputs.items() if not diff <= KERAS_TOLERANCE]


def check_parity(saved_model_dir, tflite_files, images, num_samples=64, classes=None, run=run_tflite, loaded=None):
    """Run each TFLite file in LiteRT and compare it with the SavedModel on `images`.

    `tflite_files` are paths named <signature>.<variant>.tflite (or <signature>.onnx, with `run` =
    `run(path, signature, **inputs)` -> {output key: array} running them elsewhere). decode is fed the SavedModel's
    codes of the images; sample's draws differ from any other run's, so its x_mean is compared
    with the SavedModel's decode of the z it returned. A conditional model's (`classes`) inputs
    come with labels cycling through its classes. Returns {file name: {output key:
    {"max_abs_diff", "mean_abs_diff", "max_diff"}}} (max_diff: see PARITY_TOLERANCES). `loaded`: the
    SavedModel of saved_model_dir, if the caller has it loaded already.
    """
    loaded = tf.saved_model.load(str(saved_model_dir)) if loaded is None else loaded
    images = np.asarray(images, np.float32)
    labels = example_labels(len(images), classes)
    label, one = ({}, {}) if labels is None else ({"label": labels}, {"label": labels[-1]})
    feeds = {"decode": {"z": _codes(loaded, images, labels), **label},
             "sample": {"num_samples": np.array(num_samples, np.int32), **one}}
    reference, result = {}, {}
    tflite_files = list(map(Path, tflite_files))
    for path in tflite_files:
        signature = path.name.split(".")[0]
        feed = feeds.get(signature, {"x": images, **label})
        got = run(path, signature, **feed)
        if signature == "sample":
            if len(got["z"]) != num_samples:
                raise ExportError(f"{path.name}: asked for {num_samples} samples, got z of shape {got['z'].shape}")
            drawn = {k: tf.fill([num_samples], tf.constant(v)) for k, v in one.items()}
            want = {"x_mean": loaded.signatures["decode"](z=tf.constant(got["z"]), **drawn)["x_mean"].numpy()}
        else:
            if signature not in reference:
                out = loaded.signatures[signature](**{k: tf.constant(v) for k, v in feed.items()})
                reference[signature] = {k: v.numpy() for k, v in out.items()}
            want = reference[signature]
        result[path.name] = {k: _diffs(got[k], want[k]) for k in sorted(want)}
        if signature == "reconstruct":
            _where_codes_agree(result[path.name], got, want, path, tflite_files, feeds["decode"], images, label)
    return result


def _where_codes_agree(diffs, got, want, path, tflite_files, saved_codes, images, label):
    """For integer codes (a VQ-VAE): add to a reconstruct file's `diffs` the share of its variant's encode codes
    that agree with the SavedModel's and its diffs on the images whose codes all agree (see PARITY_TOLERANCES).
    Nothing without an encode file of the same variant among `tflite_files`."""
    codes = saved_codes["z"]
    encode = path.with_name(path.name.replace("reconstruct.", "encode.", 1))
    if codes.dtype.kind != "i" or encode not in tflite_files:
        return
    agree = run_tflite(encode, "encode", x=images, **label)["z"] == codes
    same = agree.reshape(len(agree), -1).all(axis=1)
    for key, value in diffs.items():
        value["agreement"] = float(agree.mean())
        value["images_where_codes_agree"] = int(same.sum())
        if same.any():
            value.update({f"{metric}_where_codes_agree": v for metric, v in _diffs(got[key][same], want[key][same])
                          .items() if metric != "agreement"})


def _diffs(got, want):
    if got.shape != want.shape:
        raise ExportError(f"exported file's output shape {got.shape} != SavedModel's {want.shape}")
    if got.size == 0:
        return {"max_abs_diff": 0.0, "mean_abs_diff": 0.0, "max_diff": 0.0}
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))  # NaN where either is NaN: fails any bound
    diffs = {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
             "max_diff": float(diff.max() / max(1.0, float(np.abs(want).max())))}
    if want.dtype.kind == "i":  # code indices (VQ-VAE): a different index is a different code, not a small error
        diffs["agreement"] = float(np.mean(got == want))
    return diffs


def parity_failures(parity):
    """Violations of PARITY_TOLERANCES in a `check_parity` result: {file name: [messages]}."""
    failures = {}
    for file_name, outputs in sorted(parity.items()):
        metric, bound, keys = PARITY_TOLERANCES[file_name.split(".")[1]]
        for key, diffs in sorted(outputs.items()):
            bounded = next(m for m in (f"{metric}_where_codes_agree", metric) if m in diffs)  # see PARITY_TOLERANCES
            if (keys is None or key in keys) and not diffs[bounded] <= bound:
                failures.setdefault(file_name, []).append(f"{key} {bounded} {diffs[bounded]:.3g} > {bound:g}")
    return failures


def settle_parity(kind, folder, files, parity, failures, fatal):
    """The end of a parity check: raise ExportError for the `fatal` files; warn about the other `failures` (kept,
    flagged in the manifest's `folder`.out_of_tolerance); record each file's parity and whether it is within bound.

    `kind` names the files in messages ("TFLite", "ONNX"); `folder` is their folder in an export."""
    if fatal:
        raise ExportError(f"{kind} parity check failed: " + "; ".join(f"{f}: {', '.join(m)}" for f, m in fatal.items()))
    for file_name, messages in failures.items():
        warnings.warn(f"{folder}/{file_name} is outside its parity bound ({', '.join(messages)}); kept and flagged "
                      f"in the manifest ({folder}.out_of_tolerance)", ParityWarning, stacklevel=4)
    for file_name, entry in files.items():
        entry["parity"] = parity[file_name]
        entry["within_tolerance"] = file_name not in failures
