"""A dataset's scan, kept: what decoding found (image shapes, unreadable files; for TFRecord shards their record
counts, feature keys, shapes and unreadable records) is written once and verified by `os.stat` on later opens, so
that only new or changed files are decoded again.

The index lives beside the data (`DIR/.kerasae_index.json`) where that is writable and outside the installed
package, else in the cache directory (`$KERASAE_CACHE/index/`, default `~/.cache/kerasae/index/`) under a hash of
the data's path. It holds the images' own shapes and readability, which do not depend on `image_size`,
`color_mode` or `skip_bad_images`, so one index serves every option. An entry is trusted only while its file has
the recorded size and mtime (in ns) and that mtime is older than the scan by `RACY_WINDOW_NS` (a file rewritten
within the filesystem's timestamp granularity of the scan could otherwise keep both); anything else is decoded
again. An index of another format, decoder, kind or path, or one that does not parse, is ignored and rewritten.
"""

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from kerasae.data import streams
from kerasae.files import write_json

INDEX_NAME = ".kerasae_index.json"
FORMAT = "kerasae-index/1"
#: Entries whose mtime is this close to (or after) the scan are decoded again on the next open: 2 s covers the
#: coarsest common timestamps (FAT), and Linux's coarse clock ticks of a few ms.
RACY_WINDOW_NS = 2_000_000_000


def cache_dir() -> Path:
    """Where indexes of read-only data go: $KERASAE_CACHE/index, else $XDG_CACHE_HOME (~/.cache)/kerasae/index."""
    if os.environ.get("KERASAE_CACHE"):
        return Path(os.environ["KERASAE_CACHE"]).expanduser() / "index"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "kerasae" / "index"


def index_locations(root) -> list[Path]:
    """Candidate index files of the data at `root`: beside it (unless inside the package), then the cache."""
    root = Path(root).resolve()
    cached = cache_dir() / f"{hashlib.sha256(str(root).encode()).hexdigest()[:24]}.json"
    package = Path(__file__).resolve().parents[1]
    return [cached] if root == package or package in root.parents else [root / INDEX_NAME, cached]


def _decoder():
    return f"tf.io.decode_image (tensorflow {tf.__version__})"


def load(root, kind) -> tuple[dict, int]:
    """(entries, scan time in ns) of the first valid index of `root` for `kind`, or ({}, 0) when none is."""
    for path in index_locations(root):
        try:
            index = json.loads(path.read_text())
            if (index["format"], index["kind"], index["root"], index["decoder"]) == (
                    FORMAT, kind, str(Path(root).resolve()), _decoder()) and isinstance(index["entries"], dict):
                return index["entries"], int(index["scanned_at_ns"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # missing, unreadable, corrupt or foreign: not trusted
    return {}, 0


def save(root, kind, entries, scanned_at_ns, log=print):
    """Write the index atomically beside the data, else in the cache; a failure costs a rescan, so it is logged,
    not raised."""
    index = {"format": FORMAT, "kind": kind, "root": str(Path(root).resolve()), "decoder": _decoder(),
             "scanned_at_ns": scanned_at_ns, "entries": entries}
    errors = []
    for path in index_locations(root):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, index)
            return path
        except OSError as err:
            errors.append(str(err))
    log(f"note: the scan of {root} could not be saved, so the next open decodes every image again "
        f"({'; '.join(errors)})")
    return None


def _stat(path):
    try:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    except OSError:
        return -1, -1  # vanished or unreadable: never matches an entry, so it is decoded (and found unreadable)


def _ints(value, n):
    return isinstance(value, list) and len(value) == n and all(type(v) is int for v in value)


def _trusted(stat_and_more, stat, scanned_at_ns):
    """Whether an entry starting with [size, mtime_ns] still describes a file of `stat`."""
    return (stat[0] >= 0 and isinstance(stat_and_more, list) and list(stat_and_more[:2]) == list(stat)
            and stat[1] < scanned_at_ns - RACY_WINDOW_NS)


def folder_shapes(root, paths, log=print) -> np.ndarray:
    """Shapes [len(paths), 3] of the image files `paths` under `root` (rows of -1: unreadable), decoding only the
    files the index does not vouch for, and the index rewritten when anything changed."""
    root = Path(root)
    scanned_at = time.time_ns()  # before the stats: a file changed after its stat has a later mtime
    old, old_scanned_at = load(root, "images")
    names = [os.path.relpath(p, root) for p in paths]
    stats = [_stat(p) for p in paths]
    shapes = np.full((len(paths), 3), -1, np.int64)
    todo = []
    for i, (name, stat) in enumerate(zip(names, stats)):
        entry = old.get(name)
        if _ints(entry, 5) and _trusted(entry, stat, old_scanned_at):
            shapes[i] = entry[2:]
        else:
            todo.append(i)
    if todo:
        chosen = np.asarray(paths)[todo].astype(str)
        encoded = tf.data.Dataset.from_tensor_slices((chosen, np.full(len(todo), -1, np.int64)))
        shapes[todo] = streams.scan(encoded, True, len(todo))
    if todo or len(old) != len(names):
        entries = {name: [*stat, *map(int, shape)] for name, stat, shape in zip(names, stats, shapes)}
        save(root, "images", entries, scanned_at if todo else old_scanned_at, log)
    return shapes


def changed_files(root, paths) -> list[int]:
    """Indices of `paths` whose stat no longer matches the index, or that it lists as unreadable or not at all:
    the only files that can have broken since the index was written."""
    old, scanned_at = load(root, "images")
    out = []
    for i, path in enumerate(paths):
        entry = old.get(os.path.relpath(path, root))
        if not (_ints(entry, 5) and _trusted(entry, _stat(path), scanned_at)) or entry[2] < 0:
            out.append(i)
    return out


def shard_entries(files, scan_shard, log=print) -> list[dict]:
    """Per shard: {"count", "keys", "shapes" (distinct shapes of its readable records), "bad" (their positions in
    the shard)}, from the index where the shard is unchanged, else from `scan_shard(path)`."""
    root = Path(os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files]))
    scanned_at = time.time_ns()
    old, old_scanned_at = load(root, "tfrecord")
    names = [os.path.relpath(f, root) for f in files]
    out, rescanned = [], False
    for name, path in zip(names, files):
        stat = _stat(path)
        entry = old.get(name)
        if _valid_shard(entry) and _trusted(entry["stat"], stat, old_scanned_at):
            out.append(entry)
        else:
            out.append({"stat": list(stat), **scan_shard(path)})
            rescanned = True
    if rescanned or len(old) != len(names):
        save(root, "tfrecord", dict(zip(names, out)), scanned_at if rescanned else old_scanned_at, log)
    return out


def _valid_shard(entry):
    if not isinstance(entry, dict) or not _ints(entry.get("stat"), 2) or type(entry.get("count")) is not int:
        return False
    keys, shapes, bad = entry.get("keys"), entry.get("shapes"), entry.get("bad")
    return (isinstance(keys, list) and len(keys) == 2 and isinstance(keys[0], str)
            and (keys[1] is None or isinstance(keys[1], str))
            and isinstance(shapes, list) and all(_ints(s, 3) for s in shapes)
            and _ints(bad, len(bad) if isinstance(bad, list) else -1)
            and all(0 <= b < entry["count"] for b in bad))
