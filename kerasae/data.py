"""Datasets for the autoencoders: loaders to in-memory numpy, and the tf.data input pipeline.

Every loader returns an `ImageData` of float32 images [N, H, W, C] in [0, 1], so models,
losses and figures never care where the pixels came from. MNIST ships with the package
(checksummed) so the default path works offline; other data comes from tensorflow-datasets,
MNIST-format IDX files, a folder of images or an .npz file (see `load_dataset`).
"""

from kerasae import _backend  # noqa: F401

import dataclasses
import gzip
import hashlib
import importlib.resources
import math
import re
import struct
import zlib
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

SPEC_FORMS = ("mnist", "tfds:NAME[/CONFIG][:VERSION]", "idx:DIR", "images:DIR", "npz:FILE")
from kerasae.options import COLOR_MODES  # noqa: F401  (re-exported)
DEFAULT_FOLDER_IMAGE_SIZE = (64, 64)  # images:DIR holds files of any size; pick one
_FOLDER_TEST_FRACTION = 0.1
_FOLDER_SPLIT_SEED = 1337
#: Validation and test images of Bernoulli models are binarized once, with this seed, so their numbers
#: are reproducible and comparable with the literature (training re-draws every epoch).
TEST_BINARIZATION_SEED = 0

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


class DataError(ValueError):
    """Bad dataset spec, missing/corrupt files, unusable data.

    The message names the culprit (file, argument, CLI flag) so a user can fix it without a
    traceback dive.
    """


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: == on arrays is ambiguous
class ImageData:
    """A train/test pair of image arrays: float32 [N, H, W, C] in [0, 1], int64 labels or None.

    Labels are optional because autoencoders never train on them; they only colour plots.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray | None

    def __post_init__(self):
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.ndim != 4 or x.dtype != np.float32:
                raise DataError(f"{self.name}: x_{split} must be float32 [N, H, W, C], "
                                f"got {x.dtype} {x.shape}")
            if y is not None and y.shape != (len(x),):
                raise DataError(f"{self.name}: y_{split} has shape {y.shape}, "
                                f"expected ({len(x)},) to match x_{split}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(f"{self.name}: train images are {self.x_train.shape[1:]} but test "
                            f"images are {self.x_test.shape[1:]}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    def take(self, max_train: int | None = None, max_test: int | None = None) -> "ImageData":
        """The first `max_train`/`max_test` examples of each split (None keeps all): quick runs."""
        def head(a, n):
            return None if a is None else a[:n]
        return dataclasses.replace(
            self, x_train=head(self.x_train, max_train), y_train=head(self.y_train, max_train),
            x_test=head(self.x_test, max_test), y_test=head(self.y_test, max_test))


def load_dataset(spec: str = "mnist", *, data_dir: str | None = None,
                 image_size: tuple[int, int] | None = None,
                 color_mode: str | None = None) -> ImageData:
    """Load the dataset named by `spec`, one of the `SPEC_FORMS`.

    `data_dir` is the tensorflow-datasets data directory (tfds: only). `image_size` (H, W)
    resizes (antialiased) and `color_mode` ("grayscale"/"rgb", None keeps the channels)
    converts channels, for every form, so e.g. MNIST can feed a model built for 32x32 RGB.
    """
    if image_size is not None:
        if len(image_size) != 2 or not all(
                isinstance(s, (int, np.integer)) and s > 0 for s in image_size):
            raise DataError(f"--image-size must be two positive integers, got {image_size!r}")
        image_size = tuple(int(s) for s in image_size)
    if color_mode not in (None, *COLOR_MODES):
        raise DataError(f"--color-mode must be one of {COLOR_MODES}, got {color_mode!r}")
    kind, _, arg = spec.partition(":")
    if spec == "mnist":
        data = load_mnist()
    elif kind == "tfds" and arg:
        return _load_tfds(arg, data_dir, image_size, color_mode)
    elif kind == "images" and arg:
        return _load_image_folder(arg, image_size, color_mode)
    elif kind == "idx" and arg:
        data = _load_idx_folder(arg)
    elif kind == "npz" and arg:
        data = _load_npz(arg)
    else:
        raise DataError(f"unknown dataset spec {spec!r}; use one of: {', '.join(SPEC_FORMS)}")
    if image_size is None and color_mode is None:
        return data

    def convert(x):
        return _resize_and_recolor(tf.convert_to_tensor(x), image_size, color_mode).numpy()

    return dataclasses.replace(data, x_train=convert(data.x_train), x_test=convert(data.x_test))


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
    return _image_data("mnist", **arrays, source=str(root))


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


def binarize(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """Fixed-seed stochastic binarization (pixel = 1 with probability x), float32.

    For the Bernoulli test set: a fixed draw makes test likelihoods and figures reproducible,
    while training re-draws every epoch (`make_dataset(binarize=True)`).
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    return (rng.random(np.shape(x), dtype=np.float32) < x).astype(np.float32)


