"""Tests for streamed datasets (kerasae.data streams, folders, tfrecord, tfds, pipeline).

Expectations come from the files themselves (PIL, numpy, hand-counted batch sizes), never from the
code under test: images are tiny PNGs whose pixel value encodes their index, so a batch tells which
images it holds.
"""

import collections
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from kerasae import data
from kerasae.data import DataError, ImageData, Split, StreamedData, make_dataset, num_batches, open_dataset
from kerasae.data import streams, tfrecord

N_INDEXED = 40  # images 0..39, solid gray value 10 + 6 * index


def value_of(index):
    return 10 + 6 * index


def ids_of(batch):
    """Indices of solid indexed images from their mean pixel value."""
    means = np.asarray(batch).reshape(len(batch), -1).mean(axis=1) * 255
    ids = np.rint((means - 10) / 6).astype(int)
    np.testing.assert_allclose(means, [value_of(i) for i in ids], atol=1e-3)  # really one of ours
    return ids


def save(path, pixels, mode=None):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(pixels, np.uint8), mode).save(path)
    return path


def solid(path, value, size=(8, 8), mode="L"):
    """A solid image of gray `value`; size is (width, height) as PIL has it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fill = value if mode in ("L", "P") else (value,) * len(mode)
    Image.new(mode, size, fill).save(path)
    return path


def pil_pixels(path):
    """What a file holds, read by PIL: float [H, W, C] in [0, 1]."""
    a = np.asarray(Image.open(path), np.float32) / 255
    return a[..., np.newaxis] if a.ndim == 2 else a


def png_bytes(value, size=(8, 8)):
    return tf.io.encode_png(np.full((size[1], size[0], 1), value, np.uint8)).numpy()


def example(features):
    """A serialized tf.train.Example of {key: bytes or int}."""
    def feature(v):
        if isinstance(v, bytes):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))
    return tf.train.Example(features=tf.train.Features(
        feature={k: feature(v) for k, v in features.items()})).SerializeToString()


def write_records(path, records):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for r in records:
            writer.write(r)
    return path


def epoch_batches(ds):
    return list(ds.as_numpy_iterator())


def one_line(err):
    message = str(err.value)
    assert "\n" not in message, message
    return message


# --- fixtures: the indexed images as image files and as TFRecord records -------------------------

@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """split(kind, count): the first `count` indexed images as a Split of files or of records."""
    root = tmp_path_factory.mktemp("indexed")
    paths = [str(solid(root / "files" / f"img_{i:02d}.png", value_of(i))) for i in range(N_INDEXED)]
    (root / "records").mkdir()
    write_records(root / "records" / "train.tfrecord", [example({"image": png_bytes(value_of(i))})
                                                          for i in range(N_INDEXED)])
    write_records(root / "records" / "test.tfrecord", [example({"image": png_bytes(0)})] * 2)
    records = tfrecord.open_tfrecord(str(root / "records")).train
    assert records.count == N_INDEXED and records.image_shape == (8, 8, 1)

    def split(kind, count=N_INDEXED):
        if kind == "files":
            return Split((8, 8, 1), count, paths=np.asarray(paths[:count]))
        return records.head(count)

    return split


def class_folder(root, classes=("cats", "dogs", "birds"), per_class=10, size=(8, 8), seed=0):
    """Random RGB images in class subfolders; returns {path: label by sorted class name}."""
    rng = np.random.default_rng(seed)
    labels = {}
    for name in classes:
        for i in range(per_class):
            path = save(root / name / f"{i:03d}.png", rng.integers(0, 256, (size[1], size[0], 3)))
            labels[str(path)] = sorted(classes).index(name)
    return labels


# --- 1. streamed and in-memory data are the same images -------------------------------------------

@pytest.mark.parametrize("layout", ["classes", "flat", "train_test_dirs"])
def test_streamed_splits_equal_memory_and_the_files(tmp_path, layout):
    rng = np.random.default_rng(1)
    if layout == "classes":
        labels = class_folder(tmp_path)  # 30 images: 3 test, 27 train
        n_test, classes = 3, ("birds", "cats", "dogs")
    elif layout == "flat":
        labels = {str(save(tmp_path / f"{i}.png", rng.integers(0, 256, (12, 12)))): None for i in range(25)}
        n_test, classes = 2, None
    else:
        labels = class_folder(tmp_path / "train", ("a", "b"), per_class=9)
        test_labels = class_folder(tmp_path / "test", ("a", "b"), per_class=2, seed=7)
        labels.update(test_labels)
        n_test, classes = 4, ("a", "b")
    (tmp_path / "notes.txt").write_text("ignored")
    spec, v = f"images:{tmp_path}", 4
    streamed = open_dataset(spec, mode="stream")
    memory = open_dataset(spec, mode="memory")
    assert isinstance(streamed, StreamedData) and isinstance(memory, ImageData)
    assert streamed.class_names == classes

    train, val, test, _ = streamed.split_validation(v)
    x_train, x_val, x_test, y_test = memory.split_validation(v)
    assert (train.count, val.count, test.count) == (len(labels) - n_test - v, v, n_test)
    all_paths = [str(p) for s in (train, val, test) for p in s.paths]
    assert sorted(all_paths) == sorted(labels)  # every file in exactly one split
    if layout == "train_test_dirs":
        assert sorted(map(str, test.paths)) == sorted(test_labels)

    y_memory = {"train": memory.y_train[:-v] if classes else None,
                "val": memory.y_train[-v:] if classes else None, "test": y_test}
    for name, split, x_mem in (("train", train, x_train), ("val", val, x_val), ("test", test, x_test)):
        x, y = split.to_arrays()
        np.testing.assert_array_equal(x, x_mem)  # same images, same order
        assert x.dtype == np.float32 and x.shape[1:] == streamed.image_shape
        for i, path in enumerate(split.paths):  # the pixels are the files' pixels / 255
            np.testing.assert_allclose(x[i], pil_pixels(path), atol=1e-6)
        if classes is None:
            assert y is None and y_memory[name] is None
        else:
            assert y.tolist() == [labels[str(p)] for p in split.paths]
            assert y.tolist() == y_memory[name].tolist()


# --- 2. make_dataset over a Split -----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["files", "records"])
def test_split_epochs_hold_each_image_once_and_reshuffle(indexed, kind):
    split = indexed(kind, 30)
    ds = make_dataset(split, 8, shuffle=True, seed=3)
    assert ds.cardinality() == 4
    epochs = [epoch_batches(ds) for _ in range(2)]
    for batches in epochs:
        assert [b.shape for b in batches] == [(8, 8, 8, 1)] * 3 + [(6, 8, 8, 1)]
        assert all(b.dtype == np.float32 for b in batches)
        assert sorted(ids_of(np.concatenate(batches))) == list(range(30))
    first, second = (ids_of(np.concatenate(b)).tolist() for b in epochs)
    assert first != second  # reshuffled each epoch
    assert first != list(range(30))

    fresh = make_dataset(split, 8, shuffle=True, seed=3)
    assert [ids_of(np.concatenate(epoch_batches(fresh))).tolist() for _ in range(2)] == [first, second]
    other = make_dataset(split, 8, shuffle=True, seed=4)
    assert ids_of(np.concatenate(epoch_batches(other))).tolist() != first

    in_order = make_dataset(split, 8)
    assert ids_of(np.concatenate(epoch_batches(in_order))).tolist() == list(range(30))


@pytest.mark.parametrize("kind", ["files", "records"])
def test_split_repeat_gives_back_to_back_epochs(indexed, kind):
    split = indexed(kind, 30)
    ds = make_dataset(split, 7, shuffle=True, seed=1, repeat=True)
    assert ds.cardinality() < 0  # endless (or unknown: files are re-permuted per epoch in a flat_map)
    batches = epoch_batches(ds.take(15))  # 3 epochs of 7, 7, 7, 7, 2
    assert [len(b) for b in batches] == [7, 7, 7, 7, 2] * 3
    orders = [ids_of(np.concatenate(batches[5 * e:5 * e + 5])).tolist() for e in range(3)]
    for order in orders:
        assert sorted(order) == list(range(30))
    assert orders[0] != orders[1] and orders[1] != orders[2]


def test_split_dynamic_binarization_has_the_pixel_intensities(indexed):
    split = indexed("files", 30)
    intensity = np.array([value_of(i) for i in range(30)]) / 255
    ds = make_dataset(split, 8, binarize=True, seed=2, repeat=True)
    draws = np.concatenate(epoch_batches(ds.take(4 * 20))).reshape(20, 30, -1)  # 20 epochs, in file order
    assert set(np.unique(draws)) == {0.0, 1.0}
    freq = draws.mean(axis=(0, 2))  # 1280 draws per image: std <= 0.014
    np.testing.assert_allclose(freq, intensity, atol=0.06)
    assert (draws[0] != draws[1]).mean() > 0.2  # re-drawn every epoch


def test_split_fixed_binarization_repeats_the_same_bits(indexed):
    split = indexed("records", 30)
    intensity = np.array([value_of(i) for i in range(30)]) / 255
    ds = make_dataset(split, 8, fixed_binarization_seed=0)
    first, second = (np.concatenate(epoch_batches(ds)) for _ in range(2))
    assert first.shape == (30, 8, 8, 1) and set(np.unique(first)) == {0.0, 1.0}
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(np.concatenate(epoch_batches(make_dataset(split, 8, fixed_binarization_seed=0))),
                                  first)
    other = np.concatenate(epoch_batches(make_dataset(split, 8, fixed_binarization_seed=1)))
    assert (other != first).mean() > 0.2
    assert abs(first.mean() - intensity.mean()) < 0.05
    per_image = first.reshape(30, -1).mean(axis=1)  # 64 pixels each: std <= 0.0625
    assert np.corrcoef(per_image, intensity)[0, 1] > 0.9


# --- 3. splitting batches between workers ----------------------------------------------------------

@pytest.mark.parametrize("kind, count, batch, workers, global_sizes, repeat", [
    ("files", 21, 8, 2, [8, 8, 5], False),
    ("files", 17, 8, 2, [8, 9], True),  # a tail of 1 < 2 workers joins the batch before
    ("files", 16, 8, 2, [8, 8], False),
    ("files", 9, 8, 2, [9], False),
    ("files", 26, 8, 3, [8, 8, 10], True),  # a tail of 2 < 3 workers: merged
    ("records", 17, 8, 2, [8, 9], False),
    ("records", 27, 8, 3, [8, 8, 8, 3], True),
])
def test_workers_share_each_epoch_exactly(indexed, kind, count, batch, workers, global_sizes, repeat):
    """Worker w's pipeline, built alone with the common seed: two epochs, each image read by one worker once."""
    split = indexed(kind, count)
    steps = len(global_sizes)
    assert num_batches(count, batch, workers) == steps
    per_worker = []
    for w in range(workers):
        ds = make_dataset(split, batch, shuffle=True, seed=11, repeat=repeat, num_workers=workers, worker_index=w)
        if repeat:
            batches = epoch_batches(ds.take(2 * steps))
        else:
            assert ds.cardinality() == steps
            batches = epoch_batches(ds) + epoch_batches(ds)
        assert len(batches) == 2 * steps  # the same number of steps on every worker
        assert all(len(b) > 0 for b in batches)
        per_worker.append([ids_of(b) for b in batches])
    for step in range(2 * steps):
        sizes = [len(per_worker[w][step]) for w in range(workers)]
        assert sum(sizes) == global_sizes[step % steps] and max(sizes) - min(sizes) <= 1
    orders = []
    for e in range(2):
        seen = [per_worker[w][s] for s in range(e * steps, (e + 1) * steps) for w in range(workers)]
        orders.append(np.concatenate(seen).tolist())
        assert sorted(orders[-1]) == list(range(count))  # each image once per epoch, over all workers
    assert orders[0] != orders[1]  # and a new shuffle for the next


