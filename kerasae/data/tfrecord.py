"""tfrecord:PATTERN: TFRecord shards of tf.train.Example with an encoded image (and optional label),
the format tfds and TF users already have; and `write_tfrecords`, which converts any dataset to it.

Feature keys: "image" or "image/encoded" (PNG/JPEG/... bytes) and optionally "label" or
"image/class/label" (int64). Files named like *train* / *test* are the splits; otherwise the last 10%
of the records is the test set. Shards written by `write_tfrecords` carry a kerasae_dataset.json that
records their counts and shape (the conversion decoded every image, so they are not scanned again).
"""

import dataclasses
import glob
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from kerasae.data import index
from kerasae.data.arrays import DataError
from kerasae.data.streams import Split, StreamedData, choose_shape, drop_unreadable, scan, unreadable_error
from kerasae.data.tuning import untuned

METADATA = "kerasae_dataset.json"
IMAGE_KEYS = ("image", "image/encoded")
LABEL_KEYS = ("label", "image/class/label")
_SPLIT_TOKEN = {s: re.compile(rf"(^|[-_.]){s}([-_.]|$)", re.I) for s in ("train", "test")}
TEST_FRACTION = 0.1


def open_tfrecord(pattern, image_size=None, color_mode=None, skip_bad=False, log=print) -> StreamedData:
    files = match_files(pattern)
    culprit = f"tfrecord:{pattern}"
    meta = _metadata(files)
    if meta:  # the converter decoded every image: counts and shape are known, nothing to scan
        shards = [{"count": meta["files"][Path(f).name]["count"], "keys": list(_feature_keys(f)),
                   "shapes": [list(meta["image_shape"])], "bad": []} for f in files]
    else:  # counted and scanned once, then kept in the dataset index (kerasae.data.index)
        shards = index.shard_entries(files, _scan_shard, log)
    keys = [tuple(s["keys"]) for s in shards]
    if len(set(keys)) > 1:
        raise DataError(f"{culprit}: shards use different feature keys: "
                        + "; ".join(f"{Path(f).name}: {k}" for f, k in list(zip(files, keys))[:4]))
    image_key, label_key = keys[0]
    counts = [s["count"] for s in shards]
    named = {s: [i for i, f in enumerate(files) if _SPLIT_TOKEN[s].search(Path(f).name)] for s in _SPLIT_TOKEN}
    parse = _parser(image_key, label_key)
    has_labels = label_key is not None

    def reader(chosen):
        """The chosen shards with their record counts: a split skips whole shards by them."""
        return {"shards": tuple((files[i], counts[i]) for i in chosen), "parse": parse}

    def bad_records(chosen):
        """(shard, record in it) of the unreadable records of the `chosen` shards, in stream order."""
        return [(i, b) for i in chosen for b in shards[i]["bad"]]

    if named["train"] and named["test"]:
        chosen = {"train": named["train"], "test": named["test"]}
        train, test = (Split((0, 0, 0), sum(counts[i] for i in chosen[s]), **reader(chosen[s]),
                             has_labels=has_labels) for s in ("train", "test"))
    else:
        every = list(range(len(files)))
        chosen = {"train": every, "test": every}
        total = sum(counts)
        if total < 2:
            raise DataError(f"{culprit} holds {total} record(s); need at least 2 to split off a test set")
        n_test = max(1, int(total * TEST_FRACTION))
        whole = Split((0, 0, 0), total, **reader(every), has_labels=has_labels)
        train, test = whole.split_first(total - n_test)
    used = sorted(set(chosen["train"]) | set(chosen["test"]))
    bad = bad_records(used)
    if bad and not skip_bad:
        i, b = bad[0]
        first = tf.data.TFRecordDataset(files[i]).skip(b).take(1).map(parse)
        raise unreadable_error(culprit, len(bad), sum(counts[i] for i in used), f"{Path(files[i]).name} record {b}",
                               next(iter(first))[0].numpy(), False)
    dropped, splits = [], []
    for name, split in (("train", train), ("test", test)):
        starts = np.cumsum([0] + [counts[i] for i in chosen[name]])  # each shard's first position in the stream
        positions = [int(starts[chosen[name].index(i)] + b) for i, b in bad_records(chosen[name])]
        mine = [p - split.start for p in positions if split.start <= p < split.start + split.count]
        splits.append(drop_unreadable(split, mine))
        dropped += [f"{Path(files[i]).name} record {b}" for (i, b), p in zip(bad_records(chosen[name]), positions)
                    if split.start <= p < split.start + split.count]
    if dropped:
        log(f"{culprit}: skipped {len(dropped)} unreadable record(s): {', '.join(dropped[:5])}")
    for split, name in zip(splits, ("train", "test")):
        if split.count == 0:
            raise DataError(f"{culprit}: the {name} split has no readable records")
    shapes = np.array([s for i in used for s in shards[i]["shapes"]], np.int64).reshape(-1, 3)
    if meta and image_size is None and color_mode is None:
        shape = tuple(meta["image_shape"])
    else:
        shape = choose_shape(shapes, image_size, color_mode, None, culprit)
    train, test = (dataclasses.replace(s, image_shape=shape) for s in splits)
    name = meta["name"] if meta else Path(files[0]).parent.name
    return StreamedData(name, train, test, source=culprit,
                        class_names=tuple(meta["class_names"]) if meta and meta.get("class_names") else None,
                        skipped=tuple(dropped))


