"""The VQ-VAE: nearest-code quantization, the straight-through gradient, the commitment loss, the EMA codebook,
dead-code restarts, perplexity, integer codes (and their errors), the factorized prior, export and TFLite."""

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerasae
from kerasae import export, losses
from kerasae.models import VQVAE

from conftest import REPO, run_script


def _small(**overrides):
    kwargs = dict(arch="mlp", hidden_units=(32,), num_codes=4, num_embeddings=8, embedding_dim=3, seed=3)
    return VQVAE(**{**kwargs, **overrides})


def test_encode_picks_the_nearest_codebook_vector(mnist_small):
    model = _small()
    x = mnist_small.x_train[:20]
    z_e = model.encoder_outputs(model.check_images(x)).numpy()  # [20, 4, 3]
    codebook = model.codebook.numpy()
    brute = np.argmin(((z_e[:, :, None, :] - codebook[None, None]) ** 2).sum(-1), axis=-1)
    codes = model.encode(x)
    assert codes.dtype == tf.int32 and codes.shape == (20, 4)
    np.testing.assert_array_equal(codes.numpy(), brute)
    # decode(encode(x)) is the reconstruction, and decode reads codebook rows
    np.testing.assert_array_equal(model.decode(codes).numpy(), model.reconstruct(x).numpy())
    swapped = codebook.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    first = model.decode(np.zeros([1, 4], np.int32)).numpy()
    model.codebook.assign(swapped)
    np.testing.assert_array_equal(model.decode(np.ones([1, 4], np.int32)).numpy(), first)


def test_straight_through_gradient_and_commitment_loss(mnist_small):
    """The decoder's gradient at z_q reaches the encoder's outputs unchanged; the commitment loss is
    beta * ||z_e - z_q||^2 (sum per image) and pulls z_e, never the codebook."""
    model = _small(codebook_update="loss", commitment_cost=0.25)
    x = model.check_images(mnist_small.x_train[:6])
    with tf.GradientTape(persistent=True) as tape:
        terms, z_e, indices = model._forward(x, training=True)
        reconstruction = tf.reduce_sum(terms["reconstruction_loss"])
        commitment = tf.reduce_sum(terms["commitment_loss"])
        codebook_loss = tf.reduce_sum(terms["codebook_loss"])
    z_q = tf.gather(model.codebook, indices)
    with tf.GradientTape() as inner:
        inner.watch(z_q)
        direct = tf.reduce_sum(losses.reconstruction_error(x, model._decode_vectors(z_q), "bce"))
    np.testing.assert_allclose(tape.gradient(reconstruction, z_e).numpy(), inner.gradient(direct, z_q).numpy(),
                               rtol=1e-5, atol=1e-6)
    want = 0.25 * np.sum((z_e.numpy() - z_q.numpy()) ** 2, axis=(1, 2))
    np.testing.assert_allclose(terms["commitment_loss"].numpy(), want, rtol=1e-5)
    np.testing.assert_allclose(tape.gradient(commitment, z_e).numpy(), 0.5 * (z_e - z_q).numpy(), rtol=1e-4,
                               atol=1e-6)
    assert tape.gradient(commitment, model.codebook) is None  # the codebook learns from the codebook loss
    np.testing.assert_allclose(terms["codebook_loss"].numpy(), want / 0.25, rtol=1e-5)
    assert tape.gradient(codebook_loss, model.codebook) is not None


def _assign(model, z_e, codebook):
    model.codebook.assign(codebook)
    return tf.constant(z_e, tf.float32), model.nearest(tf.constant(z_e, tf.float32))