@pytest.mark.parametrize("batch, workers, index", [(2, 3, 0), (8, 2, 2), (8, 2, -1)])
def test_worker_arguments_that_cannot_split_a_batch_are_refused(indexed, batch, workers, index):
    with pytest.raises(ValueError, match="num_workers"):
        make_dataset(indexed("files", 20), batch, num_workers=workers, worker_index=index)


def test_fixed_binarization_is_the_same_on_every_repeated_pass(indexed):
    """Validation of a streamed run may be one endless dataset (repeat=True): each pass must still get
    the same bits, or validation losses would move with the binarization noise."""
    split = indexed("files", 20)
    once = np.concatenate(epoch_batches(make_dataset(split, 8, fixed_binarization_seed=0)))
    endless = make_dataset(split, 8, repeat=True, fixed_binarization_seed=0)
    passes = np.concatenate(epoch_batches(endless.take(3 * 3))).reshape(3, 20, 8, 8, 1)
    for p in passes:
        np.testing.assert_array_equal(p, once)


# --- 4. TFRecord shards ------------------------------------------------------------------------------

def content_multiset(x, y):
    """{(8-bit pixels, label): count}: the images of a split regardless of order."""
    y = [None] * len(x) if y is None else y.tolist()
    return collections.Counter((np.rint(img * 255).astype(np.uint8).tobytes(), label) for img, label in zip(x, y))


