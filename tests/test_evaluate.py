"""kerasae.evaluate, scripts/evaluate.py, scripts/reproduce.py (quick mode) and the pretrained zoo."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import kerasae
from kerasae import compression
from kerasae import evaluate as ev
from kerasae import export, zoo

from conftest import REPO, run_script


@pytest.fixture(scope="module")
def vae():
    return kerasae.build("vae-mlp", hidden_units=[32], latent_dim=4, seed=0)


def test_psnr_and_reconstruction_metrics_known_values():
    x = np.zeros((3, 2, 2, 1), np.float32)
    x_hat = np.full_like(x, 0.1)
    assert ev.psnr(x, x_hat) == pytest.approx([20.0] * 3)
    m = ev.reconstruction_metrics(x, x_hat)
    assert m["mse_per_pixel"] == pytest.approx(0.01)
    assert m["bce_per_image"] == pytest.approx(-4 * np.log(0.9), rel=1e-6)
    assert m["psnr_db"] == pytest.approx(20.0)
    # PSNR is per image, then averaged: MSEs 0.01 and 0.0001 give (20 + 40) / 2 dB, not 10 log10(1 / 0.00505)
    x = np.zeros((2, 2, 2, 1))
    x_hat = np.stack([np.full((2, 2, 1), 0.1), np.full((2, 2, 1), 0.01)])
    np.testing.assert_allclose(ev.psnr(x, x_hat), [20.0, 40.0])
    m = ev.reconstruction_metrics(x, x_hat)
    assert m["psnr_db"] == pytest.approx(30.0) and m["mse_per_pixel"] == pytest.approx((0.01 + 0.0001) / 2)
    # BCE's targets are the images (first argument), its probabilities the reconstruction (clipped to 1e-7)
    x = np.array([1.0, 0.0, 1.0, 0.0]).reshape(1, 2, 2, 1)
    x_hat = np.array([0.8, 0.3, 1.0, 0.5]).reshape(1, 2, 2, 1)
    bce = -(np.log(0.8) + np.log(0.7) + np.log(1 - 1e-7) + np.log(0.5))
    assert ev.reconstruction_metrics(x, x_hat)["bce_per_image"] == pytest.approx(bce, rel=1e-9)
    assert ev.psnr(x, x_hat)[0] == pytest.approx(-10 * np.log10((0.04 + 0.09 + 0.0 + 0.25) / 4))


def _numpy_log_weights(model, x, eps):
    """log p(x, z) - log q(z | x) [k, B] for a Bernoulli VAE at z = mean + sigma * eps [k, B, D], with scipy's
    normal densities and numpy's Bernoulli log-likelihood (float64); the networks are the model's."""
    from scipy.stats import norm

    mean, log_var = (t.numpy().astype(np.float64) for t in model.encode(x))
    z = mean + np.exp(0.5 * log_var) * eps
    logits = model.decode_logits(z.reshape(-1, z.shape[-1]).astype(np.float32)).numpy().astype(np.float64)
    logits = logits.reshape(len(eps), len(x), -1)
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    log_px_z = (x * logits - np.logaddexp(0.0, logits)).sum(axis=-1)
    return (log_px_z + norm.logpdf(z).sum(axis=-1)
            - norm.logpdf(z, loc=mean, scale=np.exp(0.5 * log_var)).sum(axis=-1))


def test_iw_nll_and_elbo_match_numpy_importance_sampling(vae, mnist_binary, rng, monkeypatch):
    """importance_weighted_nll with known noise: -log mean_k exp(log w) (scipy's logsumexp) and mean_k log w per
    image, across batches (5 images) and sample chunks (3 + 3 + 1 of k = 7)."""
    from scipy.special import logsumexp

    x, k = mnist_binary[:8], 7
    eps = rng.standard_normal((k, len(x), vae.latent_dim)).astype(np.float32)
    cursor, seeds = {"image": 0, "sample": 0}, []

    def known_normal(shape, seed, **kwargs):  # hands out eps in the order the batches and chunks ask for it
        s, b, _ = (int(v) for v in shape)
        out = eps[cursor["sample"]:cursor["sample"] + s, cursor["image"]:cursor["image"] + b]
        cursor["sample"] += s
        if cursor["sample"] == k:
            cursor["image"], cursor["sample"] = cursor["image"] + b, 0
        seeds.append(tuple(int(v) for v in seed))
        return tf.constant(out)

    monkeypatch.setattr(tf.random, "stateless_normal", known_normal)
    nll, elbo = ev.importance_weighted_nll(vae, x, k=k, batch_size=5, samples_per_chunk=3, progress=False)
    assert cursor == {"image": 8, "sample": 0} and len(seeds) == 6 and len(set(seeds)) == 6  # no draw reused
    log_w = _numpy_log_weights(vae, x, eps.astype(np.float64))
    np.testing.assert_allclose(nll, -(logsumexp(log_w, axis=0) - np.log(k)), rtol=1e-5)
    np.testing.assert_allclose(elbo, log_w.mean(axis=0), rtol=1e-5)


def test_iw_nll_is_tighter_than_the_elbo_and_agrees_with_the_model_bound(vae, mnist_binary):
    x = mnist_binary[:64]
    nll, elbo = ev.importance_weighted_nll(vae, x, k=200, batch_size=16, samples_per_chunk=64, progress=False)
    assert (nll <= -elbo + 1e-9).all()  # log-mean-exp >= mean (Jensen), example by example
    reference = -vae.importance_weighted_bound(x, 200).numpy()  # the model's own bound, other draws
    assert abs(nll.mean() - reference.mean()) < 0.5
    again, _ = ev.importance_weighted_nll(vae, x, k=200, batch_size=16, samples_per_chunk=64, progress=False)
    np.testing.assert_array_equal(nll, again)  # seeded draws: reproducible


def test_evaluation_batches_keep_the_decoder_within_its_memory_budget():
    """The MLP keeps the published protocol's 100 images x 500 samples; a residual 32x32x3 decoder (which
    ran out of 24 GB at that size) gets as many images per call as fit the 2 GiB budget with 500 samples
    each (~2 MB of activations per sample); small k takes all samples in one chunk."""
    assert ev.evaluation_batches(kerasae.build("vae-mlp"), 5000) == (100, 500)
    resnet = kerasae.build("vae-resnet-32")
    per_image = 4 * sum(int(np.prod(layer.output.shape[1:])) for layer in resnet.decoder.layers)
    batch, chunk = ev.evaluation_batches(resnet, 5000)
    assert chunk == 500 and batch * chunk * per_image <= ev.DECODER_MEMORY_BYTES < (batch + 1) * chunk * per_image
    assert ev.evaluation_batches(resnet, 20)[1] == 20 and ev.evaluation_batches(resnet, 5000, budget=1)[0] == 1


def test_an_interrupted_evaluation_resumes_from_its_checkpoint(vae, mnist_binary, tmp_path, monkeypatch):
    """Killed after two of four batches, the rerun computes only the last two, and the result is bit for bit an
    uninterrupted run's; the checkpoint is gone at the end."""
    x, checkpoint = mnist_binary[:32], tmp_path / "eval.partial.npz"
    want = ev.importance_weighted_nll(vae, x, k=6, batch_size=8, samples_per_chunk=4, progress=False)
    monkeypatch.setattr(ev, "CHECKPOINT_SECONDS", 0)  # save after every batch
    make = ev._log_weights_fn
    calls = []

    def counted(model, fail_at=None):
        fn = make(model)

        def log_weights(xb, eps):
            calls.append(len(xb))
            if len(calls) == fail_at:
                raise KeyboardInterrupt
            return fn(xb, eps)
        return log_weights

    monkeypatch.setattr(ev, "_log_weights_fn", lambda model: counted(model, fail_at=5))  # 2 chunks per batch
    with pytest.raises(KeyboardInterrupt):
        ev.importance_weighted_nll(vae, x, k=6, batch_size=8, samples_per_chunk=4, progress=False,
                                   checkpoint=checkpoint)
    assert int(np.load(checkpoint)["done"]) == 16 and float(np.load(checkpoint)["seconds"]) > 0
    calls.clear()
    monkeypatch.setattr(ev, "_log_weights_fn", counted)
    got = ev.importance_weighted_nll(vae, x, k=6, batch_size=8, samples_per_chunk=4, progress=False,
                                     checkpoint=checkpoint)
    assert calls == [8] * 4 and not checkpoint.exists()  # batches 3 and 4, two chunks each
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_a_checkpoint_that_ends_inside_a_batch_redoes_that_batch(vae, mnist_binary, tmp_path):
    """A checkpoint written with another batch size (12 images done, batches of 8): the batch it only partly
    covers is computed again, not skipped with four images never computed."""
    x, checkpoint = mnist_binary[:32], tmp_path / "eval.partial.npz"
    want = ev.importance_weighted_nll(vae, x, k=6, batch_size=8, progress=False)
    np.savez(checkpoint, done=12, nll=want[0][:12], elbo=want[1][:12], seconds=5.0)
    got = ev.importance_weighted_nll(vae, x, k=6, batch_size=8, progress=False, checkpoint=checkpoint)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_a_resumed_evaluation_counts_the_time_of_its_finished_batches(vae, mnist_binary, tmp_path):
    """evaluation_time_s of a resumed evaluate_vae adds the seconds its checkpoint recorded for the finished
    batches (here 1000 s before any image was done) to this call's."""
    x, checkpoint = mnist_binary[:16], tmp_path / "eval.partial.npz"
    fresh = ev.evaluate_vae(vae, x, k=4, progress=False)
    np.savez(checkpoint, done=0, nll=np.empty(0), elbo=np.empty(0), seconds=1000.0)
    resumed = ev.evaluate_vae(vae, x, k=4, progress=False, checkpoint=checkpoint)
    assert 1000 <= resumed["evaluation_time_s"] < 1000 + 60 + 10 * fresh["evaluation_time_s"]
    assert resumed["nll"] == fresh["nll"] and not checkpoint.exists()


