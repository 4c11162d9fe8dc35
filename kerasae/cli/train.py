"""`scripts/train.py`: flags -> TrainConfig -> kerasae.training, every bad flag a usage error (exit 2)."""

import argparse

from kerasae import files, options, registry
from kerasae.cli import startup
from kerasae.cli.arguments import _float, _image_size, _noise, _non_negative_int, _positive_int, report_error
from kerasae.config import TrainConfig

_VAES = ("vae", "cvae")
#: flag -> (model keyword, the families it applies to; None: all)
_MODEL_FLAGS = {"latent_dim": ("latent_dim", ("ae", "dae", *_VAES)), "likelihood": ("likelihood", _VAES),
                "beta": ("beta", _VAES), "k": ("num_importance_samples", _VAES), "prior": ("prior_type", _VAES),
                "pseudo_inputs": ("num_pseudo_inputs", _VAES), "codebook_size": ("num_embeddings", ("vqvae",)),
                "code_dim": ("embedding_dim", ("vqvae",)), "scale": ("gaussian_scale", _VAES),
                "fixed_scale": ("fixed_scale", _VAES), "kl_warmup_steps": ("kl_warmup_steps", _VAES),
                "num_classes": ("num_classes", ("cvae",))}
#: The flags that change how a model trains, not its weights' shapes: the ones --init-from takes.
_TRAINING_FLAGS = ("k", "beta", "kl_warmup_steps", "noise")


def build_train_parser(prog="train.py"):
    p = argparse.ArgumentParser(prog=prog, description="Train a kerasae autoencoder with model.fit.")
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
    g.add_argument("--scale", choices=options.GAUSSIAN_SCALES,
                   help="VAE with a gaussian or discretized_logistic likelihood: its scale, learned per pixel, per "
                        "channel or shared, fixed (--fixed-scale), or predicted by the decoder per pixel and image")
    g.add_argument("--fixed-scale", type=_float(0.0, True), help="VAE with --scale fixed: the scale (> 0)")
    g.add_argument("--beta", type=_float(0.0, False), help="VAE: weight of the KL term (>= 0)")
    g.add_argument("--k", type=_positive_int, help="VAE: importance samples (1: ELBO, >1: IWAE bound)")
    g.add_argument("--kl-warmup-steps", type=_non_negative_int,
                   help="VAE: ramp the KL weight from 0 to beta over N training steps (default: the preset's; with "
                        "--init-from 0, the saved model's warm-up is not restarted)")
    g.add_argument("--prior", choices=options.PRIORS,
                   help="VAE: p(z), N(0, I) (standard) or the VampPrior (vamp: a mixture of the encoder's posteriors "
                        "of learned pseudo-inputs)")
    g.add_argument("--pseudo-inputs", type=_positive_int, help="VAE with --prior vamp: pseudo-inputs (default 500)")
    g.add_argument("--num-classes", type=_positive_int,
                   help="CVAE: classes the labels name, in [0, N) (default: the data's count; fewer is refused)")
    g.add_argument("--codebook-size", type=_positive_int, help="VQ-VAE: K, the codebook's vectors (codes in [0, K))")
    g.add_argument("--code-dim", type=_positive_int, help="VQ-VAE: the size of each codebook vector")
    g.add_argument("--noise", type=_noise, metavar="TYPE[:LEVEL]",
                   help="DAE corruption: gaussian:STD, masking:P or salt_and_pepper:P")
    g.add_argument("--init-from", metavar="MODEL.keras|zoo:NAME",
                   help="fine-tune a saved model (a .keras file, or a pretrained zoo model such as "
                        "zoo:iwae_mlp_50d_mnist) instead of a new one; of the model flags it takes only %s" %
                        ", ".join(_flag(f) for f in _TRAINING_FLAGS))
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
    g.add_argument("--precision", choices=options.PRECISIONS, default="float32",
                   help="float32 (default); bfloat16 or float16 compute with float32 variables and losses; auto: "
                        "bfloat16 on a CPU with bfloat16 matrix instructions (AMX, AVX512-BF16), else float32")
    g.add_argument("--mixed-precision", action="store_true",
                   help="older spelling: float16 on a GPU (with loss scaling), bfloat16 elsewhere")
    g.add_argument("--verbose", type=int, choices=[0, 1, 2], default=None, help="Keras fit verbosity")
    g.add_argument("--export", metavar="NAME", help="export the trained model to EXPORT_DIR/NAME (SavedModel + TFLite)")
    g.add_argument("--onnx", action="store_true",
                   help='with --export: also ONNX files of the signatures (needs pip install "kerasae[onnx]")')
    g.add_argument("--export-dir", default=options.DEFAULT_EXPORT_DIR,
                   help="where --export writes (default: ./%(default)s)")
    g.add_argument("--overwrite", action="store_true",
                   help="train from scratch into an --out that holds a run (default: a finished run of the same "
                        "command is reported, not retrained; an interrupted one resumes)")
    return p


