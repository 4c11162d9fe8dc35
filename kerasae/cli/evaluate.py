"""`kerasae evaluate` (`scripts/evaluate.py`): evaluate a run on its test split."""

import argparse
import json
from pathlib import Path

from kerasae.cli.arguments import _positive_int
from kerasae.files import ModelFileError


def build_evaluate_parser(prog="evaluate.py"):
    p = argparse.ArgumentParser(prog=prog, description="Evaluate a training run on its test split "
                                "(VAE, CVAE: ELBO, NLL by the IWAE bound, active units, KL; AE/DAE: MSE, "
                                "cross-entropy, PSNR, PCA at the same code size, denoising; VQ-VAE: reconstruction, "
                                "bytes per image, codes used). Writes RUN_DIR/evaluation.json.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--k", type=_positive_int, default=5000, help="importance samples for the NLL (default: 5000)")
    p.add_argument("--max-test-samples", type=_positive_int, help="evaluate the first N test images only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def evaluate_main(argv=None, prog="evaluate.py"):
    parser = build_evaluate_parser(prog)
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    if not (run_dir / "config.json").is_file() or not any((run_dir / f).is_file() for f in ("best.keras",
                                                                                            "model.keras")):
        parser.error(f"RUN_DIR: {args.run_dir} is not a finished kerasae run (needs config.json and a .keras model)")
    from kerasae import evaluate as eval_lib

    try:
        result = eval_lib.evaluate_run(run_dir, k=args.k, max_test_samples=args.max_test_samples,
                                       progress=not args.no_progress)
    except (ModelFileError, ValueError) as err:  # a bad .keras file (say which, no traceback), an unsupported model
        parser.error(" ".join(str(err).split()))
    print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":  # python -m kerasae.cli.evaluate: the same as `kerasae evaluate`
    from kerasae.cli.main import run_module

    run_module(evaluate_main, "python -m kerasae.cli.evaluate")
