"""ONNX files beside the TFLite ones (the onnx extra): conversion, onnxruntime parity, manifest, verify, CLI.

One briefly trained VAE (1 epoch on 1,000 MNIST images) is exported once through the command line with
--onnx; the tests read that export. Where tf2onnx or onnxruntime is not installed they skip, saying so;
the test that kerasae imports and exports without them runs everywhere.
"""

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerasae
from kerasae import cli, export
from kerasae.data import TEST_BINARIZATION_SEED, binarize, load_mnist
from kerasae.export.onnx import missing_modules

from conftest import REPO

needs_onnx = pytest.mark.skipif(bool(missing_modules()), reason=f"the onnx extra is not installed "
                                f"({', '.join(missing_modules())} missing): pip install \".[onnx]\"")
SIGNATURES = ("reconstruct", "encode", "decode", "sample", "score")


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _session(path):
    import onnxruntime  # the runtime itself, not kerasae's wrapper

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(path, **feed):
    session = _session(path)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory):
    """A VAE trained briefly, saved as a .keras file, exported by `export.py FILE --name vae --onnx`."""
    if missing_modules():
        pytest.skip("the onnx extra is not installed")
    root = tmp_path_factory.mktemp("onnx")
    keras.utils.set_random_seed(0)
    model = kerasae.build("vae-mlp", latent_dim=16)
    mnist = load_mnist().take(1000, 256)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(binarize(mnist.x_train, seed=1), batch_size=64, epochs=1, verbose=0)
    model.save(root / "vae.keras")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.export_main([str(root / "vae.keras"), "--name", "vae", "--tflite", "none", "--onnx",
                                "--tflite-signatures", "all", "--export-dir", str(root / "exported")])
    assert code == 0
    version_dir = root / "exported" / "vae" / "1"
    manifest = json.loads((version_dir / "assets.extra" / "manifest.json").read_text())
    x = binarize(load_mnist().x_test[256:320], seed=TEST_BINARIZATION_SEED)  # not the parity images
    return dict(model=model, version_dir=version_dir, onnx_dir=version_dir.parent / "onnx", manifest=manifest,
                printed=printed.getvalue(), x=x)


@needs_onnx
def test_every_signature_runs_in_onnxruntime_and_matches_the_savedmodel(onnx_export):
    onnx_dir, loaded = onnx_export["onnx_dir"], tf.saved_model.load(str(onnx_export["version_dir"]))
    assert sorted(p.name for p in onnx_dir.glob("*.onnx")) == sorted(f"{s}.onnx" for s in SIGNATURES)
    x = onnx_export["x"]
    z = np.random.default_rng(0).standard_normal((len(x), 16)).astype(np.float32)
    feeds = {"reconstruct": {"x": x}, "encode": {"x": x}, "decode": {"z": z}, "score": {"x": x}}
    for signature, feed in feeds.items():
        got = _run(onnx_dir / f"{signature}.onnx", **feed)
        want = {k: v.numpy() for k, v in loaded.signatures[signature](**{k: tf.constant(v)
                                                                           for k, v in feed.items()}).items()}
        assert sorted(got) == sorted(want), signature  # the contract's key names
        for key in want:
            scale = max(1.0, float(np.abs(want[key]).max()))  # max_diff, as the manifest defines it
            np.testing.assert_array_less(np.abs(got[key] - want[key]) / scale, export.ONNX_TOLERANCE,
                                         err_msg=f"{signature} {key}")
    session = _session(onnx_dir / "sample.onnx")
    first, second = (dict(zip(["x_mean", "z"], session.run(["x_mean", "z"], {"num_samples": np.array(5, np.int32)})))
                     for _ in range(2))
    assert first["z"].shape == (5, 16) and first["x_mean"].shape == (5, 28, 28, 1)
    assert not np.allclose(first["z"], second["z"])  # fresh draws on every run
    # and in every process (onnxruntime seeds an op without a seed attribute per process)
    draw = ("import sys, numpy as np, onnxruntime as ort; s = ort.InferenceSession(sys.argv[1], providers="
            "['CPUExecutionProvider']); print(s.run(['z'], {'num_samples': np.array(2, np.int32)})[0].tolist())")
    processes = [subprocess.run([sys.executable, "-c", draw, str(onnx_dir / "sample.onnx")], capture_output=True,
                                text=True, timeout=120, check=True).stdout for _ in range(2)]
    assert processes[0] != processes[1], processes
    decoded = loaded.signatures["decode"](z=tf.constant(first["z"]))["x_mean"].numpy()
    np.testing.assert_array_less(np.abs(first["x_mean"] - decoded), export.ONNX_TOLERANCE)


