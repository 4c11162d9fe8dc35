"""Tests for the dataset index (kerasae.data.index) and the bookkeeping of skipped images.

Decodes are counted by wrapping the scan: every item it is handed is decoded once, so the list of items says exactly
which files (or records) an open decoded. Expected shapes come from how the files were written (PIL).
"""

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import kerasae
from kerasae import cli
from kerasae.data import DataError, index, open_dataset, streams, tfrecord

AGE_NS = 60 * 10**9  # files older than the index's racy window: as a dataset on disk is


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Indexes that do not go beside the data go here, never to ~/.cache."""
    monkeypatch.setenv("KERASAE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "index"


@pytest.fixture
def decoded(monkeypatch):
    """The items (file paths, or encoded records) every scan decoded, in order."""
    seen = []
    real = streams.scan

    def counting(encoded, from_file, count):
        items = [item for item, _ in encoded.take(count).as_numpy_iterator()]
        seen.extend(item.decode() if from_file else item for item in items)
        return real(encoded, from_file, count)

    monkeypatch.setattr(streams, "scan", counting)
    monkeypatch.setattr(tfrecord, "scan", counting)
    return seen


def age(path, seconds_ago=60):
    t = time.time_ns() - seconds_ago * 10**9
    os.utime(path, ns=(t, t))
    return str(path)


def image(path, value, size=(8, 8), mode="L"):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value,) * 3).save(path)
    return age(path)


def folder(root, n=24):
    """n solid gray 8x8 PNGs in class folders a/ and b/, one of them an RGB 12x10 (so the folder has two shapes)."""
    paths = [image(root / "ab"[i % 2] / f"{i:02d}.png", 5 * i) for i in range(n - 1)]
    return paths + [image(root / "b" / "rgb.png", 99, size=(12, 10), mode="RGB")]


def kept(data):
    return sorted(str(p) for s in (data.train, data.test) for p in s.paths)


def entries(root):
    """{file name relative to root: [size, mtime_ns, height, width, channels]} of the folder's index."""
    header, arrays = index.load(root, "images")
    assert header is not None
    return dict(zip(arrays["names"].tolist(), arrays["values"].tolist()))


def one_line(err):
    message = str(err.value)
    assert "\n" not in message, message
    return message


def test_the_first_open_writes_the_index_and_later_opens_decode_nothing(tmp_path, decoded):
    root = tmp_path / "data"
    paths = folder(root)
    first = open_dataset(f"images:{root}", mode="stream")
    assert sorted(decoded) == sorted(paths)
    assert (root / index.INDEX_NAME).is_file()
    assert first.image_shape == (64, 64, 3)  # two sizes -> the folder default; one RGB file -> RGB
    decoded.clear()
    again = open_dataset(f"images:{root}", mode="stream")
    assert decoded == []
    assert again.image_shape == first.image_shape
    assert [str(p) for p in again.train.paths] == [str(p) for p in first.train.paths]
    assert again.train.labels.tolist() == first.train.labels.tolist()
    # the index keeps the files' own shapes, so other options reuse it: only the last RGB file is 12x10 and 3-channel
    gray = open_dataset(f"images:{root}", mode="stream", image_size=(5, 4), color_mode="grayscale")
    assert decoded == [] and gray.image_shape == (5, 4, 1)
    found = entries(root)
    assert found["b/rgb.png"][2:] == [10, 12, 3] and found["a/00.png"][2:] == [8, 8, 1]
    assert found["a/00.png"][:2] == [os.stat(paths[0]).st_size, os.stat(paths[0]).st_mtime_ns]


def test_a_folder_of_one_non_square_size_keeps_it(tmp_path):
    for i in range(6):
        image(tmp_path / f"{i}.png", 40 * i, size=(12, 10))  # PIL: 12 wide, 10 high
    assert open_dataset(f"images:{tmp_path}", mode="stream").image_shape == (10, 12, 1)
    assert open_dataset(f"images:{tmp_path}", mode="stream").image_shape == (10, 12, 1)  # from the index


def test_changed_added_and_removed_files_are_rescanned_or_dropped(tmp_path, decoded):
    root = tmp_path / "data"
    paths = folder(root)
    open_dataset(f"images:{root}", mode="stream")
    decoded.clear()
    broken = paths[3]
    Path(broken).write_text("not a picture any more")  # new size and mtime
    age(broken, 30)
    touched = age(paths[4], 30)  # same bytes and size, another mtime
    new = image(root / "a" / "new.png", 200)
    Path(paths[5]).unlink()
    with pytest.raises(DataError) as err:
        open_dataset(f"images:{root}", mode="stream")
    assert f"1 of {len(paths)} images cannot be read; first {broken}" in one_line(err)
    assert sorted(decoded) == sorted([broken, touched, new])
    decoded.clear()
    lines = []
    data = open_dataset(f"images:{root}", mode="stream", skip_bad_images=True, log=lines.append)
    assert decoded == []  # the broken file is known to be broken: not decoded again
    assert data.skipped == (broken,) and broken in lines[0]
    assert kept(data) == sorted(set(paths) - {broken, paths[5]} | {new})
    assert set(entries(root)) == {os.path.relpath(p, root) for p in paths if p != paths[5]} | {"a/new.png"}
    assert entries(root)[os.path.relpath(broken, root)][2:] == [-1, -1, -1]


