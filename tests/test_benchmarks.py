"""Smoke tests of benchmarks/: each script's --quick mode runs and writes a well-formed result.

The numbers of a --quick run mean nothing (and the machine may be busy); these tests check the
structure and that every figure is a positive finite number, with and without torch (the
optional `bench` extra: CI installs `.[dev]` only). The PyTorch reference behind the speed ratios is
checked to compute kerasae's loss and gradients (skipped without torch).
"""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
# Run a benchmark as if torch were not installed: `import torch` raises ModuleNotFoundError. (A None in
# sys.modules would not do: scipy's array-API helpers look torch up there and trip over it.)
_NO_TORCH = """
import runpy, sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoTorch())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_benchmark(script, *args, without_torch=False, timeout=900):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    prefix = [sys.executable, "-c", _NO_TORCH] if without_torch else [sys.executable]
    return subprocess.run([*prefix, str(BENCH / script), *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def load_result(proc, path):
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(Path(path).read_text())


def positive(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def assert_summary(summary, n=None):
    """A median/min/max summary of positive finite numbers, min <= median <= max."""
    for key in ("median", "min", "max"):
        assert positive(summary[key]), (key, summary)
    assert summary["min"] <= summary["median"] <= summary["max"]
    if n is not None:
        assert summary["n"] == n


def assert_header(result, benchmark):
    assert result["benchmark"] == benchmark and result["quick"] is True
    for when in ("machine_at_start", "machine_at_end"):
        machine = result[when]
        assert machine["cpu_model"] and machine["usable_cores"] >= 1 and isinstance(machine["busy"], bool)
    assert result["versions"]["tensorflow"] and result["versions"]["kerasae"]


def assert_trained(entry, reps):
    assert entry["status"] == "ok", entry
    assert_summary(entry["samples_per_s"], n=reps)
    assert positive(entry["train_gflops_per_s"]) and positive(entry["fraction_of_roofline"])
    assert len(entry["reps"]) == reps
    for rep in entry["reps"]:
        assert len(rep["epoch_time_s"]) == 2 and all(positive(t) for t in rep["epoch_time_s"])
        assert positive(rep["samples_per_s"])


# ---- command line ----------------------------------------------------------------------------

@pytest.mark.parametrize("script, args", [
    ("train_throughput.py", ["--reps", "0"]),
    ("train_throughput.py", ["--epochs-per-rep", "1"]),
    ("train_throughput.py", ["--frameworks", "kerasae,jax"]),
    ("train_throughput.py", ["--steps", "1000"]),
    ("train_throughput.py", ["--scaling-batches", "32,x"]),
    ("train_throughput.py", ["--bogus"]),
    ("conv_throughput.py", ["--epochs-per-rep", "1"]),
    ("conv_throughput.py", ["--presets", "vae-conv,vae-mlp"]),
    ("conv_throughput.py", ["--steps", "0"]),
    ("inference_latency.py", ["--model", "no/such/model.keras"]),
    ("inference_latency.py", ["--batches", "0"]),
    ("inference_latency.py", ["--variants", "fp64"]),
    ("inference_latency.py", ["--calls", "-3"]),
    ("fp16_parity.py", ["no/such/run"]),
    ("fp16_parity.py", []),
    ("onnx_parity.py", ["--slices", "0"]),
    ("streaming.py", ["--sizes", "10000,x"]),
    ("streaming.py", ["--repeats", "0"]),
    ("dataset_index.py", ["--sizes", "10,x"]),
    ("fit_stalls.py", ["--calls", "0"]),
    ("precision_throughput.py", ["--epochs-per-rep", "1"]),
    ("precision_throughput.py", ["--presets", "vae-mlp,vae-gan"]),
    ("tfds_skip.py", ["--read", "0"]),
    ("tfds_skip.py", ["--records", "500", "--read", "500"]),
])
def test_bad_arguments_are_usage_errors(script, args):
    proc = run_benchmark(script, *args, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "usage:" in proc.stderr and "error:" in proc.stderr


# ---- train_throughput.py ---------------------------------------------------------------------

@pytest.mark.slow
def test_train_throughput_quick_without_torch(tmp_path):
    """The whole quick run (scaling included) where torch is missing: kerasae measured, torch recorded as missing."""
    out = tmp_path / "train.json"
    result = load_result(run_benchmark("train_throughput.py", "--quick", "--out", out, without_torch=True), out)
    assert_header(result, "train_throughput")
    assert result["setup"]["batch_size"] == 128 and result["setup"]["images_per_epoch"] == 24 * 128
    assert result["flops"]["per_sample"]["training"] == 3 * result["flops"]["per_sample"]["forward"] == 6_537_216
    roofline = result["roofline"]
    assert_summary(roofline["tf_matmul_start"], n=3)
    assert_summary(roofline["tf_matmul_end"], n=3)
    assert positive(roofline["gflops"])
    assert result["threads"]["tensorflow"]["intra_op_effective"] >= 1 and result["threads"]["torch"] is None

    frameworks = result["frameworks"]
    assert_trained(frameworks["kerasae"], reps=2)
    assert_trained(frameworks["kerasae_no_xla"], reps=2)
    assert frameworks["kerasae"]["train_function"] == "xla-execution"  # kerasae's default for this MLP
    assert frameworks["kerasae_no_xla"]["train_function"] == "keras"
    assert frameworks["torch_eager"]["status"].startswith("not installed")
    assert "torch_compile" not in frameworks  # --quick leaves torch.compile out
    targets = result["targets"]
    assert targets["kerasae_vs_torch_eager"]["pass"] is None
    assert isinstance(targets["kerasae_fraction_of_roofline"]["pass"], bool)

    scaling = result["scaling"]
    assert [e["batch_size"] for e in scaling["batch_size"]] == [32, 128]  # --quick's two points of each kind
    assert [e["width"] for e in scaling["width"]] == [1, 2]
    for entry in scaling["batch_size"] + scaling["width"]:
        assert entry["framework"] == "kerasae" and entry["train_function"] in ("xla-execution", "keras")
        assert positive(entry["samples_per_s"]["median"]) and positive(entry["cost_per_sample_vs_base"])
        assert entry["hidden_units"] == [512 * entry["width"], 256 * entry["width"]]
    assert scaling["width"][0]["cost_per_sample_vs_base"] == 1.0
    flops = [e["training_flops_per_sample"] for e in scaling["width"]]
    assert flops[0] == 6_537_216 and flops[1] > 2 * flops[0]  # x2: ~2.5x the matmul work of x1


@pytest.mark.slow
def test_train_throughput_quick_with_torch(tmp_path):
    """kerasae and the PyTorch reference side by side (skipped without the `bench` extra)."""
    pytest.importorskip("torch")
    out = tmp_path / "train.json"
    # one thread each: torch's OpenMP threads crawl on an oversubscribed machine (CI may be busy)
    # kerasae-no-xla left out: the test without torch measures it
    proc = run_benchmark("train_throughput.py", "--quick", "--no-scaling", "--threads", "1", "--reps", "1",
                         "--frameworks", "kerasae,torch", "--out", out)
    result = load_result(proc, out)
    assert_header(result, "train_throughput")
    assert result["versions"]["torch"]
    assert result["threads"]["tensorflow"]["intra_op"] == 1 and result["threads"]["torch"]["intra_op"] == 1
    for name in ("kerasae", "torch_eager"):
        assert_trained(result["frameworks"][name], reps=1)
    assert positive(result["roofline"]["torch_mm"]["median"])
    speedup = result["targets"]["kerasae_vs_torch_eager"]
    assert positive(speedup["value"]) and isinstance(speedup["pass"], bool)
    assert "scaling" not in result


def _import_benchmark(name):
    sys.path.insert(0, str(BENCH))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(BENCH))


def test_torch_reference_computes_kerasaes_loss_and_gradients(mnist_binary, monkeypatch):
    """The speed ratios compare kerasae with a PyTorch twin of `vae-mlp`: with the Keras weights copied into it,
    the same binarized batch and the same reparameterization noise, the twin's loss (the batch-mean negative
    ELBO) equals the loss kerasae's training step minimizes, and so does the gradient's global norm."""
    torch = pytest.importorskip("torch")
    import keras
    import numpy as np
    import tensorflow as tf

    import kerasae

    bench = _import_benchmark("train_throughput")
    rng = np.random.default_rng(0)
    model = kerasae.build("vae-mlp", seed=0)
    twin = _import_benchmark("_torch_twins").mlp_vae(torch, bench.HIDDEN_UNITS, bench.LATENT_DIM)
    pairs = []
    for keras_stack, torch_stack in ((model.encoder, twin.encoder), (model.decoder, twin.decoder)):
        dense = [layer for layer in keras_stack.layers if isinstance(layer, keras.layers.Dense)]
        linear = [module for module in torch_stack if isinstance(module, torch.nn.Linear)]
        assert len(dense) == len(linear) == len(bench.HIDDEN_UNITS) + 1
        pairs += list(zip(dense, linear))
    with torch.no_grad():
        for layer, module in pairs:
            kernel, bias = layer.get_weights()
            bias = rng.normal(scale=0.05, size=bias.shape).astype(np.float32)  # nonzero: the copy is checked
            layer.set_weights([kernel, bias])
            module.weight.copy_(torch.from_numpy(kernel.T.copy()))
            module.bias.copy_(torch.from_numpy(bias))
    assert sum(p.numel() for p in twin.parameters()) == model.count_params()

    x = mnist_binary[:64]
    eps = rng.standard_normal((len(x), bench.LATENT_DIM)).astype(np.float32)
    monkeypatch.setattr(model, "training_noise", lambda kind, shape, step=None, stream=0: tf.constant(eps[:, None]))
    with tf.GradientTape() as tape:
        terms = model.compute_terms(x, training=True, step=tf.constant(0, tf.int64))
        keras_loss = tf.nn.compute_average_loss(terms["loss"])  # as train_step
    keras_grads = tape.gradient(keras_loss, model.trainable_variables)

    torch_loss = twin(torch.from_numpy(x.reshape(len(x), -1)), torch.from_numpy(eps))
    torch_loss.backward()
    assert float(torch_loss.detach()) == pytest.approx(float(keras_loss), rel=1e-5)
    torch_norm = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in twin.parameters()))
    assert torch_norm == pytest.approx(float(tf.linalg.global_norm(keras_grads)), rel=1e-4)
    by_variable = dict(zip((v.path for v in model.trainable_variables), keras_grads))
    for layer, module in pairs:  # layer by layer, so a mismatch names its layer
        for name, param in (("kernel", module.weight), ("bias", module.bias)):
            keras_grad = by_variable[f"{layer.path}/{name}"].numpy()
            assert float(param.grad.norm()) == pytest.approx(float(np.linalg.norm(keras_grad)), rel=1e-4), layer.name


# ---- conv_throughput.py ----------------------------------------------------------------------

@pytest.mark.slow
def test_conv_throughput_quick_with_profile(tmp_path):
    """Both conv presets through kerasae.train and their PyTorch twins, each profiled by op type; with
    --norm-ceiling, vae-resnet-32 (the preset with GroupNorm) also trained without normalization."""
    pytest.importorskip("torch")
    out = tmp_path / "conv.json"
    # One repetition (each retraces both residual stacks); repetitions are summarized as train_throughput's are.
    result = load_result(run_benchmark("conv_throughput.py", "--quick", "--steps", "1", "--reps", "1", "--profile",
                                       "--norm-ceiling", "--out", out), out)
    assert_header(result, "conv_throughput")
    assert set(result["presets"]) == {"vae-conv", "vae-resnet-32"}
    for preset, entry in result["presets"].items():
        assert entry["images_per_epoch"] == 128
        for name in ("kerasae", "torch_eager", *(("kerasae_no_norm",) if preset == "vae-resnet-32" else ())):
            assert_summary(entry[name]["samples_per_s"], n=1)
            assert len(entry[name]["epoch_time_s"]) == 1
            assert all(len(times) == 2 and all(positive(t) for t in times) for times in entry[name]["epoch_time_s"])
        assert entry["kerasae"]["train_function"] == ["keras"]  # conv models train without XLA
        ratio = entry["target"]["kerasae_vs_torch_eager"]
        assert ratio["value"] == pytest.approx(entry["kerasae"]["samples_per_s"]["median"]
                                               / entry["torch_eager"]["samples_per_s"]["median"], rel=1e-3)
        for framework, conv_op in (("tensorflow", "Conv2D"), ("torch", "convolution")):
            profile = entry["profile"][framework]
            assert positive(profile["ms_per_step"]), preset
            assert any(conv_op in op for op in profile["top_op_types_ms_per_step"]), (preset, framework)
    resnet, conv = result["presets"]["vae-resnet-32"], result["presets"]["vae-conv"]
    assert "kerasae_no_norm" not in conv and "norm_ceiling" not in conv
    assert resnet["kerasae"]["model"]["norm"] == "group" and resnet["kerasae_no_norm"]["model"]["norm"] == "none"
    assert resnet["kerasae_no_norm"]["model"]["parameters"] < resnet["kerasae"]["model"]["parameters"]
    assert resnet["norm_ceiling"]["kerasae_no_norm_vs_torch_eager"] == pytest.approx(
        resnet["kerasae_no_norm"]["samples_per_s"]["median"] / resnet["torch_eager"]["samples_per_s"]["median"],
        rel=1e-3)


# ---- inference_latency.py --------------------------------------------------------------------

@pytest.mark.slow
def test_inference_latency_quick(tmp_path):
    out = tmp_path / "latency.json"
    result = load_result(run_benchmark("inference_latency.py", "--quick", "--out", out), out)
    assert_header(result, "inference_latency")
    assert result["model"]["trained"] is False and "untrained" in result["model"]["description"]
    export = result["export"]
    assert positive(export["seconds"])
    assert set(export["variants"]) == {"fp32", "fp16", "dynamic", "int8"}
    for signature in ("encode", "decode", "reconstruct"):
        assert positive(export["file_bytes"][f"{signature}.fp32.tflite"])
        for batch in ("batch_1", "batch_256"):
            entries = result["latency"][signature][batch]
            assert_summary(entries["savedmodel"], n=10)
            assert entries["savedmodel"]["unit"] == "ms per call"
            for variant in ("fp32", "fp16", "dynamic", "int8"):
                entry = entries[f"tflite_{variant}"]
                if "status" in entry:  # the exporter skipped it, and said why
                    assert variant == "int8" and f"{signature}.{variant}.tflite" in export["skipped"]
                    continue
                assert_summary(entry["call"], n=10)
                assert_summary(entry["invoke"], n=10)
            keras = entries["keras"]
            assert_summary(keras["method"], n=10)
            if signature == "reconstruct":
                assert_summary(keras["call"], n=10)
                assert_summary(keras["predict_on_batch"], n=10)
    targets = result["targets"]
    decode = targets["tflite_decode_batch1_ms"]
    assert positive(decode["value"]) and isinstance(decode["pass"], bool)
    assert decode["pass"] == (decode["value"] <= 0.3)
    ratio = targets["savedmodel_vs_keras_reconstruct_batch256"]
    assert positive(ratio["value"]) and ratio["pass"] == (ratio["value"] <= 1.2)


# ---- fp16_parity.py --------------------------------------------------------------------------

def test_fp16_parity_on_a_trained_run(tmp_path):
    import kerasae

    run = kerasae.train(preset="vae-mlp", model_kwargs={"hidden_units": [64], "latent_dim": 4}, epochs=1,
                        max_train_samples=2500, max_test_samples=256, out=str(tmp_path / "run"), verbose=0).run_dir
    out = tmp_path / "fp16.json"
    result = load_result(run_benchmark("fp16_parity.py", run, "--out", out), out)
    assert result["benchmark"] == "fp16_parity" and result["bound"] == 1e-3
    signatures = result["runs"]["run"]["signatures"]
    assert set(signatures) == {"reconstruct", "decode"}
    for entry in signatures.values():
        ours, nearest = entry["kerasae"], entry["nearest"]
        assert ours["within_tolerance"] and 0 < ours["max_abs_diff"] <= 1e-3
        assert positive(nearest["max_abs_diff"]) and 0.45 <= nearest["size_vs_fp32"] <= 0.55
        assert ours["float32_weights"]["layers"][0] == "biases" and 0.45 <= ours["size_vs_fp32"] <= 1.0
        assert entry["fp32_max_abs_diff"] <= 1e-5


def test_other_load_counts_other_processes_not_the_benchmarks_own(tmp_path):
    """A child's CPU is the benchmark's own work; an orphaned burner's is another workload.

    Checked as CPU-seconds against what each burner reports it used, so the test holds on a machine that other
    work (e.g. other test workers) keeps busy at the same time.
    """
    sys.path.insert(0, str(BENCH))
    try:
        import _common
    finally:
        sys.path.remove(str(BENCH))

    def burner(report):
        return ("import time, pathlib\nt = time.process_time()\nwhile time.process_time() - t < 1.5: pass\n"
                f"p = pathlib.Path({str(report)!r})\n"
                "p.with_suffix('.tmp').write_text(str(time.process_time())); p.with_suffix('.tmp').replace(p)\n")

    def busy_seconds(start):  # the machine's busy CPU-seconds since start, and the wall time
        machine, _, wall = _common.cpu_seconds()
        return machine - start[0], wall - start[2]

    start = _common.cpu_seconds()
    subprocess.run([sys.executable, "-c", burner(tmp_path / "child")], check=True)  # the benchmark's own work
    own = _common.other_load(start)
    busy, wall = busy_seconds(start)
    child = float((tmp_path / "child").read_text())
    # everything but the child's CPU-seconds (a few ms of rounding in os.times and /proc/stat)
    assert own is not None and own * wall <= busy - child + 0.1, (own * wall, busy, child)

    report = tmp_path / "orphan"
    start = _common.cpu_seconds()
    # `sh -c "... &"` orphans the burner: not our child, so another workload
    script = tmp_path / "orphan.py"
    script.write_text(burner(report))
    subprocess.run(["sh", "-c", f'"{sys.executable}" "{script}" >/dev/null 2>&1 &'], check=True)
    deadline = time.monotonic() + 60
    while not report.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.2)  # the burner's last ticks reach /proc/stat
    other = _common.other_load(start)
    _, wall = busy_seconds(start)
    orphan = float(report.read_text())
    assert other is not None and other * wall >= orphan - 0.1, (other * wall, orphan)


def test_main_job_quick_records_what_the_run_measured(tmp_path):
    """main_job.py runs the README's command (plus the quick flags) and copies the run's own metrics.json."""
    out, run_dir = tmp_path / "main_job.json", tmp_path / "run"
    result = load_result(run_benchmark("main_job.py", "--quick", "--out", out, "--run-dir", run_dir), out)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    job = result["job"]
    assert job["command"] == ["python", "scripts/train.py", "--arch", "vae", "--epochs", "1",
                              "--max-train-samples", "2048"]
    assert job["test"] == metrics["test"] and job["test_negative_elbo"] == -metrics["test"]["elbo"]
    assert job["epochs"] == 1 and job["wall_time_s"] > job["train_wall_time_s"] == metrics["wall_time_s"]
    assert result["quick"] and job["weights_sha256"] == metrics["weights_sha256"]


@pytest.mark.slow
def test_dataset_index_quick(tmp_path):
    """First open and reopens of two generated folders: every figure positive, 1% of the files changed."""
    out = tmp_path / "index.json"
    proc = run_benchmark("dataset_index.py", "--quick", "--out", out, "--cache-dir", tmp_path / "folders")
    result = load_result(proc, out)
    assert_header(result, "dataset_index")
    assert result["cpu_flags"] and isinstance(result["met"], bool)
    assert [(run["images"], run["side"]) for run in result["runs"]] == [(200, 32), (500, 32)]
    for run in result["runs"]:
        assert positive(run["first_open_s"]) and positive(run["reopen_1_percent_changed_s"])
        assert_summary(run["reopen_s"], n=2)
        assert_summary(run["reopen_cpu_s"], n=2)
        assert run["changed_files"] == run["images"] // 100
        assert run["ratio_reopen_to_first"] == pytest.approx(run["reopen_s"]["median"] / run["first_open_s"], rel=0.01)
    assert (tmp_path / "folders" / "png32-500" / ".kerasae_index.npz").is_file()


def test_fit_stalls_quick_records_every_call_of_both_arms(tmp_path):
    out = tmp_path / "fit_stalls.json"
    result = load_result(run_benchmark("fit_stalls.py", "--quick", "--out", out), out)
    assert_header(result, "fit_stalls")
    assert result["machine_at_start"]["cpu_flags"] is not None
    assert list(result["arms"]) == ["kerasae", "tf.data default options"]
    for arm in result["arms"].values():
        calls = arm["calls"]
        assert len(calls) == 2 and arm["summary"]["calls"] == 2
        for call in calls:
            assert 0 <= call["wait_after_training_s"] < call["wall_s"]
            assert call["cpu_per_wall"] == pytest.approx(call["cpu_s"] / call["wall_s"], abs=2e-3)
        assert arm["summary"]["min_cpu_per_wall"] == min(c["cpu_per_wall"] for c in calls)


@pytest.mark.slow
def test_precision_throughput_quick_runs_every_arm_and_judges_targets_only_on_bf16_cpus(tmp_path):
    out = tmp_path / "precision.json"
    result = load_result(run_benchmark("precision_throughput.py", "--quick", "--presets", "vae-mlp", "--out", out),
                         out)
    assert_header(result, "precision_throughput")
    bf16 = result["bfloat16_matrix_instructions"]
    assert bf16 == [f for f in ("amx_bf16", "avx512_bf16") if f in result["machine_at_start"]["cpu_flags"]]
    roofline = result["roofline_gflops_per_s"]
    assert {"tensorflow_matmul_float32", "tensorflow_matmul_bfloat16", "tensorflow_conv3x3_float32",
            "tensorflow_conv3x3_bfloat16"} <= set(roofline) and all(positive(v["median"]) for v in roofline.values())
    entry = result["presets"]["vae-mlp"]
    for arm in ("kerasae_float32", "kerasae_bfloat16", "torch_float32", "torch_bfloat16"):
        assert positive(entry[arm]["samples_per_s"]["median"]), arm
    assert entry["kerasae_bfloat16_vs_kerasae_float32"] == pytest.approx(
        entry["kerasae_bfloat16"]["samples_per_s"]["median"] / entry["kerasae_float32"]["samples_per_s"]["median"],
        rel=1e-3)
    for target in entry["targets"].values():
        assert target["pass"] is None if not bf16 else target["pass"] == (target["value"] >= 1.0)


def test_tfds_skip_quick_reads_both_ends_through_every_arm(tmp_path):
    """A tfds dataset built offline in 2 files: every arm's first and last 100 records timed twice (each read
    counted: the script fails on a short read), ratios of the medians."""
    out = tmp_path / "tfds_skip.json"
    result = load_result(run_benchmark("tfds_skip.py", "--quick", "--out", out), out)
    assert_header(result, "tfds_skip")
    assert result["setup"]["records"] == 1000 and result["setup"]["files"] == 2 and result["setup"]["read"] == 100
    assert list(result["arms"]) == ["kerasae", "tfds as_dataset + skip", "tfds split slice"]
    for row in result["arms"].values():
        for key in ("first_wall_s", "last_wall_s", "first_cpu_s", "last_cpu_s"):
            assert_summary(row[key], n=2)
        assert row["ratio_last_to_first"] == pytest.approx(row["last_wall_s"]["median"] / row["first_wall_s"]["median"],
                                                           rel=1e-3)
    assert result["met"] == (result["arms"]["kerasae"]["ratio_last_to_first"] <= 1.5)


def test_data_docs_quote_the_tfds_skip_benchmark():
    """docs/data.md's sentence on reading the end of a tfds split is what benchmarks/tfds_skip.py wrote."""
    result = json.loads((BENCH / "results" / "tfds_skip.json").read_text())
    assert not result["quick"]
    setup, arms = result["setup"], result["arms"]
    text = " ".join((REPO / "docs" / "data.md").read_text().split())
    ours, skip, sliced = (arms[arm] for arm in ("kerasae", "tfds as_dataset + skip", "tfds split slice"))
    quoted = (f"Reading the last {setup['read']:,} of {setup['records']:,} small tfds records in {setup['files']} files "
              f"took {ours['last_wall_s']['median']:.2f} s, the first {setup['read']:,} "
              f"{ours['first_wall_s']['median']:.2f} s (medians of {setup['repeats']}, with other processes using "
              f"{result['machine_at_end']['other_processes_cores']:.1f} cores; CPU time last / first "
              f"{ours['ratio_last_to_first_cpu']:.2f}); through tfds' `as_dataset` and `skip`, which parses every "
              f"record it skips, {skip['last_wall_s']['median']:.2f} and {skip['first_wall_s']['median']:.2f} s (CPU "
              f"time {skip['ratio_last_to_first_cpu']:.2f}); tfds' own split slicing "
              f"(`train[{setup['records'] - setup['read']}:]`) also skips whole files: "
              f"{sliced['last_wall_s']['median']:.2f} and {sliced['first_wall_s']['median']:.2f} s (CPU time "
              f"{sliced['ratio_last_to_first_cpu']:.2f})")
    assert quoted in text, quoted


