"""Training throughput in float32 and bfloat16: kerasae (`--precision`) against the PyTorch eager twins (float32,
and under `torch.autocast("cpu", torch.bfloat16)`), with the machine's matmul and 3x3 convolution rates in both
precisions (the roofline) and the CPU's model and flags.

    python benchmarks/precision_throughput.py            # benchmarks/results/precision_throughput.json
    python benchmarks/precision_throughput.py --quick    # a smoke run, numbers meaningless

Presets vae-mlp and vae-conv (dynamically binarized MNIST, the embedded copy) and vae-resnet-32 (seeded random
8-bit 32x32 RGB), batch 128, Adam 1e-3. kerasae trains through `kerasae.train` (the path users run,
`TrainConfig(precision=...)`); the twins are conv_throughput.py's. Per repetition the four arms run in turn
(kerasae float32, kerasae bfloat16, torch float32, torch bfloat16), each a fresh model, the first epoch
(tracing) not measured. The targets (vae-resnet-32 bfloat16 >= 1.3x the twin under autocast and >= 2.5x
kerasae's float32; vae-conv and vae-mlp no slower in bfloat16) are judged only on a CPU with bfloat16 matrix
instructions (amx_bf16 or avx512_bf16): elsewhere bfloat16 is emulated and `pass` is null.
"""

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402
import _torch_twins as twins  # noqa: E402
import conv_throughput as conv  # noqa: E402

PRESETS = ("vae-mlp", "vae-conv", "vae-resnet-32")
STEPS = {"vae-mlp": 256, "vae-conv": 128, "vae-resnet-32": 16}  # steps per epoch (full run)
ARMS = ("kerasae_float32", "kerasae_bfloat16", "torch_float32", "torch_bfloat16")
QUICK = dict(reps=1, epochs_per_rep=2, steps=2, roofline_reps=2)
FULL = dict(reps=3, epochs_per_rep=3, steps=None, roofline_reps=20)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="precision_throughput.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny run for smoke tests (explicit flags still win)")
    parser.add_argument("--reps", type=common.positive_int, help="repetitions of every arm (full: 3)")
    parser.add_argument("--epochs-per-rep", type=common.positive_int, help="epochs per repetition, >= 2 (full: 3)")
    parser.add_argument("--steps", type=common.positive_int, help=f"steps per epoch at batch 128 (full: {STEPS})")
    parser.add_argument("--roofline-reps", type=common.positive_int, help="timed calls per roofline kernel")
    parser.add_argument("--presets", type=common.choice_list(PRESETS), default=list(PRESETS),
                        help=f"comma-separated subset of {','.join(PRESETS)} (default: all)")
    args = common.parse_args(parser, argv, lambda a: QUICK if a.quick else FULL, "precision_throughput.json")
    if args.epochs_per_rep < 2:
        parser.error("--epochs-per-rep must be at least 2: the first epoch of a repetition (tracing) is not measured")
    return args


def kerasae_rep(preset, spec, images, epochs, seed, workdir, precision):
    from kerasae import training

    config = training.TrainConfig(preset=preset, dataset=spec, epochs=epochs, batch_size=conv.BATCH_SIZE,
                                  learning_rate=conv.LEARNING_RATE, validation_size=0, max_train_samples=images,
                                  max_test_samples=64, seed=seed, precision=precision, verbose=0,
                                  out=str(Path(workdir) / f"run-{preset}-{precision}-{seed}"))
    result = training.train(config)
    return [row["epoch_time_s"] for row in result.history]


