"""File-backed datasets read while training: `Split` (one split, in a fixed order), `StreamedData` (a
train/test pair), image decoding, and the scan that finds unreadable images before training starts.

A split is either image files (one path per image) or records (a tf.data stream of encoded images,
e.g. TFRecord shards or a tfds split). Either way it has a known count and a fixed order, so `head`,
the validation split and `--max-train-samples` mean the same thing for every source; nothing is
decoded until a pipeline (kerasae.data.pipeline) reads it.
"""

import dataclasses
import re
from typing import Callable

import numpy as np
import tensorflow as tf

from kerasae.data.arrays import DataError, ImageData, as_labels
from kerasae.data.tuning import untuned

#: Above this many bytes of float32 pixels (train + test), data_mode "auto" streams instead of loading.
IN_MEMORY_LIMIT_BYTES = 1 << 30
_SCAN_BATCH = 256


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """`count` images of shape `image_shape`, in a fixed order, decoded when read.

    Image files: `paths` (labels from class folders in `labels`). Records: a stream of (encoded image,
    int64 label or -1) in a fixed order, either record files, `shards` ((path, record count), ...) read
    in order by `read_file` (TFRecordDataset when None) and parsed by `parse` (TFRecord shards, tfds
    splits), or `records()`, a tf.data stream (tfds data without recorded shards, as under mock_data);
    this split is `count` of them from position `start` on, leaving out the positions in `skip`
    (unreadable images). Shards before `start` are not opened, and records skipped within a shard are not
    parsed.
    """

    image_shape: tuple
    count: int
    paths: np.ndarray | None = None
    labels: np.ndarray | None = None
    records: Callable | None = None
    start: int = 0
    skip: tuple = ()
    has_labels: bool = False
    shards: tuple = ()
    parse: Callable | None = None
    read_file: Callable | None = None

    def __len__(self):
        return self.count

    def head(self, n: int | None) -> "Split":
        """The first `n` images (all when n is None or larger)."""
        if n is None or n >= self.count:
            return self
        if self.paths is not None:
            return dataclasses.replace(self, count=n, paths=self.paths[:n],
                                       labels=None if self.labels is None else self.labels[:n])
        return dataclasses.replace(self, count=n)

    def split_first(self, k: int) -> tuple["Split", "Split"]:
        """(the first k images, the rest)."""
        if self.paths is not None:
            rest = dataclasses.replace(self, count=self.count - k, paths=self.paths[k:],
                                       labels=None if self.labels is None else self.labels[k:])
            return self.head(k), rest
        position = self.start + k  # the position after k readable records
        for s in sorted(self.skip):
            if self.start <= s < position:
                position += 1
        return self.head(k), dataclasses.replace(self, start=position, count=self.count - k)

    def encoded(self) -> tf.data.Dataset:
        """(item, label) in order: item is a file path (image files) or the encoded image (records)."""
        if self.paths is not None:
            labels = self.labels if self.labels is not None else np.full(self.count, -1, np.int64)
            return tf.data.Dataset.from_tensor_slices((self.paths.astype(str), labels))
        if self.shards:
            return self.read_pieces(self.pieces())
        ds = self._drop_skipped(self.records().skip(self.start).enumerate(self.start))
        return ds.map(lambda i, record: record).take(self.count)

    def _drop_skipped(self, ds):
        if not self.skip:
            return ds
        skip = tf.constant(sorted(self.skip), tf.int64)
        return ds.filter(lambda i, record: tf.logical_not(tf.reduce_any(tf.equal(i, skip))))

    def pieces(self) -> list[tuple[str, int, int, int]]:
        """(path, first record in the file, records, position in the stream) of each shard this split reads."""
        first, end = self.start, self.start + self.count
        for s in sorted(self.skip):  # each unreadable position inside the split moves its end one further
            if first <= s < end:
                end += 1
        out, offset = [], 0
        for path, n in self.shards:
            low, high = max(first, offset), min(end, offset + n)
            if low < high:
                out.append((str(path), low - offset, high - low, low))
            offset += n
        return out

    def read_pieces(self, pieces, shuffle=False, seed=None) -> tf.data.Dataset:
        """(encoded image, label) of `pieces` (see `pieces`), in order or, with `shuffle`, with the pieces
        in an order (seeded by `seed`) reshuffled on each iteration. Only the records read are parsed."""
        paths, lows, sizes, positions = (list(column) for column in zip(*pieces)) if pieces else ([],) * 4
        ds = tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string), *(
            tf.constant(column, tf.int64) for column in (lows, sizes, positions))))
        if shuffle:
            ds = ds.shuffle(len(pieces), seed=seed, reshuffle_each_iteration=True)

        read_file = self.read_file or tf.data.TFRecordDataset

        def piece(path, low, size, position):
            raw = read_file(path).skip(low).take(size)  # raw bytes: skipping parses nothing
            return tf.data.Dataset.zip(tf.data.Dataset.range(position, position + size), raw)

        parse = self.parse
        return self._drop_skipped(ds.flat_map(piece)).map(lambda i, record: parse(record))

    def decode_fn(self):
        """item -> float32 image [H, W, C] in [0, 1], resized and converted to `image_shape`."""
        shape, from_file = self.image_shape, self.paths is not None

        def decode(item):
            return decode_image(tf.io.read_file(item) if from_file else item, shape)

        return decode

    def to_arrays(self, batch_size=256) -> tuple[np.ndarray, np.ndarray | None]:
        """Decode every image into memory: (float32 [N, H, W, C], int64 labels or None)."""
        decode = self.decode_fn()
        ds = self.encoded().map(lambda item, label: (decode(item), label), num_parallel_calls=tf.data.AUTOTUNE)
        x = np.empty((self.count, *self.image_shape), np.float32)
        y = np.empty(self.count, np.int64)
        i = 0
        for images, labels in untuned(ds.batch(batch_size).prefetch(2)).as_numpy_iterator():
            x[i:i + len(images)], y[i:i + len(images)] = images, labels
            i += len(images)
        if i != self.count:
            raise DataError(f"expected {self.count} images but read {i}: did the files change while reading?")
        return x, (y if self.has_labels else None)