def first_changed_unreadable(pattern) -> str | None:
    """"SHARD record J" (or "SHARD (why)") of the first unreadable record among the shards changed since the
    dataset index was written, if any: naming a record that broke mid-run without decoding every shard."""
    try:
        files = match_files(pattern)
    except DataError:
        return f"{pattern} (no shards match any more)"
    changed, gone = index.changed_shards(files)
    if gone:
        return f"{gone[0]} (removed)"
    for i in changed:
        try:
            bad = _scan_shard(files[i])["bad"]
        except DataError as err:
            return f"{Path(files[i]).name} ({err})"
        if bad:
            return f"{Path(files[i]).name} record {bad[0]}"
    return None


def _scan_shard(path) -> dict:
    """What the index keeps of one shard: its record count, feature keys, distinct image shapes and the positions
    of its records that do not decode."""
    keys = _feature_keys(path)
    count = _count(path)
    shapes = scan(tf.data.TFRecordDataset(path).map(_parser(*keys)), False, count)
    good = shapes[shapes[:, 0] >= 0]
    return {"count": count, "keys": list(keys), "shapes": np.unique(good, axis=0).tolist() if len(good) else [],
            "bad": np.flatnonzero(shapes[:, 0] < 0).tolist()}


def match_files(pattern) -> list[str]:
    """The shard files of a directory (its *.tfrecord* files) or a glob, sorted."""
    path = Path(pattern).expanduser()
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if ".tfrecord" in p.name and p.is_file())
    else:
        files = sorted(f for f in glob.glob(str(path)) if os.path.isfile(f))
    if not files:
        raise DataError(f"tfrecord:{pattern} matches no files (a directory of *.tfrecord* shards or a glob "
                        "such as 'data/train-*.tfrecord')")
    return files


def _metadata(files):
    """The converter's metadata if it describes exactly these (unchanged) files, else None."""
    meta_path = Path(files[0]).parent / METADATA
    try:
        meta = json.loads(meta_path.read_text())
        listed = meta["files"]
        if all(Path(f).name in listed and os.path.getsize(f) == listed[Path(f).name]["bytes"] for f in files):
            return meta
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _first_record(path):
    try:
        for record in tf.data.TFRecordDataset(path).take(1):
            return record.numpy()
    except tf.errors.OpError as err:
        raise DataError(f"tfrecord {path}: not a readable TFRecord file ({err.message.splitlines()[0]})") from None
    raise DataError(f"tfrecord {path}: the file holds no records")


def _feature_keys(path):
    """(image key, label key or None) of a shard, from its first record."""
    try:
        features = tf.train.Example.FromString(_first_record(path)).features.feature
    except Exception as err:  # protobuf's DecodeError
        raise DataError(f"tfrecord {path}: records are not tf.train.Example protos ({err})") from None
    image = [k for k in IMAGE_KEYS if k in features and features[k].WhichOneof("kind") == "bytes_list"]
    if not image:
        raise DataError(f"tfrecord {path}: no encoded image feature; expected bytes under "
                        f"{' or '.join(map(repr, IMAGE_KEYS))}, found keys {sorted(features)}")
    label = [k for k in LABEL_KEYS if k in features and features[k].WhichOneof("kind") == "int64_list"]
    return image[0], (label[0] if label else None)