def test_vae_evaluation_cache_is_keyed_by_weights_images_and_k(vae, mnist_binary, tmp_path, monkeypatch):
    cache, x = tmp_path / "cache.json", mnist_binary[:16]
    first = ev.evaluate_vae(vae, x, k=8, progress=False, cache=cache)
    assert first["k"] == 8 and first["evaluation_time_s"] >= 0
    calls = []
    compute = ev.importance_weighted_nll
    monkeypatch.setattr(ev, "importance_weighted_nll", lambda *a, **kw: calls.append(1) or compute(*a, **kw))
    assert ev.evaluate_vae(vae, x, k=8, progress=False, cache=cache) == json.loads(json.dumps(first))
    assert calls == []  # served from the cache
    ev.evaluate_vae(vae, x, k=9, progress=False, cache=cache)  # another k
    ev.evaluate_vae(vae, mnist_binary[16:32], k=8, progress=False, cache=cache)  # other images
    other = kerasae.build("vae-mlp", hidden_units=[32], latent_dim=4, seed=1)  # other weights
    ev.evaluate_vae(other, x, k=8, progress=False, cache=cache)
    assert len(calls) == 3 and len(json.loads(cache.read_text())) == 4


class _KnownPosterior:
    """A stand-in model whose q(z|x) parameters are linear in x: mean = x A, log_var = x B (numpy-checkable)."""

    prior_type = "standard"

    def __init__(self, a, b):
        self.a, self.b = a, b

    def encode(self, x):
        return tf.constant(x @ self.a), tf.constant(x @ self.b)

    def kl_divergence(self, mean, log_var):
        return kerasae.losses.kl_to_standard_normal(mean, log_var)