def test_ema_codebook_converges_to_the_means_of_its_assigned_outputs():
    """Repeated EMA updates on one batch: each used code moves to the mean of the encoder outputs assigned to it
    (a k-means step), with its usage the number assigned per batch."""
    rng = np.random.default_rng(0)
    model = _small(ema_decay=0.8, restart_threshold=0.0)
    centres = np.array([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0]], np.float32)
    z_e = (centres[rng.integers(0, 3, 64)] + 0.3 * rng.standard_normal((64, 3))).astype(np.float32)
    codebook = np.full((8, 3), 50.0, np.float32)
    codebook[:3] = centres
    z_e, indices = _assign(model, z_e[:, None, :].reshape(16, 4, 3), codebook)
    for step in range(80):
        model.update_codebook(z_e, indices, step)
    flat, assigned = z_e.numpy().reshape(-1, 3), indices.numpy().reshape(-1)
    for k in range(3):
        np.testing.assert_allclose(model.codebook.numpy()[k], flat[assigned == k].mean(0), atol=1e-3)
        assert model.code_usage.numpy()[k] == pytest.approx((assigned == k).sum(), rel=1e-3)
    assert np.all(model.code_usage.numpy()[3:] < 1e-3)  # unused: never restarted with the threshold at 0


def test_dead_codes_restart_on_encoder_outputs_and_live_ones_stay():
    rng = np.random.default_rng(1)
    model = _small(ema_decay=0.9, restart_threshold=1.0)
    z_e = rng.standard_normal((16, 4, 3)).astype(np.float32) + 10.0  # all near one another, far from the codebook
    model.code_usage.assign(np.full(8, 5.0, np.float32))  # every code alive before this step
    codebook = rng.standard_normal((8, 3)).astype(np.float32)
    z_e, indices = _assign(model, z_e, codebook)
    used = np.unique(indices.numpy())
    model.update_codebook(z_e, indices, 0)
    assert np.all(model.code_usage.numpy() >= 1.0)  # 0.9 * 5 = 4.5 > 1: no restart yet
    for step in range(1, 30):  # the unused codes' usage decays below 1; they restart at encoder outputs
        model.update_codebook(z_e, model.nearest(z_e), step)
    after = model.codebook.numpy()
    flat = z_e.numpy().reshape(-1, 3)
    unused = np.setdiff1d(np.arange(8), used)
    assert len(unused) > 0
    for k in unused:
        assert np.min(np.abs(flat - after[k]).max(axis=1)) < 0.5  # on (or by EMA near) an encoder output
    # every code now serves some output of this batch or sits among them
    assert np.all(np.linalg.norm(after - flat.mean(0), axis=1) < 6.0)


def test_first_training_step_places_the_codebook_on_encoder_outputs(mnist_small):
    model = _small(num_embeddings=16)
    model.compile(optimizer=keras.optimizers.SGD(0.0))  # no weight moves but the codebook's
    x = mnist_small.x_train[:32]
    z_e = model.encoder_outputs(model.check_images(x)).numpy().reshape(-1, 3)
    model.fit(x, batch_size=32, epochs=1, verbose=0, shuffle=False)
    distances = np.abs(model.codebook.numpy()[:, None, :] - z_e[None]).max(-1).min(-1)
    assert np.all(distances < 1e-5)  # each of the 16 codes is one of the batch's 128 encoder outputs


def test_perplexity_counts_how_evenly_codes_are_used():
    model = _small()
    assert float(model._perplexity(tf.constant([5.0] * 8), 2)[0]) == pytest.approx(8.0)
    assert float(model._perplexity(tf.constant([40.0] + [0.0] * 7), 2)[0]) == pytest.approx(1.0)
    assert float(model._perplexity(tf.constant([2.0, 2.0] + [0.0] * 6), 2)[0]) == pytest.approx(2.0)


@pytest.fixture(scope="module")
def mnist_2000():
    from kerasae.data import load_mnist

    return load_mnist().take(2000, 256)


def _trained(x, epochs=3, **overrides):
    keras.utils.set_random_seed(0)
    model = kerasae.build("vqvae-mlp", num_embeddings=64, **overrides)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    before = model.evaluate(x[:256], verbose=0, return_dict=True)
    history = model.fit(x, batch_size=64, epochs=epochs, verbose=0)
    return model, before, history.history