@dataclasses.dataclass(frozen=True, eq=False)
class StreamedData:
    """A train/test pair of `Split`s: the streamed counterpart of `ImageData`."""

    name: str
    train: Split
    test: Split
    source: str
    class_names: tuple | None = None
    skipped: tuple = ()  # files (or "file#record") left out as unreadable, under skip_bad_images

    streamed = True

    @property
    def image_shape(self):
        return tuple(self.train.image_shape)

    @property
    def num_train(self):
        return self.train.count

    def take(self, max_train=None, max_test=None) -> "StreamedData":
        return dataclasses.replace(self, train=self.train.head(max_train), test=self.test.head(max_test))

    def nbytes(self) -> int:
        """Bytes the decoded float32 pixels of both splits would take in memory."""
        return (self.train.count + self.test.count) * int(np.prod(self.image_shape)) * 4

    def to_memory(self) -> ImageData:
        """Decode everything into an `ImageData` (same images, same order)."""
        x_train, y_train = self.train.to_arrays()
        x_test, y_test = self.test.to_arrays()
        return ImageData(self.name, x_train, as_labels(y_train, "y_train"), x_test, as_labels(y_test, "y_test"),
                         skipped=self.skipped)

    def split_validation(self, size: int):
        """(train split, validation split, test split, test labels=None): validation is the last `size`
        training images, as for arrays, so memory and streaming hold out the same images."""
        if not 0 <= size < self.train.count:
            raise DataError(f"validation size must be in [0, {self.train.count}) for {self.train.count} "
                            f"training examples, got {size}")
        train, val = self.train.split_first(self.train.count - size)
        return train, val, self.test, None


def decode_image(contents, image_shape):
    """Encoded PNG/JPEG/BMP/GIF bytes -> float32 [H, W, C] in [0, 1] of `image_shape`.

    Channels are converted by the decoder (grayscale <-> RGB, alpha dropped); other sizes are resized
    with antialiasing, so folders of mixed sizes and colour modes feed one model.
    """
    height, width, channels = image_shape

    def decode(n):
        return tf.io.decode_image(contents, channels=n, dtype=tf.float32, expand_animations=False)

    if channels == 1:  # the GIF and BMP decoders cannot give one channel: convert their RGB
        magic = tf.strings.substr(contents, 0, 2)
        rgb_only = tf.logical_or(tf.equal(magic, b"GI"), tf.equal(magic, b"BM"))
        image = tf.cond(rgb_only, lambda: tf.image.rgb_to_grayscale(decode(3)), lambda: decode(1))
    else:
        image = decode(channels)
    same = tf.reduce_all(tf.equal(tf.shape(image)[:2], [height, width]))
    image = tf.cond(same, lambda: image,
                    lambda: tf.clip_by_value(tf.image.resize(image, [height, width], antialias=True), 0.0, 1.0))
    return tf.ensure_shape(image, image_shape)


def scan(encoded: tf.data.Dataset, from_file: bool, count: int):
    """Decode every item once: (shapes [count, 3] int, -1 rows for unreadable items).

    Runs in parallel inside tf.data; a broken item is dropped by `ignore_errors` and so shows up as a
    missing index, which is how the caller learns which file or record it was.
    """
    def shape(i, item, label):
        contents = tf.io.read_file(item) if from_file else item
        return i, tf.shape(tf.io.decode_image(contents, expand_animations=False))

    ds = encoded.enumerate().map(lambda i, pair: shape(i, *pair), num_parallel_calls=tf.data.AUTOTUNE,
                                 deterministic=False).ignore_errors().batch(_SCAN_BATCH)
    shapes = np.full((count, 3), -1, np.int64)
    for index, dims in untuned(ds).as_numpy_iterator():
        keep = index < count
        shapes[index[keep]] = dims[keep]
    return shapes


