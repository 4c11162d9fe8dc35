"""The manifest of an export and `verify`, which checks an export against it.

Every version directory holds assets.extra/manifest.json (its tflite/ and onnx/ folders a copy): what was
exported, from what, and the sha256 and size of every file, including the Keras model at
assets.extra/model.keras. It is written last, so a version with a manifest is complete.
`verify` recomputes the hashes, flags missing and unlisted files and, when deep, loads what was
exported (SavedModel, TFLite files in LiteRT, ONNX files in onnxruntime where the extra is installed,
the Keras model in safe mode).
"""

import json
from pathlib import Path

from kerasae import _backend  # noqa: F401
import tensorflow as tf

from kerasae.export.errors import VerificationError
from kerasae.export.saved_model import _contract_problems, saved_model_signatures
from kerasae.export.onnx import missing_modules, onnx_session
from kerasae.export.tflite import load_interpreter
from kerasae.files import ModelFileError, json_text, load_keras_model, sha256_file

MANIFEST = "manifest.json"
FORMAT = "kerasae-export/1"
#: The kerasae Keras model (config and weights, no optimizer state) inside a version directory;
#: TF Serving ignores assets.extra/.
KERAS_MODEL = "assets.extra/model.keras"


def _hash_tree(root, skip=()):
    """{relative posix path: {"sha256", "bytes"}} of every file under root, except `skip` paths."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(root.rglob("*")) if p.is_file() and p.relative_to(root).as_posix() not in skip}


def existing_versions(root):
    """Integer version directories under exported/<name>, ascending."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def write_manifest(manifest, saved_dir, tflite_dir=None, onnx_dir=None):
    """Add the format and every file's sha256 to `manifest`, write it into saved_dir (and tflite_dir, onnx_dir);
    returns it.

    The version directory's copy goes last: a version with a manifest is complete.
    """
    manifest = {**manifest, "format": FORMAT,
                "files": {"saved_model": _hash_tree(saved_dir),
                          "tflite": _hash_tree(tflite_dir) if tflite_dir is not None else {},
                          **({"onnx": _hash_tree(onnx_dir)} if onnx_dir is not None else {})}}
    text = json_text(manifest)
    for folder in (tflite_dir, onnx_dir):
        if folder is not None:
            (folder / MANIFEST).write_text(text)
    (saved_dir / "assets.extra").mkdir(exist_ok=True)
    (saved_dir / "assets.extra" / MANIFEST).write_text(text)
    return manifest


def verify(path, deep=True, strict=False):
    """Check an export against its manifest; returns a list of problems ([] when all is well).

    `path` is exported/<name> (every version and the tflite and onnx folders), a version directory,
    or a tflite or onnx folder. Recomputes the sha256 of every file listed, flags missing and unlisted
    files, and with `deep` also loads the SavedModel (its signatures must match the manifest),
    every .tflite file in LiteRT (builtin ops only), every .onnx file in onnxruntime (where the
    extra is installed) and the Keras model (in safe mode).
    `strict` raises VerificationError instead of returning problems.
    """
    path = Path(path)
    problems = []
    if (path / "saved_model.pb").is_file():
        problems += _verify_version(path, deep)
        manifest = _read_manifest(path / "assets.extra" / MANIFEST, [])
        for kind in _FOLDERS:
            folder_manifest = _read_manifest(path.parent / kind / MANIFEST, [])
            if manifest and folder_manifest and folder_manifest.get("export_id") == manifest.get("export_id"):
                problems += _verify_folder(path.parent / kind, kind, deep)  # the folder came from this export
    elif (path / MANIFEST).is_file() and path.name in _FOLDERS:
        problems += _verify_folder(path, path.name, deep)
    elif path.is_dir() and (existing_versions(path) or any((path / kind).is_dir() for kind in _FOLDERS)):
        for v in existing_versions(path):
            problems += _verify_version(path / str(v), deep)
        for kind in _FOLDERS:
            if (path / kind).is_dir():
                problems += _verify_folder(path / kind, kind, deep)
    else:
        problems.append(f"{path}: not a kerasae export (no version directories, saved_model.pb, tflite/{MANIFEST} "
                        f"or onnx/{MANIFEST})")
    if strict and problems:
        raise VerificationError("\n".join(problems))
    return problems


def _read_manifest(path, problems):
    try:
        manifest = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        problems.append(f"{path}: cannot read the manifest ({err})")
        return None
    if manifest.get("format") != FORMAT:
        problems.append(f"{path}: not a {FORMAT} manifest")
        return None
    return manifest


def _check_files(root, listed, skip, problems):
    actual = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - set(skip)
    for rel, entry in sorted(listed.items()):
        file = root / rel
        if not file.is_file():
            problems.append(f"{file}: missing")
        elif sha256_file(file) != entry["sha256"]:
            problems.append(f"{file}: sha256 mismatch (changed since export)")
    for rel in sorted(actual - set(listed)):
        if not rel.startswith("assets.extra/"):  # where TF Serving's warm-up file may be added
            problems.append(f"{root / rel}: not in the manifest")


def _verify_version(version_dir, deep):
    problems = []
    manifest = _read_manifest(version_dir / "assets.extra" / MANIFEST, problems)
    if manifest is None:
        return problems
    if str(manifest.get("version")) != version_dir.name:
        problems.append(f"{version_dir}: the manifest is for version {manifest.get('version')}")
    _check_files(version_dir, manifest["files"]["saved_model"], {f"assets.extra/{MANIFEST}"}, problems)
    if deep and not problems:
        try:
            signatures = saved_model_signatures(tf.saved_model.load(str(version_dir)))
        except Exception as err:  # noqa: BLE001
            return problems + [f"{version_dir}: the SavedModel does not load ({type(err).__name__}: {err})"]
        problems += _contract_problems(signatures, manifest["signatures"], str(version_dir))
        if KERAS_MODEL in manifest["files"]["saved_model"]:
            try:
                load_keras_model(version_dir / KERAS_MODEL)
            except ModelFileError as err:
                problems.append(f"the Keras model does not load: {err}")
    return problems


def _load_tflite(path):
    load_interpreter(path.read_bytes(), delegates=False)


def _load_onnx(path):
    if not missing_modules():  # without the extra, the hashes alone are checked
        onnx_session(path)


#: The folders beside the version directories, by name (their key in the manifest's files): (how a file is
#: loaded, in what runtime).
_FOLDERS = {"tflite": (_load_tflite, "LiteRT"), "onnx": (_load_onnx, "onnxruntime")}


def _verify_folder(folder, kind, deep):
    """Check a tflite/ or onnx/ folder against its manifest; with `deep`, load every file in its runtime."""
    problems = []
    manifest = _read_manifest(folder / MANIFEST, problems)
    if manifest is None:
        return problems
    listed = manifest["files"].get(kind, {})
    _check_files(folder, listed, {MANIFEST}, problems)
    load, runtime = _FOLDERS[kind]
    if deep and not problems:
        for rel in listed:
            try:
                load(folder / rel)
            except Exception as err:  # noqa: BLE001
                problems.append(f"{folder / rel}: does not load in {runtime} ({' '.join(str(err).split())})")
    return problems
