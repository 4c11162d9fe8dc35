"""Shared fixtures. kerasae pins KERAS_BACKEND=tensorflow itself; quiet TF's C++ logs here."""

import gzip
import os
import struct
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mnist_small():
    """The first 256 train and 64 test images of the embedded MNIST (real data, fast)."""
    from kerasae.data import load_mnist

    return load_mnist().take(256, 64)


@pytest.fixture(scope="session")
def mnist_binary(mnist_small):
    from kerasae.data import binarize

    return binarize(mnist_small.x_train, seed=0)


def write_idx(path, array, *, gz=None):
    """Write `array` as an IDX file (gzipped if the name ends in .gz), independently of read_idx."""
    code = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C,
            np.float32: 0x0D, np.float64: 0x0E}[array.dtype.type]
    raw = (bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
           + array.astype(array.dtype.newbyteorder(">")).tobytes())
    gz = str(path).endswith(".gz") if gz is None else gz
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def run_script(name, *args, cwd, timeout=600):
    """Run scripts/<name> in a fresh interpreter, as a user would; returns the CompletedProcess."""
    import subprocess

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, str(REPO / "scripts" / name), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