def split_validation(x: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out the last `size` examples for validation: (x[:-size], x[-size:])."""
    if not 0 <= size < len(x):
        raise DataError(f"validation size must be in [0, {len(x)}) for {len(x)} training "
                        f"examples, got {size}")
    return (x, x[:0]) if size == 0 else (x[:-size], x[-size:])


def make_dataset(x: np.ndarray, batch_size: int, *, shuffle: bool = False,
                 binarize: bool = False, seed: int | None = None,
                 repeat: bool = False) -> tf.data.Dataset:
    """The input pipeline: float32 batches [B, H, W, C] of x alone (autoencoders need no labels).

    `shuffle` reshuffles every epoch (reproducibly given `seed`). `binarize` draws fresh
    Bernoulli pixels per batch every epoch (dynamic binarization regularizes Bernoulli VAEs);
    the per-batch seeds come from `Dataset.random`, which is re-randomized on each iteration,
    so a fixed global/op seed does not freeze the bits across epochs. The data is in memory,
    so under tf.distribute it must be auto-sharded by DATA, not by FILE.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    images = np.asarray(x, np.float32)
    # Binarizing keeps the pixels scaled to [0, 2**16]: see _binarize_batch.
    images = tf.constant(images * np.float32(_BINARIZE_LEVELS) if binarize else images)
    # Shuffle and batch indices, then gather each batch in one op (the same order as shuffling
    # the images): per-image elements cost the binarizing pipeline ~20% more CPU time, which a
    # 2-core machine takes from training.
    ds = tf.data.Dataset.range(len(x))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if repeat:
        ds = ds.repeat()
    if binarize:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip(ds, seeds).map(lambda index, s: _binarize_batch(tf.gather(images, index), s),
                                                num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda index: tf.gather(images, index), num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


_BINARIZE_LEVELS = 2**16


def _binarize_batch(scaled, seed):
    """One vectorized, stateless Bernoulli draw for a batch of pixels x given as x * 2**16.

    A pixel is 1 when a uniform 16-bit integer r < x * 2**16: P = ceil(x * 2**16) / 2**16, so
    0 and 1 stay exact and other values are within 2**-16 (finer than 8-bit pixels' 1/255).
    Half the random bits of a float draw per pixel: ~25% less pipeline CPU, which the
    training step on a 2-core machine gets back.
    """
    size = tf.size(scaled)
    bits = tf.random.stateless_uniform([(size + 1) // 2], seed=tf.stack([seed, tf.constant(0, tf.int64)]),
                                       minval=None, maxval=None, dtype=tf.uint32)
    r = tf.reshape(tf.bitcast(bits, tf.uint16), [-1])[:size]
    return tf.cast(tf.reshape(tf.cast(r, tf.float32), tf.shape(scaled)) < scaled, tf.float32)


# --- loaders ---------------------------------------------------------------------------

def _load_tfds(name: str, data_dir, image_size, color_mode) -> ImageData:
    """tfds:NAME[/CONFIG][:VERSION]. Without a "test" split, the last 10% of "train" is test.

    Downloads and prepares the dataset into `data_dir` if needed; offline, that fails and the
    user is told to point --data-dir at a prepared copy.
    """
    import tensorflow_datasets as tfds  # heavy, and only needed here

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DataError(f"unknown tensorflow-datasets dataset {name!r} "
                        "(see tfds.list_builders())") from e
    except Exception as e:  # bad config/version: tfds raises assorted types
        raise DataError(f"cannot open tensorflow-datasets dataset {name!r}: {e}") from e
    if not builder.is_prepared():
        try:
            builder.download_and_prepare()
        except Exception as e:  # network, manual-download datasets, missing extras...
            raise DataError(
                f"tensorflow-datasets dataset {name!r} is not prepared in {builder.data_dir} "
                f"and could not be downloaded ({type(e).__name__}: {e}). Prepare it where "
                f"there is internet (`tfds build {name} --data_dir DIR`) and pass --data-dir DIR."
            ) from e
    features = dict(builder.info.features.items())
    if not isinstance(features.get("image"), tfds.features.Image):
        raise DataError(f"tfds:{name} has no 'image' feature (features: {list(features)})")
    if None in features["image"].shape[:2] and image_size is None:
        raise DataError(f"tfds:{name} has images of different sizes; pass --image-size H W")
    with_labels = isinstance(features.get("label"), tfds.features.ClassLabel)

    def prepare(example):
        image = tf.image.convert_image_dtype(example["image"], tf.float32)  # ints -> [0, 1]
        out = {"image": _resize_and_recolor(image, image_size, color_mode)}
        if with_labels:
            out["label"] = example["label"]
        return out

    def load(split):
        # Chunked, not batch_size=-1: that batches by info.splits.total_num_examples, which
        # is unknown (sys.maxsize: a crash) under tfds.testing.mock_data.
        ds = builder.as_dataset(split=split, shuffle_files=False)
        ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(4096)
        batches = list(tfds.as_numpy(ds))
        if not batches:
            raise DataError(f"tfds:{name} split {split!r} is empty")
        x = np.concatenate([b["image"] for b in batches])
        return x, np.concatenate([b["label"] for b in batches]) if with_labels else None

    splits = builder.info.splits  # empty under mock_data: then any split name is accepted
    if splits and "train" not in splits:
        raise DataError(f"tfds:{name} has no 'train' split (splits: {list(splits)})")
    train, test = ("train", "test") if "test" in splits else ("train[:90%]", "train[90%:]")
    (x_train, y_train), (x_test, y_test) = load(train), load(test)
    return _image_data(builder.name, x_train, y_train, x_test, y_test, source=f"tfds:{name}")


def _load_idx_folder(directory) -> ImageData:
    """idx:DIR holding MNIST-format files (Fashion-MNIST, KMNIST...); labels are optional."""
    root = _existing(directory, "idx:DIR", want_dir=True)
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
    return _image_data(root.name, **arrays, source=f"idx:{root}")


def _load_image_folder(directory, image_size, color_mode) -> ImageData:
    """images:DIR via keras.utils.image_dataset_from_directory.

    DIR/train and DIR/test are the splits if both exist; otherwise a seeded random 10% of DIR
    is the test set (keras' own validation_split would take the alphabetically last files,
    i.e. mostly the last class). Class subfolders give labels; flat folders have none. Images
    are resized to `image_size` (default DEFAULT_FOLDER_IMAGE_SIZE), RGB unless "grayscale".
    """
    root = _existing(directory, "images:DIR", want_dir=True)
    if (root / "train").is_dir() and (root / "test").is_dir():
        x_train, y_train = _read_image_folder(root / "train", image_size, color_mode)
        x_test, y_test = _read_image_folder(root / "test", image_size, color_mode)
    else:
        x, y = _read_image_folder(root, image_size, color_mode)
        if len(x) < 2:
            raise DataError(f"images:{root} has {len(x)} image(s); need at least 2 to split")
        order = np.random.default_rng(_FOLDER_SPLIT_SEED).permutation(len(x))
        train, test = np.split(order, [len(x) - max(1, int(len(x) * _FOLDER_TEST_FRACTION))])
        x_train, x_test = x[train], x[test]
        y_train, y_test = (None, None) if y is None else (y[train], y[test])
    return _image_data(root.name, x_train, y_train, x_test, y_test, source=f"images:{root}")


def _read_image_folder(directory: Path, image_size, color_mode):
    has_classes = any(p.is_dir() for p in directory.iterdir())
    try:
        ds = keras.utils.image_dataset_from_directory(
            directory, labels="inferred" if has_classes else None,
            color_mode=color_mode or "rgb", image_size=image_size or DEFAULT_FOLDER_IMAGE_SIZE,
            batch_size=256, shuffle=False, verbose=False)
    except ValueError as e:  # "No images found in directory ..."
        raise DataError(f"images:{directory}: {e}") from e
    batches = list(ds.as_numpy_iterator())  # (images, labels) batches, or images alone
    x = np.concatenate([b[0] if has_classes else b for b in batches])
    y = np.concatenate([b[1] for b in batches]) if has_classes else None
    return np.clip(x / 255.0, 0.0, 1.0).astype(np.float32), y  # keras yields floats in 0..255


def _load_npz(file) -> ImageData:
    """npz:FILE with arrays x_train, x_test and optional y_train, y_test."""
    path = _existing(file, "npz:FILE", want_dir=False)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zlib.error) as e:
        raise DataError(f"npz:{path} is not a readable .npz file: {e}") from e
    missing = [k for k in ("x_train", "x_test") if k not in arrays]
    if missing:
        raise DataError(f"npz:{path} lacks {', '.join(missing)}; it has {sorted(arrays)}")
    return _image_data(path.stem, arrays["x_train"], arrays.get("y_train"), arrays["x_test"],
                       arrays.get("y_test"), source=f"npz:{path}")


# --- helpers ---------------------------------------------------------------------------

def _existing(path, form: str, *, want_dir: bool) -> Path:
    path = Path(path).expanduser()
    if not (path.is_dir() if want_dir else path.is_file()):
        raise DataError(f"{form}: {'directory' if want_dir else 'file'} {path} does not exist")
    return path


def _image_data(name, x_train, y_train, x_test, y_test, *, source) -> ImageData:
    """Validate and normalize raw arrays into the one ImageData contract."""
    return ImageData(name, _as_images(x_train, f"{source} x_train"),
                     _as_labels(y_train, f"{source} y_train"),
                     _as_images(x_test, f"{source} x_test"),
                     _as_labels(y_test, f"{source} y_test"))


def _as_images(x, culprit: str) -> np.ndarray:
    """float32 [N, H, W, C] in [0, 1]: uint8 (and other ints <= 255) / 255, floats as they are."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., np.newaxis]  # [N, H, W] grayscale
    if x.ndim != 4 or len(x) == 0:
        raise DataError(f"{culprit}: expected a non-empty [N, H, W(, C)] image array, "
                        f"got shape {x.shape}")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if x.dtype == np.bool_:
        return x.astype(np.float32)
    lo, hi = x.min(), x.max()
    if np.issubdtype(x.dtype, np.integer):
        if lo < 0 or hi > 255:
            raise DataError(f"{culprit}: integer pixels must be in [0, 255], found [{lo}, {hi}]")
        return x.astype(np.float32) / 255.0
    if np.issubdtype(x.dtype, np.floating):
        if not (0.0 <= lo and hi <= 1.0):  # also catches NaN
            raise DataError(f"{culprit}: float pixels must already be in [0, 1], "
                            f"found min {lo}, max {hi}")
        return x.astype(np.float32)
    raise DataError(f"{culprit}: unsupported pixel dtype {x.dtype}")


def _as_labels(y, culprit: str) -> np.ndarray | None:
    if y is None:
        return None
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
        raise DataError(f"{culprit}: labels must be a 1-D integer array, got {y.dtype} {y.shape}")
    return y.astype(np.int64)


def _resize_and_recolor(images, image_size, color_mode):
    """Resize (antialiased) and convert channels of float images in [0, 1], one or a batch."""
    if image_size is not None and tuple(images.shape[-3:-1]) != tuple(image_size):
        images = tf.clip_by_value(tf.image.resize(images, image_size, antialias=True), 0.0, 1.0)
    channels = images.shape[-1]
    if color_mode == "grayscale" and channels == 3:
        images = tf.image.rgb_to_grayscale(images)
    elif color_mode == "rgb" and channels == 1:
        images = tf.image.grayscale_to_rgb(images)
    elif color_mode is not None and channels != (1 if color_mode == "grayscale" else 3):
        raise DataError(f"--color-mode {color_mode}: cannot convert {channels}-channel images")
    return images