def test_active_units_and_kl_per_dimension_known_posterior(rng):
    x = rng.standard_normal((300, 4))
    # Cov_x of the posterior mean per unit: ~0, 0.05^2, 0.2^2 and 1 (threshold 0.01): 2 active units
    model = _KnownPosterior(np.diag([0.0, 0.05, 0.2, 1.0]), rng.normal(scale=0.3, size=(4, 4)))
    stats = ev.posterior_statistics(model, x, batch_size=64)
    mean, log_var = x @ model.a, x @ model.b
    np.testing.assert_allclose(stats["activity_per_dim"], np.var(mean, axis=0), atol=1e-5)
    assert stats["active_units"] == 2 and stats["active_unit_threshold"] == 0.01
    kl_per_dim = np.mean(0.5 * (mean**2 + np.exp(log_var) - 1 - log_var), axis=0)  # KL(N(m, v) || N(0, 1))
    np.testing.assert_allclose(stats["kl_per_dim"], kl_per_dim, atol=1e-5)
    assert stats["kl"] == pytest.approx(kl_per_dim.sum(), rel=1e-6)


def test_a_vae_without_active_units(vae, mnist_binary):
    dead = kerasae.build("vae-mlp", hidden_units=[32], latent_dim=4, seed=0)
    kernel, bias = dead.encoder.get_layer("enc_out").get_weights()
    kernel[:, :4] = 0.0  # the posterior mean no longer depends on x: every unit inactive
    dead.encoder.get_layer("enc_out").set_weights([kernel, bias])
    assert ev.posterior_statistics(dead, mnist_binary)["active_units"] == 0


