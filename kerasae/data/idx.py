"""Array sources read whole into memory: the embedded MNIST, MNIST-format IDX files and .npz files."""

import gzip
import hashlib
import importlib.resources
import math
import re
import struct
import zlib
from pathlib import Path

import numpy as np

from kerasae.data.arrays import DataError, ImageData, image_data

_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
# IDX magic: two zero bytes, a type code, the number of dimensions.
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# MNIST, Fashion-MNIST, KMNIST (and prefixed EMNIST) names: train-images-idx3-ubyte.gz,
# t10k-labels.idx1-ubyte, ...
_IDX_NAME = re.compile(
    r"(?:^|[-_.])(train|t10k|test)[-_.](images|labels)[-_.]idx\d[-_.]ubyte(?:\.gz)?$", re.I
)


def load_mnist(directory: str | Path | None = None) -> ImageData:
    """The MNIST digits shipped with kerasae: 60,000 train / 10,000 test, 28x28x1.

    Every file is checked against the package's SHA256SUMS before parsing, so a damaged
    install fails loudly instead of training on garbage. `directory` loads a copy of the same
    four files from elsewhere (still checked against the shipped sums).
    """
    embedded = importlib.resources.files("kerasae.datasets") / "mnist"
    sums = {}
    for line in (embedded / "SHA256SUMS").read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.lstrip("*")] = digest.lower()
    root = embedded if directory is None else Path(directory)
    arrays = {}
    for key, name in _MNIST_FILES.items():
        path = root / name
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise DataError(f"MNIST file {path} is missing or unreadable: {e}") from e
        if hashlib.sha256(raw).hexdigest() != sums.get(name):
            raise DataError(f"MNIST file {path} is corrupt: its SHA-256 does not match SHA256SUMS")
        arrays[key] = _parse_idx(raw, path)
    return image_data("mnist", **arrays, source=str(root))


def read_idx(path) -> np.ndarray:
    """Parse an IDX file (the MNIST format), gzipped or raw, into a native-endian array."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from e
    return _parse_idx(raw, path)


def _parse_idx(raw: bytes, source) -> np.ndarray:
    if raw[:2] == b"\x1f\x8b":  # gzip magic: sniff rather than trust the file name
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"IDX file {source} is not a valid gzip stream: {e}") from e
    if len(raw) < 4 or raw[0] or raw[1] or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{source} is not an IDX file (bad magic number {raw[:4].hex()})")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    offset = 4 + 4 * ndim
    if len(raw) < offset:
        raise DataError(f"IDX file {source} is truncated (header cut short)")
    dims = struct.unpack(f">{ndim}I", raw[4:offset])
    count = math.prod(dims)
    if len(raw) != offset + count * dtype.itemsize:
        raise DataError(f"IDX file {source} has {len(raw) - offset} data bytes but its header "
                        f"promises {dims} x {dtype.itemsize} bytes (truncated or corrupt?)")
    array = np.frombuffer(raw, dtype, count=count, offset=offset).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # native byte order, writable copy


def load_idx_folder(directory) -> ImageData:
    """idx:DIR holding MNIST-format files (Fashion-MNIST, KMNIST...); labels are optional."""
    root = existing(directory, "idx:DIR", want_dir=True)
    found = {}
    for path in sorted(root.iterdir()):
        if match := _IDX_NAME.search(path.name):
            split = "train" if match[1].lower() == "train" else "test"
            found.setdefault(f"{'x' if match[2].lower() == 'images' else 'y'}_{split}", path)
    missing = [k for k in ("x_train", "x_test") if k not in found]
    if missing:
        raise DataError(f"idx:{root}: no {' or '.join(missing)} file; looked for "
                        "train-images-idx3-ubyte[.gz] and t10k-images-idx3-ubyte[.gz] "
                        "(also test-..., and '.'-separated names like train-images.idx3-ubyte)")
    arrays = {k: read_idx(found[k]) if k in found else None
              for k in ("x_train", "y_train", "x_test", "y_test")}
    return image_data(root.name, **arrays, source=f"idx:{root}")


def load_npz(file) -> ImageData:
    """npz:FILE with arrays x_train, x_test and optional y_train, y_test."""
    path = existing(file, "npz:FILE", want_dir=False)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zlib.error) as e:
        raise DataError(f"npz:{path} is not a readable .npz file: {e}") from e
    missing = [k for k in ("x_train", "x_test") if k not in arrays]
    if missing:
        raise DataError(f"npz:{path} lacks {', '.join(missing)}; it has {sorted(arrays)}")
    return image_data(path.stem, arrays["x_train"], arrays.get("y_train"), arrays["x_test"],
                      arrays.get("y_test"), source=f"npz:{path}")


def existing(path, form: str, *, want_dir: bool) -> Path:
    path = Path(path).expanduser()
    if not (path.is_dir() if want_dir else path.is_file()):
        raise DataError(f"{form}: {'directory' if want_dir else 'file'} {path} does not exist")
    return path
