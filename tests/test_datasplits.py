"""Labels checked in every mode, test splits in a seeded random order, record splits that skip whole shards, and
workers that read only their own shards.

Expectations come from the files the tests write (class folders, records with known labels and values), never from
the code under test.
"""

import dataclasses
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

from test_streaming import example, write_records  # a serialized tf.train.Example; shards of them


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


def png_bytes(value):
    return tf.io.encode_png(np.full((8, 8, 1), value, np.uint8)).numpy()


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


def test_num_classes_is_a_cvae_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.train_main(["--arch", "vae", "--num-classes", "5"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "train.py: error: --num-classes applies to cvae presets, not vae-mlp (vae)")
    with pytest.raises(SystemExit) as exc:
        cli.train_main(["--arch", "cvae", "--num-classes", "0"])
    assert exc.value.code == 2


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


# ---- 2. test splits in a seeded random order ------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["stream", "memory"])
def test_max_test_samples_20_of_a_class_foldered_test_split_holds_at_least_5_classes(tmp_path, mode):
    """What evaluate reads (run_data): 10 classes x 10 test images; sorted by class, the first 20 would be 2."""
    from kerasae import evaluate

    root = class_folder(tmp_path / "ten", 10, (2, 10))
    run = tmp_path / "run"
    run.mkdir()
    config = TrainConfig(preset="vae-mlp", dataset=f"images:{root}", data_mode=mode, max_test_samples=20,
                         validation_size=2)
    (run / "config.json").write_text(json.dumps({"train": config.to_json()}))
    data, _ = evaluate.run_data(run)
    assert len(data.y_test) == 20
    assert len(set(data.y_test.tolist())) >= 5
    # each label is its image's class (the pixel value is 10 * class + i)
    assert (np.floor(data.x_test[:, 0, 0, 0] * 255 / 10 + 1e-3).astype(int) == data.y_test).all()
    again, _ = evaluate.run_data(run)  # seeded: the same order every time
    np.testing.assert_array_equal(again.x_test, data.x_test)


# ---- 4. record splits skip whole shards and parse only what they read ------------------------------------------

def _raw_values(paths):
    """The pixel value of every record of `paths`, in file order, read with protobuf and PIL alone."""
    import io

    values = []
    for path in paths:
        for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            image = tf.train.Example.FromString(record).features.feature["image"].bytes_list.value[0]
            values.append(int(np.asarray(Image.open(io.BytesIO(image)))[0, 0]))
    return values


def test_a_record_split_that_starts_late_opens_no_earlier_shard_and_parses_only_its_records(tmp_path):
    x = (np.arange(60, dtype=np.float32) * 4 / 255).reshape(60, 1, 1, 1) * np.ones((1, 8, 8, 1), np.float32)
    source = data_lib.ImageData("sixty", x[:50], None, x[50:], None)
    out = tmp_path / "shards"
    data_lib.write_tfrecords(source, out, shard_bytes=400, log=lambda *a: None)  # a few records per shard
    shards = sorted(out.glob("train-*.tfrecord"))
    assert len(shards) >= 5
    values = _raw_values(shards)  # the records in the order the split streams them
    opened = open_dataset(f"tfrecord:{out}", mode="stream")
    train, val, _, _ = opened.split_validation(12)  # validation: the last 12 training records
    assert [split.count for split in (train, val)] == [38, 12]

    first_val_shard = np.searchsorted(np.cumsum([sum(1 for _ in tf.data.TFRecordDataset(str(s))) for s in shards]),
                                      38, side="right")
    assert first_val_shard >= 1
    for shard in shards[:first_val_shard]:  # the shards before the validation split: never opened
        shard.unlink()
    x_val, _ = val.to_arrays()
    assert np.rint(x_val[:, 0, 0, 0] * 255).astype(int).tolist() == values[38:]

    parsed = []

    def counting(record):
        seen = tf.numpy_function(lambda: (parsed.append(1), np.int64(0))[1], [], tf.int64)  # once per record
        with tf.control_dependencies([seen]):
            return tuple(tf.identity(t) for t in val.parse(record))

    list(dataclasses.replace(val, parse=counting).encoded().as_numpy_iterator())
    assert len(parsed) == 12  # the validation split's records, none of the 38 before them


# ---- 6. workers read only their own shards ---------------------------------------------------------------------

def _counting(split):
    """`split` with a parse that records the pixel value of every record it parses."""
    parsed = []

    def parse(record):
        image, label = split.parse(record)
        value = tf.cast(tf.io.decode_png(image)[0, 0, 0], tf.int64)
        seen = tf.numpy_function(lambda v: (parsed.append(int(v)), np.int64(0))[1], [value], tf.int64)
        with tf.control_dependencies([seen]):
            return tf.identity(image), tf.identity(label)

    return dataclasses.replace(split, parse=parse), parsed


@pytest.mark.parametrize("repeat", [False, True])
def test_each_worker_reads_only_its_own_shards(tmp_path, repeat):
    """4 train shards of 6 records (values 4 * i), 2 workers, global batch 4: worker w owns shards w and w + 2."""
    for s in range(4):
        write_records(tmp_path / "rec" / f"train-{s}.tfrecord",
                      [example({"image": png_bytes(4 * (6 * s + i))}) for i in range(6)])
    write_records(tmp_path / "rec" / "test.tfrecord", [example({"image": png_bytes(250)})] * 2)
    split = open_dataset(f"tfrecord:{tmp_path / 'rec'}", mode="stream").train
    assert split.count == 24
    seen = {}
    for worker in (0, 1):
        own = {4 * (6 * s + i) for s in (worker, worker + 2) for i in range(6)}
        ds = make_dataset(split, 4, shuffle=True, seed=3, num_workers=2, worker_index=worker, repeat=repeat)
        batches = [np.rint(b[:, 0, 0, 0] * 255).astype(int) for b in ds.take(6).as_numpy_iterator()]
        assert [len(b) for b in batches] == [2] * 6  # its half of each global batch of 4, 24 / 4 = 6 steps
        seen[worker] = np.concatenate(batches)
        assert set(seen[worker]) == own  # each of its 12 records once in the epoch
        counted, parsed = _counting(split)
        list(make_dataset(counted, 4, shuffle=True, seed=3, num_workers=2, worker_index=worker,
                          repeat=repeat).take(6))
        assert parsed and set(parsed) <= own  # nothing parsed from the other worker's shards
    assert not set(seen[0]) & set(seen[1])


def test_uneven_shards_fall_back_to_sharing_each_batch(tmp_path):
    """Shards of 10 and 2 records for 2 workers: dealt by file, one worker would hold 2 of its 6 per epoch, so
    both read both shards and take halves of each global batch."""
    for s, n in enumerate((10, 2)):
        write_records(tmp_path / "rec" / f"train-{s}.tfrecord",
                      [example({"image": png_bytes(4 * (10 * s + i))}) for i in range(n)])
    write_records(tmp_path / "rec" / "test.tfrecord", [example({"image": png_bytes(250)})] * 2)
    split = open_dataset(f"tfrecord:{tmp_path / 'rec'}", mode="stream").train
    seen = []
    for worker in (0, 1):
        ds = make_dataset(split, 4, shuffle=True, seed=3, num_workers=2, worker_index=worker)
        seen.append([int(v) for b in ds.as_numpy_iterator() for v in np.rint(b[:, 0, 0, 0] * 255)])
    assert sorted(seen[0] + seen[1]) == [4 * i for i in range(10)] + [40, 44]  # every record once per epoch
