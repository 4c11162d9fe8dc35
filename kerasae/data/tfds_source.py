"""tfds:NAME[/CONFIG][:VERSION]: a tensorflow-datasets dataset, read through the builder's `as_dataset`.

The images stay encoded (tfds.decode.SkipDecoding) until the pipeline decodes them, as for TFRecord
shards; nothing goes through numpy. Without a "test" split, the last 10% of "train" is the test set.
"""

import tensorflow as tf

from kerasae.data.arrays import DataError
from kerasae.data.streams import Split, StreamedData, choose_shape


def open_tfds(name: str, data_dir=None, image_size=None, color_mode=None, log=print) -> StreamedData:
    """Downloads and prepares the dataset into `data_dir` if needed; offline, that fails and the
    user is told to point --data-dir at a prepared copy."""
    import tensorflow_datasets as tfds  # heavy, and only needed here

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DataError(f"unknown tensorflow-datasets dataset {name!r} (see tfds.list_builders())") from e
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
    image = features.get("image")
    if not isinstance(image, tfds.features.Image):
        raise DataError(f"tfds:{name} has no 'image' feature (features: {list(features)})")
    has_labels = isinstance(features.get("label"), tfds.features.ClassLabel)
    splits = builder.info.splits  # empty under tfds.testing.mock_data: then any split name is accepted
    if splits and "train" not in splits:
        raise DataError(f"tfds:{name} has no 'train' split (splits: {list(splits)})")
    train_name, test_name = ("train", "test") if "test" in splits else ("train[:90%]", "train[90%:]")

    def reader(split):
        def records():
            ds = builder.as_dataset(split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
            return ds.map(lambda ex: (ex["image"], ex["label"] if has_labels else tf.constant(-1, tf.int64)))
        return records

    def count(split):
        try:
            n = builder.info.splits[split].num_examples
        except (KeyError, ValueError):
            n = None
        if not n:  # unknown (mock data): count them
            n = int(reader(split)().reduce(0, lambda c, _: c + 1))
        if not n:
            raise DataError(f"tfds:{name} split {split!r} is empty")
        return n

    height, width, channels = image.shape
    if (height is None or width is None) and image_size is None:
        raise DataError(f"tfds:{name} has images of different sizes; pass --image-size H W")
    shape = choose_shape(_np_shape(height, width, channels), image_size,
                         color_mode or ("grayscale" if channels == 1 else "rgb"), None, f"tfds:{name}")
    train, test = (Split(shape, count(s), records=reader(s), has_labels=has_labels) for s in (train_name, test_name))
    classes = tuple(features["label"].names) if has_labels else None
    return StreamedData(builder.name, train, test, source=f"tfds:{name}", class_names=classes)


def _np_shape(height, width, channels):
    import numpy as np

    return np.array([[height or 1, width or 1, channels or 3]])