class _KnownDenoiser:
    """A stand-in model whose reconstruction is a known function of its input: 0.5 x + 0.2."""

    def reconstruct(self, x):
        return 0.5 * np.asarray(x) + 0.2


def test_denoising_psnrs_are_against_the_clean_images(mnist_small, rng, monkeypatch):
    """evaluate_denoising with the noise fixed to a known array: PSNR/MSE of the noisy images and of the
    reconstructions of the noisy images, each against the CLEAN images (numpy; against the noisy ones the
    denoised PSNR would differ by > 1 dB here)."""
    x = mnist_small.x_test[:16]
    np.testing.assert_array_equal(ev.corrupt(x, "masking", 0.5, seed=3), ev.corrupt(x, "masking", 0.5, seed=3))
    normal, uniform = rng.standard_normal(x.shape), rng.random(x.shape)
    monkeypatch.setattr(ev, "draw_rows", lambda kind, shape, seed, first: tf.constant(
        {"normal": normal, "uniform": uniform}[kind][first:first + shape[0]], tf.float32))
    noisy = {("gaussian", 0.5): np.clip(x + 0.5 * normal, 0.0, 1.0), ("masking", 0.3): np.where(uniform < 0.3, 0.0, x)}
    rows = ev.evaluate_denoising(_KnownDenoiser(), x, noises=list(noisy), batch_size=5)  # rows 5.. drawn from 5 on
    assert [(r["noise"], r["level"]) for r in rows] == list(noisy)

    def psnr(a, b):
        return np.mean([10 * np.log10(1.0 / np.mean((ai - bi) ** 2)) for ai, bi in zip(a, b)])

    for row, corrupted in zip(rows, noisy.values()):
        denoised = 0.5 * corrupted + 0.2
        expected = {"psnr_noisy_db": psnr(x, corrupted), "psnr_denoised_db": psnr(x, denoised),
                    "mse_noisy": np.mean((x - corrupted) ** 2), "mse_denoised": np.mean((x - denoised) ** 2)}
        expected["gain_db"] = expected["psnr_denoised_db"] - expected["psnr_noisy_db"]
        for key, value in expected.items():
            assert row[key] == pytest.approx(value, rel=1e-5), (row, key, value)
        assert abs(psnr(corrupted, denoised) - expected["psnr_denoised_db"]) > 1.0  # the test tells them apart


def test_evaluate_autoencoder_scores_the_reconstruction_against_the_images(mnist_small):
    x = mnist_small.x_test[:16]
    result = ev.evaluate_autoencoder(_KnownDenoiser(), x)
    x_hat = 0.5 * x.astype(np.float64) + 0.2
    assert result["mse_per_pixel"] == pytest.approx(np.mean((x - x_hat) ** 2), rel=1e-6)
    bce = -(x * np.log(x_hat) + (1 - x) * np.log(1 - x_hat)).sum(axis=(1, 2, 3)).mean()
    assert result["bce_per_image"] == pytest.approx(bce, rel=1e-6)


