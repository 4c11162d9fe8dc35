"""Training throughput of the MLP VAE: kerasae's real training path vs a PyTorch reference, against the roofline.

The model: the `vae-mlp` preset, 784-512-256-32 (encoder 784-512-256-64 giving mean and log-variance,
decoder 32-256-512-784), Bernoulli decoder on dynamically binarized MNIST, Adam (lr 1e-3), batch 128,
60,000 training images per epoch.

- kerasae: `kerasae.train(TrainConfig(...))`, the path users run (`model.fit` with kerasae's tf.data
  pipeline, callbacks and TrainConfig defaults such as steps_per_execution), with validation_size=0
  so an epoch is all 60,000 images. samples/s come from the `epoch_time_s` column of the run's
  history.csv (kerasae's EpochTimer: the epoch's wall time, saves and figures excluded).
- kerasae-no-xla: the same with `jit_compile=False` (Keras' own train function, no XLA), so the gain
  of kerasae's default (each call's steps compiled together by XLA) is measured in the same run.
- torch: the same network, initialization (Glorot uniform, zero biases), loss (Bernoulli
  log-likelihood from logits + analytic KL, mean over the batch) and per-batch dynamic
  binarization, written the way a PyTorch user would: the images in one tensor, a randperm
  shuffle per epoch, `torch.bernoulli` per batch, default `torch.optim.Adam`. Eager, and the same
  under `torch.compile` when that works (a failure is recorded, not fatal).

Repetitions are interleaved (kerasae, kerasae-no-xla, torch, torch.compile, then again), each with a fresh model;
the first epoch of each repetition (tracing / compiling) is not measured. The float32 matmul
roofline (`tf.matmul` of two n x n matrices) is measured at the start and at the end of the same
run, and each framework's training GFLOP/s is reported as a fraction of it (see FLOPS_NOTE).
"How cost grows": kerasae's samples/s at batch 32/128/512 and at widths x1/x2/x4.

    python benchmarks/train_throughput.py                 # the full benchmark (quiet machine only)
    python benchmarks/train_throughput.py --quick         # seconds: a smoke run, numbers meaningless
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402
import _torch_twins as twins  # noqa: E402

LATENT_DIM = 32
HIDDEN_UNITS = (512, 256)
IMAGE_PIXELS = 28 * 28
BATCH_SIZE = 128
LEARNING_RATE = 1e-3
TRAIN_IMAGES = 60_000
FRAMEWORKS = ("kerasae", "kerasae-no-xla", "torch", "torch-compile")
#: Test images kerasae.train evaluates on after training (not timed; kept small to save wall time).
EVAL_IMAGES = 256
FLOPS_NOTE = ("Dense-layer matmul FLOPs only (biases, activations, the loss, sampling and the optimizer "
              "are not counted): forward = 2 x sum(in x out) over the encoder 784-512-256-64 and the "
              "decoder 32-256-512-784 per image; training = 3 x forward (the backward pass costs two "
              "matmuls per forward one: gradients of the weights and of the inputs). 'exact' drops the "
              "one backward matmul that is not needed (the gradient of the input images).")

#: --quick leaves torch.compile out unless --frameworks names it: compiling takes minutes on 2 busy cores.
#: --quick's scaling runs: two points each (the base point, batch 128 at width x1, reuses the main runs), since every
#: kerasae run traces and compiles afresh.
QUICK = dict(reps=2, epochs_per_rep=2, steps=24, matmul_size=1024, matmul_reps=3, scaling_reps=1,
             frameworks=["kerasae", "kerasae-no-xla", "torch"], scaling_batches=[32, 128], scaling_widths=[1, 2])
FULL = dict(reps=3, epochs_per_rep=3, steps=None, matmul_size=4096, matmul_reps=7, scaling_reps=1,
            frameworks=list(FRAMEWORKS), scaling_batches=[32, 128, 512], scaling_widths=[1, 2, 4])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="train_throughput.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Defaults: the full benchmark (3 reps x 3 epochs of 60,000 images per framework, plus the "
               "scaling runs; about 4 minutes on the 2-core benchmark machine). --quick: 2 reps x 2 epochs of 24 "
               "steps, no torch.compile, two scaling points of each kind, a 1024 x 1024 matmul (a smoke run; its "
               "numbers mean nothing). Run on a quiet machine only.")
    parser.add_argument("--quick", action="store_true", help="tiny run for CI/smoke tests (explicit flags still win)")
    parser.add_argument("--reps", type=common.positive_int, help="repetitions per framework (full: 3)")
    parser.add_argument("--epochs-per-rep", type=common.positive_int,
                        help="epochs per repetition, >= 2: the first (trace/compile) is not measured (full: 3)")
    parser.add_argument("--steps", type=common.positive_int,
                        help=f"steps per epoch at batch {BATCH_SIZE} (images per epoch = steps x {BATCH_SIZE}, "
                             f"at most {TRAIN_IMAGES:,}; the scaling runs use as many images); default: all "
                             f"{TRAIN_IMAGES:,} images")
    parser.add_argument("--frameworks", type=common.choice_list(FRAMEWORKS),
                        help=f"comma-separated subset of {','.join(FRAMEWORKS)} (full: all; --quick: "
                             "kerasae,kerasae-no-xla,torch)")
    parser.add_argument("--scaling", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure how cost grows with batch size and width (default: on)")
    parser.add_argument("--scaling-batches", type=common.int_list,
                        help="batch sizes of the scaling runs (width x1; full: 32,128,512, --quick: 32,128)")
    parser.add_argument("--scaling-widths", type=common.int_list,
                        help="hidden-unit multipliers of the scaling runs (batch 128; full: 1,2,4, --quick: 1,2)")
    parser.add_argument("--scaling-reps", type=common.positive_int, help="repetitions per scaling point (default 1)")
    parser.add_argument("--scaling-frameworks", type=common.choice_list(FRAMEWORKS), default=["kerasae"],
                        help="frameworks of the scaling runs (default: kerasae)")
    parser.add_argument("--matmul-size", type=common.positive_int, help="n of the n x n roofline matmul (full: 4096)")
    parser.add_argument("--matmul-reps", type=common.positive_int, help="timed roofline matmuls, each time (full: 7)")
    parser.add_argument("--threads", type=common.positive_int,
                        help="TensorFlow intra-op threads (default: TF's default, one per core); torch gets "
                             "the same number either way")
    parser.add_argument("--steps-per-execution", type=common.positive_int,
                        help="override TrainConfig.steps_per_execution for kerasae (default: kerasae's default)")
    parser.add_argument("--jit-compile", action=argparse.BooleanOptionalAction, default=None,
                        help="override TrainConfig.jit_compile for kerasae (default: kerasae's default)")
    args = common.parse_args(parser, argv, lambda a: QUICK if a.quick else FULL, "train_throughput.json")
    if args.epochs_per_rep < 2:
        parser.error("--epochs-per-rep must be at least 2: the first epoch of a repetition (tracing, "
                     "compiling) is not measured")
    if args.steps is not None and args.steps * BATCH_SIZE > TRAIN_IMAGES:
        parser.error(f"--steps {args.steps} x batch {BATCH_SIZE} exceeds the {TRAIN_IMAGES:,} training images "
                     f"(at most {-(-TRAIN_IMAGES // BATCH_SIZE)} steps)")
    return args


# ---- FLOPs --------------------------------------------------------------------------------------

def dense_shapes(hidden_units, latent_dim=LATENT_DIM, pixels=IMAGE_PIXELS):
    """(inputs, outputs) of every Dense layer: encoder then decoder."""
    encoder = [pixels, *hidden_units, 2 * latent_dim]
    decoder = [latent_dim, *reversed(hidden_units), pixels]
    return list(zip(encoder[:-1], encoder[1:])) + list(zip(decoder[:-1], decoder[1:]))


def flops_per_sample(hidden_units):
    shapes = dense_shapes(hidden_units)
    forward = 2 * sum(i * o for i, o in shapes)
    first_input_grad = 2 * shapes[0][0] * shapes[0][1]
    return {"forward": forward, "training": 3 * forward, "training_exact": 3 * forward - first_input_grad,
            "dense_layers": [list(s) for s in shapes]}


def gflops_of(samples_per_s, flops):
    return None if samples_per_s is None else round(samples_per_s * flops["training"] / 1e9, 3)


# ---- the roofline -------------------------------------------------------------------------------

def tf_matmul_gflops(tf, n, reps):
    a = tf.random.normal([n, n], seed=1)
    b = tf.random.normal([n, n], seed=2)
    times = common.time_calls(lambda: tf.matmul(a, b), reps, warmup=2)  # eager CPU ops run synchronously
    return common.summarize([2 * n**3 / t / 1e9 for t in times], digits=3)


def torch_matmul_gflops(torch, n, reps):
    a, b = torch.randn(n, n), torch.randn(n, n)
    times = common.time_calls(lambda: torch.mm(a, b), reps, warmup=2)
    return common.summarize([2 * n**3 / t / 1e9 for t in times], digits=3)


# ---- kerasae -----------------------------------------------------------------------------------

def kerasae_overrides(args, framework="kerasae"):
    overrides = {}
    if args.steps_per_execution is not None:
        overrides["steps_per_execution"] = args.steps_per_execution
    if args.jit_compile is not None:
        overrides["jit_compile"] = args.jit_compile
    if framework == "kerasae-no-xla":
        overrides["jit_compile"] = False
    return overrides


def kerasae_config(args, batch, width, images, seed, out, framework="kerasae"):
    from kerasae.training import TrainConfig

    model_kwargs = {} if width == 1 else {"hidden_units": [u * width for u in HIDDEN_UNITS]}
    return TrainConfig(preset="vae-mlp", model_kwargs=model_kwargs, epochs=args.epochs_per_rep, batch_size=batch,
                       validation_size=0, max_train_samples=None if images == TRAIN_IMAGES else images,
                       max_test_samples=EVAL_IMAGES, seed=seed, out=str(out), verbose=0,
                       **kerasae_overrides(args, framework))


def kerasae_rep(args, batch, width, images, seed, framework="kerasae"):
    """Epoch wall times (history.csv's epoch_time_s) of one fresh kerasae.train run in a temporary directory,
    and the train function it used (metrics.json's `train_function`)."""
    from kerasae import training

    with tempfile.TemporaryDirectory(prefix="kerasae-bench-") as tmp:
        result = training.train(kerasae_config(args, batch, width, images, seed, Path(tmp) / "run", framework))
    return [row["epoch_time_s"] for row in result.history], result.metrics["train_function"]


# ---- the PyTorch reference ----------------------------------------------------------------------

def torch_rep(torch, images_tensor, batch, width, images, epochs, seed, compiled):
    """Epoch wall times of one fresh torch model; the first includes torch.compile's compilation."""
    torch.manual_seed(seed)
    model = twins.mlp_vae(torch, tuple(u * width for u in HIDDEN_UNITS), LATENT_DIM, IMAGE_PIXELS)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loss_fn = torch.compile(model) if compiled else model
    x_all = images_tensor[:images]
    epoch_times = []
    for _ in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(images)
        total = torch.zeros(())
        for i in range(0, images, batch):
            x = torch.bernoulli(x_all[order[i:i + batch]])  # dynamic binarization, one draw per batch
            loss = loss_fn(x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * x.shape[0]
        if not torch.isfinite(total):
            raise FloatingPointError("the torch reference diverged (non-finite loss)")
        epoch_times.append(time.perf_counter() - start)
    return epoch_times


# ---- the run -----------------------------------------------------------------------------------

class Runner:
    """Runs repetitions of each framework at one (batch, width), keeping their epoch times or failures."""

    def __init__(self, args, torch, torch_why, mnist_flat, images):
        self.args, self.torch, self.images = args, torch, images
        self.torch_images = None if torch is None else torch.from_numpy(mnist_flat)
        self.failed = {} if torch is not None else {"torch": torch_why, "torch-compile": torch_why}
        self.train_functions = {}  # (kerasae framework, batch, width) -> the train function kerasae.train used

    def rep(self, framework, batch, width, seed):
        """Epoch times of one repetition, or None when the framework is unavailable or failed."""
        if framework in self.failed:
            return None
        try:
            if framework.startswith("kerasae"):
                times, self.train_functions[framework, batch, width] = kerasae_rep(self.args, batch, width,
                                                                                   self.images, seed, framework)
                return times
            return torch_rep(self.torch, self.torch_images, batch, width, self.images, self.args.epochs_per_rep,
                             seed, compiled=framework == "torch-compile")
        except Exception as err:  # noqa: BLE001  (record any failure of the optional frameworks)
            if framework.startswith("kerasae"):
                raise
            message = " ".join(f"{type(err).__name__}: {err}".split())[:2000]
            common.log(f"{framework} failed: {message}")
            self.failed[framework] = f"failed: {message}"
            return None


def summarize_framework(reps, images, flops, roofline_gflops, failure):
    """samples/s per repetition (measured epochs only), their median/min/max, GFLOP/s and roofline fraction."""
    if failure is not None and not reps:
        return {"status": failure}
    per_rep = []
    for epoch_times in reps:
        measured = epoch_times[1:]
        per_rep.append({"epoch_time_s": [round(t, 4) for t in epoch_times],
                        "first_epoch_s": round(epoch_times[0], 4),
                        "samples_per_s": round(images * len(measured) / sum(measured), 2)})
    samples = common.summarize([r["samples_per_s"] for r in per_rep], digits=2)
    gflops = gflops_of(samples["median"], flops)
    return {"status": "ok" if failure is None else f"ok for {len(reps)} reps, then {failure}",
            "samples_per_s": samples,
            "train_gflops_per_s": gflops,
            "fraction_of_roofline": common.ratio(gflops, roofline_gflops),
            "reps": per_rep}


def main(argv=None):
    args = parse_args(argv)
    common.setup_imports()
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    from kerasae import registry
    from kerasae.data import load_mnist

    preset = registry.preset_kwargs("vae-mlp")
    if (tuple(preset["hidden_units"]), preset["latent_dim"], preset["likelihood"]) != (HIDDEN_UNITS, LATENT_DIM,
                                                                                       "bernoulli"):
        raise SystemExit(f"the vae-mlp preset is no longer 784-{'-'.join(map(str, HIDDEN_UNITS))}-{LATENT_DIM} "
                         f"Bernoulli ({preset}); update this benchmark")
    torch, torch_why = common.import_torch()
    tf_threads = common.tensorflow_threads(tf)
    threads = {"tensorflow": tf_threads, "torch": None}
    if torch is not None:
        torch.set_num_threads(tf_threads["intra_op_effective"])
        try:
            torch.set_num_interop_threads(tf_threads["inter_op_effective"])
        except RuntimeError:  # only settable before torch's first parallel work
            pass
        threads["torch"] = {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads(),
                            "note": "set to match TensorFlow's effective thread counts"}
        threads["torch"]["parallel_info"] = torch.__config__.parallel_info().strip().splitlines()[:8]

    images = TRAIN_IMAGES if args.steps is None else args.steps * BATCH_SIZE
    result = common.header("train_throughput", args, args.quick)
    result["threads"] = threads
    mnist = load_mnist()
    mnist_flat = mnist.x_train.reshape(len(mnist.x_train), -1)[:TRAIN_IMAGES].copy()
    flops = flops_per_sample(HIDDEN_UNITS)
    example = kerasae_config(args, BATCH_SIZE, 1, images, 0, "<temporary directory>")
    result["setup"] = {
        "model": "vae-mlp preset: MLP VAE 784-512-256-32, Bernoulli decoder, analytic KL",
        "preset_kwargs": preset, "optimizer": f"Adam, learning rate {LEARNING_RATE}", "batch_size": BATCH_SIZE,
        "images_per_epoch": images, "epochs_per_rep": args.epochs_per_rep,
        "measured_epochs_per_rep": args.epochs_per_rep - 1, "reps": args.reps, "frameworks": args.frameworks,
        "order": "interleaved: one repetition of each framework in turn, repeated; each repetition builds a "
                 "fresh model and its first epoch (tracing / compiling) is not measured",
        "samples_per_s": "images per measured epoch x measured epochs / their wall time, one value per repetition",
        "kerasae": {"path": "kerasae.training.train(TrainConfig(...)) = model.fit with kerasae's pipeline and "
                            "callbacks; epoch time from history.csv's epoch_time_s (saves and figures excluded)",
                    "train_config": {k: v for k, v in example.to_json().items() if k != "out"}},
        "torch": {"path": "PyTorch reference (benchmarks/_torch_twins.py mlp_vae): eager, and "
                          "torch.compile(model) (forward + "
                          "AOT-autograd backward compiled, optimizer eager)",
                  "data": "all images in one tensor, torch.randperm shuffle per epoch, torch.bernoulli per batch",
                  "optimizer": "torch.optim.Adam defaults (constant learning rate; kerasae's cosine decay "
                               "costs one scalar op per step)"},
    }
    result["flops"] = {"per_sample": flops, "counting": FLOPS_NOTE}

    n = args.matmul_size
    common.log(f"roofline: tf.matmul {n}x{n}")
    roofline = {"n": n, "reps": args.matmul_reps, "tf_matmul_start": tf_matmul_gflops(tf, n, args.matmul_reps)}

    runner = Runner(args, torch, torch_why, mnist_flat, images)
    reps = {fw: [] for fw in args.frameworks}
    for rep in range(args.reps):
        for framework in args.frameworks:
            common.log(f"rep {rep + 1}/{args.reps}: {framework}")
            times = runner.rep(framework, BATCH_SIZE, 1, seed=rep)
            if times is not None:
                reps[framework].append(times)

    scaling_points = []
    if args.scaling:
        scaling_points = ([("batch", b, 1) for b in args.scaling_batches]
                          + [("width", BATCH_SIZE, w) for w in args.scaling_widths])
    scaling_reps = {}
    for kind, batch, width in scaling_points:
        for framework in args.scaling_frameworks:
            key = (batch, width, framework)
            if key in scaling_reps:
                continue
            if batch == BATCH_SIZE and width == 1 and framework in reps:
                scaling_reps[key] = reps[framework]  # the main benchmark's point: reuse its repetitions
                continue
            scaling_reps[key] = []
            for rep in range(args.scaling_reps):
                common.log(f"scaling: {framework} batch {batch} width x{width} ({rep + 1}/{args.scaling_reps})")
                times = runner.rep(framework, batch, width, seed=100 + rep)
                if times is not None:
                    scaling_reps[key].append(times)

    roofline["tf_matmul_end"] = tf_matmul_gflops(tf, n, args.matmul_reps)
    roofline["gflops"] = max(roofline["tf_matmul_start"]["median"], roofline["tf_matmul_end"]["median"])
    roofline["definition"] = ("the higher of the start and end medians of float32 tf.matmul of two n x n "
                              "matrices (eager, warm), 2 n^3 FLOP per matmul")
    if torch is not None:
        roofline["torch_mm"] = torch_matmul_gflops(torch, n, args.matmul_reps)  # for reference only
    result["roofline"] = roofline
    peak = roofline["gflops"]

    names = {"kerasae": "kerasae", "kerasae-no-xla": "kerasae_no_xla", "torch": "torch_eager",
             "torch-compile": "torch_compile"}
    result["frameworks"] = {names[fw]: summarize_framework(reps.get(fw, []), images, flops, peak,
                                                           runner.failed.get(fw))
                            for fw in FRAMEWORKS if fw in args.frameworks}
    for fw in args.frameworks:
        if (fw, BATCH_SIZE, 1) in runner.train_functions:  # the main runs' (scaling runs may differ: batch 512)
            result["frameworks"][names[fw]]["train_function"] = runner.train_functions[fw, BATCH_SIZE, 1]
    if scaling_points:
        result["scaling"] = scaling_table(scaling_points, scaling_reps, args.scaling_frameworks, images, peak,
                                          runner.failed, runner.train_functions)
    result["targets"] = targets(result["frameworks"])
    out = common.write_result(args.out, result)
    print(report(result, out))
    return 0


def scaling_table(points, scaling_reps, frameworks, images, peak, failed, train_functions):
    table = {"batch_size": [], "width": [],
             "note": "batch points at width x1, width points at batch 128 (hidden units 512-256 times the width); "
                     "cost_per_sample_vs_base: seconds per image relative to batch 128, width x1"}
    for framework in frameworks:
        base = scaling_reps.get((BATCH_SIZE, 1, framework))
        base_sps = summarize_framework(base, images, flops_per_sample(HIDDEN_UNITS), peak, None)["samples_per_s"][
            "median"] if base else None
        for kind, batch, width in points:
            hidden = [u * width for u in HIDDEN_UNITS]
            flops = flops_per_sample(hidden)
            entry = summarize_framework(scaling_reps.get((batch, width, framework), []), images, flops, peak,
                                        failed.get(framework))
            entry.update(framework=framework, batch_size=batch, width=width, hidden_units=hidden,
                         training_flops_per_sample=flops["training"])
            if (framework, batch, width) in train_functions:
                entry["train_function"] = train_functions[framework, batch, width]
            sps = entry.get("samples_per_s", {}).get("median")
            entry["cost_per_sample_vs_base"] = common.ratio(base_sps, sps)
            table["batch_size" if kind == "batch" else "width"].append(entry)
    return table


def targets(frameworks):
    keras_sps = frameworks.get("kerasae", {}).get("samples_per_s", {}).get("median")
    torch_sps = frameworks.get("torch_eager", {}).get("samples_per_s", {}).get("median")
    speedup = common.ratio(keras_sps, torch_sps)
    fraction = frameworks.get("kerasae", {}).get("fraction_of_roofline")
    return {
        "kerasae_vs_torch_eager": {"target": ">= 1.3", "value": speedup,
                                   "pass": None if speedup is None else speedup >= 1.3},
        "kerasae_fraction_of_roofline": {"target": ">= 0.5", "value": fraction,
                                         "pass": None if fraction is None else fraction >= 0.5},
    }


def report(result, out):
    lines = common.report_header(result, out)
    lines.append(f"roofline: {result['roofline']['gflops']} GFLOP/s (tf.matmul {result['roofline']['n']}^2)")
    for name, entry in result["frameworks"].items():
        if "samples_per_s" in entry:
            s = entry["samples_per_s"]
            lines.append(f"{name:14s} {s['median']:10.1f} samples/s (min {s['min']:.1f}, max {s['max']:.1f}), "
                         f"{entry['train_gflops_per_s']} GFLOP/s = {entry['fraction_of_roofline']} of roofline")
        else:
            lines.append(f"{name:14s} {entry['status']}")
    for kind in ("batch_size", "width"):
        for entry in result.get("scaling", {}).get(kind, []):
            sps = entry.get("samples_per_s", {}).get("median")
            lines.append(f"scaling {entry['framework']} batch {entry['batch_size']} width x{entry['width']}: "
                         f"{sps} samples/s, cost/sample x{entry['cost_per_sample_vs_base']}")
    for name, target in result["targets"].items():
        lines.append(f"target {name} {target['target']}: {target['value']} -> {target['pass']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