def _count(path) -> int:
    """The number of records; a shard cut mid-record is an error (TFRecordDataset just stops there)."""
    def add(totals, record):  # each record takes 16 framing bytes (length, 2 CRCs) besides its data
        return totals[0] + 1, totals[1] + 16 + tf.cast(tf.strings.length(record), tf.int64)

    try:
        count, size = tf.data.TFRecordDataset(path).reduce((np.int64(0), np.int64(0)), add)
    except tf.errors.OpError as err:
        raise DataError(f"tfrecord {path}: corrupt or truncated ({err.message.splitlines()[0]})") from None
    if int(size) != os.path.getsize(path):
        raise DataError(f"tfrecord {path}: truncated ({int(count)} whole records end at byte {int(size)} "
                        f"of {os.path.getsize(path)})")
    return int(count)


def _parser(image_key, label_key):
    spec = {image_key: tf.io.FixedLenFeature([], tf.string)}
    if label_key:
        spec[label_key] = tf.io.FixedLenFeature([], tf.int64, default_value=-1)

    def parse(record):
        example = tf.io.parse_single_example(record, spec)
        return example[image_key], example[label_key] if label_key else tf.constant(-1, tf.int64)

    return parse


def write_tfrecords(data, out_dir, *, shard_bytes=100 << 20, seed=0, log=print) -> dict:
    """Convert `data` (StreamedData or ImageData) into TFRecord shards in `out_dir`, which must not exist.

    Images in files or records keep their original encoding (no re-compression); arrays are written as
    8-bit PNG. Each split is written in a seeded random order (so the first N records are a random
    sample), in shards of about `shard_bytes`. The shards appear in `out_dir` only when all are written.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DataError(f"out: {out_dir} already exists and is not empty; choose a new directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        files = {}
        for name in ("train", "test"):
            files.update(_write_split(_encoded_items(data, name, seed), name, tmp, shard_bytes))
        meta = {"format": "kerasae-tfrecord/1", "name": data.name, "image_shape": list(data.image_shape),
                "class_names": list(getattr(data, "class_names", None) or []), "files": files,
                "counts": {s: sum(v["count"] for k, v in files.items() if k.startswith(s)) for s in ("train", "test")}}
        (tmp / METADATA).write_text(json.dumps(meta, indent=1))
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {meta['counts']['train']} train and {meta['counts']['test']} test images to {out_dir} "
        f"({len(files)} shards)")
    return meta


def _encoded_items(data, split_name, seed):
    """(count, iterator of (encoded bytes, label)) of one split: files and arrays in a seeded random order
    (so the first N records are a random sample); records in their own order (random access would need
    them all in memory)."""
    rng = np.random.default_rng(seed)
    if data.streamed:
        split = getattr(data, split_name)
        if split.paths is not None:
            order = rng.permutation(split.count)
            labels = split.labels if split.labels is not None else np.full(split.count, -1, np.int64)
            ds = tf.data.Dataset.from_tensor_slices((split.paths[order].astype(str), labels[order]))
            ds = ds.map(lambda path, label: (tf.io.read_file(path), label), num_parallel_calls=8)
        else:
            ds = split.encoded()
        return split.count, untuned(ds.prefetch(64)).as_numpy_iterator()
    x, y = (data.x_train, data.y_train) if split_name == "train" else (data.x_test, data.y_test)
    order = rng.permutation(len(x))

    def items():
        for i in order:
            pixels = np.round(x[i] * 255.0).astype(np.uint8)
            yield tf.io.encode_png(pixels).numpy(), -1 if y is None else int(y[i])

    return len(x), items()


def _write_split(items, name, out_dir, shard_bytes):
    """Write records into shards of about `shard_bytes`, named <name>-<i>-of-<n>.tfrecord once all are written."""
    count, iterator = items
    shards, writer, size = [], None, 0
    for image, label in iterator:
        if writer is None or size >= shard_bytes:
            if writer is not None:
                writer.close()
            shards.append([out_dir / f"{name}-{len(shards):05d}.partial", 0])
            writer, size = tf.io.TFRecordWriter(str(shards[-1][0])), 0
        feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))}
        if label >= 0:
            feature["label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)]))
        record = tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
        writer.write(record)
        size += len(record)
        shards[-1][1] += 1
    if writer is not None:
        writer.close()
    if sum(n for _, n in shards) != count:
        raise DataError(f"{name}: expected {count} images, read {sum(n for _, n in shards)}")
    files = {}
    for i, (path, n) in enumerate(shards):
        final = out_dir / f"{name}-{i:05d}-of-{len(shards):05d}.tfrecord"
        path.rename(final)
        files[final.name] = {"count": n, "bytes": final.stat().st_size}
    return files