def test_write_tfrecords_round_trip(tmp_path, monkeypatch):
    labels = class_folder(tmp_path / "src", per_class=8)  # 24 images: 22 train, 2 test
    source = open_dataset(f"images:{tmp_path / 'src'}", mode="stream")
    out = tmp_path / "shards"
    meta = data.write_tfrecords(source, out, shard_bytes=1000, log=lambda *a: None)
    shards = sorted(p.name for p in out.iterdir() if p.suffix == ".tfrecord")
    assert len(shards) > 2 and sorted(p.name for p in out.iterdir()) == sorted(shards + [tfrecord.METADATA])
    assert meta["counts"] == {"train": 22, "test": 2}

    def no_scan(*args, **kwargs):
        raise AssertionError("the converter's shards must not be scanned again")

    monkeypatch.setattr(tfrecord, "scan", no_scan)
    back = open_dataset(f"tfrecord:{out}", mode="stream")
    assert back.class_names == ("birds", "cats", "dogs") and back.image_shape == (8, 8, 3)
    for name in ("train", "test"):
        x, y = getattr(back, name).to_arrays()
        x_src, y_src = getattr(source, name).to_arrays()
        assert y is not None and content_multiset(x, y) == content_multiset(x_src, y_src)
        assert sorted(y.tolist()) == sorted(labels[str(p)] for p in getattr(source, name).paths)
    x_train, y_train = back.train.to_arrays()
    assert not np.array_equal(x_train, source.train.to_arrays()[0])  # written in a new random order
    globbed = open_dataset(f"tfrecord:{out}/*.tfrecord", mode="memory")
    assert (len(globbed.x_train), len(globbed.x_test)) == (22, 2)
    np.testing.assert_array_equal(globbed.x_train, x_train)
    assert globbed.y_train.tolist() == y_train.tolist()