@needs_onnx
def test_manifest_lists_the_onnx_files(onnx_export):
    m, onnx_dir = onnx_export["manifest"], onnx_export["onnx_dir"]
    assert json.loads((onnx_dir / "manifest.json").read_text()) == m  # the folder ships with its manifest
    on_disk = {p.name: {"sha256": _sha(p), "bytes": p.stat().st_size} for p in onnx_dir.glob("*.onnx")}
    assert m["files"]["onnx"] == on_disk
    part = m["onnx"]
    assert part["skipped"] == {} and part["out_of_tolerance"] == {} and part["opset"] == 17
    assert part["parity_data"] == "256 images (parity_data)"  # the run's first 256 test images, as TFLite's
    for file_name, entry in part["files"].items():
        assert entry["bytes"] == on_disk[file_name]["bytes"] and entry["within_tolerance"]
        assert all(d["max_diff"] <= export.ONNX_TOLERANCE for d in entry["parity"].values())
    assert part["files"]["decode.onnx"]["inputs"] == {"z": {"shape": [None, 16], "dtype": "float32"}}
    assert set(part["files"]["encode.onnx"]["outputs"]) == {"z_mean", "z_log_var"}
    assert re.search(r"score\.onnx +[\d.]+ (KiB|MiB) +max_diff: score ", onnx_export["printed"])
    assert export.verify(onnx_dir.parent) == [] and export.verify(onnx_dir) == []


@needs_onnx
def test_verify_catches_a_changed_or_unloadable_onnx_file(onnx_export, tmp_path):
    copy = tmp_path / "vae"
    shutil.copytree(onnx_export["version_dir"].parent, copy)
    decode = copy / "onnx" / "decode.onnx"
    data = bytearray(decode.read_bytes())
    data[len(data) // 2] ^= 0xFF
    decode.write_bytes(bytes(data))
    problems = export.verify(copy)
    assert problems == [f"{decode}: sha256 mismatch (changed since export)"]
    assert export.verify(copy / "1") == problems  # a version directory checks its own export's onnx folder
    # a file whose bytes match a (rewritten) manifest but which onnxruntime cannot load
    decode.write_bytes(b"not an onnx model")
    manifest = json.loads((copy / "onnx" / "manifest.json").read_text())
    manifest["files"]["onnx"]["decode.onnx"] = {"sha256": _sha(decode), "bytes": decode.stat().st_size}
    (copy / "onnx" / "manifest.json").write_text(json.dumps(manifest))
    (problem,) = export.verify(copy / "onnx")
    assert problem.startswith(f"{decode}: does not load in onnxruntime")
    assert cli.export_main(["--verify", str(copy / "onnx")]) == 1


@needs_onnx
def test_log1p_converts_accurately(tmp_path):
    """tf2onnx 1.17 leaves TensorFlow's Log1p unconverted; kerasae's rule must keep log1p's digits for tiny x
    (log(1 + x) gives 0 for x = 1e-9) and its values at -1, 0 and infinity."""
    x = np.array([1e-30, -1e-12, 1e-9, 3e-7, -0.3, 0.5, 1.0, 7.0, 1e6, 3e38, -1.0, 0.0, np.inf], np.float32)
    fn = tf.function(lambda t: {"y": tf.math.log1p(t)}, input_signature=[tf.TensorSpec([None], tf.float32, "t")])
    module = tf.Module()
    module.f = fn
    tf.saved_model.save(module, str(tmp_path / "log1p"), signatures={"log1p": fn.get_concrete_function()})
    model_bytes = export.convert_onnx(tmp_path / "log1p", "log1p")
    got = export.run_onnx(model_bytes, t=x)["y"]
    with np.errstate(divide="ignore"):
        want = np.log1p(x.astype(np.float64))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=4 * np.finfo(np.float32).eps, atol=0)
    assert got[x == -1.0] == -np.inf and got[x == np.inf] == np.inf


