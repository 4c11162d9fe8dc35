#!/usr/bin/env python
"""Opening an image folder the first time (every file decoded, the index written) against reopening it (the index
verified by stat), with `kerasae.data.open_dataset(..., mode="stream")`.

    python benchmarks/dataset_index.py            # 10,000 and 50,000 small PNGs; writes results/dataset_index.json
    python benchmarks/dataset_index.py --quick    # 200 and 500 images: a smoke test of this script

Each folder holds N RGB PNGs of 64x64 (~8 KB, as in benchmarks/streaming.py and docs/data.md's scan figure) or 32x32
pixels (~2.5 KB: decoding is cheaper, so the index saves less), seeded smooth colour fields in 10 class subfolders,
generated once under --cache-dir and dated an hour back (an index trusts only files older than its racy window, as a
dataset on disk is). For each size, in one process after a warm-up open of a small folder (TensorFlow's start-up and
tracing are not the scan's): the index is deleted and the folder opened (the first open), then reopened --repeats
times; then 1% of the files get a new mtime and the folder is reopened once (those files decoded again). The files
are in the page cache throughout (they were just written or read), so the first open measures decoding, not the
disk.
Wall and CPU time (this process's, all threads) are both recorded: on a shared machine the CPU time is the steadier.
Target: the median reopen of the largest folder of 64x64 images takes <= 5% of its first open's wall time.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import _common as common

TARGET = 0.05
CLASSES = 10


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small folders: a smoke test")
    parser.add_argument("--sizes", type=common.int_list, help="image counts (default 10000,50000)")
    parser.add_argument("--repeats", type=common.positive_int, help="reopens per folder (default 5)")
    parser.add_argument("--sides", type=common.int_list, help="image sizes in pixels, the target's first "
                        "(default 64,32)")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "kerasae-bench-index",
                        help="where the generated image folders are kept (default: %(default)s)")

    def defaults(args):
        return {"sizes": [200, 500] if args.quick else [10_000, 50_000], "repeats": 2 if args.quick else 5,
                "sides": [32] if args.quick else [64, 32]}

    return common.parse_args(parser, argv, defaults, "dataset_index.json")


def image_folder(cache_dir, count, side):
    """`count` side x side RGB PNGs in CLASSES subfolders (made once), dated an hour back."""
    from PIL import Image

    folder = cache_dir / f"png{side}-{count}"
    done = folder / ".complete"
    if not done.exists():
        common.log(f"generating {count} PNGs in {folder}")
        rng = np.random.default_rng(count)
        for i in range(count):
            coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
            path = folder / f"class{i % CLASSES}" / f"{i:06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            fine = np.asarray(coarse.resize((side, side), Image.BICUBIC), np.int16)
            Image.fromarray(np.clip(fine + rng.integers(-6, 7, fine.shape), 0, 255).astype(np.uint8)).save(path)
        done.write_text("")
    an_hour_ago = time.time_ns() - 3600 * 10**9
    for path in folder.rglob("*.png"):
        os.utime(path, ns=(an_hour_ago, an_hour_ago))
    return folder


def cpu_flags():
    """The CPU's feature flags (lscpu's "Flags"), from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("flags"):
                return line.split(":", 1)[1].split()
    except OSError:
        pass
    return None


def remove_index(folder):
    from kerasae.data import index

    for path in index.index_locations(folder):
        path.unlink(missing_ok=True)


def timed_open(folder):
    from kerasae.data import open_dataset

    start, cpu = time.perf_counter(), time.process_time()
    data = open_dataset(f"images:{folder}", mode="stream", log=common.log)
    return time.perf_counter() - start, time.process_time() - cpu, data


def measure(folder, repeats, side):
    remove_index(folder)
    first_s, first_cpu_s, data = timed_open(folder)
    count = data.train.count + data.test.count
    reopens, reopens_cpu = zip(*[timed_open(folder)[:2] for _ in range(repeats)])
    touched = sorted(folder.rglob("*.png"))[::100]  # 1% of the files: new mtime, same bytes
    an_hour_ago = time.time_ns() - 3600 * 10**9 + 10**9
    for path in touched:
        os.utime(path, ns=(an_hour_ago, an_hour_ago))
    changed_s, _, _ = timed_open(folder)
    reopen, reopen_cpu = statistics.median(reopens), statistics.median(reopens_cpu)
    common.log(f"{count} {side}x{side} images: first open {first_s:.2f} s, reopen {reopen:.3f} s, "
               f"with 1% changed {changed_s:.2f} s")
    return {"images": count, "side": side, "first_open_s": round(first_s, 4), "reopen_s": common.summarize(reopens),
            "reopen_1_percent_changed_s": round(changed_s, 3), "changed_files": len(touched),
            "ratio_reopen_to_first": common.ratio(reopen, first_s),
            "first_open_cpu_s": round(first_cpu_s, 4), "reopen_cpu_s": common.summarize(reopens_cpu),
            "ratio_reopen_to_first_cpu": common.ratio(reopen_cpu, first_cpu_s)}


def main(argv=None):
    args = parse_args(argv)
    common.setup_imports()
    result = common.header("dataset_index", args, args.quick)
    folders = {(side, n): image_folder(args.cache_dir, n, side) for side in args.sides for n in args.sizes}
    warm = image_folder(args.cache_dir, 50, args.sides[0])
    remove_index(warm)
    timed_open(warm)  # TensorFlow's start-up and the scan's first tracing
    runs = [measure(folders[side, n], args.repeats, side) for side in args.sides for n in args.sizes]
    largest = runs[len(args.sizes) - 1]  # the largest folder of the first image size
    result["setup"] = {"image": "RGB PNG, side x side pixels", "classes": CLASSES, "repeats": args.repeats,
                       "mode": "open_dataset(images:DIR, mode='stream') in one process, files in the page cache"}
    result["cpu_flags"] = cpu_flags()
    result["runs"] = runs
    result["target"] = (f"reopen of the largest folder of {args.sides[0]}x{args.sides[0]} images <= {TARGET} x its "
                        "first open (wall time)")
    result["met"] = largest["ratio_reopen_to_first"] <= TARGET
    out = common.write_result(args.out, result)
    lines = common.report_header(result, out)
    for run in runs:
        lines.append(f"{run['images']:>7,} {run['side']}x{run['side']} images: first open {run['first_open_s']:.2f} s, "
                     f"reopen {run['reopen_s']['median']:.3f} s (ratio {run['ratio_reopen_to_first']}; CPU time "
                     f"{run['ratio_reopen_to_first_cpu']}), 1% changed "
                     f"{run['reopen_1_percent_changed_s']:.2f} s")
    lines.append(f"target: {result['target']}; met: {result['met']}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