def test_vae_evaluation_scores_the_binarized_test_images(vae, mnist_small):
    """evaluate_vae binarizes grayscale test images once (TEST_BINARIZATION_SEED) and scores everything on them."""
    from kerasae.data import TEST_BINARIZATION_SEED, binarize

    grey = mnist_small.x_test[:32]
    binary = binarize(grey, seed=TEST_BINARIZATION_SEED)
    result = ev.evaluate_vae(vae, grey, k=2, progress=False)
    expected = ev.reconstruction_metrics(binary, vae.reconstruct(binary).numpy())
    for key, value in expected.items():
        assert result["reconstruction"][key] == pytest.approx(value, rel=1e-6), key
    mean, log_var = (t.numpy().astype(np.float64) for t in vae.encode(binary))
    kl = 0.5 * (mean**2 + np.exp(log_var) - 1 - log_var).sum(axis=1).mean()
    assert result["kl"] == pytest.approx(kl, rel=1e-5) and result["num_images"] == 32


def test_pca_baseline_matches_numpy_svd(rng):
    """PCA fitted on the training images: test reconstructions and explained variance from numpy's SVD."""
    basis = rng.normal(size=(3, 16))
    x_train = np.clip(0.5 + 0.1 * rng.normal(size=(200, 3)) @ basis + 0.01 * rng.normal(size=(200, 16)), 0, 1)
    x_test = np.clip(0.5 + 0.1 * rng.normal(size=(50, 3)) @ basis[::-1] + 0.01 * rng.normal(size=(50, 16)), 0, 1)
    x_train, x_test = x_train.reshape(200, 4, 4, 1), x_test.reshape(50, 4, 4, 1)
    full, _, _ = ev.pca_baseline(x_train, x_test, 16)
    assert full["metrics"]["mse_per_pixel"] < 1e-10 and full["explained_variance"] == pytest.approx(1.0)
    result, z_train, z_test = ev.pca_baseline(x_train, x_test, 2)
    flat_train, flat_test = x_train.reshape(200, -1), x_test.reshape(50, -1)
    center = flat_train.mean(axis=0)
    _, singular, vt = np.linalg.svd(flat_train - center, full_matrices=False)
    components = vt[:2]
    expected_test = (flat_test - center) @ components.T
    x_hat = np.clip(expected_test @ components + center, 0, 1).reshape(x_test.shape)
    for key, value in ev.reconstruction_metrics(x_test, x_hat).items():
        assert result["metrics"][key] == pytest.approx(value, rel=1e-6), key
    assert result["explained_variance"] == pytest.approx((singular[:2] ** 2).sum() / (singular**2).sum(), rel=1e-6)
    signs = np.sign(np.sum(z_test * expected_test, axis=0))  # a component's sign is arbitrary
    np.testing.assert_allclose(z_test * signs, expected_test, atol=1e-8)
    np.testing.assert_allclose(z_train * signs, (flat_train - center) @ components.T, atol=1e-8)


def test_knn_accuracy_hand_computed():
    """5-NN fitted on the training codes, scored on the test codes (1-D codes, majorities by hand)."""
    z_train = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 10.0, 10.1, 10.2, 10.3, 10.4, 10.5])[:, None]
    y_train = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    z_test = np.array([0.25, 10.25, 0.05, 10.45, 5.0, 4.0])[:, None]
    # predictions: 0, 1, 0, 1, then 5.0 and 4.0 -> 0 (their 5 nearest: 0.5 .. 0.1, 4.5-4.9 and 3.5-3.9 away;
    # 10.0 is 5.0 and 6.0 away). True labels 0, 1, 1, 1, 1, 0: right 1st, 2nd, 4th and 6th.
    y_test = np.array([0, 1, 1, 1, 1, 0])
    assert ev.knn_accuracy(z_train, y_train, z_test, y_test) == pytest.approx(4 / 6)