def test_restarts_keep_the_codebook_in_use(mnist_2000):
    """Trained by the codebook loss alone, most codes die (measured: perplexity 2.8, 8 of 64 codes used);
    restarting dead codes at encoder outputs keeps them in use (38.7, 60 of 64)."""
    x = mnist_2000.x_train
    without, _, history_without = _trained(x, codebook_update="loss", restart_threshold=0.0)
    model, before, history = _trained(x, codebook_update="loss")
    used = {name: len(np.unique(m.encode(x[:256]).numpy())) for name, m in (("without", without), ("with", model))}
    assert history["perplexity"][-1] > 3 * history_without["perplexity"][-1], (history, history_without)
    assert used["with"] > 2 * used["without"] and used["with"] > 40, used
    after = model.evaluate(x[:256], verbose=0, return_dict=True)
    assert after["reconstruction_loss"] < 0.6 * before["reconstruction_loss"], (before, after)
    # score is the reconstruction loss (Bernoulli nats) of the quantized reconstruction
    recon = np.clip(model.reconstruct(x[:8]).numpy(), 1e-7, 1 - 1e-7)
    want = -np.sum(x[:8] * np.log(recon) + (1 - x[:8]) * np.log(1 - recon), axis=(1, 2, 3))
    np.testing.assert_allclose(model.score(x[:8]).numpy(), want, rtol=1e-3)


def test_sampling_follows_the_code_frequencies_and_code_length():
    model = _small(num_codes=2, num_embeddings=4)
    freq = np.array([[0.7, 0.1, 0.1, 0.1], [0.0, 0.0, 0.5, 0.5]], np.float32)
    model.code_frequencies.assign(freq)
    codes = model.sample_codes(20000, seed=0).numpy()
    assert codes.shape == (20000, 2) and codes.dtype == np.int32
    for position in range(2):
        seen = np.bincount(codes[:, position], minlength=4) / 20000
        np.testing.assert_allclose(seen, freq[position], atol=0.02)
    np.testing.assert_array_equal(model.sample_codes(5, seed=1), model.sample_codes(5, seed=1))
    bits = model.code_length_bits(np.array([[0, 2], [1, 3]], np.int32)).numpy()
    np.testing.assert_allclose(bits, [-math.log2(0.7) + 1.0, -math.log2(0.1) + 1.0], rtol=2e-3)
    # a code never seen at a position still gets a finite length: the prior keeps 1e-3 of the uniform
    unseen = model.code_length_bits(np.array([[0, 0]], np.int32)).numpy()[0]
    assert np.isfinite(unseen) and unseen == pytest.approx(-math.log2(0.7) + math.log2(4 / 1e-3), rel=2e-3)
    assert model.bits_per_image == 4.0  # 2 codes of log2(4) bits


def test_entropy_coded_rate_is_the_fixed_length_under_uniform_frequencies(mnist_small):
    from kerasae import compression

    model = _small(num_embeddings=16)
    x = mnist_small.x_test[:64]
    row = compression.vq_rate_distortion(model, x)
    assert row["bytes_per_image"] == 4 * 4 / 8
    assert row["entropy_coded_bytes_per_image"] == pytest.approx(row["bytes_per_image"], rel=1e-5)  # 1/16 each
    freq = np.full((4, 16), 1e-6, np.float32)
    freq[np.arange(4)[:, None], model.encode(x).numpy().T] = 1.0  # every code seen is likely, the others not
    model.code_frequencies.assign(freq)
    assert compression.vq_rate_distortion(model, x)["entropy_coded_bytes_per_image"] < row["bytes_per_image"]