def test_files_written_within_the_racy_window_are_decoded_again(tmp_path, decoded):
    root = tmp_path / "data"
    paths = folder(root, 6)
    fresh = str(root / "a" / "fresh.png")
    Image.new("L", (8, 8), 7).save(fresh)  # mtime now: it could still change within the timestamp granularity
    open_dataset(f"images:{root}", mode="stream")
    decoded.clear()
    open_dataset(f"images:{root}", mode="stream")
    assert decoded == [fresh]
    assert len(paths) == 6


def rewrite_index(path, header=None, **arrays):
    """The index at `path` with some header fields or arrays replaced."""
    with np.load(path) as archive:
        old = {name: archive[name] for name in archive.files}
    old["header"] = np.array(json.dumps({**json.loads(str(old["header"][()])), **(header or {})}))
    with open(path, "wb") as f:
        np.savez(f, **{**old, **arrays})


@pytest.mark.parametrize("damage", ["garbage", "truncated", "json", "foreign_root", "old_format", "old_decoder",
                                    "float_values", "bad_shapes", "short_values", "no_names"])
def test_a_corrupt_or_foreign_index_is_ignored_and_rewritten(tmp_path, decoded, damage):
    root = tmp_path / "data"
    paths = folder(root, 8)
    open_dataset(f"images:{root}", mode="stream")
    path = root / index.INDEX_NAME
    raw = path.read_bytes()
    with np.load(path) as archive:
        values = archive["values"]
    if damage == "garbage":
        path.write_bytes(b"\x00\xffnot an index")
    elif damage == "truncated":
        path.write_bytes(raw[:len(raw) // 2])
    elif damage == "json":  # an index of another kind of file
        path.write_text(json.dumps({"format": index.FORMAT, "entries": {}}))
    elif damage == "foreign_root":  # another folder's index, whose stats happen to match
        rewrite_index(path, {"root": str(tmp_path / "elsewhere")})
    elif damage == "old_format":
        rewrite_index(path, {"format": "kerasae-index/0"})
    elif damage == "old_decoder":
        rewrite_index(path, {"decoder": "tf.io.decode_image (tensorflow 1.0)"})
    elif damage == "float_values":
        rewrite_index(path, values=values.astype(np.float64))
    elif damage == "bad_shapes":  # true stats, impossible shapes
        rewrite_index(path, values=np.concatenate([values[:, :2], np.zeros_like(values[:, 2:])], axis=1))
    elif damage == "short_values":
        rewrite_index(path, values=values[:-1])
    else:
        rewrite_index(path, names=np.arange(len(values)))
    decoded.clear()
    data = open_dataset(f"images:{root}", mode="stream")
    assert sorted(decoded) == sorted(paths)
    assert data.image_shape == (64, 64, 3)
    assert len(entries(root)) == len(paths)  # rewritten whole and valid


def test_an_unwritable_data_folder_keeps_its_index_in_the_cache(tmp_path, decoded, cache, monkeypatch):
    root = tmp_path / "data"
    paths = folder(root, 8)
    real = index.write_npz

    def read_only(path, **arrays):  # root runs the tests, so chmod would not stop it: refuse as a read-only mount does
        if Path(path).parent == root:
            raise PermissionError(13, "Permission denied")
        return real(path, **arrays)

    monkeypatch.setattr(index, "write_npz", read_only)
    open_dataset(f"images:{root}", mode="stream")
    assert not (root / index.INDEX_NAME).exists()
    assert len(list(cache.glob("*.npz"))) == 1
    assert sorted(decoded) == sorted(paths)
    decoded.clear()
    open_dataset(f"images:{root}", mode="stream")
    assert decoded == []


def test_data_inside_the_package_is_never_indexed_there(cache):
    inside = Path(kerasae.__file__).parent / "datasets" / "mnist"
    assert [p.parent for p in index.index_locations(inside)] == [cache]
    assert index.index_locations("/somewhere/else")[0] == Path("/somewhere/else") / index.INDEX_NAME


def write_shard(path, values, bad=()):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i, v in enumerate(values):
            png = b"not an image" if i in bad else tf.io.encode_png(np.full((6, 6, 1), v, np.uint8)).numpy()
            feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png]))}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return age(path)