def test_write_tfrecords_from_arrays(tmp_path):
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (7, 5, 4, 1)).astype(np.float32) / 255
    arrays = ImageData("arr", pixels[:5], None, pixels[5:], None)
    data.write_tfrecords(arrays, tmp_path / "out", log=lambda *a: None)
    back = open_dataset(f"tfrecord:{tmp_path / 'out'}", mode="stream")
    assert back.class_names is None and back.image_shape == (5, 4, 1)
    x, y = back.train.to_arrays()
    assert y is None and content_multiset(x, None) == content_multiset(pixels[:5], None)
    assert content_multiset(*back.test.to_arrays()) == content_multiset(pixels[5:], None)


def plain_shards(directory, names_and_counts, label=True, key="image/encoded"):
    """Shards of an Example per image (gray value 3 * i, label i % 3) in file order; returns the values."""
    directory.mkdir(parents=True, exist_ok=True)
    values, i = [], 0
    for name, n in names_and_counts:
        records = []
        for _ in range(n):
            features = {key: png_bytes(3 * i)}
            if label:
                features["image/class/label"] = i % 3
            records.append(example(features))
            values.append(3 * i)
            i += 1
        write_records(directory / name, records)
    return np.array(values)


def test_plain_tfrecord_shards_without_metadata(tmp_path):
    values = plain_shards(tmp_path / "p", [("part-0.tfrecord", 12), ("part-1.tfrecord", 8)])
    streamed = tfrecord.open_tfrecord(str(tmp_path / "p"))
    assert streamed.image_shape == (8, 8, 1) and streamed.class_names is None  # found by the scan
    assert (streamed.train.count, streamed.test.count) == (18, 2)  # no train/test names: the last 10%
    for split, expected in ((streamed.train, np.arange(18)), (streamed.test, np.arange(18, 20))):
        x, y = split.to_arrays()
        np.testing.assert_allclose(x.reshape(len(x), -1).max(axis=1), values[expected] / 255, atol=1e-6)
        assert y.tolist() == (expected % 3).tolist()
    x5, _ = streamed.take(5).train.to_arrays()  # the first records
    np.testing.assert_allclose(x5[:, 0, 0, 0], values[:5] / 255, atol=1e-6)

    plain_shards(tmp_path / "named", [("train.tfrecord", 6), ("test.tfrecord", 3)], label=False, key="image")
    named = open_dataset(f"tfrecord:{tmp_path / 'named'}/*.tfrecord", mode="stream")
    assert (named.train.count, named.test.count) == (6, 3)
    x, y = named.test.to_arrays()
    assert y is None
    np.testing.assert_allclose(x[:, 0, 0, 0], np.arange(6, 9) * 3 / 255, atol=1e-6)


