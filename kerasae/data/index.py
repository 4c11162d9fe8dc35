"""A dataset's scan, kept: what decoding found (image shapes, unreadable files; for TFRecord shards their record
counts, feature keys, shapes and unreadable records) is written once and verified by `os.stat` on later opens, so
that only new or changed files are decoded again.

The index lives beside the data (`DIR/.kerasae_index.npz`) where that is writable and outside the installed
package, else in the cache directory (`$KERASAE_CACHE/index/`, default `~/.cache/kerasae/index/`) under a hash of
the data's path. It holds the images' own shapes and readability, which do not depend on `image_size`,
`color_mode` or `skip_bad_images`, so one index serves every option. An entry is trusted only while its file has
the recorded size and mtime (in ns) and that mtime is older than the scan by `RACY_WINDOW_NS` (a file rewritten
within the filesystem's timestamp granularity of the scan could otherwise keep both); anything else is decoded
again. An index of another format, decoder, kind or path, or one that does not load, is ignored and rewritten.
It is an .npz of plain arrays (names, and int64 [size, mtime_ns, height, width, channels] per file, loaded without
pickle): a 50,000-file folder's index loads and is checked in milliseconds, which a JSON one is not.
"""

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from kerasae.data import streams
from kerasae.files import atomic_path

INDEX_NAME = ".kerasae_index.npz"
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
    cached = cache_dir() / f"{hashlib.sha256(str(root).encode()).hexdigest()[:24]}.npz"
    package = Path(__file__).resolve().parents[1]
    return [cached] if root == package or package in root.parents else [root / INDEX_NAME, cached]


def _decoder():
    return f"tf.io.decode_image (tensorflow {tf.__version__})"


def load(root, kind) -> tuple[dict | None, dict]:
    """(header, arrays) of the first valid index of `root` for `kind`, or (None, {}) when none is."""
    for path in index_locations(root):
        try:
            with np.load(path, allow_pickle=False) as archive:
                header = json.loads(str(archive["header"][()]))
                if (header["format"], header["kind"], header["root"], header["decoder"]) != (
                        FORMAT, kind, str(Path(root).resolve()), _decoder()):
                    continue  # foreign
                header["scanned_at_ns"] = int(header["scanned_at_ns"])
                return header, {name: archive[name] for name in archive.files if name != "header"}
        except Exception:  # noqa: BLE001  (missing, truncated, not an npz, bad header: a cache miss, never trusted)
            continue
    return None, {}


def save(root, kind, scanned_at_ns, log=print, extra=None, **arrays):
    """Write the index atomically beside the data, else in the cache; a failure costs a rescan, so it is logged,
    not raised. `extra` goes into the JSON header; `arrays` are stored as they are."""
    header = {"format": FORMAT, "kind": kind, "root": str(Path(root).resolve()), "decoder": _decoder(),
              "scanned_at_ns": int(scanned_at_ns), **(extra or {})}
    errors = []
    for path in index_locations(root):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_npz(path, header=np.array(json.dumps(header)), **arrays)
            return path
        except OSError as err:
            errors.append(str(err))
    log(f"note: the scan of {root} could not be saved, so the next open decodes every image again "
        f"({'; '.join(errors)})")
    return None