def test_bad_codes_and_config_are_clear_errors():
    model = _small()
    with pytest.raises(TypeError, match="codes must be integer code indices in \\[0, 8\\)"):
        model.decode(np.zeros([1, 4], np.float32))
    with pytest.raises(ValueError, match="codes must have shape \\[batch, 4\\]"):
        model.decode(np.zeros([1, 5], np.int32))
    with pytest.raises(ValueError, match="codes must be in \\[0, 8\\), found 8"):
        model.decode(np.array([[0, 1, 8, 2]]))
    with pytest.raises(ValueError, match="found -1"):
        model.decode(np.array([[0, -1, 0, 2]]))
    # in a traced graph a bad code cannot raise: that example's image is NaN, the others are untouched
    codes = tf.constant([[0, 1, 2, 3], [0, 9, 2, 3], [-2, 1, 2, 3]], tf.int32)
    traced = tf.function(lambda c: model.decode(c))(codes).numpy()
    assert np.all(np.isfinite(traced[0])) and np.all(np.isnan(traced[1])) and np.all(np.isnan(traced[2]))
    # A batch of 3 and a batch of 1 may take other matmul kernels: equal to float32 rounding (measured 2.3e-7
    # relative on an AMD EPYC), not bit for bit.
    np.testing.assert_allclose(traced[0], model.decode(codes[:1]).numpy()[0], rtol=1e-5, atol=1e-6)
    for kwargs, match in (({"num_codes": 4, "arch": "conv", "filters": (8,)}, "num_codes is for arch='mlp'"),
                          ({"latent_dim": 7}, "latent_dim is the code length \\(L = 4"),
                          ({"arch": "conv", "filters": (8,), "num_codes": None}, "hidden_units are for arch='mlp'"),
                          ({"codebook_update": "sgd"}, "codebook_update must be one of"),
                          ({"ema_decay": 1.0}, "ema_decay must be in"),
                          ({"num_embeddings": 0}, "num_embeddings must be a positive integer"),
                          ({"restart_threshold": -1}, "restart_threshold must be in")):
        with pytest.raises(ValueError, match=match):
            _small(**kwargs)


def test_conv_codes_are_a_grid():
    model = kerasae.build("vqvae-conv", num_embeddings=16, embedding_dim=4)
    assert model.code_grid == (7, 7) and model.latent_dim == model.num_codes == 49
    assert model.bits_per_image == 49 * 4
    assert "latent_dim" not in model.get_config()
    x = np.random.default_rng(0).random((2, 28, 28, 1), dtype=np.float32)
    assert model.encode(x).shape == (2, 49)
    assert kerasae.build("vqvae-resnet-32").code_grid == (8, 8)


# ---- export ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from kerasae.data import load_mnist

    mnist = load_mnist().take(1024, 256)
    keras.utils.set_random_seed(0)
    model = kerasae.build("vqvae-conv", filters=(16, 32), num_embeddings=64, embedding_dim=16)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    model.fit(mnist.x_train, batch_size=64, epochs=2, verbose=0)
    root = tmp_path_factory.mktemp("vq-export")
    version_dir = export.export_model(model, root, "vq", representative_data=mnist.x_train[:500],
                                      parity_data=mnist.x_test, preset="vqvae-conv")
    manifest = json.loads((version_dir / "assets.extra" / "manifest.json").read_text())
    return model, version_dir, manifest, mnist.x_test


def test_exported_signatures_take_and_give_integer_codes(exported):
    model, version_dir, manifest, x = exported
    sigs = tf.saved_model.load(str(version_dir)).signatures

    def spec(fn):
        return ({k: (s.shape.as_list(), s.dtype) for k, s in fn.structured_input_signature[1].items()},
                {k: (s.shape.as_list(), s.dtype) for k, s in fn.structured_outputs.items()})

    image, code = ([None, 28, 28, 1], tf.float32), ([None, 49], tf.int32)
    assert spec(sigs["encode"]) == ({"x": image}, {"z": code})
    assert spec(sigs["decode"]) == ({"z": code}, {"x_mean": image, "logits": image})
    assert spec(sigs["sample"]) == ({"num_samples": ([], tf.int32)}, {"z": code, "x_mean": image})
    assert spec(sigs["score"]) == ({"x": image}, {"score": ([None], tf.float32)})
    assert manifest["signatures"] == export.expected_signatures(model)
    assert "of the reconstruction from the quantized codes" in manifest["score"]

    codes = sigs["encode"](x=tf.constant(x))["z"]
    np.testing.assert_array_equal(codes.numpy(), model.encode(x).numpy())
    np.testing.assert_array_equal(sigs["decode"](z=codes)["x_mean"].numpy(),
                                  sigs["reconstruct"](x=tf.constant(x))["reconstruction"].numpy())
    np.testing.assert_allclose(sigs["score"](x=tf.constant(x))["score"].numpy(), model.score(x).numpy(), rtol=1e-5)
    drawn = sigs["sample"](num_samples=tf.constant(6))
    assert drawn["z"].dtype == tf.int32 and np.all((drawn["z"].numpy() >= 0) & (drawn["z"].numpy() < 64))
    np.testing.assert_allclose(drawn["x_mean"].numpy(), model.decode(drawn["z"]).numpy(), atol=1e-5)
    bad = sigs["decode"](z=tf.constant(np.stack([codes[0].numpy(), np.full(49, 64)]), tf.int32))["x_mean"].numpy()
    assert np.all(np.isfinite(bad[0])) and np.all(np.isnan(bad[1]))