def test_tfrecord_unreadable_records_named_or_skipped(tmp_path):
    """Records 3, 10 (train) and 19 (test) of two shards of 10 are garbage: named by shard and index within
    it, or left out with the rest in place."""
    bad = (3, 10, 19)
    records = [example({"image": b"not an image" if i in bad else png_bytes(3 * i)}) for i in range(20)]
    write_records(tmp_path / "a.tfrecord", records[:10])
    write_records(tmp_path / "b.tfrecord", records[10:])
    # the count is over both splits (3 of the 20 records), not the training split's 2 of 18
    with pytest.raises(DataError, match="3 of 20 images cannot be read; first a.tfrecord record 3: Unknown image "
                       "file format") as err:
        tfrecord.open_tfrecord(str(tmp_path))
    one_line(err)
    lines = []
    streamed = tfrecord.open_tfrecord(str(tmp_path), skip_bad=True, log=lines.append)
    assert streamed.skipped == ("a.tfrecord record 3", "b.tfrecord record 0", "b.tfrecord record 9")
    assert len(lines) == 1 and "b.tfrecord record 9" in lines[0]
    train_ids = [i for i in range(18) if i not in bad]
    assert (streamed.train.count, streamed.test.count) == (16, 1)
    train, val, test, _ = streamed.split_validation(5)
    for split, ids in ((train, train_ids[:11]), (val, train_ids[11:]), (test, [18])):
        x, _ = split.to_arrays()
        np.testing.assert_allclose(x[:, 0, 0, 0], np.array(ids) * 3 / 255, atol=1e-6)


