"""Labels checked in every mode, test splits in a seeded random order, record splits that skip whole shards, and
workers that read only their own shards.

Expectations come from the files the tests write (class folders, records with known labels and values), never from
the code under test.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import kerasae
from kerasae import cli
from kerasae import data as data_lib
from kerasae.config import TrainConfig
from kerasae.data import DataError, Split, StreamLabels, make_dataset, open_dataset
from kerasae.training.core import prepare


def save_png(path, value, size=8):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


def class_folder(root, classes, per_class, split_dirs=("train", "test")):
    """root/SPLIT/cNN/i.png; image value 10 * class + i, so a pixel tells the class."""
    for split, n in zip(split_dirs, per_class):
        for c in range(classes):
            for i in range(n):
                save_png(root / split / f"c{c:02d}" / f"{i}.png", 10 * c + i)
    return root


def example(features):
    def feature(v):
        if isinstance(v, bytes):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))
    return tf.train.Example(features=tf.train.Features(
        feature={k: feature(v) for k, v in features.items()})).SerializeToString()


def png_bytes(value):
    return tf.io.encode_png(np.full((8, 8, 1), value, np.uint8)).numpy()


def write_records(path, records):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for r in records:
            writer.write(r)
    return path


# ---- 1. labels ------------------------------------------------------------------------------------------------

def test_a_streamed_cvae_on_a_folder_with_more_classes_than_the_model_exits_2_before_training(tmp_path, capsys):
    root = class_folder(tmp_path / "twelve", 12, (3, 1))
    out = tmp_path / "run"
    argv = ["--arch", "cvae", "--dataset", f"images:{root}", "--data-mode", "stream", "--num-classes", "10",
            "--epochs", "1", "--out", str(out), "--verbose", "0"]
    with pytest.raises(SystemExit) as exc:
        cli.train_main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("train.py: error: ") and "12 classes" in err[-1] and "num_classes=10" in err[-1]
    assert not out.exists()  # refused before the run directory (and any training)


def test_a_new_cvae_takes_the_folders_class_count(tmp_path):
    root = class_folder(tmp_path / "twelve", 12, (3, 1))
    prepared = prepare(TrainConfig(preset="cvae-mlp", dataset=f"images:{root}", data_mode="stream",
                                   model_kwargs={"hidden_units": (8,), "latent_dim": 2}, validation_size=2,
                                   out=str(tmp_path / "run"), verbose=0))
    assert prepared.model.num_classes == 12  # the 12 folders written above


def test_streamed_labels_are_checked_in_the_graph_naming_split_value_and_file(tmp_path):
    paths = np.array([str(save_png(tmp_path / f"{i}.png", i)) for i in range(6)])
    good = Split((8, 8, 1), 6, paths=paths, labels=np.array([0, 1, 2, 0, 1, 2]), has_labels=True)
    labels = [y for _, y in make_dataset(good, 3, labels=StreamLabels(3, "train")).as_numpy_iterator()]
    assert np.concatenate(labels).tolist() == [0, 1, 2, 0, 1, 2]
    bad = Split((8, 8, 1), 6, paths=paths, labels=np.array([0, 1, 2, 0, 7, 2]), has_labels=True)
    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        list(make_dataset(bad, 3, labels=StreamLabels(3, "val")))
    message = data_lib.labels.message_of(err.value.message)
    assert message == f"val split: labels must be in [0, num_classes=3), found 7 ({paths[4]})"


def _labelled_shards(directory, labels):
    """One shard train.tfrecord and one test.tfrecord; `labels[split]` per record (None: no label feature)."""
    for split, values in labels.items():
        write_records(directory / f"{split}.tfrecord",
                      [example({"image": png_bytes(i), **({} if y is None else {"label": y})})
                       for i, y in enumerate(values)])
    return directory


def test_a_record_without_a_label_is_refused_before_training(tmp_path):
    shards = _labelled_shards(tmp_path / "rec", {"train": [0, 1, 2, None, 1, 0, 2, 1], "test": [0, 1]})
    with pytest.raises(DataError, match=r"train split: labels must be class indices >= 0, found -1"):
        prepare(TrainConfig(preset="cvae-mlp", dataset=f"tfrecord:{shards}", data_mode="stream",
                            validation_size=2, out=str(tmp_path / "run"), verbose=0))
    assert not (tmp_path / "run").exists()


def test_a_label_past_the_recorded_class_count_stops_training_in_one_line(tmp_path):
    """The conversion records 2 class names, the records hold label 2: the graph check names it."""
    shards = _labelled_shards(tmp_path / "rec", {"train": [0, 1, 0, 1, 2, 0, 1, 0], "test": [0, 1]})
    (shards / "kerasae_dataset.json").write_text(json.dumps({
        "name": "rec", "image_shape": [8, 8, 1], "class_names": ["a", "b"],
        "files": {f.name: {"count": n, "bytes": f.stat().st_size}
                  for f, n in ((shards / "train.tfrecord", 8), (shards / "test.tfrecord", 2))}}))
    config = TrainConfig(preset="cvae-mlp", dataset=f"tfrecord:{shards}", data_mode="stream", epochs=1,
                         batch_size=4, validation_size=2, model_kwargs={"hidden_units": (8,), "latent_dim": 2},
                         out=str(tmp_path / "run"), verbose=0)
    with pytest.raises(DataError) as err:
        kerasae.train(config)
    assert "train split: labels must be in [0, num_classes=2), found 2" in str(err.value)
    assert "\n" not in str(err.value)
