"""tfds splits read from their prepared shard files: a split starting part-way opens no earlier file and parses
no earlier record, the records are those of the files in order, and multi-worker training deals the files.

The datasets are real: a tiny GeneratorBasedBuilder prepared into several shard files, then opened by name from
those files. Expectations come from reading the files directly (raw TFRecords, in file order), never from the code
under test.
"""

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from kerasae.data import DataError, make_dataset, open_dataset
from kerasae.data import pipeline
from kerasae.data.streams import drop_unreadable

COUNT, SHARDS, CLASSES = 120, 6, 3  # files of 20 records: more than tfds' interleave block of 16


class KerasaeTinyShards(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """COUNT 4x4 grayscale images, image i of value 2 * i with label i % CLASSES; a small test split."""

    VERSION = tfds.core.Version("1.0.0")
    TEST = 12

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(4, 4, 1)), "label": tfds.features.ClassLabel(num_classes=CLASSES)}))

    def _split_generators(self, dl_manager):
        splits = {"train": self._generate_examples(range(COUNT))}
        if self.TEST:
            splits["test"] = self._generate_examples(range(COUNT, COUNT + self.TEST))
        return splits

    def _generate_examples(self, indices):
        for i in indices:
            yield i, {"image": np.full((4, 4, 1), 2 * i % 256, np.uint8), "label": i % CLASSES}


class KerasaeTinyNoTest(KerasaeTinyShards, skip_registration=True):
    """Train only: the test set is tfds' "train[90%:]"."""

    TEST = 0


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """{builder name: data_dir} of both datasets, prepared once into SHARDS files per split."""
    root = tmp_path_factory.mktemp("tfds")
    for cls in (KerasaeTinyShards, KerasaeTinyNoTest):
        cls(data_dir=str(root)).download_and_prepare(
            download_config=tfds.download.DownloadConfig(num_shards=SHARDS))
    return root


@pytest.fixture
def data_dir(prepared, tmp_path):
    """A private copy of the prepared data, whose files a test may delete."""
    return str(shutil.copytree(prepared, tmp_path / "tfds"))


def shard_files(data_dir, name, split="train"):
    files = sorted((Path(data_dir) / name / "1.0.0").glob(f"{name}-{split}.tfrecord-*"))
    assert len(files) == SHARDS
    return files


