"""`kerasae reproduce` (`scripts/reproduce.py`): train, evaluate and publish the claims."""

import argparse
import importlib.util
from pathlib import Path

from kerasae.cli import startup
from kerasae.cli.arguments import _choices, _positive_int


#: `kerasae.reproduce.STAGES`, named here so that parsing imports no TensorFlow (a test keeps the two equal).
REPRODUCE_STAGES = ("seed", "nll", "fashion", "photos", "photos-64", "resnet-nll", "hvae-nll", "vq")
#: `experiments.DATA_DIRS["fashion_mnist"]` (same reason; the same test keeps them equal).
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


def build_reproduce_parser(prog="reproduce.py"):
    p = argparse.ArgumentParser(prog=prog, description="Train, evaluate and write kerasae's published "
                                "results (benchmarks/results/*.json) and figures (docs/figures/). Finished runs are "
                                "reused; interrupted ones resume: rerun the same command.")
    p.add_argument("--stages", default=",".join(REPRODUCE_STAGES), type=_choices(REPRODUCE_STAGES),
                   help=f"comma-separated subset of {','.join(REPRODUCE_STAGES)} (default: all). fashion needs "
                   "Fashion-MNIST's IDX files (apt install dataset-fashion-mnist, or --fashion-mnist); photos "
                   "and photos-64 need scikit-image (pip install scikit-image)")
    p.add_argument("--fashion-mnist", metavar="DIR", default=FASHION_MNIST_DIR,
                   help="Fashion-MNIST's four IDX files (default: %(default)s, Debian's dataset-fashion-mnist)")
    p.add_argument("--quick", action="store_true",
                   help="smoke mode: 2 epochs on 1,000 images (64 for the residual models), k=20 (2 for the photos "
                        "stages); "
                        "writes under ROOT/quick/ by default")
    p.add_argument("--k", type=_positive_int, help="importance samples (default: 5000 for nll, 500 for seed)")
    p.add_argument("--max-test-samples", type=_positive_int, help="nll: evaluate the first N test images only")
    p.add_argument("--root", default="runs/reproduce", help="where the runs live (default: %(default)s)")
    p.add_argument("--results-dir", help="default: benchmarks/results (quick: ROOT/quick/results)")
    p.add_argument("--figures-dir", help="default: docs/figures (quick: ROOT/quick/figures)")
    p.add_argument("--export-zoo", action="store_true", help="then export the pretrained zoo into exported/")
    p.add_argument("--verbose", type=int, choices=[0, 1, 2], default=2, help="Keras fit verbosity (default: 2)")
    return p


def reproduce_main(argv=None, prog="reproduce.py"):
    parser = build_reproduce_parser(prog)
    args = parser.parse_args(argv)
    startup.start_tensorflow()
    from kerasae import reproduce

    if "fashion" in args.stages and not Path(args.fashion_mnist).is_dir():
        parser.error(f"--stages fashion: no Fashion-MNIST in {args.fashion_mnist}; install it (apt install "
                     "dataset-fashion-mnist) or pass --fashion-mnist DIR (the four IDX files)")
    photo_stages = [s for s in args.stages if s.startswith("photos")]
    if photo_stages and importlib.util.find_spec("skimage") is None:
        parser.error(f"--stages {','.join(photo_stages)}: the photographs come with scikit-image; "
                     "pip install scikit-image")
    quick_dir = Path(args.root) / "quick"
    results_dir = args.results_dir or (quick_dir / "results" if args.quick else "benchmarks/results")
    figures_dir = args.figures_dir or (quick_dir / "figures" if args.quick else "docs/figures")
    for flag, path in (("--root", args.root), ("--results-dir", results_dir), ("--figures-dir", figures_dir)):
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            parser.error(f"{flag}: cannot create {path} ({err.strerror})")
    results = reproduce.reproduce(args.stages, root=args.root, results_dir=results_dir, fig_dir=figures_dir,
                                  quick=args.quick, k=args.k, max_test_samples=args.max_test_samples,
                                  verbose=args.verbose, data_dirs={"fashion_mnist": args.fashion_mnist})
    print(reproduce.summary(results))
    print(f"results: {results_dir}  figures: {figures_dir}")
    if args.export_zoo:
        from kerasae import zoo

        zoo_dir = quick_dir / "exported" if args.quick else "exported"  # quick mode never touches exported/
        for name, path in zoo.export_zoo(results_dir, zoo_dir).items():
            print(f"zoo: {name} -> {path}")
    return 0


if __name__ == "__main__":  # python -m kerasae.cli.reproduce: the same as `kerasae reproduce`
    from kerasae.cli.main import run_module

    run_module(reproduce_main, "python -m kerasae.cli.reproduce")