def test_tfrecord_wrong_keys_truncated_and_missing(tmp_path):
    write_records(tmp_path / "keys" / "a.tfrecord", [example({"img": png_bytes(1), "lbl": 2})] * 3)
    with pytest.raises(DataError, match="'img', 'lbl'") as err:
        open_dataset(f"tfrecord:{tmp_path / 'keys'}")
    assert str(tmp_path / "keys" / "a.tfrecord") in one_line(err)

    plain_shards(tmp_path / "cut", [("data-0.tfrecord", 20), ("data-1.tfrecord", 20)])
    victim = tmp_path / "cut" / "data-1.tfrecord"
    raw = victim.read_bytes()
    victim.write_bytes(raw[:len(raw) // 2 + 7])  # mid-record
    with pytest.raises(DataError, match="data-1.tfrecord") as err:
        open_dataset(f"tfrecord:{tmp_path / 'cut'}", mode="stream")
    one_line(err)

    for pattern in (tmp_path / "nothing-*.tfrecord", tmp_path / "keys" / "*.json"):
        with pytest.raises(DataError, match="matches no files"):
            open_dataset(f"tfrecord:{pattern}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="matches no files"):
        open_dataset(f"tfrecord:{tmp_path / 'empty'}")


def test_truncated_converted_shard_is_named(tmp_path):
    """The converter's metadata must not vouch for a shard that changed since."""
    for i in range(12):
        save(tmp_path / "src" / f"{i}.png", np.random.default_rng(i).integers(0, 256, (8, 8)))
    data.write_tfrecords(open_dataset(f"images:{tmp_path / 'src'}", mode="stream"), tmp_path / "out",
                         log=lambda *a: None)
    victim = tmp_path / "out" / "train-00000-of-00001.tfrecord"
    raw = victim.read_bytes()
    victim.write_bytes(raw[:len(raw) - 5])
    with pytest.raises(DataError, match="train-00000-of-00001.tfrecord") as err:
        open_dataset(f"tfrecord:{tmp_path / 'out'}", mode="stream")
    one_line(err)


def test_write_tfrecords_refuses_non_empty_and_leaves_nothing_on_failure(tmp_path):
    for i in range(12):
        solid(tmp_path / "src" / f"{i}.png", 20 * i)
    source = open_dataset(f"images:{tmp_path / 'src'}", mode="stream")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        data.write_tfrecords(source, tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]

    Path(source.train.paths[5]).unlink()  # vanishes after the scan: the conversion fails midway
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(Exception):
        data.write_tfrecords(source, tmp_path / "out", shard_bytes=100, log=lambda *a: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no out dir, no temporary leftovers
    (tmp_path / "empty_out").mkdir()
    with pytest.raises(Exception):
        data.write_tfrecords(source, tmp_path / "empty_out", shard_bytes=100, log=lambda *a: None)
    assert list((tmp_path / "empty_out").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before + ["empty_out"])


# --- 5. tensorflow-datasets, streamed (mocked: no network) ---------------------------------------------

def test_tfds_streamed_mocked(tmp_path):
    with tfds.testing.mock_data(num_examples=10):
        streamed = open_dataset("tfds:mnist", data_dir=str(tmp_path), mode="stream")
        assert isinstance(streamed, StreamedData) and streamed.image_shape == (28, 28, 1)
        assert streamed.class_names == tuple(str(i) for i in range(10))
        for split in (streamed.train, streamed.test):
            x, y = split.to_arrays()
            assert x.shape == (split.count, 28, 28, 1) and split.count > 0
            assert x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1 and x.std() > 0
            assert y.dtype == np.int64 and set(y.tolist()) <= set(range(10))
        batches = epoch_batches(make_dataset(streamed.train, 4, shuffle=True, seed=0))
        assert sum(len(b) for b in batches) == streamed.train.count and batches[0].shape[1:] == (28, 28, 1)


# --- 6. bad input -------------------------------------------------------------------------------------

def truncated_png(path):
    save(path, np.random.default_rng(9).integers(0, 256, (12, 12, 3)))
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) // 2])


BAD_FILES = {
    "truncated": truncated_png,
    "text": lambda path: path.write_text("this is not a picture\n" * 3),
    "empty": lambda path: path.write_bytes(b""),
}


@pytest.mark.parametrize("bad", sorted(BAD_FILES))
def test_a_bad_image_among_good_ones_is_named_in_one_line(tmp_path, bad):
    for i in range(50):
        save(tmp_path / f"good_{i:02d}.png", np.random.default_rng(i).integers(0, 256, (8, 8, 3)))
    BAD_FILES[bad](tmp_path / "x.png")
    with pytest.raises(DataError, match="x.png") as err:
        open_dataset(f"images:{tmp_path}")
    assert "--skip-bad-images" in one_line(err)


def test_skip_bad_images_leaves_them_out_and_logs_them(tmp_path):
    good = [str(solid(tmp_path / "a" / f"{i}.png", 10 * i)) for i in range(12)]
    good += [str(solid(tmp_path / "b" / f"{i}.png", 200 + i)) for i in range(8)]
    bad = []
    for name, make in BAD_FILES.items():
        path = tmp_path / ("a" if name != "empty" else "b") / f"bad_{name}.png"
        make(path)
        bad.append(str(path))
    lines = []
    streamed = open_dataset(f"images:{tmp_path}", mode="stream", skip_bad_images=True, log=lines.append)
    assert sorted(streamed.skipped) == sorted(bad)
    kept = [str(p) for s in (streamed.train, streamed.test) for p in s.paths]
    assert sorted(kept) == sorted(good)
    assert len(lines) == 1 and all(Path(b).name in lines[0] for b in bad)
    memory = open_dataset(f"images:{tmp_path}", mode="memory", skip_bad_images=True, log=lines.append)
    assert len(memory.x_train) + len(memory.x_test) == 20
    assert sorted(np.concatenate([memory.y_train, memory.y_test]).tolist()) == [0] * 12 + [1] * 8


def test_non_image_files_are_ignored_and_empty_folders_named(tmp_path):
    for i in range(6):
        solid(tmp_path / "imgs" / f"{i}.png", 30 * i)
    (tmp_path / "imgs" / "notes.txt").write_text("hello")
    (tmp_path / "imgs" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(100))
    (tmp_path / "imgs" / "README").write_text("no extension")
    streamed = open_dataset(f"images:{tmp_path / 'imgs'}", mode="stream")
    assert streamed.train.count + streamed.test.count == 6 and streamed.skipped == ()

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files") as err:
        open_dataset(f"images:{tmp_path / 'empty'}")
    assert str(tmp_path / "empty") in one_line(err)
    (tmp_path / "only_notes").mkdir()
    (tmp_path / "only_notes" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="no image files"):
        open_dataset(f"images:{tmp_path / 'only_notes'}")


def mixed_folder(root):
    """Solid gray images of several sizes, modes and formats: {file name: gray value}."""
    values = {}
    specs = [("l.png", (8, 8), "L"), ("rgb.png", (10, 12), "RGB"), ("rgba.png", (8, 8), "RGBA"),
             ("l_wide.png", (10, 12), "L"), ("rgb_small.png", (8, 8), "RGB"), ("pal.gif", (8, 8), "L"),
             ("bmp.bmp", (10, 12), "RGB")]
    for i, (name, size, mode) in enumerate(specs):
        values[name] = 20 + 30 * i
        solid(root / name, values[name], size=size, mode=mode)
    return values


@pytest.mark.parametrize("color_mode, channels", [("grayscale", 1), ("rgb", 3)])
def test_mixed_sizes_and_modes_convert_to_the_configured_shape(tmp_path, color_mode, channels):
    values = mixed_folder(tmp_path)
    streamed = open_dataset(f"images:{tmp_path}", image_size=(6, 5), color_mode=color_mode, mode="stream")
    assert streamed.image_shape == (6, 5, channels)
    for split in (streamed.train, streamed.test):
        x, _ = split.to_arrays()
        assert x.shape == (split.count, 6, 5, channels)
        for image, path in zip(x, split.paths):  # a solid gray stays that gray, whatever the mode or size
            np.testing.assert_allclose(image, values[Path(path).name] / 255, atol=5e-4)  # rgb_to_grayscale: 0.9999


def test_mixed_sizes_without_image_size_use_the_folder_default(tmp_path):
    mixed_folder(tmp_path)
    streamed = open_dataset(f"images:{tmp_path}", mode="stream")
    assert streamed.image_shape == (*data.DEFAULT_FOLDER_IMAGE_SIZE, 3) == (64, 64, 3)  # some are RGB
    x, _ = streamed.train.to_arrays()
    assert x.shape[1:] == (64, 64, 3)


# --- 7. take, and the choice between memory and streaming ------------------------------------------

@pytest.mark.parametrize("layout", ["classes", "train_test_dirs"])
def test_take_is_the_first_of_the_seeded_training_order(tmp_path, layout):
    if layout == "classes":
        class_folder(tmp_path, ("a", "b"), per_class=15)
    else:
        class_folder(tmp_path / "train", ("a", "b"), per_class=15)
        class_folder(tmp_path / "test", ("a", "b"), per_class=1)
    streamed = open_dataset(f"images:{tmp_path}", mode="stream")
    order = [str(p) for p in streamed.train.paths]
    assert order != sorted(order)  # a random order, so that the first N are a random sample
    assert order == [str(p) for p in open_dataset(f"images:{tmp_path}", mode="stream").train.paths]  # seeded
    small = streamed.take(6, 2)
    assert [str(p) for p in small.train.paths] == order[:6] and small.test.count == 2
    x_all, y_all = streamed.train.to_arrays()
    x, y = small.train.to_arrays()
    np.testing.assert_array_equal(x, x_all[:6])
    assert y.tolist() == y_all[:6].tolist()
    loaded = data.load_dataset(f"images:{tmp_path}", max_train_samples=6, max_test_samples=2)
    np.testing.assert_array_equal(loaded.x_train, x_all[:6])
    assert len(set(y_all[:10].tolist())) == 2  # not the first class's files


def test_auto_mode_streams_only_what_does_not_fit(tmp_path, monkeypatch):
    for i in range(6):
        solid(tmp_path / f"{i}.png", 30 * i)
    assert isinstance(open_dataset(f"images:{tmp_path}"), ImageData)
    monkeypatch.setattr(streams, "IN_MEMORY_LIMIT_BYTES", 6 * 8 * 8 * 4 - 1)  # one float32 byte short
    assert isinstance(open_dataset(f"images:{tmp_path}"), StreamedData)
    assert isinstance(open_dataset(f"images:{tmp_path}", mode="memory"), ImageData)
    with pytest.raises(DataError, match="stream"):
        open_dataset("mnist", mode="stream")


def test_an_image_that_breaks_after_opening_is_named_in_one_line(tmp_path):
    """The scan at opening vouches for every file; one that is overwritten before the epoch reads it ends the
    run with a DataError naming it (the CLI's exit 2), not a traceback from inside tf.data."""
    from kerasae import training

    for i in range(40):
        solid(tmp_path / "png" / f"{i:03d}.png", 10 + 6 * i)
    config = training.TrainConfig(preset="ae-shallow", dataset=f"images:{tmp_path / 'png'}", data_mode="stream",
                                  epochs=1, batch_size=8, validation_size=4, verbose=0, out=str(tmp_path / "run"))
    prepared = training.prepare(config)
    victim = prepared[1].train.paths[5]
    Path(victim).write_bytes(b"\x89PNG broken since the scan")
    with pytest.raises(DataError, match="failed during training") as err:
        training.fit(config, *prepared)
    message = one_line(err)
    assert f"{victim} no longer reads" in message
    assert not any(noise in message for noise in ("Graph execution", "{{", "[Op:", "Iterator::")), message