def test_knn_accuracy_matches_numpy_brute_force(rng):
    y_train, y_test = rng.integers(0, 3, 300), rng.integers(0, 3, 100)
    z_train = rng.normal(size=(300, 2)) + 1.5 * y_train[:, None]
    z_test = rng.normal(size=(100, 2)) + 1.5 * y_test[:, None]
    distances = ((z_test[:, None, :] - z_train[None, :, :]) ** 2).sum(axis=-1)
    votes = y_train[np.argsort(distances, axis=1)[:, :5]]
    predicted = np.array([np.bincount(v, minlength=3).argmax() for v in votes])  # ties: the smaller label
    assert ev.knn_accuracy(z_train, y_train, z_test, y_test) == pytest.approx(np.mean(predicted == y_test))


def test_mmd_separates_the_prior_from_other_codes(rng):
    prior = ev.mmd_to_prior(rng.standard_normal((500, 8)), num=500)
    shifted = ev.mmd_to_prior(rng.standard_normal((500, 8)) + 2.0, num=500)
    assert abs(prior["mmd2"]) < 5 * abs(prior["mmd2_prior_vs_prior"]) + 1e-3
    assert shifted["mmd2"] > 50 * abs(prior["mmd2"]) and shifted["code_mean_norm"] > 4
    with np.errstate(all="raise"):  # one code has no pair: no statistic (not a NaN, nor a warning)
        one = ev.mmd_to_prior(rng.standard_normal((1, 8)))
    assert one["mmd2"] is None and one["mmd2_prior_vs_prior"] is None and one["num"] == 1
    two = ev.mmd_to_prior(rng.standard_normal((2, 8)))
    assert np.isfinite(two["mmd2"]) and np.isfinite(two["mmd2_prior_vs_prior"])
    from kerasae.cli.evaluate import _rows  # `kerasae evaluate`'s table says why there is no number

    assert _rows({"prior_match": one}) == [("MMD² codes vs N(0, I)", "-", "(needs 2 or more test images, got 1)")]


def test_rate_distortion_rows(mnist_small):
    x_train, x_test = mnist_small.x_train, mnist_small.x_test[:32]
    png = compression.codec_rate_distortion(x_test, "PNG", optimize=True)
    assert png["psnr_db"] == 100.0  # lossless (MNIST is 8-bit), capped for JSON
    low, high = (compression.codec_rate_distortion(x_test, "JPEG", quality=q) for q in (10, 90))
    assert high["bytes_per_image"] > low["bytes_per_image"] and high["psnr_db"] > low["psnr_db"]
    ae = kerasae.build("ae-shallow", latent_dim=8, seed=0)
    row = compression.quantized_code_rate_distortion(ae, x_train, x_test)
    assert row["bytes_per_image"] == 8 and row["decoder_bytes"] == (8 * 784 + 784) * 4
    assert abs(row["psnr_db"] - row["psnr_unquantized_db"]) < 1.0


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("evalrun") / "dae"
    kerasae.train(preset="dae-mlp", model_kwargs={"hidden_units": [32], "latent_dim": 4}, out=str(out), epochs=1,
                  batch_size=64, max_train_samples=500, max_test_samples=100, verbose=0)
    return out