def _tiny(tmp_path):
    keras.utils.set_random_seed(0)
    return kerasae.build("ae-shallow", latent_dim=8), np.random.default_rng(0).random((16, 28, 28, 1), np.float32)


@needs_onnx
def test_a_signature_that_does_not_convert_is_skipped_with_its_reason(tmp_path, monkeypatch):
    model, x = _tiny(tmp_path)
    convert = export.onnx.convert_onnx

    def no_score(saved_model_dir, signature, *args):
        if signature == "score":
            raise ValueError("Tensorflow op [Foo] is not supported")
        if signature == "encode":
            return b"\x08\x07"  # a model proto onnxruntime refuses (no graph)
        return convert(saved_model_dir, signature, *args)

    monkeypatch.setattr(export.onnx, "convert_onnx", no_score)
    version_dir = export.export_model(model, tmp_path, "ae", tflite=(), parity_data=x, onnx=True,
                                      tflite_signatures=("encode", "decode", "score"))
    part = json.loads((version_dir / "assets.extra" / "manifest.json").read_text())["onnx"]
    assert sorted(part["files"]) == ["decode.onnx"]
    assert part["skipped"]["score.onnx"] == "tf2onnx cannot convert it: Tensorflow op [Foo] is not supported"
    assert part["skipped"]["encode.onnx"].startswith("onnxruntime cannot load it: ")
    assert sorted(p.name for p in (tmp_path / "ae" / "onnx").iterdir()) == ["decode.onnx", "manifest.json"]


