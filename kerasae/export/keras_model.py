"""The kerasae Keras model inside every export (assets.extra/model.keras), to fine-tune or use from Python.

An export is served as a SavedModel, but a user of the pretrained zoo also wants the trainable
model behind it (encode, posterior, score, fit, ...). `write_keras_model` saves an uncompiled
copy (config and weights, no optimizer state); the manifest lists its sha256 like every other
file; `load_keras_model` verifies the version directory before loading it in Keras safe mode.
"""

import json
from pathlib import Path

from kerasae import files
from kerasae.export.manifest import KERAS_MODEL, MANIFEST, verify


def write_keras_model(model, version_dir):
    """Save `model` without compile state or optimizer (a fresh clone) to <version_dir>/assets.extra/model.keras."""
    path = Path(version_dir) / KERAS_MODEL
    path.parent.mkdir(exist_ok=True)
    model.clone().save(path)  # same class, config and weights; never compiled
    return path


def load_keras_model(version_dir):
    """The kerasae Keras model of an export version directory, after checking the directory against its manifest.

    Raises VerificationError (listing every problem, e.g. model.keras changed since export or
    missing) before anything is loaded, and ModelFileError (a ValueError) naming the file when the
    export holds no Keras model (exported before kerasae wrote one) or it does not load.
    """
    version_dir = Path(version_dir)
    path = version_dir / KERAS_MODEL
    if not (version_dir / "saved_model.pb").is_file():
        raise files.ModelFileError(f"{path}: {version_dir} is not an export version directory (no saved_model.pb)")
    verify(version_dir, deep=False, strict=True)
    manifest = json.loads((version_dir / "assets.extra" / MANIFEST).read_text())
    if KERAS_MODEL not in manifest["files"]["saved_model"]:
        raise files.ModelFileError(f"{path}: this export holds no Keras model (its manifest does not list "
                                   f"{KERAS_MODEL}; it was exported before kerasae wrote one): export the model again")
    return files.load_keras_model(path)
