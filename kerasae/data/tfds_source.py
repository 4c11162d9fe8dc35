"""tfds:NAME[/CONFIG][:VERSION]: a tensorflow-datasets dataset, read from its prepared shard files.

A split is the split's shard files with the record counts tfds recorded, read in file order (the order of
tfds' absolute indices, "train[a:b]") and parsed with the dataset's own features, exactly like TFRecord
shards: a split starting part-way skips whole files unopened and records unparsed, and multi-worker
training deals the files to the workers. The images stay encoded (tfds.decode.SkipDecoding) until the
pipeline decodes them; nothing goes through numpy. Without a "test" split, the last 10% of "train" (tfds'
"train[90%:]") is the test set. Data without recorded shards (tfds.testing.mock_data) is read through
`as_dataset`.
"""

import dataclasses

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
    if splits:
        train, test = _shard_splits(builder, name, has_labels)
    else:
        train, test = _mocked_splits(builder, name, has_labels)
    height, width, channels = image.shape
    if (height is None or width is None) and image_size is None:
        raise DataError(f"tfds:{name} has images of different sizes; pass --image-size H W")
    shape = choose_shape(_np_shape(height, width, channels), image_size,
                         color_mode or ("grayscale" if channels == 1 else "rgb"), None, f"tfds:{name}")
    train, test = (dataclasses.replace(split, image_shape=shape) for split in (train, test))
    classes = tuple(features["label"].names) if has_labels else None
    return StreamedData(builder.name, train, test, source=f"tfds:{name}", class_names=classes)


def _shard_splits(builder, name, has_labels):
    """(train, test) Splits over the shard files of the "train" (and "test") split."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import file_adapters

    file_format = file_adapters.FileFormat.from_value(builder.info.file_format or file_adapters.DEFAULT_FILE_FORMAT)
    adapter = file_adapters.ADAPTER_FOR_FORMAT[file_format]
    if not adapter.SUPPORTS_TF_DATA:
        raise DataError(f"tfds:{name} is prepared as {file_format.value} files, which tf.data cannot read; "
                        f"prepare it as TFRecord (`tfds build {name} --file_format tfrecord`)")
    features = builder.info.features
    wanted = {"image": features["image"], **({"label": features["label"]} if has_labels else {})}
    parser = tfds.features.FeaturesDict(wanted)  # parses only these features of each record
    skip_decoding = {"image": tfds.decode.SkipDecoding()}

    def parse(record):
        example = parser.deserialize_example(record, decoders=skip_decoding)
        return example["image"], example["label"] if has_labels else tf.constant(-1, tf.int64)

    def whole(split):
        shards = tuple((str(f.filename), int(f.take)) for f in builder.info.splits[split].file_instructions)
        count = sum(n for _, n in shards)
        if not count:
            raise DataError(f"tfds:{name} split {split!r} is empty")
        return Split((0, 0, 0), count, shards=shards, parse=parse, has_labels=has_labels,
                     read_file=None if file_format == file_adapters.FileFormat.TFRECORD else adapter.make_tf_data)

    if "test" in builder.info.splits:
        return whole("train"), whole("test")
    train = whole("train")
    n_train = builder.info.splits["train[:90%]"].num_examples  # tfds' own rounding of the 90% cut
    if not 0 < n_train < train.count:
        raise DataError(f"tfds:{name} split 'train' holds {train.count} example(s): too few to hold out 10% "
                        "as the test set")
    return train.split_first(n_train)


def _mocked_splits(builder, name, has_labels):
    """(train, test) Splits read through `as_dataset`, for data without recorded shards (mock data)."""
    import tensorflow_datasets as tfds

    def reader(split):
        def records():
            ds = builder.as_dataset(split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
            return ds.map(lambda ex: (ex["image"], ex["label"] if has_labels else tf.constant(-1, tf.int64)))
        return records

    def counted(split):
        count = int(reader(split)().reduce(0, lambda c, _: c + 1))
        if not count:
            raise DataError(f"tfds:{name} split {split!r} is empty")
        return Split((0, 0, 0), count, records=reader(split), has_labels=has_labels)

    return counted("train[:90%]"), counted("train[90%:]")  # mock data has no "test" split


def _np_shape(height, width, channels):
    import numpy as np

    return np.array([[height or 1, width or 1, channels or 3]])
