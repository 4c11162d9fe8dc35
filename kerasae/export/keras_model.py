"""The kerasae Keras model behind every export, to fine-tune or use from Python.

An export is served as a SavedModel, but a user of the pretrained zoo also wants the trainable
model behind it (encode, posterior, score, fit, ...). It comes from one of two places:
- assets.extra/model.keras (the default): `write_keras_model` saves an uncompiled copy (config
  and weights, no optimizer state), hashed in the manifest like every other file;
- the SavedModel itself (`export_model(..., keras_model=False)`, what the zoo ships): the
  manifest's class and config rebuild the model and the SavedModel's variables, stored under the
  model's own weight paths, fill it (`rebuild_keras_model`). The weights are stored once, so an
  export is about half the size.
`load_keras_model` verifies the version directory, then loads whichever the export holds.
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


def rebuild_keras_model(saved_dir, model_record=None, loaded=None):
    """The kerasae model of a SavedModel directory: its class and config, filled with the SavedModel's variables.

    `model_record` is the manifest's "model" entry ({"registered_name", "config", ...}); default: read
    from the directory's manifest. Each weight is matched by path and shape; a ModelFileError (a
    ValueError) names any that is missing or differs, or a class kerasae does not know. `loaded`: the
    directory's SavedModel, if the caller has it loaded already.
    """
    import keras
    import tensorflow as tf

    from kerasae import register_classes

    saved_dir = Path(saved_dir)
    if model_record is None:
        model_record = json.loads((saved_dir / "assets.extra" / MANIFEST).read_text())["model"]
    register_classes()
    name = str(model_record["registered_name"])
    cls = keras.saving.get_registered_object(name) if name.startswith("kerasae>") else None
    if cls is None:
        raise files.ModelFileError(f"{saved_dir}: unknown model class {model_record['registered_name']!r}")
    model = cls.from_config(model_record["config"])
    model.build((None, *model.image_shape))
    loaded = tf.saved_model.load(str(saved_dir)) if loaded is None else loaded
    saved = {v.name.removesuffix(":0"): v for v in loaded.variables}
    problems = [w.path for w in model.weights if w.path not in saved or tuple(saved[w.path].shape) != tuple(w.shape)]
    if problems or len(saved) != len(model.weights):
        raise files.ModelFileError(
            f"{saved_dir}: the SavedModel's variables do not match a {cls.__name__} of its manifest's config "
            f"(missing or reshaped: {problems or 'none'}; {len(saved)} saved, {len(model.weights)} in the model)")
    for weight in model.weights:
        weight.assign(saved[weight.path])
    return model


def load_keras_model(version_dir):
    """The kerasae Keras model of an export version directory, after checking the directory against its manifest.

    Raises VerificationError (listing every problem, e.g. model.keras or the variables changed
    since export, or missing) before anything is loaded, and ModelFileError (a ValueError) naming
    the file when the model does not load. An export without model.keras (the zoo's, or one made
    before kerasae wrote it) is rebuilt from its manifest and SavedModel.
    """
    version_dir = Path(version_dir)
    if not (version_dir / "saved_model.pb").is_file():
        raise files.ModelFileError(f"{version_dir / KERAS_MODEL}: {version_dir} is not an export version directory "
                                   "(no saved_model.pb)")
    verify(version_dir, deep=False, strict=True)
    manifest = json.loads((version_dir / "assets.extra" / MANIFEST).read_text())
    if KERAS_MODEL in manifest["files"]["saved_model"]:
        return files.load_keras_model(version_dir / KERAS_MODEL)
    return rebuild_keras_model(version_dir, manifest["model"])


def model_record(version_dir):
    """The manifest's record of the model behind an export ({"class", "registered_name", "config", ...}); unverified."""
    return json.loads((Path(version_dir) / "assets.extra" / MANIFEST).read_text())["model"]
