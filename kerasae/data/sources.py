"""Dataset specs -> data: `open_dataset` (in memory or streamed, by size or as asked) and `load_dataset`
(always in memory)."""

import dataclasses
import numbers

import tensorflow as tf

from kerasae.data.arrays import DataError, ImageData
from kerasae.data.folders import open_image_folder
from kerasae.data.idx import load_idx_folder, load_mnist, load_npz
from kerasae.data import streams
from kerasae.data.streams import StreamedData
from kerasae.data.tfds_source import open_tfds
from kerasae.data.tfrecord import open_tfrecord
from kerasae.options import COLOR_MODES, DATA_MODES

SPEC_FORMS = ("mnist", "tfds:NAME[/CONFIG][:VERSION]", "idx:DIR", "images:DIR", "tfrecord:DIR|GLOB", "npz:FILE")
_STREAMABLE = ("tfds", "images", "tfrecord")


def open_dataset(spec: str = "mnist", *, data_dir: str | None = None, image_size: tuple[int, int] | None = None,
                 color_mode: str | None = None, mode: str = "auto", skip_bad_images: bool = False,
                 log=print) -> ImageData | StreamedData:
    """The dataset named by `spec` (one of `SPEC_FORMS`), in memory (`ImageData`) or streamed (`StreamedData`).

    `mode` "memory" decodes everything into arrays, "stream" reads images while training, "auto" streams
    file sources (images, tfrecord, tfds) whose float32 pixels would pass IN_MEMORY_LIMIT_BYTES.
    mnist, idx and npz are arrays already and always in memory. `image_size` (H, W) resizes
    (antialiased) and `color_mode` ("grayscale"/"rgb", None keeps the channels) converts channels, for
    every form. `data_dir` is the tensorflow-datasets data directory. Unreadable images raise a
    DataError naming the first, or with `skip_bad_images` are left out (and `log`ged).
    """
    if image_size is not None:
        if len(image_size) != 2 or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0
                                           for s in image_size):
            raise DataError(f"--image-size must be two positive integers, got {image_size!r}")
        image_size = tuple(int(s) for s in image_size)
    if color_mode not in (None, *COLOR_MODES):
        raise DataError(f"--color-mode must be one of {COLOR_MODES}, got {color_mode!r}")
    if mode not in DATA_MODES:
        raise DataError(f"--data-mode must be one of {DATA_MODES}, got {mode!r}")
    kind, _, arg = spec.partition(":")
    if kind in _STREAMABLE and arg:
        if kind == "images":
            data = open_image_folder(arg, image_size, color_mode, skip_bad_images, log)
        elif kind == "tfrecord":
            data = open_tfrecord(arg, image_size, color_mode, skip_bad_images, log)
        elif skip_bad_images:  # tfds records are read as tensorflow-datasets prepared them, never scanned
            raise DataError(f"--skip-bad-images applies to images: and tfrecord: datasets (which kerasae scans), "
                            f"not to tfds:{arg}; drop the flag")
        else:
            data = open_tfds(arg, data_dir, image_size, color_mode, log)
        # streams.IN_MEMORY_LIMIT_BYTES read now, not bound at import, so that setting it takes effect
        if mode == "memory" or (mode == "auto" and data.nbytes() <= streams.IN_MEMORY_LIMIT_BYTES):
            return data.to_memory()
        return data
    if spec == "mnist":
        data = load_mnist()
    elif kind == "idx" and arg:
        data = load_idx_folder(arg)
    elif kind == "npz" and arg:
        data = load_npz(arg)
    else:
        raise DataError(f"unknown dataset spec {spec!r}; use one of: {', '.join(SPEC_FORMS)}")
    if mode == "stream":
        raise DataError(f"--data-mode stream: {spec} is read into memory whole; convert it to TFRecord shards "
                        "(scripts/convert.py) to stream it")
    if image_size is None and color_mode is None:
        return data

    def convert(x):
        return resize_and_recolor(tf.convert_to_tensor(x), image_size, color_mode).numpy()

    return dataclasses.replace(data, x_train=convert(data.x_train), x_test=convert(data.x_test))


def load_dataset(spec: str = "mnist", *, data_dir: str | None = None, image_size: tuple[int, int] | None = None,
                 color_mode: str | None = None, max_train_samples: int | None = None,
                 max_test_samples: int | None = None, skip_bad_images: bool = False) -> ImageData:
    """`open_dataset` into memory: float32 arrays of the first `max_*_samples` images of each split."""
    data = open_dataset(spec, data_dir=data_dir, image_size=image_size, color_mode=color_mode, mode="auto",
                        skip_bad_images=skip_bad_images)
    return data.take(max_train_samples, max_test_samples).to_memory()


def resize_and_recolor(images, image_size, color_mode):
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