def test_performance_docs_quote_the_fit_stalls_benchmark():
    """docs/performance.md's sentence on consecutive fit calls is what benchmarks/fit_stalls.py wrote."""
    result = json.loads((BENCH / "results" / "fit_stalls.json").read_text())
    assert not result["quick"] and not result["machine_at_start"]["busy"] and not result["machine_at_end"]["busy"]
    ours, default = (result["arms"][arm]["summary"] for arm in ("kerasae", "tf.data default options"))
    text = " ".join((REPO / "docs" / "performance.md").read_text().split())
    for arm, s in (("kerasae's datasets", ours), ("tf.data's default options", default)):
        quoted = (f"{arm}: {s['calls_below_both_cores']} of {s['calls']} calls below {result['both_cores_threshold']} "
                  f"(CPU/wall {s['min_cpu_per_wall']:.2f} to {s['median_cpu_per_wall']:.2f} median), "
                  f"{s['median_wall_s']:.2f} s a call, {s['total_wait_after_training_s']:.1f} s waiting")
        assert quoted in text, quoted
    assert ours["calls_below_both_cores"] == 0 and ours["min_cpu_per_wall"] >= result["both_cores_threshold"]


def test_data_docs_quote_the_dataset_index_benchmark():
    """docs/data.md's dataset-index table and target sentence are what benchmarks/dataset_index.py wrote."""
    result = json.loads((BENCH / "results" / "dataset_index.json").read_text())
    assert not result["quick"] and result["met"]
    text = " ".join((REPO / "docs" / "data.md").read_text().split())
    for run in result["runs"]:
        row = (f"| {run['images']:,} | {run['side']}x{run['side']} | {run['first_open_s']:.2f} s | "
               f"{run['reopen_s']['median']:.3f} s | {run['ratio_reopen_to_first'] * 100:.1f}% | "
               f"{run['ratio_reopen_to_first_cpu'] * 100:.1f}% | {run['reopen_1_percent_changed_s']:.2f} s |")
        assert row in text, row
    largest = [run for run in result["runs"] if run["side"] == 64][-1]
    assert largest["images"] == 50_000
    assert f"Reopening 50,000 64x64 PNGs takes {largest['ratio_reopen_to_first'] * 100:.1f}% of the first" in text
    assert f"other processes using {result['machine_at_end']['other_processes_cores']:.1f} cores" in text


