"""`kerasae evaluate` (`scripts/evaluate.py`): evaluate a run on its test split."""

import argparse
import json
from pathlib import Path

from kerasae.cli import startup
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
    p.add_argument("--json", action="store_true",
                   help="print every metric as JSON (what RUN_DIR/evaluation.json holds) instead of the table")
    return p


def evaluate_main(argv=None, prog="evaluate.py"):
    parser = build_evaluate_parser(prog)
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    if not (run_dir / "config.json").is_file() or not any((run_dir / f).is_file() for f in ("best.keras",
                                                                                            "model.keras")):
        parser.error(f"RUN_DIR: {args.run_dir} is not a finished kerasae run (needs config.json and a .keras model)")
    startup.start_tensorflow()
    from kerasae import evaluate as eval_lib

    try:
        result = eval_lib.evaluate_run(run_dir, k=args.k, max_test_samples=args.max_test_samples,
                                       progress=not args.no_progress)
    except (ModelFileError, ValueError) as err:  # a bad .keras file (say which, no traceback), an unsupported model
        parser.error(" ".join(str(err).split()))
    print(json.dumps(result, indent=1, default=str) if args.json else format_evaluation(result, run_dir))
    return 0


def _rows(result):
    """(metric, value, unit) rows of the headline numbers of an evaluate_run result."""
    rows = []

    def reconstruction(m, prefix=""):
        rows.append((f"{prefix}MSE", f"{m['mse_per_pixel']:.5f}", "per pixel"))
        rows.append((f"{prefix}PSNR", f"{m['psnr_db']:.2f}", "dB"))
        if "bce_per_image" in m:
            rows.append((f"{prefix}cross-entropy", f"{m['bce_per_image']:.2f}", "nats per image"))

    vae = result.get("vae")
    if vae:
        stderr = f" ± {vae['nll_stderr']:.2f}" if vae.get("nll_stderr") is not None else ""
        rows.append((f"NLL (IWAE bound, k={vae['k']})", f"{vae['nll']:.2f}{stderr}", "nats per image"))
        rows.append(("negative ELBO", f"{-vae['elbo']:.2f}", "nats per image"))
        rows.append(("KL(q(z|x) || p(z))", f"{vae['kl']:.2f}", "nats per image"))
        if "nll_bits_per_dim" in vae:  # a discretized logistic's image likelihood, as PixelCNN papers quote it
            rows.append(("NLL", f"{vae['nll_bits_per_dim']:.3f}", "bits per dim"))
            rows.append(("negative ELBO", f"{vae['elbo_bits_per_dim']:.3f}", "bits per dim"))
        rows.append(("active units", f"{vae['active_units']}", f"of {len(vae.get('activity_per_dim', []))} "
                     f"(Cov_x E[z|x] > {vae['active_unit_threshold']:g})"))
        reconstruction(vae["reconstruction"], "reconstruction ")
    if "reconstruction" in result:
        reconstruction(result["reconstruction"])
    pca = result.get("pca_same_code_size")
    if pca:
        reconstruction(pca["metrics"], "PCA, same code size: ")
    for row in result.get("denoising", []):
        rows.append((f"denoising {row['noise']} {row['level']:g}",
                     f"{row['psnr_noisy_db']:.1f} -> {row['psnr_denoised_db']:.1f}", "dB PSNR (noisy -> denoised)"))
    codes = result.get("codes")
    if codes:
        rows.append(("code", f"{codes['bytes_per_image']:g}", "bytes per image"))
        rows.append(("entropy-coded code", f"{codes['entropy_coded_bytes_per_image']:.1f}", "bytes per image"))
        rows.append(("codes used", f"{codes['codes_used']}", f"of {codes['codebook_size']}"))
    prior = result.get("prior_match")
    if prior and prior["mmd2"] is None:
        rows.append(("MMD² codes vs N(0, I)", "-", f"(needs 2 or more test images, got {prior['num']})"))
    elif prior:
        rows.append(("MMD² codes vs N(0, I)", f"{prior['mmd2']:.4f}",
                     f"(N(0, I) vs itself: {prior['mmd2_prior_vs_prior']:.4f})"))
    return rows


def format_evaluation(result, run_dir):
    """A short table for people: the headline metrics with their units (all of them are in evaluation.json)."""
    rows = _rows(result)
    width = max(len(name) for name, _, _ in rows) if rows else 0
    value_width = max(len(value) for _, value, _ in rows) if rows else 0
    lines = [f"{result['model']} ({result['family']}), {result['num_test']:,} test images of {run_dir}"]
    lines += [f"  {name:{width}s}  {value:>{value_width}s}  {unit}" for name, value, unit in rows]
    lines.append(f"every metric: {Path(run_dir) / 'evaluation.json'} (--json prints it)")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m kerasae.cli.evaluate: the same as `kerasae evaluate`
    from kerasae.cli.main import run_module

    run_module(evaluate_main, "python -m kerasae.cli.evaluate")