def torch_rep(torch, preset, x, epochs, seed, bfloat16):
    torch.manual_seed(seed)
    model = twins.mlp_vae(torch) if preset == "vae-mlp" else conv.torch_model(torch, preset)
    optimizer = torch.optim.Adam(model.parameters(), lr=conv.LEARNING_RATE)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bfloat16 else contextlib.nullcontext()
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        order, total = torch.randperm(len(x)), torch.zeros(())
        for i in range(0, len(x), conv.BATCH_SIZE):
            batch = x[order[i:i + conv.BATCH_SIZE]]
            if preset != "vae-resnet-32":
                batch = torch.bernoulli(batch)  # dynamic binarization, as kerasae's Bernoulli presets train
            with autocast:
                loss = model(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.float().backward()
            optimizer.step()
            total += loss.detach().float()
        if not torch.isfinite(total):
            raise FloatingPointError(f"the torch twin of {preset} diverged (non-finite loss)")
        times.append(time.perf_counter() - start)
    return times


def roofline(tf, torch, reps):
    """GFLOP/s of a 1024^3 matmul and of a 3x3 convolution (batch 32, 32x32, 64 -> 64 channels), float32 and
    bfloat16, in TensorFlow and torch."""
    n, (b, h, w, c) = 1024, (32, 32, 32, 64)
    conv_flops = 2 * b * h * w * c * c * 9
    rates = {}
    for dtype in ("float32", "bfloat16"):
        a, m = tf.cast(tf.random.normal([n, n], seed=1), dtype), tf.cast(tf.random.normal([n, n], seed=2), dtype)
        x, k = (tf.cast(tf.random.normal(s, seed=3), dtype) for s in ([b, h, w, c], [3, 3, c, c]))
        conv2d = tf.function(lambda x, k: tf.nn.conv2d(x, k, 1, "SAME"))
        rates[f"tensorflow_matmul_{dtype}"] = common.summarize(
            [2 * n**3 / t / 1e9 for t in common.time_calls(lambda: tf.matmul(a, m).numpy(), reps)], digits=1)
        rates[f"tensorflow_conv3x3_{dtype}"] = common.summarize(
            [conv_flops / t / 1e9 for t in common.time_calls(lambda: conv2d(x, k).numpy(), reps)], digits=1)
        if torch is not None:
            tdtype = getattr(torch, dtype)
            ta, tm = torch.randn(n, n, dtype=tdtype), torch.randn(n, n, dtype=tdtype)
            tx, tk = torch.randn(b, c, h, w, dtype=tdtype), torch.randn(c, c, 3, 3, dtype=tdtype)
            with torch.no_grad():
                rates[f"torch_matmul_{dtype}"] = common.summarize(
                    [2 * n**3 / t / 1e9 for t in common.time_calls(lambda: torch.mm(ta, tm), reps)], digits=1)
                rates[f"torch_conv3x3_{dtype}"] = common.summarize(
                    [conv_flops / t / 1e9 for t in common.time_calls(
                        lambda: torch.nn.functional.conv2d(tx, tk, padding=1), reps)], digits=1)
    return rates


def targets(entry, preset, bf16_cpu):
    """The issue's targets for one preset; pass is None without bfloat16 matrix instructions."""
    median = {arm: entry[arm]["samples_per_s"]["median"] if "samples_per_s" in entry[arm] else None for arm in ARMS}
    out = {"kerasae_bfloat16_vs_kerasae_float32": common.ratio(median["kerasae_bfloat16"], median["kerasae_float32"]),
           "kerasae_bfloat16_vs_torch_bfloat16": common.ratio(median["kerasae_bfloat16"], median["torch_bfloat16"]),
           "kerasae_float32_vs_torch_float32": common.ratio(median["kerasae_float32"], median["torch_float32"])}
    wanted = ({"kerasae_bfloat16_vs_torch_bfloat16": 1.3, "kerasae_bfloat16_vs_kerasae_float32": 2.5}
              if preset == "vae-resnet-32" else {"kerasae_bfloat16_vs_kerasae_float32": 1.0})
    out["targets"] = {name: {"target": f">= {bound}", "value": out[name],
                             "pass": None if not bf16_cpu or out[name] is None else out[name] >= bound}
                      for name, bound in wanted.items()}
    return out


def main(argv=None):
    args = parse_args(argv)
    common.setup_imports()
    import tensorflow as tf

    from kerasae.training.precision import BF16_FLAGS  # the flags `--precision auto` looks for

    torch, torch_why = common.import_torch()
    result = common.header("precision_throughput", args, args.quick)
    flags = result["machine_at_start"]["cpu_flags"] or []
    bf16_cpu = [f for f in BF16_FLAGS if f in flags]
    result["bfloat16_matrix_instructions"] = bf16_cpu
    result["note_on_this_cpu"] = (f"bfloat16 matrix instructions: {', '.join(bf16_cpu)}" if bf16_cpu else
                                  "no bfloat16 matrix instructions: bfloat16 is emulated here, the targets are "
                                  "not judged (pass: null)")
    tf_threads = common.tensorflow_threads(tf)
    result["threads"] = {"tensorflow": tf_threads}
    if torch is not None:
        torch.set_num_threads(tf_threads["intra_op_effective"])
    common.log("roofline")
    result["roofline_gflops_per_s"] = roofline(tf, torch, args.roofline_reps)
    result["presets"] = {}
    with tempfile.TemporaryDirectory(prefix="kerasae-precision-bench-") as workdir:
        for preset in args.presets:
            images = (args.steps or STEPS[preset]) * conv.BATCH_SIZE
            spec, x = conv.dataset("vae-conv" if preset == "vae-mlp" else preset, images, workdir)
            x_torch = None
            if torch is not None:
                x_torch = torch.from_numpy(np.ascontiguousarray(
                    x.reshape(len(x), -1) if preset == "vae-mlp" else x.transpose(0, 3, 1, 2)))
            reps = {arm: [] for arm in ARMS}
            for rep in range(args.reps):
                for arm in ARMS:
                    framework, precision = arm.split("_")
                    if framework == "torch" and torch is None:
                        continue
                    common.log(f"{preset} rep {rep + 1}/{args.reps}: {arm}")
                    reps[arm].append(
                        kerasae_rep(preset, spec, images, args.epochs_per_rep, rep, workdir, precision)
                        if framework == "kerasae" else
                        torch_rep(torch, preset, x_torch, args.epochs_per_rep, rep, precision == "bfloat16"))
            entry = {"images_per_epoch": images}
            for arm in ARMS:
                entry[arm] = conv.summarize(reps[arm], images) if reps[arm] else {"status": torch_why}
            entry.update(targets(entry, preset, bf16_cpu))
            result["presets"][preset] = entry
    out = common.write_result(args.out, result)
    print(report(result, out))
    return 0


def report(result, out):
    lines = common.report_header(result, out) + [result["note_on_this_cpu"]]
    roof = result["roofline_gflops_per_s"]
    lines.append("roofline GFLOP/s (median): " + ", ".join(f"{k} {v['median']}" for k, v in roof.items()))
    for preset, entry in result["presets"].items():
        rates = ", ".join(f"{arm} {entry[arm]['samples_per_s']['median']}" for arm in ARMS
                          if "samples_per_s" in entry[arm])
        lines.append(f"{preset} samples/s: {rates}; bfloat16/float32 x{entry['kerasae_bfloat16_vs_kerasae_float32']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