def test_data_docs_quote_the_streaming_benchmark():
    """docs/data.md's memory table and speed figures are those benchmarks/streaming.py wrote on a quiet machine."""
    import re

    result = json.loads((BENCH / "results" / "streaming.json").read_text())
    assert not result["quick"] and not result["machine_at_start"]["busy"] and not result["machine_at_end"]["busy"]
    memory, speed = result["memory"], result["speed"]
    assert memory["met"] and speed["met"]
    text = " ".join((REPO / "docs" / "data.md").read_text().split())
    runs = [*memory["runs"], memory["in_memory_run"]]
    for run in runs:
        mode = "streamed" if run["streamed"] else "in memory"
        row = f"| {run['images']:,} | {mode} | {run['peak_rss_bytes'] / 1e9:.2f} GB | {run['samples_per_s']:.0f} |"
        assert row in text, row
    cpu = speed["cpu_ms_per_image"]
    quoted = (f"({cpu['stream']:.1f} vs {cpu['memory']:.1f} ms, summed over both cores), and epochs that used both "
              f"cores ran at {speed['stream_samples_per_s']:.0f} images/s streamed and "
              f"{speed['memory_samples_per_s']:.0f} in memory (ratio {speed['ratio_stream_to_memory']:.2f})")
    assert quoted in text
    assert speed["compared_epochs"].endswith("ran on two cores")
    counts = speed["one_core_epochs"]
    assert f"({counts['stream']} of 6 streamed and" in text and re.search(rf"\b{counts['memory']} of 6 in-memory", text)