def config_from_args(parser, args):
    """Turn parsed flags into a TrainConfig; inconsistent flags are usage errors."""
    preset = args.preset or registry.DEFAULT_PRESETS[args.arch or "vae"]
    if preset not in registry.PRESETS:
        parser.error(registry.unknown_preset_message(preset))
    try:
        registry.check_trainable(preset, "--preset")
    except ValueError as err:
        parser.error(str(err))
    family = registry.get_preset(preset).family
    if args.arch and args.preset and family != args.arch:
        parser.error(f"--preset {preset} is a {family} model, not --arch {args.arch}")
    given = [flag for flag in (*_MODEL_FLAGS, "noise") if getattr(args, flag) is not None]
    if args.init_from and (args.arch or args.preset):
        parser.error(f"{'--preset' if args.preset else '--arch'} chooses a new model; --init-from fine-tunes the "
                     "saved model, whose architecture it keeps: give one or the other")
    if args.init_from:
        refused = [flag for flag in given if flag not in _TRAINING_FLAGS]
        if refused:
            parser.error(f"{_flag(refused[0])} changes the architecture, which --init-from takes from the saved "
                         f"model; with --init-from only the training flags {', '.join(map(_flag, _TRAINING_FLAGS))} "
                         "apply")
    overrides = {}
    for flag, (kwarg, needs) in _MODEL_FLAGS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if needs and family not in needs and not args.init_from:  # the saved model's class checks them
            parser.error(f"--{flag.replace('_', '-')} applies to {' and '.join(needs)} presets, not {preset} "
                         f"({family})")
        overrides[kwarg] = value
    if not args.init_from:
        _check_scale_flags(parser, preset, overrides)
        _check_prior_flags(parser, preset, overrides)
    if args.noise is not None:
        if family != "dae" and not args.init_from:
            parser.error(f"--noise applies to dae presets, not {preset} ({family})")
        overrides["noise_type"], overrides["noise_level"] = args.noise
    return TrainConfig(
        preset=preset, model_kwargs=overrides, dataset=args.dataset, data_dir=args.data_dir,
        image_size=args.image_size, color_mode=args.color_mode, data_mode=args.data_mode,
        skip_bad_images=args.skip_bad_images, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, lr_schedule=args.lr_schedule, validation_size=args.validation_size,
        max_train_samples=args.max_train_samples, max_test_samples=args.max_test_samples, seed=args.seed,
        out=args.out, strategy=args.strategy, cpu_replicas=args.cpu_replicas, init_from=args.init_from,
        steps_per_execution=args.steps_per_execution, jit_compile=args.jit_compile,
        precision=args.precision, mixed_precision=args.mixed_precision, deterministic=args.deterministic,
        verbose="auto" if args.verbose is None else args.verbose)


def _flag(dest):
    return "--" + dest.replace("_", "-")


def _check_prior_flags(parser, preset, overrides):
    """--pseudo-inputs acts only on the VampPrior."""
    prior = {**registry.get_preset(preset).kwargs, **overrides}.get("prior_type", "standard")
    if "num_pseudo_inputs" in overrides and prior != "vamp":
        parser.error(f"--pseudo-inputs applies with --prior vamp; {preset}'s prior is {prior}")


