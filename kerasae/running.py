"""Evaluation batch by batch: test images read in order a batch at a time (an array, or a streamed split
decoded as it is read) and the running statistics `kerasae.evaluate` reduces them to, so that evaluating a
split of a million streamed images holds one batch of them in memory, not the split; also a model's methods
mapped over an array a batch at a time (`codes`, `reconstruct`)."""

import numpy as np
import tensorflow as tf

from kerasae import data as data_lib
from kerasae.data.tuning import untuned


class TestImages:
    """The test images in their fixed order, read `batch_size` at a time by `batches`.

    `source`: an array [N, ...] (with `labels`, an array [N], or None) or a streamed `kerasae.data.Split`
    (its images decoded batch by batch; `labels=True` reads the split's own labels with them).
    `binarized()`: the same images through the fixed test binarization (`data.binarize` with
    TEST_BINARIZATION_SEED), drawn batch by batch from one generator in order, so the pixels equal
    those of binarizing the whole split at once.
    """

    __test__ = False  # not a pytest class

    def __init__(self, source, labels=None, binarize=False):
        self.streamed = isinstance(source, data_lib.Split)
        if self.streamed:
            if labels not in (None, False, True):
                raise TypeError("labels of a streamed split: True (read the split's own) or None, "
                                f"got {type(labels).__name__}")
            if labels and not source.has_labels:
                raise ValueError("labels=True needs a labelled split (class folders, a tfrecord label key)")
            self.labels = bool(labels)
        else:
            source = np.asarray(source)
            if labels is not None and np.shape(labels) != (len(source),):
                raise ValueError(f"labels must have shape ({len(source)},) to match the images, "
                                 f"got {np.shape(labels)}")
            self.labels = labels
        self.source, self.binarize = source, binarize

    def __len__(self):
        return len(self.source)

    @property
    def shape(self):
        """(N, *image shape), as an array's."""
        return (len(self), *(self.source.image_shape if self.streamed else self.source.shape[1:]))

    def binarized(self):
        return TestImages(self.source, self.labels, binarize=True)

    def batches(self, batch_size, first=0):
        """(start, images float32 [B, ...], labels [B] or None) from image `first` on, in order."""
        rng = np.random.Generator(np.random.PCG64(data_lib.TEST_BINARIZATION_SEED)) if self.binarize else None
        if rng is not None:  # the draws of the images before `first`, as binarizing the whole split makes them
            for lo in range(0, first, batch_size):
                rng.random((min(batch_size, first - lo), *self.shape[1:]), dtype=np.float32)
        start = first
        for x, y in self._read(batch_size, first):
            x = np.asarray(x, np.float32)
            if rng is not None:
                x = (rng.random(x.shape, dtype=np.float32) < x).astype(np.float32)
            yield start, x, y
            start += len(x)
        if start != len(self):
            raise data_lib.DataError(f"expected {len(self)} test images but read {start}: did the files change "
                                     "while reading?")

    def _read(self, batch_size, first):
        if not self.streamed:
            for lo in range(first, len(self), batch_size):
                yield self.source[lo:lo + batch_size], (None if self.labels is None
                                                        else np.asarray(self.labels[lo:lo + batch_size]))
            return
        split = self.source.split_first(first)[1] if first else self.source
        decode = split.decode_fn()
        ds = split.encoded().map(lambda item, label: (decode(item), label), num_parallel_calls=tf.data.AUTOTUNE)
        for x, y in untuned(ds.batch(batch_size).prefetch(1)).as_numpy_iterator():
            yield x, (y if self.labels else None)

    def to_array(self):
        """Every image (and label) in memory: for the evaluations that need the whole split at once."""
        parts = list(self.batches(256))
        x = np.concatenate([p[1] for p in parts]) if parts else np.empty(self.shape, np.float32)
        has_labels = self.labels is not None and self.labels is not False
        y = np.concatenate([p[2] for p in parts]) if has_labels and parts else None
        return x, y


def _batches(x, batch_size):
    for i in range(0, len(x), batch_size):
        yield i, x[i:i + batch_size]