@needs_onnx
def test_parity_misses_are_flagged_or_fail_the_export(tmp_path, monkeypatch):
    model, x = _tiny(tmp_path)
    run = export.onnx.run_onnx
    offset = {}

    def off(path, **feed):  # a conversion whose decode is off by `offset` on images in [0, 1]
        out = run(path, **feed)
        return {k: v + np.float32(offset["x_mean"]) if k == "x_mean" else v for k, v in out.items()}

    monkeypatch.setattr(export.onnx, "run_onnx", off)
    offset["x_mean"] = 3e-4  # beyond ONNX_TOLERANCE (1e-4), below BROKEN_FP32 (1e-3): kept and flagged
    with pytest.warns(export.ParityWarning, match=r"onnx/decode\.onnx is outside its parity bound"):
        version_dir = export.export_model(model, tmp_path, "ae", tflite=(), parity_data=x, onnx=True,
                                          tflite_signatures=("decode",))
    part = json.loads((version_dir / "assets.extra" / "manifest.json").read_text())["onnx"]
    assert not part["files"]["decode.onnx"]["within_tolerance"]
    assert re.fullmatch(r"x_mean max_diff 0\.000[34]\d* > 0\.0001", part["out_of_tolerance"]["decode.onnx"])
    with pytest.raises(export.ExportError, match=r"ONNX parity check failed: decode\.onnx: x_mean max_diff"):
        export.export_model(model, tmp_path, "strict", tflite=(), parity_data=x, onnx=True, strict_parity=True,
                            tflite_signatures=("decode",))
    offset["x_mean"] = 2e-3  # a broken conversion: fails without --strict-parity too
    with pytest.raises(export.ExportError, match=r"ONNX parity check failed: decode\.onnx: x_mean max_diff 0\.002"):
        export.export_model(model, tmp_path, "broken", tflite=(), parity_data=x, onnx=True,
                            tflite_signatures=("decode",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ae"]  # the failed ones committed nothing


HIDDEN = textwrap.dedent("""
    import io, contextlib, sys

    EXTRA = ("tf2onnx", "onnxruntime", "onnx")
    for name in EXTRA:  # as if not installed: `import` raises ImportError, find_spec gives None
        sys.modules[name] = None
    import kerasae
    from kerasae import cli, export

    model = kerasae.build("ae-shallow", latent_dim=4)
    version_dir = export.export_model(model, "exported", "plain", tflite=())
    assert export.verify(version_dir.parent) == [], "an export without the extra"
    try:
        export.export_model(model, "exported", "with-onnx", tflite=(), onnx=True)
    except ImportError as err:
        print("API:", err)
    model.save("m.keras")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            cli.export_main(["m.keras", "--name", "cli", "--onnx"])
        except SystemExit as exit_info:
            print("CLI exit", exit_info.code, err.getvalue().strip().splitlines()[-1])
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:  # refused before any training: no run directory
            cli.train_main(["--arch", "ae", "--epochs", "1", "--out", "run", "--export", "x", "--onnx"])
        except SystemExit as exit_info:
            print("train exit", exit_info.code, err.getvalue().strip().splitlines()[-1])
    imported = sorted(m for m, module in sys.modules.items() if m.split(".")[0] in EXTRA and module is not None)
    print("imported:", imported)
""")


@pytest.mark.slow  # a fresh interpreter importing TensorFlow
def test_kerasae_imports_and_exports_without_the_extra(tmp_path):
    proc = subprocess.run([sys.executable, "-c", HIDDEN], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    hint = 'pip install "kerasae[onnx]"'
    assert f"API: ONNX export needs tf2onnx and onnxruntime (not installed): {hint}" in proc.stdout
    assert f"CLI exit 2 export.py: error: --onnx needs tf2onnx and onnxruntime, not installed: {hint}" in proc.stdout
    assert f"train exit 2 train.py: error: --onnx needs tf2onnx and onnxruntime, not installed: {hint}" in proc.stdout
    assert "imported: []" in proc.stdout and not (tmp_path / "run").exists()
    assert sorted(p.name for p in (tmp_path / "exported").iterdir()) == ["plain"]  # nothing of the refused ones


def test_train_onnx_without_export_is_a_usage_error(tmp_path, capsys):
    from kerasae import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.train_main(["--arch", "ae", "--out", str(tmp_path / "run"), "--onnx"])
    assert exit_info.value.code == 2 and not (tmp_path / "run").exists()
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "train.py: error: --onnx adds ONNX files to an export: give --export NAME too")


@needs_onnx
@pytest.mark.slow
def test_train_export_writes_onnx_files_with_onnx(tmp_path):
    from kerasae import cli

    args = ["--arch", "ae", "--epochs", "1", "--max-train-samples", "256", "--max-test-samples", "64",
            "--out", str(tmp_path / "run"), "--export", "mine", "--export-dir", str(tmp_path / "exports"), "--onnx"]
    assert cli.train_main(args) == 0
    onnx_dir = tmp_path / "exports" / "mine" / "onnx"
    assert sorted(p.name for p in onnx_dir.glob("*.onnx")) == ["decode.onnx", "encode.onnx"]  # the default set


@needs_onnx
def test_readme_onnxruntime_example_runs_without_kerasae(onnx_export, tmp_path):
    """exported/README.md's onnxruntime example, run as written on the export, in a process without kerasae."""
    readme = (REPO / "exported" / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "import onnxruntime" in b]
    shutil.copytree(onnx_export["version_dir"].parent, tmp_path / "exports" / "vae")
    blocker = ("import sys\nsys.modules['kerasae'] = None  # the example must not need kerasae\n")
    proc = subprocess.run([sys.executable, "-c", blocker + block + "\nprint('example OK')\n"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=""))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("example OK") and "(8, 28, 28, 1) (8, 16) (16, 28, 28, 1)" in proc.stdout