def _check_scale_flags(parser, preset, overrides):
    """--scale and --fixed-scale act only where they can: a scaled likelihood, and a fixed scale."""
    kwargs = {**registry.get_preset(preset).kwargs, **overrides}
    likelihood = kwargs.get("likelihood", options.DEFAULT_LIKELIHOOD)
    for flag in ("gaussian_scale", "fixed_scale"):
        if flag in overrides and likelihood not in options.SCALED_LIKELIHOODS:
            parser.error(f"--{flag.replace('gaussian_', '').replace('_', '-')} applies to a "
                         f"{' or '.join(options.SCALED_LIKELIHOODS)} likelihood; {preset}'s is {likelihood} "
                         "(set --likelihood)")
    if "fixed_scale" in overrides and kwargs.get("gaussian_scale", options.DEFAULT_GAUSSIAN_SCALE) != "fixed":
        parser.error("--fixed-scale applies with --scale fixed")


def print_presets():
    """One line per preset, in registration order: name, family ("codec" for the codec ladder), description."""
    width = max(map(len, registry.PRESETS))
    family_width = max(len(p.family) for p in registry.PRESETS.values())
    for name, preset in registry.PRESETS.items():
        print(f"{name:{width}s} {preset.family:{family_width}s} {preset.description}")


def train_main(argv=None, prog="train.py"):
    parser = build_train_parser(prog)
    args = parser.parse_args(argv)
    if args.list_presets:
        print_presets()
        return 0
    config = config_from_args(parser, args)
    config.overwrite = args.overwrite
    if args.onnx and args.export is None:
        parser.error("--onnx adds ONNX files to an export: give --export NAME too")
    if args.onnx:
        from kerasae.export.onnx import unavailable

        if unavailable():
            parser.error(f"--onnx {unavailable()}")
    if args.export is not None:
        try:
            options.check_name(args.export)
        except ValueError as err:
            parser.error(f"--export: {err}")
        try:  # refused now, not after training
            files.check_export_dir(args.export_dir)
        except ValueError as err:
            parser.error(f"--export-dir: {str(err).removeprefix('export_dir: ')}")
    from kerasae.training.run_dir import describe_test_metrics, finished_run

    # The same command again: said at once, before TensorFlow loads; under multiworker the chief's answer, heard
    # (once TensorFlow runs) by every worker.
    done = None if config.overwrite or config.strategy == "multiworker" else finished_run(config)
    if done is not None:
        return _report_finished(args, config, done, chief=True)
    startup.start_tensorflow()
    from kerasae import distribute
    from kerasae import training as train_lib
    from kerasae.data import DataError

    try:
        done = train_lib.finished_metrics(config) if config.strategy == "multiworker" else None
        prepared = None if done is not None else train_lib.prepare(config)
    except (ValueError, TypeError) as err:  # bad config or data: a usage error, not a traceback
        parser.error(" ".join(str(err).split()))
    if done is not None:
        return _report_finished(args, config, done, chief=distribute.is_chief(distribute.get_strategy("multiworker")))
    try:
        result = train_lib.fit(config, *prepared)
    except (train_lib.WorkerLostError, FloatingPointError, OSError, DataError) as err:  # OSError: a write failed
        return report_error(parser.prog, err, code=2 if isinstance(err, DataError) else 1)  # DataError: bad input
    print(f"done: {result.metrics['epochs']} epochs in {result.metrics['wall_time_s']:.0f} s; test: "
          f"{describe_test_metrics(result.metrics)}")
    print(f"weights sha256: {result.metrics['weights_sha256']}")
    print(f"run directory: {result.run_dir}")
    if args.export is not None and distribute.is_chief(prepared.strategy):
        _export(args, result.run_dir)
    return 0


def _report_finished(args, config, metrics, chief):
    """One line instead of training again; --export exports the run (on the chief alone: one writer)."""
    from kerasae.training.run_dir import finished_message

    print(finished_message(config.out, metrics))
    if args.export is not None and chief:
        _export(args, config.out)
    return 0


def _export(args, run_dir):
    from kerasae import export as export_lib
    from kerasae.cli.export import print_export

    version_dir = export_lib.export_run(run_dir, args.export, export_dir=args.export_dir, onnx=args.onnx)
    print(f"exported: {version_dir}")
    print_export(version_dir)


if __name__ == "__main__":  # python -m kerasae.cli.train: the same as `kerasae train`
    from kerasae.cli.main import run_module

    run_module(train_main, "python -m kerasae.cli.train")
