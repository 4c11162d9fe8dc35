"""Small file helpers shared by training and export: atomic JSON, hashes, library versions."""

import contextlib
import hashlib
import json
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np


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
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
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
