"""Command-line front ends (`scripts/*.py` are thin shims over these).

Every bad argument exits with code 2 and a one-line message, as argparse does. Arguments
are parsed before TensorFlow is imported (this module imports none of it at the top), so
`--help` and a usage error answer at once.
"""

import argparse
import importlib.util
import json
import sys
import warnings
from pathlib import Path

from kerasae import options, registry
from kerasae.config import TrainConfig
from kerasae.files import ModelFileError

_VAES = ("vae", "cvae")
#: flag -> (model keyword, the families it applies to; None: all)
_MODEL_FLAGS = {"latent_dim": ("latent_dim", ("ae", "dae", *_VAES)), "likelihood": ("likelihood", _VAES),
                "beta": ("beta", _VAES), "k": ("num_importance_samples", _VAES), "prior": ("prior_type", ("vae",)),
                "pseudo_inputs": ("num_pseudo_inputs", ("vae",)), "codebook_size": ("num_embeddings", ("vqvae",)),
                "code_dim": ("embedding_dim", ("vqvae",))}


def _int_at_least(low):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _float(low, low_open):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if value != value or value < low or (low_open and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low:g}, got {text!r}")
        return value

    return parse


def _image_size(text):
    parts = text.lower().split("x")
    try:
        size = tuple(int(p) for p in (parts * 2 if len(parts) == 1 else parts))
    except ValueError:
        size = ()
    if len(size) != 2 or min(size) <= 0:
        raise argparse.ArgumentTypeError(f"must be HEIGHTxWIDTH or SIZE (e.g. 64x64 or 64), got {text!r}")
    return size


def _noise(text):
    kind, _, level = text.partition(":")
    if kind not in options.NOISE_TYPES:
        raise argparse.ArgumentTypeError(f"noise type must be one of {', '.join(options.NOISE_TYPES)}, got {kind!r}")
    try:
        value = float(level) if level else 0.5
    except ValueError:
        raise argparse.ArgumentTypeError(f"noise level must be a number, got {level!r}") from None
    if not (value > 0 and (kind == "gaussian" or value < 1)):
        raise argparse.ArgumentTypeError(
            f"noise level must be > 0{'' if kind == 'gaussian' else ' and < 1'} for {kind}, got {level!r}")
    return kind, value


