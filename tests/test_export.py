"""Export: the SavedModel signature contract, TFLite variants in LiteRT, manifests, atomicity, verify, CLI.

One briefly trained model per family (1 epoch on 2,000 MNIST images) is exported once per module with
every TFLite variant; the parity thresholds are checked on the first 256 MNIST test images. Plumbing
tests (atomicity, overwrite, CLI) use a tiny model and fp32 TFLite only.
"""

import functools
import gc
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerasae
from kerasae import cli, export
from kerasae.data import binarize, load_mnist

from conftest import REPO, run_script

#: family case -> (preset, overrides). Default sizes where it matters (int8 size, real parity); the
#: conv model is slimmed because dynamic-range TRANSPOSE_CONV is slow to run on 256 images.
CASES = {
    "ae": ("ae-shallow", {}),
    "dae": ("dae-mlp", {}),
    "vae-bernoulli": ("vae-mlp", {}),
    "vae-gaussian": ("vae-mlp-gaussian", {}),
    "conv": ("vae-conv", {"filters": (16, 32)}),
    # The residual preset as it is (GroupNorm: means, a [C, C] matmul, rsqrt; Add) on 8-bit intensities (not
    # binarized): decode exports the logistic's scale; score has round, softplus and the log1mexp series.
    "vae-discretized": ("vae-resnet-28", {"likelihood": "discretized_logistic", "gaussian_scale": "pixel"}),
    # The scale predicted per image: decode's x_scale comes from the decoder's second C channels.
    "vae-decoder-scale": ("vae-conv", {"filters": (16, 32), "likelihood": "discretized_logistic",
                                       "gaussian_scale": "decoder"}),
    # Two stochastic layers under a VampPrior: sample draws a pseudo-input's posterior (MULTINOMIAL, GATHER) for
    # z2, then z1 from p(z1|z2); score adds the log-mean-exp KL approximation and the z1 layer's Gaussian KL.
    "hvae-vamp": ("hvae-mlp-vamp", {"num_pseudo_inputs": 50}),
}
EXPECTED_OUTPUTS = {  # the contract, written out (not derived from kerasae.export)
    "ae": {"encode": {"z"}, "decode": {"x_mean", "logits"}},
    "dae": {"encode": {"z"}, "decode": {"x_mean", "logits"}},
    "vae-bernoulli": {"encode": {"z_mean", "z_log_var"}, "decode": {"x_mean", "logits"}},
    "vae-gaussian": {"encode": {"z_mean", "z_log_var"}, "decode": {"x_mean", "x_scale"}},
    "conv": {"encode": {"z_mean", "z_log_var"}, "decode": {"x_mean", "logits"}},
    "vae-discretized": {"encode": {"z_mean", "z_log_var"}, "decode": {"x_mean", "x_scale"}},
    "vae-decoder-scale": {"encode": {"z_mean", "z_log_var"}, "decode": {"x_mean", "x_scale"}},
    "hvae-vamp": {"encode": {"z_mean", "z_log_var"}, "decode": {"x_mean", "logits"}},
}
ALL_SIGNATURES = {"serving_default", "reconstruct", "encode", "decode", "sample", "score"}


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _tree_hashes(root):
    return {p.relative_to(root).as_posix(): _sha(p) for p in sorted(Path(root).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def mnist():
    return load_mnist().take(2000, 256)


@pytest.fixture(scope="module")
def exports(mnist, tmp_path_factory):
    """Every family case trained briefly and exported with all TFLite variants."""
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for case, (preset, overrides) in CASES.items():
        keras.utils.set_random_seed(0)
        model = kerasae.build(preset, **overrides)
        binary = getattr(model, "binary_data", False)
        x_train = binarize(mnist.x_train, seed=1) if binary else mnist.x_train
        x_test = binarize(mnist.x_test, seed=0) if binary else mnist.x_test
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        model.fit(x_train, batch_size=64, epochs=1, verbose=0)
        version_dir = export.export_model(model, root / "exported", case, representative_data=x_train[:500],
                                          parity_data=x_test, metrics={"test": {"loss": 1.0}}, preset=preset)
        manifest = json.loads((version_dir / "assets.extra" / "manifest.json").read_text())
        out[case] = types.SimpleNamespace(model=model, version_dir=version_dir, manifest=manifest, x=x_test,
                                          preset=preset, tflite_dir=version_dir.parent / "tflite")
    return out


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(0)
    return kerasae.build("ae-shallow", latent_dim=8)


@functools.cache
def _loaded_dir(version_dir):
    return tf.saved_model.load(str(version_dir))


def _loaded(case):
    """The case's SavedModel, loaded once for the module's tests (they only call its signatures)."""
    return _loaded_dir(case.version_dir)


# ---- the SavedModel contract --------------------------------------------------------------------

@pytest.mark.parametrize("name", CASES)
def test_signature_contract(exports, name):
    case = exports[name]
    model, h, w, c = case.model, *case.model.image_shape
    sigs = _loaded(case).signatures
    assert set(sigs) == ALL_SIGNATURES

    def spec(fn):
        inputs = {k: (s.shape.as_list(), s.dtype) for k, s in fn.structured_input_signature[1].items()}
        outputs = {k: (s.shape.as_list(), s.dtype) for k, s in fn.structured_outputs.items()}
        return inputs, outputs

    image, code = ([None, h, w, c], tf.float32), ([None, model.latent_dim], tf.float32)
    for key in ("serving_default", "reconstruct"):
        assert spec(sigs[key]) == ({"x": image}, {"reconstruction": image})
    inputs, outputs = spec(sigs["encode"])
    assert inputs == {"x": image} and outputs == {k: code for k in EXPECTED_OUTPUTS[name]["encode"]}
    inputs, outputs = spec(sigs["decode"])
    assert inputs == {"z": code} and outputs == {k: image for k in EXPECTED_OUTPUTS[name]["decode"]}
    assert spec(sigs["sample"]) == ({"num_samples": ([], tf.int32)}, {"z": code, "x_mean": image})
    assert spec(sigs["score"]) == ({"x": image}, {"score": ([None], tf.float32)})
    assert case.manifest["signatures"] == export.expected_signatures(model)


@pytest.mark.parametrize("name", CASES)
def test_savedmodel_matches_keras_model(exports, name):
    case = exports[name]
    model, x = case.model, case.x
    sigs = _loaded(case).signatures
    tx = tf.constant(x)

    def close(a, b, tol=1e-5):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape
        assert np.max(np.abs(a - b)) <= tol * max(1.0, np.abs(b).max())

    recon = sigs["reconstruct"](x=tx)["reconstruction"].numpy()
    np.testing.assert_array_equal(sigs["serving_default"](x=tx)["reconstruction"].numpy(), recon)
    close(recon, model.reconstruct(x))
    assert 0.0 <= recon.min() and recon.max() <= 1.0
    codes = sigs["encode"](x=tx)
    if model.family == "vae":
        mean, log_var = model.encode(x)
        close(codes["z_mean"], mean)
        close(codes["z_log_var"], log_var)
        z = codes["z_mean"]
    else:
        close(codes["z"], model.encode(x))
        z = codes["z"]
    decoded = sigs["decode"](z=z)
    close(decoded["x_mean"], recon, tol=0)  # decode(encode(x).z_mean) is reconstruct(x), exactly
    close(decoded["x_mean"], model.decode(z))
    if "logits" in decoded:
        close(decoded["logits"], model.decode_logits(z))
        close(tf.sigmoid(decoded["logits"]), decoded["x_mean"])
    elif model.scale_from_decoder:  # one scale per pixel of each image
        close(decoded["x_scale"], model.decoder_scale(z))
        assert np.ptp(decoded["x_scale"].numpy(), axis=0).max() > 1e-3
    else:
        close(decoded["x_scale"], tf.broadcast_to(model.decoder_scale(), tf.shape(decoded["x_mean"])))
    score = sigs["score"](x=tx)["score"].numpy()
    close(score, model.score(x))
    np.testing.assert_array_equal(sigs["score"](x=tx)["score"].numpy(), score)  # deterministic
    assert score.shape == (len(x),) and np.all(np.isfinite(score))

    drawn = sigs["sample"](num_samples=tf.constant(5))
    assert drawn["z"].shape == (5, model.latent_dim) and drawn["x_mean"].shape == (5, *model.image_shape)
    close(drawn["x_mean"], model.decode(drawn["z"]))
    assert not np.allclose(drawn["z"], sigs["sample"](num_samples=tf.constant(5))["z"])  # fresh draws


NO_KERASAE = textwrap.dedent("""
    import importlib.abc, json, sys

    class NoKerasae(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "kerasae" or name.startswith("kerasae."):
                raise ImportError(f"{name} is blocked: the export must not need it")

    sys.meta_path.insert(0, NoKerasae())
    try:
        import kerasae  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("kerasae is importable in the fresh process")

""")
FRESH_PROCESS = NO_KERASAE + textwrap.dedent("""
    import keras
    import numpy as np
    import tensorflow as tf

    jobs = json.loads(sys.argv[1])
    for name, job in jobs.items():
        data = np.load(job["inputs"])
        feeds = {"x": data["x"], "z": data["z"], "num_samples": np.int32(3)}
        loaded = tf.saved_model.load(job["dir"])
        results = {}
        for sig, fn in loaded.signatures.items():
            (key,) = fn.structured_input_signature[1]
            out = fn(**{key: tf.constant(feeds[key])})
            via_layer = keras.layers.TFSMLayer(job["dir"], call_endpoint=sig)(tf.constant(feeds[key]))
            assert sorted(out) == sorted(via_layer), (name, sig)
            for k in out:
                results[f"{sig}/{k}"] = out[k].numpy()
                results[f"layer:{sig}/{k}"] = via_layer[k].numpy()
        np.savez(job["outputs"], **results)
    if any(m == "kerasae" or m.startswith("kerasae.") for m in sys.modules):
        raise SystemExit("kerasae got imported")
    print("fresh process OK")
""")


def test_savedmodel_runs_in_a_process_without_kerasae(exports, tmp_path):
    jobs = {}
    for name, case in exports.items():
        inputs = tmp_path / f"{name}.in.npz"
        z = np.random.default_rng(0).standard_normal((4, case.model.latent_dim)).astype(np.float32)
        np.savez(inputs, x=case.x[:4], z=z)
        jobs[name] = {"dir": str(case.version_dir), "inputs": str(inputs), "outputs": str(tmp_path / f"{name}.npz")}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH="")
    proc = subprocess.run([sys.executable, "-c", FRESH_PROCESS, json.dumps(jobs)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fresh process OK" in proc.stdout
    for name, case in exports.items():
        got = np.load(jobs[name]["outputs"])
        sigs = _loaded(case).signatures
        x, z = tf.constant(case.x[:4]), tf.constant(np.load(jobs[name]["inputs"])["z"])
        assert {k.split("/")[0] for k in got.files if not k.startswith("layer:")} == ALL_SIGNATURES
        for sig, feed in (("serving_default", {"x": x}), ("reconstruct", {"x": x}), ("encode", {"x": x}),
                          ("decode", {"z": z}), ("score", {"x": x})):
            for k, v in sigs[sig](**feed).items():
                np.testing.assert_allclose(got[f"{sig}/{k}"], v.numpy(), rtol=1e-6, atol=1e-6)
                np.testing.assert_allclose(got[f"layer:{sig}/{k}"], v.numpy(), rtol=1e-6, atol=1e-6)
        assert got["sample/x_mean"].shape == (3, *case.model.image_shape)
        np.testing.assert_allclose(got["sample/x_mean"], case.model.decode(got["sample/z"]), atol=1e-5)


def test_saved_model_cli_shows_every_signature(exports):
    cli = Path(sys.executable).with_name("saved_model_cli")
    if not cli.exists():
        pytest.skip("saved_model_cli is not installed next to this Python")
    proc = subprocess.run([str(cli), "show", "--dir", str(exports["vae-bernoulli"].version_dir), "--all"],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for sig in ALL_SIGNATURES:
        assert f"signature_def['{sig}']" in proc.stdout
    assert "inputs['num_samples']" in proc.stdout and "outputs['z_log_var']" in proc.stdout


# ---- TFLite ---------------------------------------------------------------------------------------

def _litert(path, delegates=True):
    from ai_edge_litert import interpreter as litert

    kwargs = {} if delegates else {
        "experimental_op_resolver_type": litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    interpreter = litert.Interpreter(model_path=str(path), **kwargs)
    interpreter.allocate_tensors()
    return interpreter


@pytest.mark.parametrize("name", CASES)
def test_tflite_files_are_builtin_only_and_match_the_savedmodel(exports, name):
    case = exports[name]
    tflite = case.manifest["tflite"]
    files = {p.name for p in case.tflite_dir.glob("*.tflite")}
    expected = {f"{s}.{v}.tflite" for s in export.SIGNATURES for v in export.VARIANTS}
    assert files == set(tflite["files"]) and files | set(tflite["skipped"]) == expected
    assert set(tflite["skipped"]) <= {"score.int8.tflite"}  # every other signature gets a full-integer file
    assert tflite["out_of_tolerance"] == {} and all(e["within_tolerance"] for e in tflite["files"].values())
    assert all(reason.strip() for reason in tflite["skipped"].values())
    loaded = _loaded(case)
    x = case.x
    codes = loaded.signatures["encode"](x=tf.constant(x))
    z = (codes["z_mean"] if "z_mean" in codes else codes["z"]).numpy()
    want = {"reconstruct": loaded.signatures["reconstruct"](x=tf.constant(x)),
            "encode": codes, "decode": loaded.signatures["decode"](z=tf.constant(z)),
            "score": loaded.signatures["score"](x=tf.constant(x))}
    feeds = {"reconstruct": {"x": x}, "encode": {"x": x}, "decode": {"z": z}, "score": {"x": x}}
    for file_name in sorted(files):
        signature, variant, _ = file_name.split(".")
        path = case.tflite_dir / file_name
        # builtins only: in the flatbuffer's operator codes and in the ops the runtime resolved
        assert export.non_builtin_ops(path.read_bytes()) == [], file_name
        bare = _litert(path, delegates=False)
        ops = {op["op_name"] for op in bare._get_ops_details()}
        assert not any(op.startswith("Flex") or op == "CUSTOM" for op in ops), (file_name, ops)
        if variant == "int8":  # full integer: only boundary (de)quantization and sample's draws see float32
            dtypes = {t["index"]: t["dtype"] for t in bare.get_tensor_details()}
            for op in bare._get_ops_details():  # the draws: N(0, I) noise, a VampPrior's component (zero logits)
                if op["op_name"] not in ("QUANTIZE", "DEQUANTIZE", "RANDOM_STANDARD_NORMAL", "MULTINOMIAL"):
                    assert all(dtypes[i] != np.float32 for i in [*op["inputs"], *op["outputs"]] if i >= 0), \
                        (file_name, op["op_name"])
            assert case.manifest["tflite"]["files"][file_name]["quantization"]["outputs"]
        runner = _litert(path).get_signature_runner(signature)
        for d in [*runner.get_input_details().values(), *runner.get_output_details().values()]:
            assert d["dtype"] in (np.float32, np.int32)  # float32 contract for every variant (int8 included)
        if signature == "sample":  # fresh draws: compare x_mean with the SavedModel's decode of the z drawn
            out = runner(num_samples=np.array(7, np.int32))
            assert out["z"].shape == (7, case.model.latent_dim) and out["x_mean"].shape == (7, *case.model.image_shape)
            ref = {"x_mean": loaded.signatures["decode"](z=tf.constant(out["z"]))["x_mean"].numpy()}
        else:
            out = runner(**feeds[signature])
            ref = {k: v.numpy() for k, v in want[signature].items()}
            assert set(out) == set(ref)
        diffs = {k: np.abs(out[k] - ref[k]) for k in ref}
        if variant == "fp32":  # absolute within [-1, 1], relative to the output's range beyond (logits, scores)
            scaled = {k: float(d.max() / max(1.0, np.abs(ref[k]).max())) for k, d in diffs.items()}
            assert max(scaled.values()) <= 1e-5, (file_name, scaled)
        if variant == "fp16":
            for k in ("reconstruction", "x_mean"):
                if k in diffs:
                    assert diffs[k].max() <= 1e-3, (file_name, k, diffs[k].max())
            kept = case.manifest["tflite"]["files"][file_name]["float32_weights"]
            assert kept["layers"][0] == "biases" and kept["float16_rounding"].startswith("GPTQ on 500 calibration")
            if kept["layers"] == ["biases"]:  # every kernel float16: half the fp32 file
                assert case.manifest["tflite"]["files"][file_name]["size_vs_fp32"] <= 0.55, file_name
        if variant in ("dynamic", "int8") and "reconstruction" in diffs:
            assert diffs["reconstruction"].mean() <= 0.02, (file_name, diffs["reconstruction"].mean())
        recorded = case.manifest["tflite"]["files"][file_name]
        assert recorded["bytes"] == path.stat().st_size
        if signature != "sample":  # the manifest's parity is what we just measured
            for k, d in diffs.items():
                assert recorded["parity"][k]["max_abs_diff"] == pytest.approx(float(d.max()), rel=1e-3, abs=1e-7)


def test_int8_is_at_most_30_percent_of_fp32(exports):
    files = exports["vae-bernoulli"].manifest["tflite"]["files"]  # default-size vae-mlp
    for signature in ("decode", "reconstruct", "encode"):
        ratio = files[f"{signature}.int8.tflite"]["bytes"] / files[f"{signature}.fp32.tflite"]["bytes"]
        assert ratio <= 0.30, (signature, ratio)
        assert files[f"{signature}.int8.tflite"]["size_vs_fp32"] == pytest.approx(ratio, abs=1e-4)


def test_sample_tflite_resizes_and_draws_fresh(exports):
    from ai_edge_litert.interpreter import Interpreter

    case = exports["vae-bernoulli"]
    runner = Interpreter(model_path=str(case.tflite_dir / "sample.fp32.tflite")).get_signature_runner("sample")
    first = runner(num_samples=np.array(3, np.int32))["z"]
    second = runner(num_samples=np.array(9, np.int32))
    assert first.shape == (3, 32) and second["z"].shape == (9, 32) and second["x_mean"].shape == (9, 28, 28, 1)
    assert not np.allclose(first, second["z"][:3])
    assert abs(float(np.mean(runner(num_samples=np.array(4000, np.int32))["z"]))) < 0.05  # N(0, I)


# ---- manifest and verify ------------------------------------------------------------------------

@pytest.mark.parametrize("name", CASES)
def test_manifest(exports, name):
    case = exports[name]
    m = case.manifest
    assert m["name"] == name and m["version"] == 1 and m["preset"] == case.preset
    assert m["model"]["class"] == type(case.model).__name__ and m["model"]["family"] == case.model.family
    assert m["model"]["config"] == json.loads(json.dumps(case.model.get_config()))
    assert {"tensorflow", "keras", "numpy", "python", "kerasae", "ai_edge_litert"} <= set(m["versions"])
    assert m["metrics"] == {"test": {"loss": 1.0}}
    assert m["input_spec"]["x"]["shape"] == [None, *case.model.image_shape] and m["input_spec"]["x"]["dtype"] == "float32"
    assert m["score"] and "deterministic" in m["score"]
    listed = m["files"]["saved_model"]
    on_disk = _tree_hashes(case.version_dir)
    del on_disk["assets.extra/manifest.json"]
    assert {k: v["sha256"] for k, v in listed.items()} == on_disk
    assert {"saved_model.pb", "variables/variables.index"} <= set(listed)
    weights_bytes = sum(int(np.prod(w.shape)) * 4 for w in case.model.weights)
    variables_bytes = sum(v["bytes"] for k, v in listed.items() if k.startswith("variables/"))
    assert weights_bytes <= variables_bytes < 1.1 * weights_bytes  # each weight stored once
    tflite_disk = _tree_hashes(case.tflite_dir)
    assert json.loads((case.tflite_dir / "manifest.json").read_text()) == m  # the same manifest ships with tflite/
    del tflite_disk["manifest.json"]
    assert {k: v["sha256"] for k, v in m["files"]["tflite"].items()} == tflite_disk
    for file_name, entry in m["tflite"]["files"].items():
        assert entry["parity"] and entry["bytes"] > 0
        if entry["variant"] == "int8":
            for io in entry["quantization"].values():
                for q in io.values():
                    assert q["tensor_dtype"] in ("int8", "float32", "int32")  # float32: sample's z; int32: its count
                    if q["tensor_dtype"] == "int8":
                        assert q["scale"] > 0 and -128 <= q["zero_point"] <= 127
    assert export.verify(case.version_dir.parent) == []


def test_verify_detects_changed_bytes(exports, tmp_path):
    src = exports["ae"].version_dir.parent
    copy = tmp_path / "ae"
    shutil.copytree(src, copy)
    assert export.verify(copy) == [] and export.verify(copy / "1") == [] and export.verify(copy / "tflite") == []
    for target in (copy / "1" / "variables" / "variables.data-00000-of-00001", copy / "tflite" / "decode.int8.tflite"):
        original = target.read_bytes()
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0x01
        target.write_bytes(bytes(flipped))
        problems = export.verify(copy)
        assert len(problems) == 1 and target.name in problems[0] and "sha256" in problems[0], problems
        with pytest.raises(export.VerificationError, match="sha256"):
            export.verify(copy, strict=True)
        assert cli.export_main(["--verify", str(copy)]) == 1
        target.write_bytes(original)
    (copy / "1" / "variables" / "extra.bin").write_bytes(b"x")
    assert any("not in the manifest" in p for p in export.verify(copy / "1"))
    (copy / "1" / "variables" / "extra.bin").unlink()
    (copy / "tflite" / "encode.fp32.tflite").unlink()
    assert any("missing" in p for p in export.verify(copy))
    assert export.verify(tmp_path / "nothing-here") and cli.export_main(["--verify", str(src)]) == 0


# ---- the Keras model in every export -----------------------------------------------------------------

KERAS_FILE = "assets.extra/model.keras"  # written out: the path users are told about (exported/README.md)


@pytest.mark.parametrize("name", CASES)
def test_export_holds_the_trainable_keras_model(exports, name):
    import zipfile

    import h5py

    case = exports[name]
    path = case.version_dir / KERAS_FILE
    assert path.is_file()
    assert case.manifest["files"]["saved_model"][KERAS_FILE] == {"sha256": _sha(path), "bytes": path.stat().st_size}
    with zipfile.ZipFile(path) as archive:  # config and weights only: no compile config, no optimizer variables
        assert not json.loads(archive.read("config.json")).get("compile_config")
        with h5py.File(archive.open("model.weights.h5"), "r") as weights:
            assert "optimizer" not in weights and {"encoder", "decoder"} <= set(weights)
    model = export.load_keras_model(case.version_dir)
    assert type(model) is type(case.model) and model.get_config() == case.model.get_config()
    assert not model.compiled
    for got, want in zip(model.weights, case.model.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=got.path)
    # the SavedModel's reconstructions on real MNIST test images, from the reloaded model's own method
    served = _loaded(case).signatures["reconstruct"](x=tf.constant(case.x))["reconstruction"].numpy()
    np.testing.assert_allclose(np.asarray(model.reconstruct(case.x)), served, rtol=0, atol=1e-5)
    measured = case.manifest["keras_model"]["savedmodel_vs_reloaded_max_diff"]
    assert set(measured) == ALL_SIGNATURES and all(d <= 1e-5 for out in measured.values() for d in out.values())


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_changed_or_missing_keras_model_fails_verify_and_load(exports, tmp_path):
    from kerasae.files import ModelFileError

    copy = tmp_path / "ae"
    shutil.copytree(exports["ae"].version_dir.parent, copy)
    version_dir, path = copy / "1", copy / "1" / KERAS_FILE
    original = path.read_bytes()
    _flip_a_byte(path)
    problems = export.verify(version_dir, deep=False)
    assert len(problems) == 1 and "model.keras" in problems[0] and "sha256" in problems[0], problems
    with pytest.raises(export.VerificationError, match=r"model\.keras: sha256 mismatch"):
        export.load_keras_model(version_dir)
    path.unlink()
    with pytest.raises(export.VerificationError, match=r"model\.keras: missing"):
        export.load_keras_model(version_dir)

    # deep verify loads it: a file that does not load is a problem even where its hash is listed
    path.write_bytes(b"not a zip archive")
    manifest_path = version_dir / "assets.extra" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["saved_model"][KERAS_FILE]["sha256"] = _sha(path)
    manifest_path.write_text(json.dumps(manifest))
    assert export.verify(version_dir, deep=False) == []
    assert any("the Keras model does not load" in p and "model.keras" in p for p in export.verify(version_dir))

    # an export whose manifest lists no model.keras (made with keras_model=False, or before kerasae wrote one):
    # the model is rebuilt from the SavedModel, and a stray model.keras beside it is not what loads
    del manifest["files"]["saved_model"][KERAS_FILE]
    manifest_path.write_text(json.dumps(manifest))
    rebuilt = export.load_keras_model(version_dir)
    for got, want in zip(rebuilt.weights, exports["ae"].model.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=got.path)
    path.write_bytes(original)
    assert export.verify(version_dir) == []
    with pytest.raises(ModelFileError, match="not an export version directory"):
        export.load_keras_model(copy)


@pytest.mark.parametrize("name", CASES)
def test_every_family_rebuilds_from_its_saved_model(exports, name):
    """The weights-once form of an export (keras_model=False, the zoo's): each family's model, rebuilt from the
    manifest's config and the SavedModel's variables, has every weight of the exported model."""
    case = exports[name]
    rebuilt = export.rebuild_keras_model(case.version_dir)
    assert type(rebuilt) is type(case.model) and rebuilt.get_config() == case.model.get_config()
    for got, want in zip(rebuilt.weights, case.model.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=got.path)


def test_an_export_whose_keras_model_differs_from_the_savedmodel_is_not_committed(tiny, tmp_path, monkeypatch):
    rebuild = export.keras_model.rebuild_keras_model

    def rebuilt_off(saved_dir, model_record, **kwargs):  # a rebuild that lost a weight: it no longer matches
        model = rebuild(saved_dir, model_record, **kwargs)
        model.trainable_weights[0].assign(model.trainable_weights[0] + 1e-3)
        return model

    monkeypatch.setattr(export.core, "rebuild_keras_model", rebuilt_off)
    with pytest.raises(export.ExportError, match=r"reconstruction differs from the model rebuilt from the SavedModel"):
        export.export_model(tiny, tmp_path, "t", tflite=(), keras_model=False)
    assert not (tmp_path / "t").exists()
    export.export_model(tiny, tmp_path, "t", tflite=())  # model.keras is what is checked by default

    write = export.keras_model.write_keras_model

    def off_by_a_little(model, version_dir):  # what a lossy save would give: the reload no longer matches
        changed = model.clone()
        for weight in changed.trainable_weights:
            weight.assign(weight + 1e-3)
        return write(changed, version_dir)

    monkeypatch.setattr(export.core, "write_keras_model", off_by_a_little)
    with pytest.raises(export.ExportError, match=r"reconstruction differs from assets.extra/model.keras reloaded"):
        export.export_model(tiny, tmp_path / "other", "t", tflite=())
    assert not (tmp_path / "other" / "t").exists()


# ---- no tf.function retracing ----------------------------------------------------------------------------

def test_export_does_not_retrace_tf_functions(mnist, tmp_path, caplog, monkeypatch):
    """An export (fp16 GPTQ on 2,000 images: every Dense layer's inputs computed) logs no retracing warning."""
    from tensorflow.python.eager.polymorphic_function import polymorphic_function

    # TF warns at most twice per traced Python function per process: start from a fresh count, so that
    # warnings earlier tests triggered cannot hide one from this export
    monkeypatch.setattr(polymorphic_function, "_frequent_tracing_detector_manager",
                        polymorphic_function._FrequentTracingDetectorManager())
    keras.utils.set_random_seed(0)
    model = kerasae.build("vae-mlp", hidden_units=(32, 32), latent_dim=4)  # 6 Dense layers
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(mnist.x_train, batch_size=100, epochs=1, verbose=0)
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        version_dir = export.export_model(model, tmp_path, "t", tflite=("fp16",), tflite_signatures=("decode",),
                                          representative_data=mnist.x_train, parity_data=mnist.x_test)
    rounding = json.loads((version_dir / "assets.extra" / "manifest.json").read_text())[
        "tflite"]["files"]["decode.fp16.tflite"]["float32_weights"]["float16_rounding"]
    assert rounding.startswith("GPTQ on 2000 calibration images")  # the path that computes layer inputs ran
    retraced = [r.getMessage() for r in caplog.records if "retracing" in r.getMessage()]
    assert retraced == []


def test_conversions_load_each_saved_model_once_and_convert_the_same(tiny, tiny_export, tmp_path, monkeypatch):
    """tf.lite loads the whole SavedModel twice per conversion; an export loads it once for all of them (and freezes
    the heap its conversions' gc.collect() would scan), with the same bytes."""
    saved = tiny_export / "keep" / "1"
    loads = []
    real = export.tflite._tf_load
    monkeypatch.setattr(export.tflite, "_tf_load", lambda *args, **kwargs: loads.append(args) or real(*args, **kwargs))
    plain = export.tflite._convert(saved, "decode", "fp32", None)  # tf.lite's own loads, outside any reuse block
    assert len(loads) == 2
    with export.tflite.reuse_saved_models():
        reused = [export.convert_tflite(saved, signature, "fp32") for signature in ("decode", "encode", "decode")]
    assert len(loads) == 3 and reused[0] == reused[2] == plain
    frozen, convert = [], export.variants.convert_tflite
    monkeypatch.setattr(export.variants, "convert_tflite",
                        lambda *args, **kwargs: frozen.append(gc.get_freeze_count()) or convert(*args, **kwargs))
    before = gc.get_freeze_count()
    export.export_model(tiny, tmp_path, "t", tflite=("fp32",), tflite_signatures=("decode",))
    assert frozen and all(frozen) and gc.get_freeze_count() == before and len(loads) == 3  # its own load serves


# ---- atomicity and versions ------------------------------------------------------------------------

def test_versions_and_no_overwrite_without_flag(tiny, tmp_path):
    base = tmp_path / "exported"
    first = export.export_model(tiny, base, "tiny", tflite=("fp32",))
    assert first == base / "tiny" / "1"
    before = _tree_hashes(base / "tiny")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export.export_model(tiny, base, "tiny", version=1, tflite=("fp32",))
    assert _tree_hashes(base / "tiny") == before  # the old files are untouched
    assert not list((base / "tiny").glob(".tmp-*"))
    second = export.export_model(tiny, base, "tiny", tflite=())  # the next integer; tflite/ is left alone
    assert second == base / "tiny" / "2" and export.existing_versions(base / "tiny") == [1, 2]
    assert _tree_hashes(base / "tiny" / "tflite") == {k[len("tflite/"):]: v for k, v in before.items()
                                                      if k.startswith("tflite/")}
    old_id = json.loads((first / "assets.extra" / "manifest.json").read_text())["export_id"]
    again = export.export_model(tiny, base, "tiny", version=1, tflite=("fp32",), overwrite=True)
    manifest = json.loads((again / "assets.extra" / "manifest.json").read_text())
    assert manifest["export_id"] != old_id
    assert json.loads((base / "tiny" / "tflite" / "manifest.json").read_text())["export_id"] == manifest["export_id"]
    assert export.verify(base / "tiny") == []
    assert sorted(p.name for p in (base / "tiny").iterdir()) == ["1", "2", "tflite"]


@pytest.fixture(scope="module")
def tiny_export(tiny, tmp_path_factory):
    """exported/keep/1 plus tflite/ (fp32) of the tiny model, made once; tests copy it."""
    base = tmp_path_factory.mktemp("tiny") / "exported"
    export.export_model(tiny, base, "keep", tflite=("fp32",))
    return base


@pytest.mark.parametrize("where", ["saved_model", "keras_model", "tflite", "manifest", "commit"])
def test_a_failed_export_leaves_nothing_behind(tiny, tiny_export, tmp_path, monkeypatch, where):
    base = tmp_path / "exported"
    shutil.copytree(tiny_export, base)
    before = _tree_hashes(base)
    convert = export.convert_tflite

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash")

    def crash_on_score(saved_model_dir, signature, *args, **kwargs):  # after four files are written
        if signature == "score":
            raise RuntimeError("simulated crash")
        return convert(saved_model_dir, signature, *args, **kwargs)

    rename = os.rename

    def crash_on_tflite_swap(src, dst):  # the last rename of a commit: the ones before must be undone
        if Path(src).name == "tflite" and Path(dst).name == "tflite":
            raise RuntimeError("simulated crash")
        return rename(src, dst)

    # each name patched in the module that looks it up (kerasae.export re-exports names; patching those does nothing)
    patch = {"saved_model": (export.core, "write_saved_model", boom),
             "keras_model": (export.core, "write_keras_model", boom),
             "tflite": (export.variants, "convert_tflite", crash_on_score),
             "manifest": (export.manifest, "_hash_tree", boom), "commit": (os, "rename", crash_on_tflite_swap)}[where]
    monkeypatch.setattr(*patch)
    attempts = [("keep", {"version": 1, "overwrite": True}), ("fresh", {})]  # replacing a version; a new name
    if where == "commit":
        attempts.append(("keep", {}))  # a new version next to an old one
    for name, kwargs in attempts:
        with pytest.raises((RuntimeError, export.ExportError), match="simulated crash"):
            export.export_model(tiny, base, name, tflite=("fp32",), **kwargs)
    assert _tree_hashes(base) == before  # version 1 and tflite/ of "keep" untouched, no version 2
    assert sorted(p.name for p in (base / "keep").iterdir()) == ["1", "tflite"]  # no temporary directory
    assert not (base / "fresh").exists()


def test_parity_bounds_flag_or_fail(tiny, tmp_path, monkeypatch):
    images = np.random.default_rng(0).random((32, 28, 28, 1), dtype=np.float32)
    monkeypatch.setitem(export.PARITY_TOLERANCES, "fp16", ("max_diff", 1e-12, None))
    with pytest.warns(export.ParityWarning, match="fp16"):
        version_dir = export.export_model(tiny, tmp_path, "flagged", tflite=("fp32", "fp16"), parity_data=images)
    tflite = json.loads((version_dir / "assets.extra" / "manifest.json").read_text())["tflite"]
    assert set(tflite["out_of_tolerance"]) == {f"{s}.fp16.tflite" for s in export.SIGNATURES}
    assert not tflite["files"]["decode.fp16.tflite"]["within_tolerance"]
    assert tflite["files"]["decode.fp32.tflite"]["within_tolerance"]
    with pytest.raises(export.ExportError, match="fp16"):
        export.export_model(tiny, tmp_path, "strict", tflite=("fp16",), parity_data=images, strict_parity=True)
    monkeypatch.setattr(export.variants, "BROKEN_FP32", -1.0)  # where _write_tflite looks it up
    with pytest.raises(export.ExportError, match="broken conversion"):  # a broken fp32 file is never kept
        export.export_model(tiny, tmp_path, "broken", tflite=("fp32",), parity_data=images)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flagged"]


def test_bad_arguments(tiny, tmp_path):
    with pytest.raises(ValueError, match="representative_data"):
        export.export_model(tiny, tmp_path, "t", tflite=("int8",))
    with pytest.raises(ValueError, match="unknown TFLite variant"):
        export.export_model(tiny, tmp_path, "t", tflite=("fp8",))
    with pytest.raises(ValueError, match="name"):
        export.export_model(tiny, tmp_path, "../escape", tflite=())
    with pytest.raises(ValueError, match="version"):
        export.export_model(tiny, tmp_path, "t", version=0, tflite=())
    with pytest.raises(ValueError, match="representative_data must be images"):
        export.export_model(tiny, tmp_path, "t", representative_data=np.zeros((4, 8, 8, 1), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_tflite_for_chosen_signatures_and_given_metrics(tiny, tmp_path):
    tiny.save(tmp_path / "best.keras")
    with pytest.raises(ValueError, match="tflite_signatures must name one or more of reconstruct"):
        export.export_run(tmp_path / "best.keras", "t", export_dir=tmp_path / "exported", tflite=("fp32",),
                          tflite_signatures=("decoder",))
    metrics = {"test": {"mse_per_pixel": 0.5}}
    version_dir = export.export_run(tmp_path / "best.keras", "zooish", export_dir=tmp_path / "exported",
                                    tflite="fp32,int8", tflite_signatures=("decode",), metrics=metrics)
    manifest = json.loads((version_dir / "assets.extra" / "manifest.json").read_text())
    assert manifest["metrics"] == metrics
    assert sorted(manifest["tflite"]["files"]) == ["decode.fp32.tflite", "decode.int8.tflite"]
    assert sorted(p.name for p in (version_dir.parent / "tflite").iterdir()) == [
        "decode.fp32.tflite", "decode.int8.tflite", "manifest.json"]
    assert set(manifest["signatures"]) == ALL_SIGNATURES  # the SavedModel keeps every signature
    assert export.verify(version_dir.parent) == []


# ---- export_run and the command line -----------------------------------------------------------------

def test_export_run_of_a_bare_keras_file(tmp_path):
    keras.utils.set_random_seed(0)
    odd = kerasae.build("ae-shallow", image_shape=(12, 12, 1), latent_dim=4)
    odd.save(tmp_path / "odd.keras")
    with pytest.raises(ValueError, match="--representative-data"):
        export.export_run(tmp_path / "odd.keras", "odd", export_dir=tmp_path / "exported", tflite=("int8",))
    images = np.random.default_rng(0).random((64, 12, 12, 1), dtype=np.float32)
    np.savez(tmp_path / "rep.npz", x=images)
    version_dir = export.export_run(tmp_path / "odd.keras", "odd", export_dir=tmp_path / "exported",
                                    tflite=("fp32", "int8"), representative_data=tmp_path / "rep.npz")
    manifest = json.loads((version_dir / "assets.extra" / "manifest.json").read_text())
    assert manifest["preset"] is None and manifest["metrics"] is None and manifest["model"]["class"] == "Autoencoder"
    assert "encode.int8.tflite" in manifest["tflite"]["files"]  # export_run's default signatures: encode, decode


@pytest.mark.slow
def test_cli_exports_a_training_run(tmp_path):
    kerasae.train(preset="ae-shallow", epochs=1, max_train_samples=600, max_test_samples=100,
                  out=str(tmp_path / "runs" / "ae"), verbose=0)
    proc = run_script("export.py", "runs/ae", "--name", "ae", "--tflite", "fp32,int8", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "exports/ae/1" in proc.stdout and "encode.int8.tflite" in proc.stdout
    manifest = json.loads((tmp_path / "exports/ae/1/assets.extra/manifest.json").read_text())
    assert manifest["preset"] == "ae-shallow" and manifest["metrics"]["test"]["loss"] > 0
    assert manifest["tflite"]["parity_data"].startswith("256 images")
    assert cli.export_main(["--verify", str(tmp_path / "exports" / "ae")]) == 0
    again = run_script("export.py", "runs/ae", "--name", "ae", "--version", "1", "--tflite", "none", cwd=tmp_path)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert again.stderr.strip().splitlines()[-1].startswith("export.py: error: ")
    assert cli.export_main([str(tmp_path / "runs/ae"), "--name", "ae", "--tflite", "none", "--no-keras-model",
                            "--export-dir", str(tmp_path / "exports")]) == 0  # the weights stored once
    full, lean = tmp_path / "exports/ae/1", tmp_path / "exports/ae/2"
    assert (full / KERAS_FILE).is_file() and not (lean / KERAS_FILE).exists() and export.verify(lean) == []
    for got, want in zip(export.load_keras_model(lean).weights, export.load_keras_model(full).weights, strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=got.path)


@pytest.mark.parametrize("argv, message", [
    ([], "RUN_DIR"),
    (["runs/x"], "--name is required"),
    (["runs/x", "--name", "a", "--tflite", "fp32,fp64"], "unknown TFLite variant"),
    (["runs/x", "--name", "a", "--version", "0"], "must be an integer >= 1"),
    (["runs/x", "--name", "a/b"], "name must be"),
    (["does-not-exist", "--name", "a"], "does not exist"),
    (["--verify", "does-not-exist"], "does not exist"),
    (["--bogus"], "unrecognized arguments"),
])
def test_cli_bad_arguments_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "x").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        cli.export_main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.strip().splitlines()[-1].startswith("export.py: error:")


# ---- exported/README.md ---------------------------------------------------------------------------

def test_readme_consumer_examples_run_without_kerasae(exports, tmp_path):
    """The plain-TensorFlow and LiteRT examples in exported/README.md, run as written (on the VAE export)."""
    readme = (REPO / "exported" / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S)
              if "import kerasae" not in b  # the zoo example needs kerasae: test_evaluate runs it
              and "import onnxruntime" not in b]  # the onnx extra's: test_onnx runs it
    assert len(blocks) >= 2 and any("tf.saved_model.load" in b for b in blocks) and any("ai_edge_litert" in b
                                                                                         for b in blocks)
    (tmp_path / "exports").mkdir()
    shutil.copytree(exports["vae-bernoulli"].version_dir.parent, tmp_path / "exports" / "vae")
    script = NO_KERASAE + "\n".join(blocks) + "\nprint('examples OK')\n"
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "examples OK" in proc.stdout