def conv_row(preset, entry):
    """docs/performance.md's table row of one preset of conv_throughput.json."""
    def spread(summary):
        return f"{summary['median']:,.0f} ({summary['min']:,.0f}-{summary['max']:,.0f})"

    k, t = entry["kerasae"]["samples_per_s"], entry["torch_eager"]["samples_per_s"]
    target = entry["target"]["kerasae_vs_torch_eager"]
    return (f"| `{preset}` | {entry['images_per_epoch']:,} | **{spread(k)}** | {spread(t)} | "
            f"**{target['value']:.2f}x** | {'met' if target['pass'] else 'not met'} |")


def test_performance_docs_quote_the_conv_benchmark():
    """docs/performance.md's conv table is what benchmarks/conv_throughput.py wrote on a quiet machine."""
    result = json.loads((BENCH / "results" / "conv_throughput.json").read_text())
    assert not result["quick"] and not result["machine_at_start"]["busy"] and not result["machine_at_end"]["busy"]
    text = " ".join((REPO / "docs" / "performance.md").read_text().split())
    for preset, entry in result["presets"].items():
        assert conv_row(preset, entry) in text, conv_row(preset, entry)
        assert "profile" in entry  # the profile the docs discuss


def test_streaming_speed_compares_epochs_that_used_as_many_cores(monkeypatch):
    """The stream/memory ratio compares two-core epochs with two-core epochs (else one-core with one-core)."""
    monkeypatch.syspath_prepend(str(BENCH))
    import streaming

    def epoch(mode, cores, rate):
        return {"mode": mode, "cores_used": cores, "samples_per_s": rate}

    mixed = [epoch("stream", 0.99, 200), epoch("memory", 1.9, 400), epoch("stream", 1.9, 390),
             epoch("memory", 0.98, 201)]
    assert streaming.compared_epochs(mixed) == [mixed[1], mixed[2]]
    assert streaming.compared_label(mixed, [mixed[1], mixed[2]]) == "the 2 of 4 epochs that ran on two cores"
    assert streaming.one_core_counts(mixed) == {"one_core_epochs": {"stream": 1, "memory": 1},
                                                "ratio_all_epochs": round(295 / 300.5, 4)}
    no_fast_stream = [mixed[0], mixed[1], mixed[3]]  # only memory has a two-core epoch: compare one-core ones
    assert streaming.compared_epochs(no_fast_stream) == [mixed[0], mixed[3]]
    no_slow_memory = [mixed[0], mixed[2], mixed[1]]  # both modes have a two-core epoch: those are compared
    assert streaming.compared_epochs(no_slow_memory) == [mixed[2], mixed[1]]
    only_stream = [mixed[0], mixed[2]]
    assert streaming.compared_epochs(only_stream) == only_stream
    assert streaming.compared_label(only_stream, only_stream) == "all epochs"


