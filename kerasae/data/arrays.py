"""In-memory image arrays: the `ImageData` contract, its validation, and the fixed-seed binarization."""

import dataclasses

import numpy as np

#: Validation and test images of Bernoulli models are binarized once, with this seed, so their numbers
#: are reproducible and comparable with the literature (training re-draws every epoch).
TEST_BINARIZATION_SEED = 0


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
    skipped: tuple = ()  # files left out as unreadable when the images were decoded (skip_bad_images)

    streamed = False  # see kerasae.data.streams.StreamedData

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

    @property
    def num_train(self) -> int:
        return len(self.x_train)

    def take(self, max_train: int | None = None, max_test: int | None = None) -> "ImageData":
        """The first `max_train`/`max_test` examples of each split (None keeps all): quick runs."""
        def head(a, n):
            return None if a is None else a[:n]
        return dataclasses.replace(
            self, x_train=head(self.x_train, max_train), y_train=head(self.y_train, max_train),
            x_test=head(self.x_test, max_test), y_test=head(self.y_test, max_test))

    def to_memory(self) -> "ImageData":
        return self

    def split_validation(self, size: int):
        """(train images, validation images, test images, test labels): validation is the last `size`."""
        x_train, x_val = split_validation(self.x_train, size)
        return x_train, x_val, self.x_test, self.y_test


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


def image_data(name, x_train, y_train, x_test, y_test, *, source) -> ImageData:
    """Validate and normalize raw arrays into the one ImageData contract."""
    return ImageData(name, as_images(x_train, f"{source} x_train"), as_labels(y_train, f"{source} y_train"),
                     as_images(x_test, f"{source} x_test"), as_labels(y_test, f"{source} y_test"))


def as_images(x, culprit: str) -> np.ndarray:
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


def as_labels(y, culprit: str) -> np.ndarray | None:
    if y is None:
        return None
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
        raise DataError(f"{culprit}: labels must be a 1-D integer array, got {y.dtype} {y.shape}")
    return y.astype(np.int64)
