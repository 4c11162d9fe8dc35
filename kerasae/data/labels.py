"""Class labels: how many classes a dataset's labels name, and a check that keeps every label in range.

tf.one_hot turns a label outside [0, num_classes) (or TFRecord's -1 for a record without one) into an all-zero
vector, so a conditional model would train on it silently. Arrays are checked eagerly (`num_classes`), streamed
splits in the graph, batch by batch (`StreamLabels`, `check_in_graph`).
"""

import dataclasses

import numpy as np
import tensorflow as tf

from kerasae.data.arrays import DataError
from kerasae.data.tuning import untuned

#: The start of every out-of-range label message (also how training recognises the in-graph error).
LABEL_ERROR = "labels must be in [0, num_classes="


@dataclasses.dataclass(frozen=True)
class StreamLabels:
    """make_dataset's `labels` for a streamed split that a model of `num_classes` classes trains on: each label is
    checked in the graph and a bad one stops the stream with an error naming `split`, the value and (image files)
    the file."""

    num_classes: int
    split: str = "streamed"


def num_classes(data) -> int | None:
    """How many classes the labels of `data` (ImageData or StreamedData) name; None when it has none.

    A folder's class subfolders, tfds' ClassLabel names and a conversion's recorded names give the count;
    otherwise it is the largest label + 1, read from the labels alone (records are parsed, images not decoded).
    A negative label is a DataError naming the split and the value (-1: a record without a label).
    """
    if data.streamed:
        if not (data.train.has_labels and data.test.has_labels):
            return None
        if data.class_names:
            return len(data.class_names)
        splits = (("train", data.train), ("test", data.test))
        ranges = {name: _stream_range(split) for name, split in splits}
    else:
        if data.y_train is None or data.y_test is None:
            return None
        ranges = {name: (int(y.min()), int(y.max())) if len(y) else (0, -1)
                  for name, y in (("train", data.y_train), ("test", data.y_test))}
    for name, (low, _) in ranges.items():
        if low < 0:
            where = " (a record without a label reads as -1)" if low == -1 and data.streamed else ""
            raise DataError(f"{getattr(data, 'source', data.name)}: {name} split: labels must be class indices "
                            f">= 0, found {low}{where}")
    return max(high for _, high in ranges.values()) + 1


def _stream_range(split):
    """(min, max) of a streamed split's labels: the folder scan's array, or one pass over the records."""
    if split.paths is not None:
        return (int(split.labels.min()), int(split.labels.max())) if split.count else (0, -1)
    low, high = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    for labels in untuned(split.encoded().map(lambda item, label: label).batch(4096)).as_numpy_iterator():
        low, high = min(low, int(labels.min())), max(high, int(labels.max()))
    return low, high


def check_in_graph(labels, items, check: StreamLabels, from_file: bool):
    """`labels` [B] unchanged, or an InvalidArgumentError "SPLIT split: labels must be in [0, num_classes=K),
    found V (FILE)" for the first bad one (FILE when `items` are file paths)."""
    bad = tf.logical_or(labels < 0, labels >= check.num_classes)
    first = tf.argmax(tf.cast(bad, tf.int32))
    message = tf.strings.join([
        f"{check.split} split: {LABEL_ERROR}{check.num_classes}), found ",
        tf.strings.as_string(tf.gather(labels, first)),
        *((" (", tf.gather(items, first), ")") if from_file else ())])
    with tf.control_dependencies([tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)), [message])]):
        return tf.identity(labels)


def message_of(error_message: str) -> str | None:
    """The label message inside a tf.data error (from `check_in_graph`), else None."""
    start = error_message.find("assertion failed: [")
    if start < 0 or LABEL_ERROR not in error_message[start:]:
        return None
    line = error_message[start + len("assertion failed: ["):].splitlines()[0]
    return line[:line.rfind("]")] if "]" in line else line
