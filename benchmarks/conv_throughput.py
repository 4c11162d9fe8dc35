"""Training throughput of the convolutional VAEs: kerasae's real training path vs their PyTorch eager twins.

- vae-conv: conv 32-64 (stride 2), 32-D latent, Bernoulli decoder, on dynamically binarized MNIST (the
  embedded copy), 16,384 training images per epoch.
- vae-resnet-32: pre-activation residual stages 32-64-128 with GroupNorm down to 8x8, 128-D latent,
  discretized logistic decoder over 8-bit pixels with a learned per-pixel scale, on 2,048 seeded random
  8-bit 32x32 RGB images per epoch (an npz file the run writes; throughput does not depend on content).

kerasae: `kerasae.train(TrainConfig(...))`, the path users run (one `model.fit` over all epochs, kerasae's
tf.data pipeline, callbacks and defaults), validation_size=0; an epoch's time is history.csv's
`epoch_time_s`. torch: the twins in `_torch_twins.py` (same layers, initialization, padding and loss;
tests/test_torch_twins.py checks equal loss and gradients), eager, NCHW, all images in one tensor, a
randperm shuffle per epoch, `torch.bernoulli` per batch for vae-conv, `torch.optim.Adam` (lr 1e-3),
batch 128. Repetitions are interleaved (kerasae, torch, kerasae, ...), each a fresh model; the first epoch of
each (tracing) is not measured. `--profile` adds where the time goes: one profiled epoch of each framework,
op self time per step summed by op type (TensorFlow's profiler, torch.profiler). `--norm-ceiling` adds, for
vae-resnet-32, a third interleaved run: kerasae with `norm="none"` (no GroupNorm at all) against the twin with
GroupNorm, the most speed any faster GroupNorm could give kerasae.

    python benchmarks/conv_throughput.py             # the full benchmark (quiet machine only, ~8 minutes)
    python benchmarks/conv_throughput.py --quick     # seconds: a smoke run, numbers meaningless
    python benchmarks/conv_throughput.py --presets vae-resnet-32 --norm-ceiling --out \
        benchmarks/results/conv_throughput_norm_ceiling.json
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402
import _torch_twins as twins  # noqa: E402

PRESETS = ("vae-conv", "vae-resnet-32")
BATCH_SIZE = 128
LEARNING_RATE = 1e-3
STEPS = {"vae-conv": 128, "vae-resnet-32": 16}  # steps per epoch (full run)
NORM_CEILING_PRESETS = ("vae-resnet-32",)  # the presets with GroupNorm
QUICK = dict(reps=2, epochs_per_rep=2, steps=2)
FULL = dict(reps=3, epochs_per_rep=4, steps=None)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="conv_throughput.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny run for CI/smoke tests (explicit flags still win)")
    parser.add_argument("--reps", type=common.positive_int, help="repetitions per framework and preset (full: 3)")
    parser.add_argument("--epochs-per-rep", type=common.positive_int,
                        help="epochs per repetition, >= 2: the first (tracing) is not measured (full: 4)")
    parser.add_argument("--steps", type=common.positive_int,
                        help=f"steps per epoch at batch {BATCH_SIZE} (full: {STEPS})")
    parser.add_argument("--presets", type=common.choice_list(PRESETS), default=list(PRESETS),
                        help=f"comma-separated subset of {','.join(PRESETS)} (default: both)")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=False,
                        help="also profile one epoch of each framework: op time by op type")
    parser.add_argument("--norm-ceiling", action="store_true",
                        help="vae-resnet-32 also without normalization (norm=none): the ceiling of a faster GroupNorm")
    args = common.parse_args(parser, argv, lambda a: QUICK if a.quick else FULL, "conv_throughput.json")
    if args.epochs_per_rep < 2:
        parser.error("--epochs-per-rep must be at least 2: the first epoch of a repetition (tracing) is not measured")
    return args


def dataset(preset, images, workdir):
    """(kerasae dataset spec, float32 images NHWC in [0, 1]) of `images` training images."""
    if preset == "vae-conv":
        from kerasae.data import load_mnist

        return "mnist", load_mnist().x_train[:images]
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (images + 64, 32, 32, 3), dtype=np.uint8)
    path = Path(workdir) / "random-rgb32.npz"
    np.savez(path, x_train=pixels[:images], x_test=pixels[images:])
    return f"npz:{path}", pixels[:images].astype(np.float32) / 255.0


def kerasae_rep(args, preset, spec, images, seed, workdir, model_kwargs=None):
    from kerasae import training

    model_kwargs = model_kwargs or {}
    run_name = "-".join(["run", preset, str(seed), *(f"{k}={v}" for k, v in sorted(model_kwargs.items()))])
    config = training.TrainConfig(preset=preset, model_kwargs=model_kwargs, dataset=spec, epochs=args.epochs_per_rep,
                                  batch_size=BATCH_SIZE, learning_rate=LEARNING_RATE, validation_size=0,
                                  max_train_samples=images, max_test_samples=64, seed=seed,
                                  out=str(Path(workdir) / run_name), verbose=0)
    result = training.train(config)
    model = {"norm": getattr(result.model, "norm", None), "parameters": result.model.count_params()}
    return [row["epoch_time_s"] for row in result.history], result.metrics["train_function"], model


def torch_model(torch, preset):
    return twins.conv_vae(torch) if preset == "vae-conv" else twins.resnet_vae(torch)


def torch_epoch(torch, preset, model, optimizer, x_all):
    binarize = preset == "vae-conv"  # the Bernoulli preset trains on dynamically binarized images
    order = torch.randperm(len(x_all))
    total = torch.zeros(())
    for i in range(0, len(x_all), BATCH_SIZE):
        x = x_all[order[i:i + BATCH_SIZE]]
        if binarize:
            x = torch.bernoulli(x)  # dynamic binarization, one draw per batch
        loss = model(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach()
    if not torch.isfinite(total):
        raise FloatingPointError("the torch twin diverged (non-finite loss)")


def torch_rep(torch, preset, x_all, epochs, seed):
    torch.manual_seed(seed)
    model = torch_model(torch, preset)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        torch_epoch(torch, preset, model, optimizer, x_all)
        times.append(time.perf_counter() - start)
    return times


def summarize(reps, images):
    per_rep = [images * len(t[1:]) / sum(t[1:]) for t in reps]
    return {"samples_per_s": common.summarize(per_rep, digits=2),
            "epoch_time_s": [[round(x, 4) for x in t] for t in reps]}


def profile_tensorflow(preset, x, workdir):
    """Op self-time (ms per step) by op type in the second epoch of one model.fit, compiled as kerasae.train does.

    TensorFlow runs independent ops side by side (2 inter-op threads), so the sum can exceed the wall time.
    """
    import json

    import keras
    import tensorflow as tf
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    import kerasae
    from kerasae.data.pipeline import make_dataset
    from kerasae.training import TrainConfig, train_functions

    logdir = Path(workdir) / f"tf-profile-{preset}"
    steps = len(x) // BATCH_SIZE
    config = TrainConfig(preset=preset, epochs=2, batch_size=BATCH_SIZE, learning_rate=LEARNING_RATE)
    model = kerasae.build(preset)
    execution, repeat = train_functions.plan_executions(steps, 0, config.steps_per_execution, replicated=False,
                                                        custom_loop=False)
    kind = train_functions.train_function_kind(config, model, False, whole_executions=repeat)
    train_functions.compile_for_fit(model, config, steps, tf.distribute.get_strategy(), execution, kind)
    data = make_dataset(x, BATCH_SIZE, shuffle=True, binarize=model.binary_data, seed=0, repeat=repeat)

    class Profile(keras.callbacks.Callback):  # the second epoch only: the first traces
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                tf.profiler.experimental.start(str(logdir))

        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                tf.profiler.experimental.stop()

    model.fit(data, steps_per_epoch=steps, epochs=2, verbose=0, callbacks=[Profile()])
    xplane = next(logdir.rglob("*.xplane.pb"))
    table = json.loads(plugin.xspace_to_tools_data([str(xplane)], "framework_op_stats", {})[0])[0]
    cols = [c["id"] for c in table["cols"]]
    by_type = {}
    for row in table["rows"]:
        entry = dict(zip(cols, (c["v"] if c else None for c in row["c"])))
        if entry["type"] != "IDLE":
            by_type[entry["type"]] = by_type.get(entry["type"], 0.0) + entry["total_self_time"] / 1e3
    return {**_top(by_type, steps), "train_function": kind}


def profile_torch(torch, preset, x_all):
    from torch.profiler import ProfilerActivity, profile

    model = torch_model(torch, preset)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    torch_epoch(torch, preset, model, optimizer, x_all)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch_epoch(torch, preset, model, optimizer, x_all)
    by_type = {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}
    return _top(by_type, -(-len(x_all) // BATCH_SIZE))


def _top(ms_by_type, steps, keep=12):
    total = sum(ms_by_type.values())
    ranked = sorted(ms_by_type.items(), key=lambda kv: -kv[1])
    return {"ms_per_step": round(total / steps, 2),
            "top_op_types_ms_per_step": {k: round(v / steps, 2) for k, v in ranked[:keep]},
            "rest_ms_per_step": round(sum(v for _, v in ranked[keep:]) / steps, 2)}


def main(argv=None):
    args = parse_args(argv)
    common.setup_imports()
    import tensorflow as tf

    torch, torch_why = common.import_torch()
    result = common.header("conv_throughput", args, args.quick)
    tf_threads = common.tensorflow_threads(tf)
    result["threads"] = {"tensorflow": tf_threads}
    if torch is not None:
        torch.set_num_threads(tf_threads["intra_op_effective"])
        result["threads"]["torch"] = {"intra_op": torch.get_num_threads()}
    result["setup"] = {"batch_size": BATCH_SIZE, "optimizer": f"Adam, learning rate {LEARNING_RATE}",
                       "reps": args.reps, "epochs_per_rep": args.epochs_per_rep,
                       "order": "interleaved per preset: kerasae, torch, kerasae, ...; fresh model per repetition; "
                                "first epoch of each not measured",
                       "torch": "eager twins from benchmarks/_torch_twins.py (NCHW), default torch.optim.Adam"}
    result["presets"] = {}
    with tempfile.TemporaryDirectory(prefix="kerasae-conv-bench-") as workdir:
        for preset in args.presets:
            steps = args.steps or STEPS[preset]
            images = steps * BATCH_SIZE
            spec, x = dataset(preset, images, workdir)
            x_torch = None if torch is None else torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
            ceiling = args.norm_ceiling and preset in NORM_CEILING_PRESETS
            reps, kinds, models = {"kerasae": [], "torch": [], "kerasae_no_norm": []}, set(), {}
            for rep in range(args.reps):
                common.log(f"{preset} rep {rep + 1}/{args.reps}: kerasae")
                times, kind, models["kerasae"] = kerasae_rep(args, preset, spec, images, rep, workdir)
                reps["kerasae"].append(times)
                kinds.add(kind)
                if ceiling:
                    common.log(f"{preset} rep {rep + 1}/{args.reps}: kerasae, norm=none")
                    times, _, models["kerasae_no_norm"] = kerasae_rep(args, preset, spec, images, rep, workdir,
                                                                      model_kwargs={"norm": "none"})
                    reps["kerasae_no_norm"].append(times)
                if torch is not None:
                    common.log(f"{preset} rep {rep + 1}/{args.reps}: torch")
                    reps["torch"].append(torch_rep(torch, preset, x_torch, args.epochs_per_rep, rep))
            entry = {"images_per_epoch": images,
                     "kerasae": {**summarize(reps["kerasae"], images), "train_function": sorted(kinds),
                                 "model": models["kerasae"]}}
            entry["torch_eager"] = summarize(reps["torch"], images) if torch is not None else {"status": torch_why}
            k_sps = entry["kerasae"]["samples_per_s"]["median"]
            t_sps = entry["torch_eager"].get("samples_per_s", {}).get("median")
            speedup = common.ratio(k_sps, t_sps)
            entry["target"] = {"kerasae_vs_torch_eager": {"target": ">= 1.3", "value": speedup,
                                                          "pass": None if speedup is None else speedup >= 1.3}}
            if ceiling:
                entry["kerasae_no_norm"] = {**summarize(reps["kerasae_no_norm"], images),
                                            "model": models["kerasae_no_norm"]}
                entry["norm_ceiling"] = {
                    "what": "kerasae without any normalization vs the twin with GroupNorm: the speedup a GroupNorm "
                            "that cost nothing would give",
                    "kerasae_no_norm_vs_torch_eager": common.ratio(
                        entry["kerasae_no_norm"]["samples_per_s"]["median"], t_sps),
                    "kerasae_no_norm_vs_kerasae": common.ratio(entry["kerasae_no_norm"]["samples_per_s"]["median"],
                                                               k_sps)}
            if args.profile:
                common.log(f"{preset}: profiling")
                entry["profile"] = {"tensorflow": profile_tensorflow(preset, x, workdir)}
                if torch is not None:
                    entry["profile"]["torch"] = profile_torch(torch, preset, x_torch)
            result["presets"][preset] = entry
    out = common.write_result(args.out, result)
    print(report(result, out))
    return 0


def report(result, out):
    lines = common.report_header(result, out)
    for preset, entry in result["presets"].items():
        k = entry["kerasae"]["samples_per_s"]["median"]
        t = entry["torch_eager"].get("samples_per_s", {}).get("median")
        target = entry["target"]["kerasae_vs_torch_eager"]
        lines.append(f"{preset}: kerasae {k} samples/s, torch eager {t}: x{target['value']} "
                     f"(target {target['target']}: {target['pass']})")
        if "norm_ceiling" in entry:
            ceiling = entry["norm_ceiling"]
            lines.append(f"{preset} without normalization: kerasae "
                         f"{entry['kerasae_no_norm']['samples_per_s']['median']} samples/s: "
                         f"x{ceiling['kerasae_no_norm_vs_torch_eager']} the twin with GroupNorm")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
