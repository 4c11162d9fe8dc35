"""Small file helpers shared by training and export: atomic JSON, hashes, library versions, safe loading."""

import contextlib
import contextvars
import hashlib
import json
import os
import platform
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from kerasae import options, registry


def _default(value):
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def json_text(obj):
    """Stable, readable JSON (sorted keys; numpy scalars, tuples and paths allowed)."""
    return json.dumps(obj, indent=2, sort_keys=True, default=_default) + "\n"


@contextlib.contextmanager
def atomic_path(path, suffix=""):
    """Yield a temporary path next to `path`; when the block succeeds, rename it onto `path`.

    A reader sees the old file or the new one, never half of one; a failed write leaves no
    temporary file behind. `suffix` keeps the extension a writer insists on (".keras").
    An OSError while writing (disk full, permission denied, ...) is re-raised as an OSError of
    the same errno (so the same subclass) whose message names `path` and says the previous
    file, if any, is unchanged.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        cause = err.strerror or str(err) or type(err).__name__
        kept = "the previous file is unchanged" if path.exists() else "no file was written"
        raise OSError(err.errno, f"cannot write {path}: {cause}; {kept}") from err
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_json(path, obj):
    """Write JSON atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json_text(obj))


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions():
    """Versions of Python and the libraries a result depends on (for configs, metrics, manifests)."""
    versions = {"python": platform.python_version()}
    for key, dist in (("kerasae", "kerasae"), ("tensorflow", "tensorflow"), ("keras", "keras"),
                      ("tensorflow_probability", "tensorflow-probability"), ("numpy", "numpy"),
                      ("ai_edge_litert", "ai-edge-litert")):
        try:
            versions[key] = version(dist)
        except PackageNotFoundError:
            versions[key] = None
    return versions


# ---- where exports may go -----------------------------------------------------------------------

_ZOO_WRITES = contextvars.ContextVar("kerasae_zoo_writes", default=False)


@contextlib.contextmanager
def zoo_writes():
    """Within this block exports may go into the zoo's folder: for the zoo's own command only
    (`zoo.export_zoo`, `zoo.reexport`, `kerasae reproduce --export-zoo`)."""
    token = _ZOO_WRITES.set(True)
    try:
        yield
    finally:
        _ZOO_WRITES.reset(token)


def protected_dirs():
    """{folder: what it is} that user exports must stay out of: anything shipped as part of the package."""
    package = Path(__file__).resolve().parent
    protected = {package: "the installed kerasae package", package / "pretrained": "the pretrained zoo"}
    if (package.parent / "pyproject.toml").is_file():  # a checkout: exported/ is the zoo's source (kerasae.pretrained)
        protected[package.parent / "exported"] = "the pretrained zoo's source (shipped as kerasae.pretrained)"
    if os.environ.get("KERASAE_ZOO"):
        protected[Path(os.environ["KERASAE_ZOO"]).resolve()] = "the pretrained zoo ($KERASAE_ZOO)"
    return protected


def check_export_dir(export_dir):
    """`export_dir` as a Path; a ValueError when it lies in the zoo's folder or the installed package.

    A user's exports written there would become zoo entries and ship in the next wheel (or be lost on the next
    install); only the zoo's own command writes there (`zoo_writes`).
    """
    path = Path(export_dir)
    if _ZOO_WRITES.get():
        return path
    resolved = path.resolve()
    for folder, what in sorted(protected_dirs().items(), key=lambda item: -len(str(item[0]))):
        if resolved == folder or folder in resolved.parents:
            raise ValueError(f"export_dir: {export_dir} is inside {folder}, {what}; export somewhere of your own "
                             f"(default: ./{options.DEFAULT_EXPORT_DIR}). Only `kerasae reproduce --export-zoo` "
                             "writes the zoo")
    return path


class ModelFileError(ValueError):
    """A .keras file that is missing, truncated, corrupted, unsafe or not a kerasae model; nothing was loaded."""


def checksum_path(path):
    """The sha256 record kept beside a .keras file that kerasae wrote (`best.keras.sha256.json`)."""
    path = Path(path)
    return path.with_name(path.name + ".sha256.json")


def write_checksum(path, new_file):
    """Record the sha256 of `new_file` (about to be renamed onto `path`) and of the current `path`.

    Written before the rename, so a process killed between the two writes leaves a record that
    still names the file on disk (as "previous"): loading never mistakes that for corruption.
    """
    previous = sha256_file(path) if Path(path).is_file() else None
    write_json(checksum_path(path), {"sha256": sha256_file(new_file), "previous": previous})


def run_model_path(run_dir):
    """RUN_DIR/model.keras, the model a finished run ends with; a ModelFileError saying what the run holds if absent."""
    run_dir = Path(run_dir)
    model = run_dir / "model.keras"
    if model.is_file():
        return model
    best = run_dir / "best.keras"
    if best.is_file():
        state = (f"best.keras is there (the best epoch so far by validation loss): load {best} to use it, or rerun "
                 "the training command to finish the run")
    else:
        state = "nor best.keras: not a kerasae run directory, or one whose first epoch did not finish"
    raise ModelFileError(f"no model.keras in {run_dir} (the run has not finished?); {state}")


def load_keras_model(path):
    """Load a kerasae `.keras` file (or a run directory's model.keras) the one way kerasae does: integrity-checked
    and in Keras safe mode.

    A file kerasae wrote has a sha256 record beside it (`checksum_path`), checked first; then
    every member of the zip archive is read and its CRC-32 checked (a truncated or
    bit-flipped file fails here, also where Keras itself would not notice, e.g. in
    metadata.json), then `keras.saving.load_model(path, compile=False, safe_mode=True)`
    refuses `Lambda` layers and any other pickled Python. Raises ModelFileError (a ValueError)
    naming the file and the cause instead of a deep Keras/zip traceback.
    """
    import keras

    import kerasae

    kerasae.register_classes()  # the classes the file names

    path = Path(path)
    if path.is_dir():  # a run directory: its final model
        path = run_model_path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    record = checksum_path(path)
    if record.is_file():  # written by kerasae (save_model_atomic): the file must be the one it recorded
        try:
            known = json.loads(record.read_text())
            known = {known["sha256"], known.get("previous")}
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ModelFileError(f"{record}: unreadable sha256 record ({err})") from err
        if sha256_file(path) not in known:
            raise ModelFileError(f"{path}: sha256 mismatch with {record.name} (changed or corrupted since it "
                                 "was written)")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, ValueError) as err:
        raise ModelFileError(f"{path}: not a readable .keras archive, probably truncated or corrupted "
                             f"({type(err).__name__}: {err})") from err
    if bad is not None:
        raise ModelFileError(f"{path}: corrupted .keras archive (member {bad!r} fails its CRC-32 check)")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as err:  # noqa: BLE001  (Keras raises assorted types for bad content)
        cause = " ".join(str(err).split())
        if "safe_mode" in cause or "arbitrary code" in cause:
            raise ModelFileError(f"{path}: refused to load unsafe content (kerasae loads .keras files with "
                                 f"safe_mode=True): {cause[:300]}") from err
        raise ModelFileError(f"{path}: cannot load the model ({type(err).__name__}: {cause[:300]})") from err
    if getattr(model, "family", None) not in (*registry.FAMILIES, "codec"):  # codec: kerasae.codec's models
        raise ModelFileError(f"{path}: not a kerasae model (it holds a {type(model).__name__})")
    return model