def test_codec_rd_quick_measures_real_files_of_every_codec(tmp_path):
    """benchmarks/codec_rd.py on two test-photo crops: kerasae's files (a small saved codec) and Pillow's, each
    record's bpp the file's length, curves per quality (each codec also with its latents optimized), a BD-rate entry
    per kerasae curve, both figures; then another family measured with the first run's kerasae records reused."""
    from kerasae.codec import Coder, FactorizedPriorCodec, ScaleHyperpriorCodec

    for quality, name in ((1, "factorized_q1"), (2, "codec_factorized_q2_photos")):  # a run's name, a zoo entry's
        model = FactorizedPriorCodec(filters=8, latent_channels=8, seed=quality)
        Coder(model, name=name).save(tmp_path / f"q{quality}")
    out = tmp_path / "rd.json"
    result = load_result(run_benchmark("codec_rd.py", "--quick", "--codecs", tmp_path / "q1", tmp_path / "q2",
                                       "--baselines", "jpeg,webp,png", "--figures", tmp_path / "figures",
                                       "--optimize-steps", "2", "--out", out), out)
    assert_header(result, "codec_rd")
    assert set(result["curves"]) == {"jpeg", "webp", "png", "kerasae-factorized", "kerasae-factorized-optimized"}
    assert [p["name"] for p in result["photos"]] == ["sklearn:china", "sklearn:flower"]
    for r in result["records"]:
        assert r["bpp"] == pytest.approx(8 * r["bytes"] / r["pixels"]) and r["pixels"] == 192 * 200
        assert (r["psnr"] is None) == (r["codec"] == "png")
    for curve in ("kerasae-factorized", "kerasae-factorized-optimized"):
        assert [p["quality"] for p in result["curves"][curve]] == [1, 2]
    # untrained codecs: a number, or why not (their PSNR ranges need not overlap JPEG's)
    assert set(result["bd_rate_psnr_percent"]) == {f"{c} vs {a}" for c in ("kerasae-factorized",
                                                                            "kerasae-factorized-optimized")
                                                   for a in ("jpeg", "webp")}
    assert (tmp_path / "figures" / "codec_rd.png").stat().st_size > 10_000
    assert (tmp_path / "figures" / "codec_crops.png").stat().st_size > 10_000
    assert result["reused"] is None
    # another family measured now, the first run's kerasae records kept (the baselines are measured again)
    Coder(ScaleHyperpriorCodec(filters=8, latent_channels=8, seed=3), name="hyperprior_q1").save(tmp_path / "h1")
    both = tmp_path / "both.json"
    again = load_result(run_benchmark("codec_rd.py", "--quick", "--codecs", tmp_path / "h1", "--baselines", "jpeg",
                                      "--reuse", out, "--out", both), both)
    assert again["reused"]["codecs"] == ["kerasae-factorized", "kerasae-factorized-optimized"]
    assert again["reused"]["machine"] == result["machine_at_start"]
    assert again["codecs"] == ["factorized_q1", "codec_factorized_q2_photos", "hyperprior_q1"]
    assert [r for r in again["records"] if r["codec"].startswith("kerasae-factorized")] == [
        r for r in result["records"] if r["codec"].startswith("kerasae-factorized")]
    assert {r["codec"] for r in again["records"]} == {"jpeg", "kerasae-hyperprior", "kerasae-factorized",
                                                      "kerasae-factorized-optimized"}
    assert "kerasae-factorized vs jpeg" in again["bd_rate_psnr_percent"]
    run = subprocess.run([sys.executable, REPO / "benchmarks" / "codec_rd.py", "--quick", "--codecs", tmp_path / "h1",
                          "--reuse", tmp_path / "figures" / "codec_rd.png", "--out", tmp_path / "no.json"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "--reuse" in run.stderr.splitlines()[-1] and not (tmp_path / "no.json").exists()


def test_codec_rd_rewrites_only_the_docs_blocks_from_a_result(tmp_path):
    """--docs-from: each ladder's rows, BD-rates and the baselines' ranges between the markers; the rest of the file
    as it was; a file without one pair of markers refused."""
    codec_rd = _import_benchmark("codec_rd")
    point = {"quality": 1, "bpp": 0.25, "psnr": 27.5, "ms_ssim": 0.95}
    result = {"arguments": {"optimize_steps": 7},
              "curves": {"kerasae-factorized": [point], "kerasae-factorized-optimized": [{**point, "bpp": 0.2}],
                         "jpeg": [{**point, "bpp": 0.1, "psnr": 22.0}, {**point, "bpp": 2.0, "psnr": 38.0}]},
              "bd_rate_psnr_percent": {"kerasae-factorized vs jpeg": -3.04, "kerasae-factorized-optimized vs jpeg": -12.0}}
    doc = tmp_path / "doc.md"
    begin, end = codec_rd.DOCS_MARKERS
    doc.write_text(f"before\n{begin}\nold table\n{end}\nafter\n")
    codec_rd.write_docs(result, [doc])
    text = doc.read_text()
    assert text.startswith(f"before\n{begin}\n") and text.endswith(f"\n{end}\nafter\n") and "old table" not in text
    assert "| `codec_factorized_q1_photos` | 1 | 0.250 | 27.50 | 0.9500 | 0.200 | 27.50 | 0.9500 |" in text
    assert "- Factorized prior: BD-rate (PSNR) against JPEG: -3.0% (latents optimized, 7 steps: -12.0%)" in text
    assert "JPEG 0.100-2.000 bpp, 22.00-38.00 dB." in text and "hyperprior" not in text
    doc.write_text("no markers\n")
    with pytest.raises(ValueError, match="must hold one"):
        codec_rd.write_docs(result, [doc])
    assert doc.read_text() == "no markers\n"