def file_order(files):
    """(image indices, labels) of every record of `files`, read raw in file order."""
    spec = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}
    out = [tf.io.parse_single_example(r, spec) for r in tf.data.TFRecordDataset([str(f) for f in files])]
    return (np.array([int(tf.io.decode_png(e["image"])[0, 0, 0]) // 2 for e in out]),
            np.array([int(e["label"]) for e in out]))


def read(split):
    """(image indices, labels) of what `split` reads."""
    x, y = split.to_arrays()
    return np.rint(x[:, 0, 0, 0] * 255).astype(int) // 2, y


def counting(split):
    """`split` with a parse that records the image index of every record it parses."""
    parsed = []

    def parse(record):
        image, label = split.parse(record)
        index = tf.cast(tf.io.decode_png(image)[0, 0, 0], tf.int64) // 2
        seen = tf.numpy_function(lambda v: (parsed.append(int(v)), np.int64(0))[1], [index], tf.int64)
        with tf.control_dependencies([seen]):
            return tf.identity(image), tf.identity(label)

    return dataclasses.replace(split, parse=parse), parsed


def test_a_late_split_opens_no_earlier_shard_and_parses_only_its_records(data_dir):
    data = open_dataset("tfds:kerasae_tiny_shards", data_dir=data_dir, mode="stream")
    files = shard_files(data_dir, "kerasae_tiny_shards")
    order, labels = file_order(files)
    sizes = [sum(1 for _ in tf.data.TFRecordDataset(str(f))) for f in files]
    train, val, _, _ = data.split_validation(25)
    first_val_file = int(np.searchsorted(np.cumsum(sizes), COUNT - 25, side="right"))
    assert first_val_file >= 2

    counted, parsed = counting(val)
    for f in files[:first_val_file]:  # the files before the validation split: never opened
        f.unlink()
    assert [a.tolist() for a in read(val)] == [order[COUNT - 25:].tolist(), labels[COUNT - 25:].tolist()]
    list(counted.encoded())
    assert sorted(parsed) == sorted(order[COUNT - 25:])  # its 25 records only, none of the 95 before them
    with pytest.raises(tf.errors.NotFoundError):
        train.to_arrays()  # the training split does need them


def test_the_test_cut_of_a_train_only_dataset_skips_the_earlier_shards(data_dir):
    data = open_dataset("tfds:kerasae_tiny_no_test", data_dir=data_dir, mode="stream")
    files = shard_files(data_dir, "kerasae_tiny_no_test")
    order, labels = file_order(files)
    n_train = COUNT * 9 // 10  # tfds' "train[:90%]" of 60
    assert (data.train.count, data.test.count) == (n_train, COUNT - n_train)
    assert [a.tolist() for a in read(data.train)] == [order[:n_train].tolist(), labels[:n_train].tolist()]
    sizes = np.cumsum([sum(1 for _ in tf.data.TFRecordDataset(str(f))) for f in files])
    for f in files[:int(np.searchsorted(sizes, n_train, side="right"))]:
        f.unlink()
    assert [a.tolist() for a in read(data.test)] == [order[n_train:].tolist(), labels[n_train:].tolist()]
    with pytest.raises(tf.errors.NotFoundError):
        data.train.to_arrays()


def _slices(train):
    """(name, split, positions in the file order it must read) for head / split_first / skip combinations."""
    rest = train.split_first(23)[1]
    skipping = drop_unreadable(train, [25, 31, 47])  # unreadable positions
    late = skipping.split_first(20)[1]
    readable = [p for p in range(COUNT) if p not in (25, 31, 47)]
    return [("head", train.head(7), list(range(7))),
            ("rest", rest, list(range(23, COUNT))),
            ("rest.head", rest.head(12), list(range(23, 35))),
            ("rest.split_first", rest.split_first(30)[1], list(range(53, COUNT))),
            ("skips, late", late, readable[20:]),
            ("skips, late.head", late.head(9), readable[20:29]),
            ("skips, late.split_first", late.split_first(4)[0], readable[20:24]),
            ("skips, later", skipping.split_first(50)[1], readable[50:])]


def test_slices_read_the_files_records_in_order_as_the_stream_path_and_tfds_slicing_do(data_dir):
    train = open_dataset("tfds:kerasae_tiny_shards", data_dir=data_dir, mode="stream").train
    order, labels = file_order(shard_files(data_dir, "kerasae_tiny_shards"))
    builder = tfds.builder("kerasae_tiny_shards", data_dir=data_dir)
    in_file_order = tfds.ReadConfig(interleave_cycle_length=1)

    def stream():  # the whole split as one tf.data stream, skipped by position (the path for mock data)
        ds = builder.as_dataset("train", read_config=in_file_order, decoders={"image": tfds.decode.SkipDecoding()})
        return ds.map(lambda ex: (ex["image"], ex["label"]))

    default = builder.as_dataset("train", shuffle_files=False)  # tfds interleaves its files in blocks of 16
    assert [int(ex["image"][0, 0, 0]) // 2 for ex in tfds.as_numpy(default)] != order.tolist()
    for name, split, positions in _slices(train):
        expected = [order[positions].tolist(), labels[positions].tolist()]
        assert [a.tolist() for a in read(split)] == expected, name
        streamed = dataclasses.replace(split, shards=(), parse=None, records=stream)
        assert [a.tolist() for a in read(streamed)] == expected, name
        if not split.skip:  # tfds' own absolute slicing names the same records
            sliced = builder.as_dataset(f"train[{split.start}:{split.start + split.count}]", read_config=in_file_order)
            assert [int(ex["image"][0, 0, 0]) // 2 for ex in tfds.as_numpy(sliced)] == expected[0], name


def test_workers_are_dealt_disjoint_files_covering_the_split_each_at_least_its_share(data_dir):
    train = open_dataset("tfds:kerasae_tiny_shards", data_dir=data_dir, mode="stream").train
    order, _ = file_order(shard_files(data_dir, "kerasae_tiny_shards"))
    for workers, batch in ((2, 4), (3, 6), (2, 5)):
        dealt = pipeline._deal_shards(train, batch, workers)
        assert dealt is not None and len(dealt) == workers
        files = [{path for path, *_ in own} for own in dealt]
        assert all(not files[a] & files[b] for a in range(workers) for b in range(a))
        assert set().union(*files) == {str(path) for path, _ in train.shards}
        steps = pipeline.num_batches(train.count, batch, workers)
        for w, own in enumerate(dealt):
            share = batch // workers + (w < batch % workers)
            assert sum(size for *_, size, _ in own) >= pipeline.MIN_WORKER_SHARE * steps * share

    seen = []
    for worker in (0, 1):
        counted, parsed = counting(train)
        ds = make_dataset(counted, 4, shuffle=True, seed=3, num_workers=2, worker_index=worker)
        batches = [np.rint(b[:, 0, 0, 0] * 255).astype(int) // 2 for b in ds.as_numpy_iterator()]
        assert [len(b) for b in batches] == [2] * (COUNT // 4)  # its half of each global batch
        own = {int(i) for path, low, size, position in pipeline._deal_shards(train, 4, 2)[worker]
               for i in order[position:position + size]}
        assert set(parsed) <= own and len(set(parsed)) == COUNT // 2  # only the records of its own files
        seen.append(np.concatenate(batches))
    assert sorted(np.concatenate(seen).tolist()) == list(range(COUNT))  # every record once per epoch


def test_too_few_files_for_the_workers_falls_back_to_sharing_each_batch(data_dir):
    train = open_dataset("tfds:kerasae_tiny_shards", data_dir=data_dir, mode="stream").train
    few = train.head(25)  # 20 + 5 records of two files: a worker with the 5 would hold under 3/4 of its share
    assert len(few.pieces()) == 2 and pipeline._deal_shards(few, 2, 2) is None
    assert pipeline._deal_shards(train, 7, 7) is None  # more workers than files
    order, _ = file_order(shard_files(data_dir, "kerasae_tiny_shards"))
    seen = []
    for worker in (0, 1):
        counted, parsed = counting(few)
        ds = make_dataset(counted, 2, shuffle=True, seed=3, num_workers=2, worker_index=worker)
        seen += [int(v) // 2 for b in ds.as_numpy_iterator() for v in np.rint(b[:, 0, 0, 0] * 255)]
        assert sorted(parsed) == sorted(order[:25])  # every worker reads every record of the split
    assert sorted(seen) == sorted(order[:25])  # and each is trained on by one worker


def test_a_dataset_prepared_as_parquet_is_read_by_its_own_file_reader(tmp_path):
    KerasaeTinyShards(data_dir=str(tmp_path), file_format="parquet").download_and_prepare(
        download_config=tfds.download.DownloadConfig(num_shards=3))
    val = open_dataset("tfds:kerasae_tiny_shards", data_dir=str(tmp_path), mode="stream").split_validation(25)[1]
    builder = tfds.builder("kerasae_tiny_shards", data_dir=str(tmp_path))
    sliced = builder.as_dataset(f"train[{COUNT - 25}:]", read_config=tfds.ReadConfig(interleave_cycle_length=1))
    expected = [int(ex["image"][0, 0, 0]) // 2 for ex in tfds.as_numpy(sliced)]
    files = sorted((tmp_path / "kerasae_tiny_shards" / "1.0.0").glob("*-train.parquet-*"))
    assert len(files) == 3
    for f in files[:2]:  # 40 records each: the last 25 lie in the third file
        f.unlink()
    assert read(val)[0].tolist() == expected


def test_a_dataset_stored_in_a_format_tf_data_cannot_read_is_a_clear_error(data_dir, monkeypatch):
    from tensorflow_datasets.core import file_adapters

    builder = tfds.builder("kerasae_tiny_shards", data_dir=data_dir)
    monkeypatch.setattr(type(builder.info), "file_format", file_adapters.FileFormat.ARRAY_RECORD, raising=False)
    with pytest.raises(DataError, match="array_record.*--file_format tfrecord"):
        open_dataset("tfds:kerasae_tiny_shards", data_dir=data_dir, mode="stream")