def first_unreadable(data: StreamedData) -> str | None:
    """The first file (or "split record i") of `data` that does not decode now, if any: for naming an
    image that broke after the scan that opened the dataset. The files (or TFRecord shards) whose stat differs
    from the dataset index are decoded first; everything is decoded only when none of them is the culprit."""
    from kerasae.data import index  # index imports this module

    splits = (("train", data.train), ("test", data.test))
    if data.source.startswith("tfrecord:"):
        from kerasae.data import tfrecord  # tfrecord imports this module

        culprit = tfrecord.first_changed_unreadable(data.source[len("tfrecord:"):])
        if culprit:
            return culprit
    if data.source.startswith("images:"):
        for _, split in splits:
            chosen = index.changed_files(data.source[len("images:"):], split.paths)
            if len(chosen):
                paths = split.paths[chosen].astype(str)
                encoded = tf.data.Dataset.from_tensor_slices((paths, np.full(len(paths), -1, np.int64)))
                bad = np.flatnonzero(scan(encoded, True, len(paths))[:, 0] < 0)
                if len(bad):
                    return paths[bad[0]]
    for name, split in splits:
        from_file = split.paths is not None
        bad = np.flatnonzero(scan(split.encoded(), from_file, split.count)[:, 0] < 0)
        if len(bad):
            return str(split.paths[bad[0]]) if from_file else f"{name} record {int(bad[0])}"
    return None


def why_unreadable(contents_or_path, from_file: bool) -> str:
    """One line saying why an item does not decode (run eagerly, only for the few bad ones)."""
    try:
        contents = tf.io.read_file(contents_or_path) if from_file else tf.constant(contents_or_path)
        if int(tf.strings.length(contents)) == 0:
            return "empty file"
        tf.io.decode_image(contents, expand_animations=False)
    except tf.errors.OpError as err:
        return plain_error_message(err)
    return "it decodes now (did it change during the scan?)"


def plain_error_message(err):
    """An op error's message in one line, without TF's wrappers: the "Graph execution error" header and
    its traceback, "{{function_node ...}}", "[Op:DecodeImage] name:" and node annotations."""
    lines = [line for line in err.message.splitlines() if line.strip() and not line[0].isspace()
             and not line.startswith(("Graph execution error", "Detected at node", "<stack traces"))]
    line = lines[0] if lines else err.message.strip().splitlines()[0]
    line = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", line)
    line = re.sub(r"^Error in user-defined function .*? with iterator: \S+: ", "", line)
    return re.sub(r"\s*\[Op:\w+\].*$", "", line).strip() or line


def choose_shape(shapes, image_size, color_mode, default_size, culprit):
    """(H, W, C) for a split's scanned `shapes`: as configured, else what every image has."""
    good = shapes[shapes[:, 0] >= 0]
    if image_size is None:
        sizes = _unique_sizes(good)
        if len(sizes) == 1:
            image_size = tuple(int(s) for s in sizes[0])
        elif default_size is not None:
            image_size = default_size
        else:
            raise DataError(f"{culprit}: images have {len(sizes)} different sizes (e.g. "
                            f"{', '.join('x'.join(map(str, s)) for s in sizes[:3])}); pass --image-size H W")
    if color_mode is None:
        color_mode = "grayscale" if np.all(good[:, 2] <= 2) else "rgb"
    return (*image_size, 1 if color_mode == "grayscale" else 3)


def _unique_sizes(shapes):
    """np.unique(shapes[:, :2], axis=0), done in 1-D, which is ~10x faster: a folder's scan has a row per file."""
    keys = np.unique(shapes[:, 0] * (1 << 32) + shapes[:, 1])
    return np.stack([keys >> 32, keys & ((1 << 32) - 1)], axis=1)


def unreadable_error(culprit, bad, total, first, item, from_file) -> DataError:
    """The error for `bad` unreadable images of `total` (every split), naming the `first` and why it fails."""
    return DataError(f"{culprit}: {bad} of {total} images cannot be read; first {first}: "
                     f"{why_unreadable(item, from_file)} (fix or remove it, or pass --skip-bad-images)")


def drop_unreadable(split: Split, bad) -> Split:
    """`split` without its items at indices `bad` (counted from split.start, for records with no skips yet)."""
    if not len(bad):
        return split
    keep = np.ones(split.count, bool)
    keep[bad] = False
    if split.paths is not None:
        labels = None if split.labels is None else split.labels[keep]
        return dataclasses.replace(split, count=int(keep.sum()), paths=split.paths[keep], labels=labels)
    positions = tuple(int(split.start + i) for i in bad)
    return dataclasses.replace(split, count=int(keep.sum()), skip=tuple(split.skip) + positions)
