#!/usr/bin/env python
"""The README's main job as a user runs it: `python scripts/train.py --arch vae`, timed end to end.

    python benchmarks/main_job.py            # the full job (30 epochs); writes benchmarks/results/main_job.json
    python benchmarks/main_job.py --quick    # 1 epoch on 2,048 images: a smoke test of this script

Runs the script in a subprocess (interpreter start, imports, data, training, evaluation and
figures all count), in a fresh run directory, and records the wall time of the whole command,
the training time and test metrics from the run's metrics.json, and the machine it ran on.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as common

COMMAND = ["scripts/train.py", "--arch", "vae"]
QUICK_FLAGS = ["--epochs", "1", "--max-train-samples", "2048"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 epoch on 2,048 images (smoke test)")
    parser.add_argument("--run-dir", type=Path, help="keep the run here (default: a temporary directory)")
    return common.parse_args(parser, argv, lambda args: {}, "main_job.json")


def user_command(args):
    """The command as README gives it (plus the quick flags)."""
    return ["python", *COMMAND, *(QUICK_FLAGS if args.quick else [])]


def run_job(args, run_dir):
    command = [sys.executable, *user_command(args)[1:], "--out", str(run_dir), "--verbose", "2"]
    common.log(" ".join(command[1:]))
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=common.REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"main_job.py: the main job failed with exit status {proc.returncode}")
    return seconds


def main(argv=None):
    args = parse_args(argv)
    result = common.header("main_job", args, args.quick)
    with tempfile.TemporaryDirectory(prefix="kerasae-main-job-") as tmp:
        run_dir = args.run_dir or Path(tmp) / "vae"
        seconds = run_job(args, run_dir)
        metrics = json.loads((run_dir / "metrics.json").read_text())
    test = metrics["test"]
    result["job"] = {
        "command": user_command(args),
        "wall_time_s": round(seconds, 1),
        "train_wall_time_s": metrics["wall_time_s"],
        "epochs": metrics["epochs"],
        "train_function": metrics.get("train_function"),
        "test": test,
        "test_negative_elbo": -test["elbo"],
        "weights_sha256": metrics["weights_sha256"],
    }
    out = common.write_result(args.out, result)
    lines = common.report_header(result, out)
    lines.append(f"{' '.join(result['job']['command'])}: {seconds:.0f} s in all, {metrics['wall_time_s']:.0f} s "
                 f"in training ({metrics['epochs']} epochs); test -ELBO {-test['elbo']:.2f} nats "
                 f"(reconstruction {test['reconstruction_loss']:.2f}, KL {test['kl']:.2f})")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
