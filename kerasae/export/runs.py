"""`export_run`: export a training run directory or a .keras file, with the run's data for calibration and parity.

It finds what `export_model` needs that a run implies: the model (loaded safely), the metrics
and preset recorded beside it, and images of the run's dataset (binarized like training for
Bernoulli models) to calibrate int8 and fp16 on and to compare the TFLite files on.
"""

import json
from pathlib import Path

import numpy as np

from kerasae.export.core import export_model
from kerasae.export.onnx import require_onnx
from kerasae.export.parity import NUM_PARITY_IMAGES
from kerasae.export.variants import NUM_FP16_CALIBRATION_IMAGES
from kerasae import files
from kerasae.config import reopen_options
from kerasae.options import DEFAULT_EXPORT_DIR, DEFAULT_TFLITE_SIGNATURES, DEFAULT_VARIANTS, check_variants

#: Training images an int8 file is calibrated on (export_run's default).
NUM_REPRESENTATIVE_IMAGES = 500


def load_images_npz(path):
    """Images from an .npz: the array "x", "x_train" or "images", or its only array (uint8 is / 255)."""
    with np.load(path, allow_pickle=False) as npz:
        keys = [k for k in ("x", "x_train", "images") if k in npz.files] or (npz.files if len(npz.files) == 1 else [])
        if not keys:
            raise ValueError(f"{path}: no array named x, x_train or images (has {npz.files})")
        x = npz[keys[0]]
    if x.ndim == 3:
        x = x[..., None]
    return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)


def export_run(run_dir_or_model_path, name, export_dir=DEFAULT_EXPORT_DIR, version=None, tflite=DEFAULT_VARIANTS,
               representative_data=None, overwrite=False, num_representative=NUM_REPRESENTATIVE_IMAGES,
               strict_parity=False, metrics=None, tflite_signatures=DEFAULT_TFLITE_SIGNATURES, source=None,
               keras_model=True, onnx=False):
    """Export a training run directory (model.keras, config.json, metrics.json) or a bare .keras file.

    int8 calibrates on the first `num_representative` training images of the run's dataset
    (binarized like training for Bernoulli models), and every TFLite file is compared with the
    SavedModel on the first 256 test images (as the run evaluates them). A bare .keras file
    outside a run uses the embedded MNIST when its image shape matches; otherwise pass
    `representative_data` (images or an .npz path) or leave int8 out. Call it after training
    as `export_run(result.run_dir, name)`. `metrics` replaces the run's metrics.json in the
    manifest (which describes model.keras, so it is only used for model.keras); the zoo passes
    what reproduce measured on best.keras. `source` is what the manifest names as the model's
    origin (default: the given path). `keras_model`, `onnx` (ONNX files beside the TFLite ones, compared
    on the same test images): see `export_model`. The TFLite files default to encode and decode as fp32 and int8
    (`tflite="all"`, `tflite_signatures="all"` for every one). Returns the version directory.
    """
    from kerasae import data as data_lib

    path = Path(run_dir_or_model_path)
    if path.is_dir():
        run_dir, model_path = path, path / "model.keras"
        if not model_path.is_file():
            raise FileNotFoundError(f"{path} is not a finished run directory: no model.keras in it")
    elif path.is_file() and path.suffix == ".keras":
        run_dir, model_path = (path.parent if (path.parent / "config.json").is_file() else None), path
    else:
        raise FileNotFoundError(f"{path}: expected a run directory or a .keras file")
    config = json.loads((run_dir / "config.json").read_text()) if run_dir else {}
    if metrics is None and run_dir and model_path.name == "model.keras" and (run_dir / "metrics.json").is_file():
        metrics = json.loads((run_dir / "metrics.json").read_text())  # measured on model.keras, not best.keras
    model = files.load_keras_model(model_path)  # CRC-checked, safe_mode=True; ModelFileError (a ValueError) if bad
    shape = tuple(model.image_shape)
    recorded = config.get("data") if isinstance(config.get("data"), dict) else {}
    binary = bool(recorded.get("binarized", getattr(model, "binary_data", False)))  # what the run tested on
    train_cfg = config.get("train") or {}

    variants = check_variants(tflite)
    if onnx is True:
        require_onnx()  # before loading the model and the data
    compared = bool(variants) or onnx is True  # files to compare with the SavedModel on the run's test images
    if isinstance(representative_data, (str, Path)):
        representative_data = load_images_npz(representative_data)
    data = None
    if compared and train_cfg.get("dataset"):
        image_size, color_mode = reopen_options(config)  # as training opened it (the conversion init_from implied)
        data = data_lib.load_dataset(train_cfg["dataset"], data_dir=train_cfg.get("data_dir"),
                                     image_size=image_size, color_mode=color_mode,
                                     skip_bad_images=train_cfg.get("skip_bad_images", False),
                                     max_train_samples=max(num_representative, NUM_FP16_CALIBRATION_IMAGES),
                                     max_test_samples=NUM_PARITY_IMAGES)
        if tuple(data.image_shape) != shape:
            raise ValueError(f"the run's dataset has images {data.image_shape}, the model takes {shape}")
    elif compared and shape == (28, 28, 1):
        data = data_lib.load_mnist()
    parity_data = fp16_data = None
    if data is not None:
        parity_data = data.x_test[:NUM_PARITY_IMAGES]
        if binary:  # the fixed binarization the run was tested on (metrics.json; training's default is seed 0)
            parity_data = data_lib.binarize(parity_data, seed=data_lib.TEST_BINARIZATION_SEED)
        train = data.x_train[:max(num_representative, NUM_FP16_CALIBRATION_IMAGES)]
        if binary:  # Bernoulli models train on binarized pixels
            train = data_lib.binarize(train, seed=1)
        if representative_data is None:
            representative_data = train[:num_representative]
        fp16_data = train
    if "int8" in variants and representative_data is None:
        raise ValueError(f"{path}: no training data to calibrate int8 on (not a run directory, and images "
                         f"{shape} are not MNIST's); pass --representative-data FILE.npz or drop int8 from --tflite")
    return export_model(model, export_dir, name, version=version, tflite=variants,
                        representative_data=representative_data, parity_data=parity_data, metrics=metrics,
                        preset=config.get("preset"), overwrite=overwrite, source=source or path,
                        strict_parity=strict_parity, tflite_signatures=tflite_signatures, fp16_data=fp16_data,
                        keras_model=keras_model, onnx=onnx)