def build_train_parser():
    p = argparse.ArgumentParser(prog="train.py", description="Train a kerasae autoencoder with model.fit.")
    p.add_argument("--arch", choices=sorted(registry.DEFAULT_PRESETS),
                   help="model family; picks its default preset (%s)" %
                   ", ".join(f"{k}: {v}" for k, v in registry.DEFAULT_PRESETS.items()))
    p.add_argument("--preset", help="any registered preset (see --list-presets)")
    p.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="mnist",
                   help="mnist (embedded), tfds:NAME, idx:DIR, images:DIR, tfrecord:DIR|GLOB or npz:FILE "
                        "(default: mnist)")
    g.add_argument("--data-dir", help="tensorflow-datasets data directory (for tfds:NAME)")
    g.add_argument("--image-size", type=_image_size,
                   help="resize images to HxW (default: keep; images:DIR of mixed sizes 64x64)")
    g.add_argument("--color-mode", choices=options.COLOR_MODES, help="convert images to 1 or 3 channels")
    g.add_argument("--data-mode", choices=options.DATA_MODES, default=TrainConfig.data_mode,
                   help="memory: decode all images into RAM; stream: read and decode them while training; auto "
                        "(default): stream images/tfrecord/tfds data whose pixels pass 1 GiB")
    g.add_argument("--skip-bad-images", action="store_true",
                   help="leave out unreadable images (counted and named in the log) instead of stopping")
    g.add_argument("--max-train-samples", type=_positive_int, help="use only the first N training images")
    g.add_argument("--max-test-samples", type=_positive_int, help="use only the first N test images")
    g.add_argument("--validation-size", type=_non_negative_int,
                   help="images held out of the training set for validation (default: min(5000, 10%%))")
    g = p.add_argument_group("model")
    g.add_argument("--latent-dim", type=_positive_int, help="size of the code / latent z")
    g.add_argument("--likelihood", choices=options.LIKELIHOODS, help="VAE decoder likelihood")
    g.add_argument("--beta", type=_float(0.0, False), help="VAE: weight of the KL term (>= 0)")
    g.add_argument("--k", type=_positive_int, help="VAE: importance samples (1: ELBO, >1: IWAE bound)")
    g.add_argument("--prior", choices=options.PRIORS,
                   help="VAE: p(z), N(0, I) (standard) or the VampPrior (vamp: a mixture of the encoder's posteriors "
                        "of learned pseudo-inputs)")
    g.add_argument("--pseudo-inputs", type=_positive_int, help="VAE with --prior vamp: pseudo-inputs (default 500)")
    g.add_argument("--codebook-size", type=_positive_int, help="VQ-VAE: K, the codebook's vectors (codes in [0, K))")
    g.add_argument("--code-dim", type=_positive_int, help="VQ-VAE: the size of each codebook vector")
    g.add_argument("--noise", type=_noise, metavar="TYPE[:LEVEL]",
                   help="DAE corruption: gaussian:STD, masking:P or salt_and_pepper:P")
    g.add_argument("--init-from", metavar="MODEL.keras|zoo:NAME",
                   help="fine-tune a saved model (a .keras file, or a pretrained zoo model such as zoo:vae-mlp) "
                        "instead of a new one")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=_positive_int, default=TrainConfig.epochs)
    g.add_argument("--batch-size", type=_positive_int, default=TrainConfig.batch_size,
                   help="global batch size (split across replicas)")
    g.add_argument("--learning-rate", type=_float(0.0, True), default=TrainConfig.learning_rate)
    g.add_argument("--lr-schedule", choices=options.LR_SCHEDULES, default="cosine")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", help="run directory (default: runs/PRESET)")
    g.add_argument("--strategy", choices=options.STRATEGIES, default="auto",
                   help="tf.distribute strategy (auto: mirrored over 2+ GPUs, else default; multiworker reads "
                   "TF_CONFIG; tpu reads TPU_NAME)")
    g.add_argument("--cpu-replicas", type=_positive_int, help="split the CPU into N replicas (for mirrored on CPU)")
    g.add_argument("--steps-per-execution", type=_positive_int, default=TrainConfig.steps_per_execution,
                   help="training steps per tf.function call (default: %(default)s)")
    g.add_argument("--jit-compile", action=argparse.BooleanOptionalAction, default=None,
                   help="XLA. Default (auto): on one device, each call's steps compiled together when the run keeps "
                        "one iterator and the model gains from it (MLPs other than denoising and contractive "
                        "ones: on CPU XLA does not speed those or conv models up); --jit-compile: any model "
                        "(Keras' per-step XLA for the contractive AE and where the run cannot keep one "
                        "iterator; refused with several replicas); --no-jit-compile: off")
    g.add_argument("--deterministic", action="store_true",
                   help="TF op determinism (with --seed): the same command gives bit-identical weights")
    g.add_argument("--mixed-precision", action="store_true",
                   help="mixed_float16 on GPU (with loss scaling), mixed_bfloat16 on CPU/TPU; losses stay float32")
    g.add_argument("--verbose", type=int, choices=[0, 1, 2], default=None, help="Keras fit verbosity")
    g.add_argument("--export", metavar="NAME", help="export the trained model to EXPORT_DIR/NAME (SavedModel + TFLite)")
    g.add_argument("--export-dir", default="exported", help="where --export writes (default: exported)")
    return p