def test_tflite_files_match_the_savedmodel_codes(exported):
    from ai_edge_litert import interpreter as litert

    model, version_dir, manifest, x = exported
    tflite = manifest["tflite"]
    tflite_dir = version_dir.parent / "tflite"
    assert set(tflite["skipped"]) <= {"score.int8.tflite"}, tflite["skipped"]
    files = tflite["files"]
    for signature in ("encode", "reconstruct", "decode", "sample", "score"):
        assert f"{signature}.fp32.tflite" in files
        assert all(d["max_diff"] <= 1e-5 for d in files[f"{signature}.fp32.tflite"]["parity"].values())
    assert files["encode.fp32.tflite"]["parity"]["z"]["agreement"] == 1.0
    # Rounding moves encoder outputs near the boundary of two codes to the other one. Here, restarts have put
    # several codes on near-identical outputs (MNIST's blank background), so quantized weights swap many codes for
    # a twin (measured: fp16 99.5% of the codes agree, dynamic 73%, int8 54%) while the images barely change: the
    # reconstructions stay within the mean bound (0.0014 and 0.0054 measured).
    assert files["encode.fp16.tflite"]["parity"]["z"]["agreement"] > 0.98
    # A flipped code moves its patch by a discrete jump whatever the bound (0.02 seen on an AMX CPU), so reconstruct's
    # fp16 bound applies where the fp16 encode file's codes agree with the SavedModel's: recomputed here from LiteRT.
    fp16 = files["reconstruct.fp16.tflite"]
    assert fp16["within_tolerance"] and fp16["parity"]["reconstruction"]["max_diff_where_codes_agree"] <= 1e-3
    recomputed = _fp16_reconstruction_where_codes_agree(version_dir, x)
    assert fp16["parity"]["reconstruction"]["images_where_codes_agree"] == recomputed["images"] >= len(x) // 2
    assert fp16["parity"]["reconstruction"]["max_diff_where_codes_agree"] == pytest.approx(recomputed["max_diff"])
    for variant in ("dynamic", "int8"):
        assert 0.0 < files[f"encode.{variant}.tflite"]["parity"]["z"]["agreement"] <= 1.0
        assert files[f"reconstruct.{variant}.tflite"]["parity"]["reconstruction"]["mean_abs_diff"] <= 0.02
    for variant, bound in (("fp16", 1e-3), ("dynamic", 0.02), ("int8", 0.02)):  # decode: the same codes in
        assert files[f"decode.{variant}.tflite"]["parity"]["x_mean"]["mean_abs_diff"] <= bound, variant
    interpreter = litert.Interpreter(model_path=str(tflite_dir / "decode.fp32.tflite"))
    interpreter.allocate_tensors()
    codes = model.encode(x[:2]).numpy()
    codes[1, 5] = 64
    out = interpreter.get_signature_runner("decode")(z=codes)["x_mean"]
    np.testing.assert_allclose(out[0], model.decode(codes[:1]).numpy()[0], atol=1e-5)
    assert np.all(np.isnan(out[1]))  # a code outside [0, K) gives NaN, as in the SavedModel


