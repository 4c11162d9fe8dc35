#!/usr/bin/env python
"""Peak memory of `scripts/evaluate.py` on a streamed test split of 10,000 and of 50,000 images.

    python benchmarks/evaluate_memory.py           # writes results/evaluate_memory.json
    python benchmarks/evaluate_memory.py --quick   # 100 and 300 test images, no in-memory runs: a smoke test

One small run (vae-mlp, 8-D latent, one epoch streamed from 300 training PNGs) is evaluated on folders whose
test/ holds N generated 28x28 grey PNGs (seeded smooth fields with noise, made once under --cache-dir): the
run directory is copied per N with its config.json pointing at that folder. Each evaluation runs in a child
process, `scripts/evaluate.py RUN --k K` (IWAE NLL and ELBO, active units, KL, reconstruction metrics, prior
match, a batch at a time); its peak RSS is ru_maxrss from wait4. Target: peak(50k) <= 1.25 x peak(10k).
For comparison (not in --quick), the same `evaluate_run` with the test split decoded into arrays first (as
evaluate did before it streamed), and its NLL, which the streamed one must equal. Peak RSS does not depend on
what else the machine runs (the wall times do), so a busy machine still gives the memory figures.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import _common as common

MEMORY_TARGET_RATIO = 1.25
TRAIN_IMAGES = 300

_IN_MEMORY = """
import json, sys
sys.path.insert(0, sys.argv[3])
from kerasae import evaluate as ev
whole = ev.run_data
ev.run_data = lambda run_dir, stream_test=False: whole(run_dir)  # the whole test split decoded into arrays
print(json.dumps(ev.evaluate_run(sys.argv[1], k=int(sys.argv[2]), progress=False)))
"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small folders, no in-memory runs: a smoke test")
    parser.add_argument("--sizes", type=common.int_list, help="test images per folder (default 10000,50000)")
    parser.add_argument("--k", type=common.positive_int, default=4, help="importance samples (default: 4)")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "kerasae-bench-evaluate",
                        help="where the generated image folders are kept (default: %(default)s)")

    def defaults(args):
        return {"sizes": [100, 300] if args.quick else [10_000, 50_000]}

    return common.parse_args(parser, argv, defaults, "evaluate_memory.json")


def lscpu():
    """lscpu's model name and flags (None where lscpu is missing)."""
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return {"model_name": None, "flags": None}
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    return {"model_name": fields.get("Model name", "").strip() or None, "flags": fields.get("Flags", "").strip()}


def _write_pngs(folder, count, seed):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (5, 5), dtype=np.uint8))
        fine = np.asarray(coarse.resize((28, 28), Image.BICUBIC), np.int16) + rng.integers(-8, 9, (28, 28))
        Image.fromarray(np.clip(fine, 0, 255).astype(np.uint8)).save(folder / f"{i:06d}.png")


def image_folder(cache_dir, count):
    """DIR/train (TRAIN_IMAGES PNGs, the same for every count) and DIR/test (`count` PNGs), made once."""
    folder = cache_dir / f"png28-test{count}"
    done = folder / ".complete"
    if not done.exists():
        common.log(f"generating {TRAIN_IMAGES} + {count} PNGs in {folder}")
        _write_pngs(folder / "train", TRAIN_IMAGES, seed=0)
        _write_pngs(folder / "test", count, seed=count)
        done.write_text("")
    return folder


def measure(command):
    """(peak RSS bytes, wall s, parsed stdout) of one child process."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(command, cwd=common.REPO, stdout=out, stderr=err,
                                env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if proc.returncode != 0:
            sys.stderr.write(err.read().decode()[-4000:])
            raise SystemExit(f"evaluate_memory.py: {' '.join(map(str, command[:3]))} failed with exit status "
                             f"{proc.returncode}")
        return usage.ru_maxrss * 1024, seconds, json.loads(out.read().decode())


def train_run(folder, run_dir):
    command = [sys.executable, "scripts/train.py", "--preset", "vae-mlp", "--latent-dim", "8", "--dataset",
               f"images:{folder}", "--image-size", "28x28", "--color-mode", "grayscale", "--data-mode", "stream",
               "--epochs", "1", "--batch-size", "64", "--validation-size", "50", "--out", str(run_dir),
               "--verbose", "0"]
    common.log(" ".join(command[1:]))
    subprocess.run(command, cwd=common.REPO, check=True, stdout=subprocess.DEVNULL,
                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))


def run_for(run_dir, folder, copy):
    """A copy of the run at `copy` whose config.json reads `folder` (so its test split is that folder's test/)."""
    shutil.copytree(run_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    config["train"]["dataset"] = f"images:{folder}"
    (copy / "config.json").write_text(json.dumps(config, indent=1))
    return copy


def main(argv=None):
    args = parse_args(argv)
    result = common.header("evaluate_memory", args, args.quick)
    result["lscpu"] = lscpu()
    folders = {n: image_folder(args.cache_dir, n) for n in args.sizes}
    runs = []
    with tempfile.TemporaryDirectory(prefix="kerasae-bench-eval-") as work:
        work = Path(work)
        train_run(folders[args.sizes[0]], work / "trained")
        for n in args.sizes:
            run = run_for(work / "trained", folders[n], work / f"streamed-{n}")
            command = [sys.executable, "scripts/evaluate.py", str(run), "--k", str(args.k), "--no-progress",
                       "--json"]
            common.log(f"evaluate, streamed: {n} test images")
            rss, seconds, out = measure(command)
            row = {"test_images": n, "streamed": {"peak_rss_bytes": rss, "wall_s": round(seconds, 1),
                                                  "nll": out["vae"]["nll"], "num_test": out["num_test"]}}
            if not args.quick:
                common.log(f"evaluate, in memory: {n} test images")
                run = run_for(work / "trained", folders[n], work / f"in-memory-{n}")  # no evaluation cache
                rss, seconds, out = measure([sys.executable, "-c", _IN_MEMORY, str(run), str(args.k),
                                             str(common.REPO)])
                row["in_memory"] = {"peak_rss_bytes": rss, "wall_s": round(seconds, 1), "nll": out["vae"]["nll"],
                                    "num_test": out["num_test"]}
                row["nll_difference"] = abs(row["streamed"]["nll"] - row["in_memory"]["nll"])
            runs.append(row)
    small, large = runs[0]["streamed"]["peak_rss_bytes"], runs[-1]["streamed"]["peak_rss_bytes"]
    result["runs"] = runs
    result["ratio_largest_to_smallest"] = common.ratio(large, small)
    result["target"] = f"streamed peak RSS ratio <= {MEMORY_TARGET_RATIO}"
    result["note_memory"] = "peak RSS does not depend on other processes' load; the wall times do"
    result["met"] = large <= MEMORY_TARGET_RATIO * small
    if not args.quick:
        result["in_memory_ratio_largest_to_smallest"] = common.ratio(runs[-1]["in_memory"]["peak_rss_bytes"],
                                                                     runs[0]["in_memory"]["peak_rss_bytes"])
    out = common.write_result(args.out, result)
    lines = common.report_header(result, out)
    for row in runs:
        line = (f"{row['test_images']:>7,} test images: streamed peak RSS "
                f"{row['streamed']['peak_rss_bytes'] / 2**20:,.0f} MiB")
        if "in_memory" in row:
            line += f", in memory {row['in_memory']['peak_rss_bytes'] / 2**20:,.0f} MiB"
        lines.append(line)
    lines.append(f"streamed peak RSS ratio {result['ratio_largest_to_smallest']} (target <= {MEMORY_TARGET_RATIO}, "
                 f"met: {result['met']})")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