def config_from_args(parser, args):
    """Turn parsed flags into a TrainConfig; inconsistent flags are usage errors."""
    preset = args.preset or registry.DEFAULT_PRESETS[args.arch or "vae"]
    if preset not in registry.PRESETS:
        parser.error(f"unknown preset {preset!r}; valid presets: {', '.join(registry.PRESETS)}")
    family = registry.get_preset(preset).family
    if args.arch and args.preset and family != args.arch:
        parser.error(f"--preset {preset} is a {family} model, not --arch {args.arch}")
    overrides = {}
    for flag, (kwarg, needs) in _MODEL_FLAGS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if needs and family not in needs:
            parser.error(f"--{flag.replace('_', '-')} applies to {' and '.join(needs)} presets, not {preset} "
                         f"({family})")
        overrides[kwarg] = value
    if args.noise is not None:
        if family != "dae":
            parser.error(f"--noise applies to dae presets, not {preset} ({family})")
        overrides["noise_type"], overrides["noise_level"] = args.noise
    if args.init_from and overrides:
        parser.error("--init-from takes the architecture from the saved model; drop the model flags (to change "
                     "training settings such as k, use kerasae.train(init_from=..., model_kwargs={...}))")
    return TrainConfig(
        preset=preset, model_kwargs=overrides, dataset=args.dataset, data_dir=args.data_dir,
        image_size=args.image_size, color_mode=args.color_mode, data_mode=args.data_mode,
        skip_bad_images=args.skip_bad_images, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, lr_schedule=args.lr_schedule, validation_size=args.validation_size,
        max_train_samples=args.max_train_samples, max_test_samples=args.max_test_samples, seed=args.seed,
        out=args.out, strategy=args.strategy, cpu_replicas=args.cpu_replicas, init_from=args.init_from,
        steps_per_execution=args.steps_per_execution, jit_compile=args.jit_compile,
        mixed_precision=args.mixed_precision, deterministic=args.deterministic,
        verbose="auto" if args.verbose is None else args.verbose)


def print_presets():
    for name, preset in registry.PRESETS.items():
        print(f"{name:18s} {preset.family:4s} {preset.description}")


def train_main(argv=None):
    parser = build_train_parser()
    args = parser.parse_args(argv)
    if args.list_presets:
        print_presets()
        return 0
    config = config_from_args(parser, args)
    if args.export is not None:
        try:
            options.check_name(args.export)
        except ValueError as err:
            parser.error(f"--export: {err}")
    from kerasae import distribute
    from kerasae import export as export_lib
    from kerasae import training as train_lib
    from kerasae.data import DataError

    try:
        prepared = train_lib.prepare(config)
    except (ValueError, TypeError) as err:  # bad config or data: a usage error, not a traceback
        parser.error(" ".join(str(err).split()))
    try:
        result = train_lib.fit(config, *prepared)
    except (train_lib.WorkerLostError, FloatingPointError, OSError, DataError) as err:  # OSError: a write failed
        print(f"train.py: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2 if isinstance(err, DataError) else 1  # DataError: an image broke mid-run (bad input)
    test = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics["test"].items())
    print(f"done: {result.metrics['epochs']} epochs in {result.metrics['wall_time_s']:.0f} s; test: {test}")
    print(f"weights sha256: {result.metrics['weights_sha256']}")
    print(f"run directory: {result.run_dir}")
    if args.export is not None and distribute.is_chief(prepared.strategy):
        version_dir = export_lib.export_run(result.run_dir, args.export, export_dir=args.export_dir)
        print(f"exported: {version_dir}")
    return 0


# ---- scripts/export.py ------------------------------------------------------------------------

def build_export_parser():
    p = argparse.ArgumentParser(
        prog="export.py", description="Export a kerasae run (or .keras file) as a SavedModel plus TFLite files, "
        "or verify an export (--verify PATH).")
    p.add_argument("source", nargs="?", metavar="RUN_DIR_or_MODEL.keras", help="what to export")
    p.add_argument("--name", help="export name: files go to EXPORT_DIR/NAME/VERSION and EXPORT_DIR/NAME/tflite")
    p.add_argument("--export-dir", default="exported", help="(default: exported)")
    p.add_argument("--version", type=_positive_int, help="integer version (default: the next one, from 1)")
    p.add_argument("--tflite", default=",".join(options.VARIANTS), type=_variants,
                   help=f"comma-separated TFLite variants, or 'none' (default: {','.join(options.VARIANTS)})")
    p.add_argument("--representative-data", metavar="FILE.npz",
                   help="images to calibrate int8 on (array x, x_train or images); default: the run's training data")
    p.add_argument("--overwrite", action="store_true", help="replace an existing version")
    p.add_argument("--strict-parity", action="store_true",
                   help="fail if a TFLite file misses its parity bound (default: keep it, flagged)")
    p.add_argument("--verify", metavar="PATH", help="check an export's files against its manifest and exit 0/1")
    return p