def test_tfrecord_shards_are_counted_and_scanned_once(tmp_path, decoded, monkeypatch):
    write_shard(tmp_path / "a.tfrecord", range(10))
    write_shard(tmp_path / "b.tfrecord", range(10, 20))
    first = tfrecord.open_tfrecord(str(tmp_path))
    assert len(decoded) == 20
    decoded.clear()
    counted = []
    real_count = tfrecord._count
    monkeypatch.setattr(tfrecord, "_count", lambda path: counted.append(path) or real_count(path))
    again = tfrecord.open_tfrecord(str(tmp_path))
    assert decoded == [] and counted == []
    assert (again.train.count, again.test.count, again.image_shape) == (first.train.count, first.test.count,
                                                                       (6, 6, 1)) == (18, 2, (6, 6, 1))
    write_shard(tmp_path / "b.tfrecord", range(10, 21), bad=(4,))  # one more record, one of them broken
    with pytest.raises(DataError) as err:
        tfrecord.open_tfrecord(str(tmp_path))
    assert "1 of 21 images cannot be read; first b.tfrecord record 4" in one_line(err)
    assert len(decoded) == 11 and [Path(p).name for p in counted] == ["b.tfrecord"]


def test_a_record_broken_mid_run_is_found_by_decoding_only_changed_shards(tmp_path, decoded):
    write_shard(tmp_path / "a.tfrecord", range(10))
    write_shard(tmp_path / "b.tfrecord", range(10, 20))
    data = tfrecord.open_tfrecord(str(tmp_path))
    write_shard(tmp_path / "b.tfrecord", range(10, 20), bad=(6,))  # the same count, one record broken
    decoded.clear()
    assert streams.first_unreadable(data) == "b.tfrecord record 6"
    assert len(decoded) == 10  # b's records only


def test_an_image_broken_mid_run_is_found_by_decoding_only_changed_files(tmp_path, decoded):
    root = tmp_path / "data"
    folder(root, 30)
    data = open_dataset(f"images:{root}", mode="stream")
    victim = str(data.test.paths[1])
    Path(victim).write_bytes(b"\x89PNG broken since the scan")
    decoded.clear()
    assert streams.first_unreadable(data) == victim
    assert decoded == [victim]


# --- issue 32: --skip-bad-images and what it reports ---------------------------------------------------------

def bad_folder(root):
    """train/ of 18 images with one broken, test/ of 2 with one broken: (good paths, broken paths)."""
    good = [image(root / "train" / f"{i:02d}.png", 10 * i) for i in range(17)] + [image(root / "test" / "t0.png", 3)]
    broken = [root / "train" / "zz_bad.png", root / "test" / "t1.png"]
    for path in broken:
        path.write_text("not a picture")
    return good, sorted(map(str, broken))


def test_the_unreadable_count_is_over_the_whole_folder(tmp_path):
    bad_folder(tmp_path)
    with pytest.raises(DataError) as err:
        open_dataset(f"images:{tmp_path}", mode="stream")
    assert "2 of 20 images cannot be read" in one_line(err)


def test_in_memory_runs_report_their_skipped_images(tmp_path):
    good, broken = bad_folder(tmp_path / "data")
    memory = open_dataset(f"images:{tmp_path / 'data'}", mode="memory", skip_bad_images=True, log=lambda *a: None)
    assert sorted(memory.skipped) == broken and len(memory.x_train) + len(memory.x_test) == len(good)
    result = kerasae.train(preset="ae-shallow", dataset=f"images:{tmp_path / 'data'}", data_mode="memory",
                           skip_bad_images=True, epochs=1, batch_size=8, validation_size=4, verbose=0,
                           out=str(tmp_path / "run"))
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["streamed"] is False and sorted(metrics["skipped_images"]) == broken


def test_skip_bad_images_is_refused_for_tfds(tmp_path, capsys):
    with pytest.raises(DataError) as err:
        open_dataset("tfds:mnist", skip_bad_images=True, data_dir=str(tmp_path))
    assert "--skip-bad-images" in one_line(err) and "tfds:mnist" in one_line(err)
    with pytest.raises(SystemExit) as exit_:
        cli.train_main(["--dataset", "tfds:mnist", "--data-dir", str(tmp_path), "--skip-bad-images",
                        "--out", str(tmp_path / "run"), "--epochs", "1", "--verbose", "0"])
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("train.py: error: --skip-bad-images applies to images: and tfrecord:")
    assert not (tmp_path / "run").exists()