def _map(fn, x, batch_size=1000, labels=None):
    """fn over x in batches (with the matching labels, for a conditional model's methods), concatenated."""
    if labels is None:
        return np.concatenate([np.asarray(fn(b)) for _, b in _batches(x, batch_size)])
    return np.concatenate([np.asarray(fn(b, labels[i:i + len(b)])) for i, b in _batches(x, batch_size)])


def codes(model, x, batch_size=1000, labels=None):
    """The code of each image: z for AEs, the posterior mean for VAEs (a conditional VAE's given the labels)."""
    return model.latent_codes(x, labels, batch_size) if model.conditional else model.latent_codes(x, batch_size)


def reconstruct(model, x, batch_size=1000, labels=None):
    return _map(model.reconstruct, x, batch_size, labels)


def psnr(x, x_hat):
    """Per-image PSNR in dB (peak 1.0); inf where an image is reproduced exactly."""
    x, x_hat = np.asarray(x, np.float64), np.asarray(x_hat, np.float64)
    mse = ((x - x_hat) ** 2).reshape(len(x), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(1.0 / mse)


def reconstruction_metrics(x, x_hat):
    """MSE per pixel, binary cross-entropy per image (nats; targets = x) and mean PSNR."""
    return _reconstruction_result(_reconstruction_sums(x, x_hat))


def _reconstruction_sums(x, x_hat, sums=None):
    """reconstruction_metrics' sums over the images (float64), added to `sums` from earlier batches."""
    x, x_hat = np.asarray(x, np.float64), np.clip(np.asarray(x_hat, np.float64), 1e-7, 1 - 1e-7)
    bce = -(x * np.log(x_hat) + (1 - x) * np.log1p(-x_hat)).reshape(len(x), -1).sum(axis=1)
    batch = {"images": len(x), "pixels": x.size, "squared_error": float(((x - x_hat) ** 2).sum()),
             "bce": float(bce.sum()), "psnr": float(psnr(x, x_hat).sum())}
    return batch if sums is None else {key: sums[key] + value for key, value in batch.items()}


def _reconstruction_result(sums):
    return {"mse_per_pixel": sums["squared_error"] / sums["pixels"], "bce_per_image": sums["bce"] / sums["images"],
            "psnr_db": sums["psnr"] / sums["images"]}


def reconstruction_metrics_of(model, images, batch_size=1000, labels=None):
    """reconstruction_metrics of the model's reconstructions of `images` (an array or `TestImages`), a batch at
    a time (a conditional model's given the labels)."""
    sums = None
    for _, xb, yb in as_test_images(images, labels).batches(batch_size):
        x_hat = model.reconstruct(xb) if yb is None else model.reconstruct(xb, yb)
        sums = _reconstruction_sums(xb, np.asarray(x_hat), sums)
    return _reconstruction_result(sums)


def as_test_images(x, labels=None):
    """`x` as `TestImages` (an array and its labels wrapped; TestImages as they are, their labels their own)."""
    if isinstance(x, TestImages):
        if labels is not None:
            raise ValueError("labels: TestImages carry their own labels; pass labels=None")
        return x
    return TestImages(x, labels)


class RunningMoments:
    """Per-column count, mean and variance of rows added a batch at a time, in float64.

    Batches combine by Chan, Golub & LeVeque's pairwise update (the mean and sum of squared deviations
    of each batch, then of the union), which avoids the cancellation of summing x and x^2.
    """

    def __init__(self):
        self.count, self.mean, self.m2 = 0, None, None

    def add(self, rows):
        rows = np.asarray(rows, np.float64)
        if len(rows) == 0:
            return self
        mean = rows.mean(axis=0)
        m2 = ((rows - mean) ** 2).sum(axis=0)
        if self.count == 0:
            self.count, self.mean, self.m2 = len(rows), mean, m2
            return self
        total = self.count + len(rows)
        delta = mean - self.mean
        self.mean = self.mean + delta * (len(rows) / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * len(rows) / total)
        self.count = total
        return self

    @property
    def variance(self):
        """The population variance (numpy's var, ddof=0)."""
        if self.count == 0:
            raise ValueError("variance of no rows")
        return self.m2 / self.count