def _variants(text):
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return options.check_variants(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def export_main(argv=None):
    parser = build_export_parser()
    args = parser.parse_args(argv)
    if args.verify:
        if args.source or args.name:
            parser.error("--verify PATH takes no RUN_DIR or --name")
        if not Path(args.verify).exists():
            parser.error(f"--verify: {args.verify} does not exist")
    else:
        if not args.source:
            parser.error("give a RUN_DIR or MODEL.keras to export (or --verify PATH)")
        if not args.name:
            parser.error("--name is required")
        try:
            options.check_name(args.name)
        except ValueError as err:
            parser.error(" ".join(str(err).split()))
        if not Path(args.source).exists():
            parser.error(f"{args.source} does not exist")
    from kerasae import export as export_lib

    if args.verify:
        problems = export_lib.verify(args.verify)
        for problem in problems:
            print(f"FAIL {problem}")
        if not problems:
            print(f"OK {args.verify}")
        return 1 if problems else 0
    try:
        warnings.simplefilter("ignore", export_lib.ParityWarning)  # printed below, from the manifest
        version_dir = export_lib.export_run(args.source, args.name, export_dir=args.export_dir, version=args.version,
                                            tflite=args.tflite, representative_data=args.representative_data,
                                            overwrite=args.overwrite, strict_parity=args.strict_parity)
    except (ValueError, FileExistsError, FileNotFoundError) as err:  # bad input: a usage error
        parser.error(" ".join(str(err).split()))
    except export_lib.ExportError as err:
        print(f"export.py: export failed: {err}", file=sys.stderr)
        return 1
    manifest = json.loads((version_dir / "assets.extra" / export_lib.MANIFEST).read_text())
    print(f"SavedModel: {version_dir}  (signatures: {', '.join(manifest['signatures'])})")
    tflite = manifest["tflite"] or {"files": {}, "skipped": {}}
    for file_name, entry in sorted(tflite["files"].items()):
        metric = export_lib.PARITY_TOLERANCES[entry["variant"]][0]
        diffs = ", ".join(f"{k} {d[metric]:.2g}" for k, d in sorted(entry["parity"].items()))
        print(f"  tflite/{file_name:28s} {entry['bytes'] / 1024:8.1f} KiB  {metric} vs SavedModel: {diffs}")
    for file_name, reason in sorted(tflite["skipped"].items()):
        print(f"  skipped {file_name}: {reason}")
    for file_name, reason in sorted(tflite.get("out_of_tolerance", {}).items()):
        print(f"  WARNING {file_name} is outside its parity bound: {reason} (kept; flagged in the manifest)")
    return 0


# ---- scripts/evaluate.py and scripts/reproduce.py -----------------------------------------------

def build_evaluate_parser():
    p = argparse.ArgumentParser(prog="evaluate.py", description="Evaluate a training run on its test split "
                                "(VAE, CVAE: ELBO, NLL by the IWAE bound, active units, KL; AE/DAE: MSE, "
                                "cross-entropy, PSNR, PCA at the same code size, denoising; VQ-VAE: reconstruction, "
                                "bytes per image, codes used). Writes RUN_DIR/evaluation.json.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--k", type=_positive_int, default=5000, help="importance samples for the NLL (default: 5000)")
    p.add_argument("--max-test-samples", type=_positive_int, help="evaluate the first N test images only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def evaluate_main(argv=None):
    parser = build_evaluate_parser()
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


#: `kerasae.reproduce.STAGES`, named here so that parsing imports no TensorFlow (a test keeps the two equal).
REPRODUCE_STAGES = ("seed", "nll", "fashion", "photos", "resnet-nll", "hvae-nll", "vq")
#: `experiments.DATA_DIRS["fashion_mnist"]` (same reason; the same test keeps them equal).
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


def build_reproduce_parser():
    p = argparse.ArgumentParser(prog="reproduce.py", description="Train, evaluate and write kerasae's published "
                                "results (benchmarks/results/*.json) and figures (docs/figures/). Finished runs are "
                                "reused; interrupted ones resume: rerun the same command.")
    p.add_argument("--stages", default=",".join(REPRODUCE_STAGES), type=_choices(REPRODUCE_STAGES),
                   help=f"comma-separated subset of {','.join(REPRODUCE_STAGES)} (default: all). fashion needs "
                   "Fashion-MNIST's IDX files (apt install dataset-fashion-mnist, or --fashion-mnist); photos "
                   "needs scikit-image (pip install scikit-image)")
    p.add_argument("--fashion-mnist", metavar="DIR", default=FASHION_MNIST_DIR,
                   help="Fashion-MNIST's four IDX files (default: %(default)s, Debian's dataset-fashion-mnist)")
    p.add_argument("--quick", action="store_true",
                   help="smoke mode: 2 epochs on 3,000 images, k=20; writes under ROOT/quick/ by default")
    p.add_argument("--k", type=_positive_int, help="importance samples (default: 5000 for nll, 500 for seed)")
    p.add_argument("--max-test-samples", type=_positive_int, help="nll: evaluate the first N test images only")
    p.add_argument("--root", default="runs/reproduce", help="where the runs live (default: %(default)s)")
    p.add_argument("--results-dir", help="default: benchmarks/results (quick: ROOT/quick/results)")
    p.add_argument("--figures-dir", help="default: docs/figures (quick: ROOT/quick/figures)")
    p.add_argument("--export-zoo", action="store_true", help="then export the pretrained zoo into exported/")
    p.add_argument("--verbose", type=int, choices=[0, 1, 2], default=2, help="Keras fit verbosity (default: 2)")
    return p


def _choices(valid):
    def parse(text):
        items = [t.strip() for t in text.split(",") if t.strip()]
        unknown = [t for t in items if t not in valid]
        if unknown or not items:
            raise argparse.ArgumentTypeError(f"must be a comma-separated subset of {', '.join(valid)}, got {text!r}")
        return tuple(items)

    return parse


def reproduce_main(argv=None):
    parser = build_reproduce_parser()
    args = parser.parse_args(argv)
    from kerasae import reproduce

    if "fashion" in args.stages and not Path(args.fashion_mnist).is_dir():
        parser.error(f"--stages fashion: no Fashion-MNIST in {args.fashion_mnist}; install it (apt install "
                     "dataset-fashion-mnist) or pass --fashion-mnist DIR (the four IDX files)")
    if "photos" in args.stages and importlib.util.find_spec("skimage") is None:
        parser.error("--stages photos: the photographs come with scikit-image; pip install scikit-image")
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


# ---- scripts/convert.py -----------------------------------------------------------------------

def build_convert_parser():
    p = argparse.ArgumentParser(
        prog="convert.py", description="Convert a dataset (any --dataset spec) into TFRecord shards that "
        "train.py streams with --dataset tfrecord:OUT_DIR. Image files keep their encoding; arrays become PNG.")
    p.add_argument("dataset", help="mnist, tfds:NAME, idx:DIR, images:DIR, tfrecord:DIR|GLOB or npz:FILE")
    p.add_argument("out_dir", help="new directory for the shards and kerasae_dataset.json")
    p.add_argument("--data-dir", help="tensorflow-datasets data directory (for tfds:NAME)")
    p.add_argument("--image-size", type=_image_size,
                   help="the image size the shards declare (images are resized when read; default: as found)")
    p.add_argument("--color-mode", choices=options.COLOR_MODES, help="the channels the shards declare")
    p.add_argument("--shard-mb", type=_positive_int, default=100, help="approximate shard size (default: 100 MB)")
    p.add_argument("--seed", type=int, default=0, help="seed of the order the images are written in")
    p.add_argument("--skip-bad-images", action="store_true", help="leave out unreadable images instead of stopping")
    return p


def convert_main(argv=None):
    parser = build_convert_parser()
    args = parser.parse_args(argv)
    if Path(args.out_dir).exists() and (not Path(args.out_dir).is_dir() or any(Path(args.out_dir).iterdir())):
        parser.error(f"out_dir {args.out_dir} already exists and is not an empty directory")
    from kerasae import data as data_lib

    try:
        data = data_lib.open_dataset(args.dataset, data_dir=args.data_dir, image_size=args.image_size,
                                     color_mode=args.color_mode, mode="stream" if _streamable(args.dataset) else "auto",
                                     skip_bad_images=args.skip_bad_images)
        data_lib.write_tfrecords(data, args.out_dir, shard_bytes=args.shard_mb << 20, seed=args.seed)
    except ValueError as err:  # DataError included: bad spec or images
        parser.error(" ".join(str(err).split()))
    except OSError as err:
        print(f"convert.py: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    return 0


def _streamable(spec):
    return spec.partition(":")[0] in ("images", "tfrecord", "tfds")
