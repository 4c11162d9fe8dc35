#!/usr/bin/env python
"""Memory and speed of training on image files streamed from disk (`--data-mode stream`) against in memory.

    python benchmarks/streaming.py            # 10,000 and 50,000 64x64 RGB PNGs; writes results/streaming.json
    python benchmarks/streaming.py --quick    # 600 and 1,500 images: a smoke test of this script

Memory: `scripts/train.py --preset vae-conv --likelihood gaussian --dataset images:DIR --image-size 64x64
--color-mode rgb --data-mode stream --epochs 1` on folders of N generated PNGs; the peak RSS of each
training process (ru_maxrss from wait4). Targets: peak(50k) <= 1.25 x peak(10k) and < 3 GB. For
comparison, the same command with `--data-mode memory` on the small folder.
Speed: one process, one model (vae-conv, Gaussian, 64x64x3, batch 128, 16 steps per call), the small
folder's training split fed by `make_dataset` from the files (streamed) and from the same images decoded
into memory, one epoch each in ABBA order after a traced warm-up epoch of each; the wall and CPU time of
each epoch. Target: stream >= 0.8 x memory in samples/s. One process, because separate runs differ more
than the modes do; and epochs are compared with epochs that used as many cores: on this machine
TensorFlow runs some whole fit() calls on one of the two cores (CPU time = wall time, the same CPU time per
image, twice the wall time) whichever pipeline feeds them, so a median over all epochs measures that coin
toss. The CPU time per image of each mode is reported too: it does not depend on it.

The image folders are generated once (seeded smooth colour fields, ~8 KB PNGs) under --cache-dir and
each finished measurement is kept in a checkpoint next to --out, so rerunning the same command
resumes where a killed run stopped.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import _common as common

TRAIN_FLAGS = ["--preset", "vae-conv", "--likelihood", "gaussian", "--image-size", "64x64", "--color-mode", "rgb",
               "--verbose", "2"]
MEMORY_TARGET_RATIO, MEMORY_TARGET_BYTES, SPEED_TARGET = 1.25, 3e9, 0.8
#: CPU time / wall time at which an epoch counts as having run on two cores (one-core epochs sit near 1.0).
TWO_CORES = 1.5


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small folders: a smoke test")
    parser.add_argument("--sizes", type=common.int_list, help="image counts of the memory runs (default 10000,50000)")
    parser.add_argument("--repeats", type=common.positive_int,
                        help="ABBA rounds of the speed measurement, two epochs per mode each (default 3)")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "kerasae-bench-streaming",
                        help="where the generated image folders are kept (default: %(default)s)")

    def defaults(args):
        return {"sizes": [600, 1500] if args.quick else [10_000, 50_000], "repeats": 1 if args.quick else 3}

    return common.parse_args(parser, argv, defaults, "streaming.json")


def image_folder(cache_dir, count):
    """A folder of `count` 64x64 RGB PNGs (made once): smooth random colour fields, as photos are smooth."""
    from PIL import Image

    folder = cache_dir / f"png64-{count}"
    done = folder / ".complete"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    common.log(f"generating {count} PNGs in {folder}")
    rng = np.random.default_rng(count)
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
        fine = np.asarray(coarse.resize((64, 64), Image.BICUBIC), np.int16)
        fine = np.clip(fine + rng.integers(-6, 7, fine.shape), 0, 255).astype(np.uint8)
        Image.fromarray(fine).save(folder / f"{i:06d}.png")
    done.write_text("")
    return folder


def train(folder, mode, epochs):
    """Run train.py in a child process: (peak RSS bytes, wall s, metrics.json, history rows)."""
    with tempfile.TemporaryDirectory(prefix="kerasae-bench-run-") as out:
        command = [sys.executable, "scripts/train.py", *TRAIN_FLAGS, "--dataset", f"images:{folder}",
                   "--data-mode", mode, "--epochs", str(epochs), "--out", out]
        common.log(" ".join(command[1:]))
        start = time.perf_counter()
        proc = subprocess.Popen(command, cwd=common.REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        stderr = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            sys.stderr.write(stderr.decode()[-4000:])
            raise SystemExit(f"streaming.py: train.py failed with exit status {proc.returncode}")
        metrics = json.loads((Path(out) / "metrics.json").read_text())
        with open(Path(out) / "history.csv") as f:
            history = list(csv.DictReader(f))
    return usage.ru_maxrss * 1024, seconds, metrics, history  # ru_maxrss: KiB on Linux


def speed_in_one_process(folder, rounds, batch_size=128, steps_per_execution=16):
    """Epoch samples/s of one model trained alternately on the streamed files and on the same images in memory."""
    common.setup_imports()
    import keras

    import kerasae
    from kerasae.data import make_dataset, open_dataset

    start = time.perf_counter()
    streamed = open_dataset(f"images:{folder}", image_size=(64, 64), color_mode="rgb", mode="stream", log=common.log)
    open_s = time.perf_counter() - start  # listing and decoding every file once (the scan for unreadable ones)
    train = streamed.split_validation(min(5000, streamed.num_train // 10))[0]  # train.py's default split
    in_memory = train.to_arrays()[0]
    pipelines = {"stream": make_dataset(train, batch_size, shuffle=True, seed=0),
                 "memory": make_dataset(in_memory, batch_size, shuffle=True, seed=0)}
    keras.utils.set_random_seed(0)
    model = kerasae.build("vae-conv", likelihood="gaussian", image_shape=(64, 64, 3), seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), steps_per_execution=steps_per_execution)
    epochs = []
    order = ["stream", "memory"] + ["stream", "memory", "memory", "stream"] * rounds  # warm-ups, then ABBA
    for i, mode in enumerate(order):
        start, cpu_start = time.perf_counter(), time.process_time()
        model.fit(pipelines[mode], epochs=1, verbose=0, shuffle=False)  # the pipelines shuffle
        seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
        common.log(f"{mode} epoch: {seconds:.1f} s ({len(train) / seconds:.0f} samples/s), CPU {cpu_s:.1f} s")
        if i >= 2:
            epochs.append({"mode": mode, "seconds": round(seconds, 2), "cpu_s": round(cpu_s, 2),
                           "samples_per_s": round(len(train) / seconds, 1)})
    for e in epochs:
        e["cores_used"] = round(e["cpu_s"] / e["seconds"], 2)
    compared = compared_epochs(epochs)
    rates = {m: float(np.median([e["samples_per_s"] for e in epochs if e["mode"] == m and e in compared]))
             for m in pipelines}
    cpu_ms = {m: round(1e3 * float(np.median([e["cpu_s"] for e in epochs if e["mode"] == m])) / len(train), 3)
              for m in pipelines}
    return {"open_s": round(open_s, 2), "images": streamed.num_train + len(streamed.test),
            "num_train": len(train), "batch_size": batch_size, "steps_per_execution": steps_per_execution,
            "epochs": epochs, "compared_epochs": compared_label(epochs, compared),
            "stream_samples_per_s": rates["stream"], "memory_samples_per_s": rates["memory"],
            "cpu_ms_per_image": cpu_ms, "ratio_cpu_memory_to_stream": common.ratio(cpu_ms["memory"], cpu_ms["stream"]),
            **one_core_counts(epochs)}


def one_core_counts(epochs):
    """Epochs of each mode that ran on one core, and the stream/memory ratio of median samples/s over all epochs."""
    rates = {m: float(np.median([e["samples_per_s"] for e in epochs if e["mode"] == m])) for m in ("stream", "memory")}
    one_core = {m: sum(e["mode"] == m and e["cores_used"] < TWO_CORES for e in epochs) for m in rates}
    return {"one_core_epochs": one_core,
            "ratio_all_epochs": common.ratio(rates["stream"], rates["memory"])}


def compared_epochs(epochs):
    """The epochs the speed ratio compares: those on both cores (CPU / wall >= TWO_CORES) when each mode has
    some, else those on one core when each mode has some, else all."""
    for fast in (True, False):
        chosen = [e for e in epochs if (e["cores_used"] >= TWO_CORES) == fast]
        if {e["mode"] for e in chosen} == {"stream", "memory"}:
            return chosen
    return epochs


def compared_label(epochs, compared):
    if len(compared) == len(epochs):
        return "all epochs"
    cores = "two cores" if compared[0]["cores_used"] >= TWO_CORES else "one core"
    return f"the {len(compared)} of {len(epochs)} epochs that ran on {cores}"


def main(argv=None):
    args = parse_args(argv)
    result = common.header("streaming", args, args.quick)
    checkpoint = args.out.with_name(f".{args.out.stem}.partial.json")
    done = json.loads(checkpoint.read_text()) if checkpoint.exists() else {}
    if done.get("arguments") != [args.sizes, args.repeats]:
        done = {"arguments": [args.sizes, args.repeats]}

    def measure(key, folder, mode, epochs):
        if key not in done:
            rss, seconds, metrics, history = train(folder, mode, epochs)
            epoch_s = float(history[-1]["epoch_time_s"])
            done[key] = {"images": metrics["num_train"] + metrics["num_validation"] + metrics["num_test"],
                         "num_train": metrics["num_train"], "data_mode": mode, "streamed": metrics["streamed"],
                         "peak_rss_bytes": rss, "wall_s": round(seconds, 1), "last_epoch_s": epoch_s,
                         "samples_per_s": round(metrics["num_train"] / epoch_s, 1), "test": metrics["test"]}
            checkpoint.write_text(json.dumps(done, indent=1))
        return done[key]

    folders = {n: image_folder(args.cache_dir, n) for n in args.sizes}
    memory = [measure(f"memory-{n}", folders[n], "stream", 1) for n in args.sizes]
    in_memory = measure(f"memory-{args.sizes[0]}-in-memory", folders[args.sizes[0]], "memory", 1)  # for comparison
    small = folders[args.sizes[0]]
    if "speed" not in done:
        done["speed"] = speed_in_one_process(small, args.repeats)
        checkpoint.write_text(json.dumps(done, indent=1))
    speed = done["speed"]
    stream_rate, memory_rate = speed["stream_samples_per_s"], speed["memory_samples_per_s"]
    peak_small, peak_large = memory[0]["peak_rss_bytes"], memory[-1]["peak_rss_bytes"]
    result["memory"] = {"runs": memory, "in_memory_run": in_memory,
                        "ratio_largest_to_smallest": common.ratio(peak_large, peak_small),
                        "target": f"<= {MEMORY_TARGET_RATIO} and < {MEMORY_TARGET_BYTES / 1e9:g} GB",
                        "met": peak_large <= MEMORY_TARGET_RATIO * peak_small and peak_large < MEMORY_TARGET_BYTES}
    result["speed"] = {**speed, "ratio_stream_to_memory": common.ratio(stream_rate, memory_rate),
                       "target": f">= {SPEED_TARGET}", "met": stream_rate >= SPEED_TARGET * memory_rate}
    out = common.write_result(args.out, result)
    checkpoint.unlink()
    lines = common.report_header(result, out)
    for run in memory:
        lines.append(f"{run['images']:>7,} images streamed: peak RSS {run['peak_rss_bytes'] / 2**30:.2f} GiB, "
                     f"{run['samples_per_s']:.0f} samples/s")
    lines.append(f"peak RSS ratio {result['memory']['ratio_largest_to_smallest']} (target <= {MEMORY_TARGET_RATIO}, "
                 f"met: {result['memory']['met']})")
    lines.append(f"samples/s on {memory[0]['images']:,} images, one process ({speed['compared_epochs']}): stream "
                 f"{stream_rate:.0f}, memory {memory_rate:.0f}, ratio {result['speed']['ratio_stream_to_memory']} "
                 f"(target >= {SPEED_TARGET}, met: {result['speed']['met']})")
    lines.append(f"CPU per image: stream {speed['cpu_ms_per_image']['stream']} ms, memory "
                 f"{speed['cpu_ms_per_image']['memory']} ms")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