def test_evaluate_cli(tiny_run, tmp_path):
    proc = run_script("evaluate.py", tiny_run, "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tiny_run / "evaluation.json").read_text())
    assert result["family"] == "dae" and result["num_test"] == 100
    assert {"reconstruction", "pca_same_code_size", "denoising", "prior_match"} <= set(result)
    bad = run_script("evaluate.py", tmp_path, cwd=tmp_path)
    assert bad.returncode == 2 and "not a finished kerasae run" in bad.stderr
    bad = run_script("evaluate.py", tiny_run, "--k", "0", cwd=tmp_path)
    assert bad.returncode == 2 and "--k" in bad.stderr


def test_run_data_is_the_runs_split(tiny_run, mnist_small):
    """evaluate's view of a run: its test images, and its training images without the validation ones (500
    training images hold out 500 // 10 = 50, the last ones), as the PCA baseline and the kNN codes need."""
    data, x_train = ev.run_data(tiny_run)
    assert len(data.x_test) == 100 and len(x_train) == 450
    np.testing.assert_array_equal(data.x_test[:64], mnist_small.x_test)
    np.testing.assert_array_equal(x_train[:256], mnist_small.x_train)
    np.testing.assert_array_equal(x_train, data.x_train[:450])


@pytest.mark.slow
def test_reproduce_quick_end_to_end_and_the_zoo(tmp_path, capsys):
    """The whole reproduce path in quick mode: runs, results JSON, figures, zoo export, load_pretrained."""
    root = tmp_path / "root"
    proc = run_script("reproduce.py", "--quick", "--export-zoo", "--stages", "seed,nll,resnet-nll,hvae-nll,vq",
                      "--root", root, "--verbose", "0", cwd=tmp_path, timeout=900)  # the other stages: test_reproduce_images
    assert proc.returncode == 0, proc.stderr[-3000:]
    results, figures = root / "quick" / "results", root / "quick" / "figures"
    seed = json.loads((results / "seed_claims.json").read_text())
    nll = json.loads((results / "nll.json").read_text())
    assert seed["mode"] == "quick" and set(seed["knn_2d"]["accuracy"]) == {"PCA", "AE (ae-mlp-seed)",
                                                                          "VAE (vae-mlp-2d)"}
    for run in seed["runs"].values():
        assert run["epochs"] == 2 and run["training_time_s"] > 0 and run["versions"]["tensorflow"]
    assert set(nll["runs"]) == {"vae-nll", "iwae-nll"}
    for run in nll["runs"].values():
        assert np.isfinite(run["test"]["nll"]) and run["test"]["nll"] <= -run["test"]["elbo"]
    iwae, vae = nll["runs"]["iwae-nll"], nll["runs"]["vae-nll"]  # iwae-nll fine-tunes vae-nll's best model
    assert iwae["train_config"]["init_from"] == str(root / "quick" / "vae-nll" / "best.keras")
    assert iwae["model_config"]["num_importance_samples"] == 5 and vae["model_config"]["num_importance_samples"] == 1
    assert iwae["init_from"]["run_dir"] == vae["run_dir"] and iwae["total_epochs"] == 4
    assert iwae["total_training_time_s"] == pytest.approx(vae["training_time_s"] + iwae["training_time_s"], abs=0.2)
    resnet = json.loads((results / "nll_resnet.json").read_text())["runs"]["vae-resnet-nll"]
    assert resnet["preset"] == "vae-resnet-28" and resnet["target_nll"] == 84.85 and resnet["epochs"] == 2
    assert resnet["test"]["nll"] <= -resnet["test"]["elbo"] and resnet["meets_target"] is False  # 2 quick epochs
    hvae = json.loads((results / "nll_hvae.json").read_text())["runs"]
    assert set(hvae) == {"hvae-nll", "hvae-iwae-nll"} and hvae["hvae-iwae-nll"]["target_nll"] == 82.5
    assert hvae["hvae-iwae-nll"]["init_from"]["run_dir"] == hvae["hvae-nll"]["run_dir"]
    assert hvae["hvae-iwae-nll"]["model_config"]["latent_dims"] == [40, 40]
    assert all(r["test"]["nll"] <= -r["test"]["elbo"] for r in hvae.values())
    vq = json.loads((results / "vq_compression.json").read_text())
    rows = {r["method"]: r for r in vq["rows"]}
    assert {name: rows[f"{name} (VQ codes)"]["bytes_per_image"] for name in vq["runs"]} == {
        "vqvae-mlp-8": 8.0, "vqvae-mlp-32": 32.0, "vqvae-conv": 49 * 9 / 8}
    ae_rows = [r for r in seed["compression"] if r["method"].endswith("(8-bit code)")]
    assert ae_rows and all({**r, "from": "seed_claims.json"} in vq["rows"] for r in ae_rows)  # the seed stage's
    assert "PNG" in rows and "JPEG q=50" in rows
    for name in ("latent_2d", "denoising", "samples_ae_vs_vae", "interpolation", "vae_manifold",
                 "reconstructions", "rate_distortion", "nll_learning_curves", "nll_resnet_learning_curves",
                 "nll_hvae_learning_curves", "rate_distortion_vq"):
        assert (figures / f"{name}.png").stat().st_size > 1000, name
    assert "AE vs PCA" in proc.stdout and "MNIST test NLL" in proc.stdout and "VQ-VAE codes" in proc.stdout

    zoo_dir = root / "quick" / "exported"
    assert sorted(p.name for p in zoo_dir.iterdir()) == sorted(zoo.ZOO)
    assert sorted(p.name for p in (zoo_dir / "iwae_mlp_50d_mnist" / "tflite").glob("*.tflite")) == ["decode.fp32.tflite",
                                                                                       "decode.int8.tflite"]
    model = zoo.load_pretrained("iwae_mlp_50d_mnist", zoo_dir=zoo_dir)
    assert model.metrics["test"]["nll"] == min(r["test"]["nll"] for r in nll["runs"].values())
    assert model.card["headline"]["value"] == round(model.metrics["test"]["nll"], 2)
    assert model.decode(np.zeros((2, 50), np.float32)).shape == (2, 28, 28, 1)

    table = zoo.zoo_table(zoo_dir)
    assert f"NLL {model.metrics['test']['nll']:.2f} nats" in table and all(f"`{n}`" in table for n in zoo.ZOO)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{zoo.TABLE_BEGIN}\nold\n{zoo.TABLE_END}\noutro\n")
    zoo.update_readme_table(readme, table)
    assert readme.read_text() == f"intro\n{zoo.TABLE_BEGIN}\n{table}\n{zoo.TABLE_END}\noutro\n"

    # A rerun reuses every finished run and keeps a zoo model whose metric did not improve. In this process: the
    # command line in a fresh one is what ran above, and a second start of TensorFlow would test nothing new.
    from kerasae.cli.reproduce import reproduce_main

    before = {p: p.stat().st_mtime for p in root.rglob("model.keras")}
    capsys.readouterr()
    assert reproduce_main(["--quick", "--export-zoo", "--root", str(root), "--stages", "seed", "--verbose", "0"]) == 0
    assert {p: p.stat().st_mtime for p in root.rglob("model.keras")} == before
    assert "kept" in capsys.readouterr().out

    # A changed byte is caught before anything loads.
    variables = next((zoo_dir / "ae_mlp_2d_mnist").glob("*/variables/variables.data-*"))
    data = bytearray(variables.read_bytes())
    data[-1] ^= 0xFF
    variables.write_bytes(bytes(data))
    with pytest.raises(Exception, match="sha256 mismatch"):
        zoo.load_pretrained("ae_mlp_2d_mnist", zoo_dir=zoo_dir)
    with pytest.raises(ValueError, match="available: .*dae_mlp_64d_mnist"):
        zoo.load_pretrained("nope", zoo_dir=zoo_dir)
    shutil.rmtree(zoo_dir)


def test_the_shipped_zoo_is_intact_and_matches_the_published_results():
    """exported/: every zoo model verifies (sha256, SavedModel and TFLite load), fits the MAX_ZOO_BYTES budget and
    carries the metrics of benchmarks/results; load_pretrained decodes images with it."""
    zoo_dir, results = REPO / "exported", REPO / "benchmarks" / "results"
    assert sum(p.stat().st_size for p in zoo_dir.rglob("*") if p.is_file()) <= zoo.MAX_ZOO_BYTES
    for name in zoo.ZOO:
        assert export.verify(zoo_dir / name) == [], name
        _, metrics, value = zoo.zoo_metrics(name, results)
        assert zoo.load_pretrained(name, zoo_dir=zoo_dir).metrics["test"] == json.loads(json.dumps(metrics["test"]))
    vae = zoo.load_pretrained("iwae_mlp_50d_mnist", zoo_dir=zoo_dir)
    x = vae.decode(np.zeros((3, vae.manifest["latent_dim"]), np.float32)).numpy()
    assert x.shape == (3, 28, 28, 1) and 0.0 <= x.min() and x.max() <= 1.0
    readme = (zoo_dir / "README.md").read_text()
    assert zoo.zoo_table(zoo_dir) in readme
    example = next(b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "load_pretrained" in b)
    proc = subprocess.run([sys.executable, "-c", example], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "'nll': " in proc.stdout, proc.stderr[-3000:]