def _fp16_reconstruction_where_codes_agree(version_dir, x):
    """LiteRT's fp16 encode and reconstruct files against the SavedModel: the images whose codes all agree, and the
    largest reconstruction difference on them."""
    from ai_edge_litert import interpreter as litert

    def run(signature, **inputs):
        interpreter = litert.Interpreter(model_path=str(version_dir.parent / "tflite" / f"{signature}.fp16.tflite"))
        return interpreter.get_signature_runner(signature)(**inputs)

    sigs = tf.saved_model.load(str(version_dir)).signatures
    x = np.asarray(x[:export.NUM_PARITY_IMAGES], np.float32)
    same = np.all(run("encode", x=x)["z"] == sigs["encode"](x=tf.constant(x))["z"].numpy(), axis=1)
    diff = np.abs(run("reconstruct", x=x)["reconstruction"] - sigs["reconstruct"](x=tf.constant(x))["reconstruction"]
                  .numpy())[same]
    return {"images": int(same.sum()), "max_diff": float(diff.max())}


def test_savedmodel_runs_without_kerasae(exported, tmp_path):
    from test_export import FRESH_PROCESS

    model, version_dir, _, x = exported
    inputs, outputs = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(inputs, x=x[:4], z=model.encode(x[:4]).numpy())
    jobs = {"vq": {"dir": str(version_dir), "inputs": str(inputs), "outputs": str(outputs)}}
    proc = subprocess.run([sys.executable, "-c", FRESH_PROCESS, json.dumps(jobs)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=""))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(outputs)
    np.testing.assert_array_equal(got["encode/z"], model.encode(x[:4]).numpy())
    np.testing.assert_allclose(got["decode/x_mean"], model.reconstruct(x[:4]).numpy(), atol=1e-6)


# ---- the command line -------------------------------------------------------------------------

def test_cli_trains_a_vqvae_and_refuses_flags_of_other_families(tmp_path):
    out = tmp_path / "run"
    proc = run_script("train.py", "--arch", "vqvae", "--codebook-size", "32", "--code-dim", "8", "--epochs", "1",
                      "--max-train-samples", "512", "--max-test-samples", "128", "--out", str(out), "--verbose", "0",
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())["model"]["config"]
    assert (config["num_embeddings"], config["embedding_dim"]) == (32, 8)
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"perplexity", "commitment_loss", "reconstruction_loss"} <= set(metrics["test"])
    assert (out / "figures" / "reconstructions.png").exists()
    proc = run_script("evaluate.py", str(out), "--max-test-samples", "64", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    evaluation = json.loads((out / "evaluation.json").read_text())
    codes = evaluation["codes"]
    assert codes["bytes_per_image"] == 49 * 5 / 8 and codes["codebook_size"] == 32 and codes["num_codes"] == 49
    assert codes["psnr_db"] == pytest.approx(evaluation["reconstruction"]["psnr_db"], rel=1e-6)
    assert 1 <= codes["perplexity"] <= codes["codes_used"] <= 32
    for args, message in ((["--arch", "vqvae", "--latent-dim", "4"], "--latent-dim applies to"),
                          (["--arch", "vae", "--codebook-size", "4"], "--codebook-size applies to vqvae presets")):
        proc = run_script("train.py", *args, "--epochs", "1", "--out", str(tmp_path / "bad"), cwd=tmp_path)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-500:]
        assert len(proc.stderr.strip().splitlines()[-1]) < 300


def test_results_doc_quotes_the_vq_stage():
    """docs/results.md shows the vq stage's table as reproduce printed it from the full run."""
    from kerasae import reproduce

    result = json.loads((REPO / "benchmarks" / "results" / reproduce.RESULT_FILES["vq"]).read_text())
    assert result["mode"] == "full" and result["conventions"]["num_test"] == 10000
    table = reproduce.summary({"vq": result}).split("\n\n", 1)[1]
    assert table in (REPO / "docs" / "results.md").read_text()
    rows = {r["method"]: r for r in result["rows"]}
    assert rows["vqvae-conv (VQ codes)"]["bytes_per_image"] == 49 * 9 / 8
    assert rows["ae-mlp-32 (8-bit code)"]["from"] == "seed_claims.json"