def write_npz(path, **arrays):
    """np.savez, atomically (kerasae.files.atomic_path): a reader sees the old index or the new one."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _stats(paths) -> np.ndarray:
    """int64 [N, 2]: (size, mtime_ns) of each path, (-1, -1) where it cannot be stat'ed (then it never matches an
    entry, so it is decoded and found unreadable)."""
    def stat(path):
        try:
            st = os.stat(path)
            return st.st_size, st.st_mtime_ns
        except OSError:
            return -1, -1

    return np.array([stat(path) for path in paths], np.int64).reshape(-1, 2)


def _relative(paths, root) -> list[str]:
    """The paths relative to `root` (string slicing: os.path.relpath costs ~25 us a file)."""
    prefix = os.path.join(str(root), "")
    return [p[len(prefix):] if p.startswith(prefix) else os.path.relpath(p, root) for p in map(str, paths)]


def _vouched(root, names, stats):
    """(bool [N]: the index vouches for file i, int64 [N, 3]: its recorded shape, the loaded index's file count and
    scan time)."""
    header, arrays = load(root, "images")
    trusted, shapes = np.zeros(len(names), bool), np.full((len(names), 3), -1, np.int64)
    old_names, values = arrays.get("names"), arrays.get("values")
    if (header is None or old_names is None or values is None or old_names.dtype.kind != "U" or old_names.ndim != 1
            or values.dtype != np.int64 or values.shape != (len(old_names), 5)):
        return trusted, shapes, -1, 0
    lookup = dict(zip(old_names.tolist(), range(len(old_names))))
    position = np.array([lookup.get(name, -1) for name in names], np.int64)
    rows = values[np.maximum(position, 0)] if len(values) else np.zeros((len(names), 5), np.int64)
    sane = np.all(rows[:, 2:] > 0, axis=1) | np.all(rows[:, 2:] == -1, axis=1)  # a shape, or unreadable
    trusted = ((position >= 0) & sane & (stats[:, 0] >= 0) & (rows[:, 0] == stats[:, 0]) & (rows[:, 1] == stats[:, 1])
               & (stats[:, 1] < header["scanned_at_ns"] - RACY_WINDOW_NS))
    shapes[trusted] = rows[trusted, 2:]
    return trusted, shapes, len(old_names), header["scanned_at_ns"]


def folder_shapes(root, paths, log=print) -> np.ndarray:
    """Shapes [len(paths), 3] of the image files `paths` under `root` (rows of -1: unreadable), decoding only the
    files the index does not vouch for, and the index rewritten when anything changed."""
    scanned_at = time.time_ns()  # before the stats: a file changed after its stat has a later mtime
    names = _relative(paths, root)
    stats = _stats(paths)
    trusted, shapes, old_count, old_scanned_at = _vouched(root, names, stats)
    todo = np.flatnonzero(~trusted)
    if len(todo):
        chosen = np.asarray(paths)[todo].astype(str)
        encoded = tf.data.Dataset.from_tensor_slices((chosen, np.full(len(todo), -1, np.int64)))
        shapes[todo] = streams.scan(encoded, True, len(todo))
    if len(todo) or old_count != len(names):
        save(root, "images", scanned_at if len(todo) else old_scanned_at, log,
             names=np.array(names, dtype=str).reshape(-1), values=np.concatenate([stats, shapes], axis=1))
    return shapes


def changed_files(root, paths) -> np.ndarray:
    """Indices of `paths` whose stat no longer matches the index, or that it lists as unreadable or not at all:
    the only files that can have broken since the index was written."""
    trusted, shapes, _, _ = _vouched(root, _relative(paths, root), _stats(paths))
    return np.flatnonzero(~trusted | (shapes[:, 0] < 0))


def shard_entries(files, scan_shard, log=print) -> list[dict]:
    """Per shard: {"stat", "count", "keys", "shapes" (distinct shapes of its readable records), "bad" (their
    positions in the shard)}, from the index where the shard is unchanged, else from `scan_shard(path)`."""
    root = Path(os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files]))
    scanned_at = time.time_ns()
    header, _ = load(root, "tfrecord")
    old = header.get("shards") if header else None
    old = old if isinstance(old, dict) else {}
    names = _relative([os.path.abspath(f) for f in files], root)
    out, rescanned = [], False
    for name, path, stat in zip(names, files, _stats(files).tolist()):
        entry = old.get(name)
        if (_valid_shard(entry) and stat[0] >= 0 and entry["stat"] == stat
                and stat[1] < header["scanned_at_ns"] - RACY_WINDOW_NS):
            out.append(entry)
        else:
            out.append({"stat": stat, **scan_shard(path)})
            rescanned = True
    if rescanned or len(old) != len(names):
        save(root, "tfrecord", scanned_at if rescanned else header["scanned_at_ns"], log,
             extra={"shards": dict(zip(names, out))})
    return out


def changed_shards(files) -> tuple[list[int], list[str]]:
    """(indices of `files` whose stat no longer matches the index or that it does not list, names it lists that
    are gone): the only shards that can have broken since the index was written."""
    root = Path(os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files]))
    header, _ = load(root, "tfrecord")
    old = header.get("shards") if header else None
    if not isinstance(old, dict):
        return [], []  # no index (e.g. converted shards): nothing is known to have changed
    names = _relative([os.path.abspath(f) for f in files], root)
    changed = [i for i, (name, stat) in enumerate(zip(names, _stats(files).tolist()))
               if not (_valid_shard(old.get(name)) and old[name]["stat"] == stat)]
    return changed, sorted(set(old) - set(names))


def _ints(value, n):
    return isinstance(value, list) and len(value) == n and all(type(v) is int for v in value)


def _valid_shard(entry):
    if not isinstance(entry, dict) or not _ints(entry.get("stat"), 2) or type(entry.get("count")) is not int:
        return False
    keys, shapes, bad = entry.get("keys"), entry.get("shapes"), entry.get("bad")
    return (isinstance(keys, list) and len(keys) == 2 and isinstance(keys[0], str)
            and (keys[1] is None or isinstance(keys[1], str))
            and isinstance(shapes, list) and all(_ints(s, 3) and min(s) > 0 for s in shapes)
            and isinstance(bad, list) and _ints(bad, len(bad)) and all(0 <= b < entry["count"] for b in bad))
