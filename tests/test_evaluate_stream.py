"""Evaluation of a streamed test split, a batch at a time (kerasae.running, kerasae.evaluate): the same numbers
as the split decoded into memory, checked against numpy and against the in-memory evaluation.

Tolerance: on the same images and batch sizes the streamed NLL and ELBO came out equal to the last bit; a change
of encoder batch size (1000 -> 7 images) moved the mean KL by 5e-9 nats of 3.7 (float32 matmuls), so rtol=1e-6.
"""

import json

import numpy as np
import pytest
import tensorflow as tf

import kerasae
from kerasae import data as data_lib
from kerasae import evaluate as ev
from kerasae.running import RunningMoments, TestImages

RTOL = 1e-6


@pytest.fixture(scope="module")
def folder(tmp_path_factory, mnist_small):
    """MNIST digits as 28x28 grey PNGs: train/ (40) and test/ (45), in two class folders each."""
    from PIL import Image

    root = tmp_path_factory.mktemp("evalstream") / "digits"
    for split, xs in (("train", mnist_small.x_train[:40]), ("test", mnist_small.x_test[:45])):
        for i, x in enumerate(xs):
            d = root / split / ("odd" if i % 2 else "even")
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray((x[..., 0] * 255).round().astype(np.uint8)).save(d / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def streamed(folder):
    """(the folder's StreamedData, the same data decoded into memory)."""
    data = data_lib.open_dataset(f"images:{folder}", image_size=(28, 28), color_mode="grayscale", mode="stream",
                                 log=lambda *a: None)
    return data, data.to_memory()


@pytest.fixture(scope="module")
def vae():
    return kerasae.build("vae-mlp", hidden_units=[32], latent_dim=4, seed=0)


def test_running_moments_equal_numpy_var(rng):
    """Chan's batch update against numpy's two-pass var (float64) on uneven batches, columns with a large mean and
    small spread (where summing x and x^2 cancels)."""
    rows = 1e6 + rng.standard_normal((1000, 4)) * np.array([1e-3, 0.1, 1.0, 30.0])
    moments = RunningMoments()
    for lo, hi in ((0, 1), (1, 8), (8, 308), (308, 1000)):
        moments.add(rows[lo:hi])
    assert moments.count == 1000
    np.testing.assert_allclose(moments.mean, rows.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(moments.variance, rows.var(axis=0), rtol=1e-6)
    with pytest.raises(ValueError, match="no rows"):
        RunningMoments().variance


def test_binarized_batches_equal_binarizing_the_whole_split(mnist_small):
    """The fixed test binarization drawn batch by batch (and from an image on, as a resumed evaluation reads it)
    gives data.binarize's pixels for the whole split."""
    x = mnist_small.x_test
    whole = data_lib.binarize(x, seed=data_lib.TEST_BINARIZATION_SEED)
    images = TestImages(x).binarized()
    np.testing.assert_array_equal(np.concatenate([b for _, b, _ in images.batches(7)]), whole)
    tail = list(images.batches(10, first=20))
    assert [start for start, _, _ in tail] == [20, 30, 40, 50, 60]
    np.testing.assert_array_equal(np.concatenate([b for _, b, _ in tail]), whole[20:])


def test_a_streamed_split_evaluates_as_in_memory(vae, streamed):
    """evaluate_vae on the streamed test split: every number equals the in-memory evaluation of the same images,
    and the evaluation cache key is the same (a cached in-memory result serves the streamed one)."""
    data, memory = streamed
    want = ev.evaluate_vae(vae, memory.x_test, k=16, progress=False)
    got = ev.evaluate_vae(vae, TestImages(data.test), k=16, progress=False)
    assert got["num_images"] == want["num_images"] == 45
    for key in ("nll", "nll_stderr", "elbo", "kl", "active_units"):
        assert got[key] == pytest.approx(want[key], rel=RTOL), key
    np.testing.assert_allclose(got["activity_per_dim"], want["activity_per_dim"], rtol=RTOL)
    np.testing.assert_allclose(got["kl_per_dim"], want["kl_per_dim"], rtol=RTOL)
    for key, value in want["reconstruction"].items():
        assert got["reconstruction"][key] == pytest.approx(value, rel=RTOL), key
    assert ev._cache_key(vae, 16, 0, TestImages(data.test), None) == ev._cache_key(vae, 16, 0, memory.x_test, None)


def test_batch_by_batch_statistics_against_numpy(vae, streamed):
    """Small batches (8 and 7 images, so several per split): IWAE bound as the in-memory call with the same
    batches; activity = numpy's var of the posterior means, KL per dimension and reconstruction metrics from the
    whole split at once."""
    data, memory = streamed
    x = data_lib.binarize(memory.x_test, seed=data_lib.TEST_BINARIZATION_SEED)
    images = TestImages(data.test).binarized()
    want = ev.importance_weighted_nll(vae, x, k=8, batch_size=8, progress=False)
    got = ev.importance_weighted_nll(vae, images, k=8, batch_size=8, progress=False)
    np.testing.assert_allclose(got[0], want[0], rtol=RTOL)
    np.testing.assert_allclose(got[1], want[1], rtol=RTOL)

    stats = ev.posterior_statistics(vae, images, batch_size=7)
    mean, log_var = (t.numpy().astype(np.float64) for t in vae.encode(x))
    np.testing.assert_allclose(stats["activity_per_dim"], mean.var(axis=0), atol=1e-5)
    kl = 0.5 * (mean**2 + np.exp(log_var) - 1 - log_var)
    np.testing.assert_allclose(stats["kl_per_dim"], kl.mean(axis=0), atol=1e-5)
    assert stats["kl"] == pytest.approx(kl.sum(axis=1).mean(), rel=1e-5)

    x_hat = vae.reconstruct(x).numpy().astype(np.float64)
    metrics = ev.reconstruction_metrics_of(vae, images, batch_size=8)
    mse = ((x - x_hat) ** 2).reshape(len(x), -1).mean(axis=1)
    assert metrics["mse_per_pixel"] == pytest.approx(mse.mean(), rel=1e-6)
    assert metrics["psnr_db"] == pytest.approx(np.mean(10 * np.log10(1 / mse)), rel=1e-6)


def test_a_streamed_evaluation_resumes_from_its_checkpoint(vae, streamed, tmp_path, monkeypatch):
    """Killed after two of six batches, the streamed IWAE evaluation resumes at the third batch (reading, and
    drawing the binarization, from image 16 on) and ends with the uninterrupted in-memory result."""
    data, memory = streamed
    x = data_lib.binarize(memory.x_test, seed=data_lib.TEST_BINARIZATION_SEED)
    want = ev.importance_weighted_nll(vae, x, k=6, batch_size=8, progress=False)
    monkeypatch.setattr(ev, "CHECKPOINT_SECONDS", 0)
    make, calls = ev._log_weights_fn, []

    def counted(model, fail_at=None):
        fn = make(model)

        def log_weights(inputs, eps):
            calls.append(len(inputs))
            if len(calls) == fail_at:
                raise KeyboardInterrupt
            return fn(inputs, eps)
        return log_weights

    checkpoint = tmp_path / "eval.partial.npz"
    monkeypatch.setattr(ev, "_log_weights_fn", lambda model: counted(model, fail_at=3))
    with pytest.raises(KeyboardInterrupt):
        ev.importance_weighted_nll(vae, TestImages(data.test).binarized(), k=6, batch_size=8, progress=False,
                                   checkpoint=checkpoint)
    assert int(np.load(checkpoint)["done"]) == 16
    calls.clear()
    monkeypatch.setattr(ev, "_log_weights_fn", counted)
    got = ev.importance_weighted_nll(vae, TestImages(data.test).binarized(), k=6, batch_size=8, progress=False,
                                     checkpoint=checkpoint)
    assert calls == [8, 8, 8, 5] and not checkpoint.exists()
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_a_conditional_model_reads_the_splits_labels(streamed):
    """A CVAE on TestImages(split, labels=True) gets each image's class-folder label, as with the arrays."""
    data, memory = streamed
    cvae = kerasae.build("cvae-mlp", hidden_units=[16], latent_dim=2, num_classes=2, seed=0)
    want = ev.evaluate_vae(cvae, memory.x_test, k=4, progress=False, labels=memory.y_test)
    got = ev.evaluate_vae(cvae, TestImages(data.test, labels=True), k=4, progress=False)
    wrong = ev.evaluate_vae(cvae, memory.x_test, k=4, progress=False, labels=1 - memory.y_test)
    assert got["nll"] == pytest.approx(want["nll"], rel=RTOL)
    assert abs(got["nll"] - wrong["nll"]) > 1e-3  # an untrained decoder's labels move the NLL by ~0.04 nats
    assert got["kl"] == pytest.approx(want["kl"], rel=RTOL)
    with pytest.raises(ValueError, match="labels"):
        ev.evaluate_vae(cvae, TestImages(data.test, labels=True), k=4, progress=False, labels=memory.y_test)


def test_prior_match_and_pca_of_a_stream_equal_the_arrays(vae, streamed):
    """The MMD to the prior samples the same 20 of 45 codes from the stream (batches of 8); the PCA baseline's
    test metrics are summed over batches to the same values."""
    data, memory = streamed
    want = ev.mmd_to_prior(ev.codes(vae, memory.x_test), num=20, seed=3)
    got = ev.prior_match(vae, TestImages(data.test), num=20, seed=3, batch_size=8)
    assert got == pytest.approx(want, rel=RTOL)
    assert ev.prior_match(vae, TestImages(data.test), num=100)["num"] == 45
    want, _, _ = ev.pca_baseline(memory.x_train, memory.x_test, 3)
    got, _, none = ev.pca_baseline(memory.x_train, TestImages(data.test), 3)
    assert none is None and got["explained_variance"] == want["explained_variance"]
    assert got["metrics"] == pytest.approx(want["metrics"], rel=RTOL)


def test_evaluate_run_never_loads_a_streamed_test_split(folder, tmp_path, monkeypatch):
    """A run trained on a streamed folder: evaluate_run reads its test split a batch at a time (decoding all of
    it at once raises here) and reports the in-memory evaluation's numbers."""
    out = tmp_path / "run"
    kerasae.train(preset="vae-mlp", model_kwargs={"hidden_units": [16], "latent_dim": 2}, dataset=f"images:{folder}",
                  image_size=(28, 28), color_mode="grayscale", data_mode="stream", epochs=1, batch_size=16,
                  validation_size=8, out=str(out), verbose=0)
    data, _ = ev.run_data(out)
    model = ev.load_model(out)
    want = ev.evaluate_vae(model, data.x_test, k=4, progress=False)

    def whole(*args, **kwargs):
        raise AssertionError("the whole test split was decoded")

    monkeypatch.setattr(data_lib.StreamedData, "to_memory", whole)
    result = ev.evaluate_run(out, k=4, progress=False)
    assert result["num_test"] == 45 and json.loads((out / "evaluation.json").read_text())["num_test"] == 45
    for key in ("nll", "elbo", "kl"):
        assert result["vae"][key] == pytest.approx(want[key], rel=RTOL), key
    assert result["prior_match"] == pytest.approx(ev.mmd_to_prior(ev.codes(model, data.x_test)), rel=RTOL)
    assert ev.evaluate_run(out, k=4, max_test_samples=10, progress=False)["vae"]["num_images"] == 10


class _Recorded:
    """A model whose methods record how many images (or codes) each call was given."""

    def __init__(self, model, *methods):
        self.model, self.calls = model, []
        for name in methods:
            setattr(self, name, self._recording(getattr(model, name)))

    def _recording(self, method):
        def call(x, *args):
            self.calls.append(len(x))
            return method(x, *args)
        return call

    def __getattr__(self, name):
        return getattr(self.model, name)


@pytest.mark.parametrize("kind", ["normal", "uniform"])
def test_draw_rows_are_rows_of_the_whole_draw(kind):
    """draw_rows(first) gives exactly rows first.. of the whole draw, also where a row of 15 numbers starts
    inside one of Philox's groups of 4 and for another seed and stream."""
    from kerasae.models.base import draw, draw_rows

    for row, seed, stream in (((3, 5, 1), 0, 0), ((3, 5, 1), 123, 5), ((28, 28, 1), 7, 0)):
        whole = draw(kind, [40, *row], seed, stream=stream).numpy()
        for first, n in ((0, 40), (1, 3), (2, 5), (3, 1), (13, 27)):
            got = draw_rows(kind, [n, *row], seed, first, stream=stream).numpy()
            np.testing.assert_array_equal(got, whole[first:first + n], err_msg=f"{row} {seed} {stream} {first}")


def test_streamed_denoising_equals_the_whole_split_corrupted_at_once(streamed):
    """evaluate_denoising on the streamed split in batches of 8: each batch gets its rows of the whole split's
    noise, so every row equals numpy's scores of the split corrupted at once (tf's stateless draw of [45, 28, 28,
    1], the published protocol), as does the in-memory call; the model never sees more than 8 images."""
    from kerasae.models.base import draw
    from kerasae.models.dae import apply_noise

    data, memory = streamed
    x = memory.x_test
    dae = _Recorded(kerasae.build("dae-mlp", hidden_units=[16], latent_dim=4, seed=0), "reconstruct")
    got = ev.evaluate_denoising(dae, TestImages(data.test), batch_size=8)
    assert max(dae.calls) == 8 and sum(dae.calls) == 45 * len(ev.DENOISING_NOISES)
    assert ev.evaluate_denoising(dae, TestImages(data.test), batch_size=8) == got  # deterministic
    memory_rows = ev.evaluate_denoising(dae.model, x)
    assert [(r["noise"], r["level"]) for r in got] == list(ev.DENOISING_NOISES)
    x64 = x.reshape(len(x), -1).astype(np.float64)
    for row, memory_row, (noise, level) in zip(got, memory_rows, ev.DENOISING_NOISES):
        noisy = apply_noise(tf.constant(x), noise, level, lambda kind, shape: draw(kind, shape, 0)).numpy()
        denoised = dae.model.reconstruct(noisy).numpy()
        psnr_noisy = np.mean(-10 * np.log10(((noisy.reshape(len(x), -1) - x64) ** 2).mean(axis=1)))
        psnr_denoised = np.mean(-10 * np.log10(((denoised.reshape(len(x), -1) - x64) ** 2).mean(axis=1)))
        want = {"psnr_noisy_db": psnr_noisy, "psnr_denoised_db": psnr_denoised, "gain_db": psnr_denoised - psnr_noisy,
                "mse_noisy": np.mean((noisy - x64.reshape(x.shape)) ** 2),
                "mse_denoised": np.mean((denoised - x64.reshape(x.shape)) ** 2)}
        assert set(row) == set(want) | {"noise", "level"}
        for key, value in want.items():
            assert row[key] == pytest.approx(value, rel=RTOL), (noise, level, key)
            assert memory_row[key] == pytest.approx(value, rel=RTOL), (noise, level, key)


def test_streamed_vq_statistics_equal_the_in_memory_ones(streamed):
    """vq_rate_distortion on the streamed split in batches of 8 (the last of 5): the numbers of encoding and
    decoding the whole array at once (numpy), counts exactly; the model never encodes more than 8 images."""
    from kerasae.compression import vq_rate_distortion

    data, memory = streamed
    x = memory.x_test
    model = kerasae.build("vqvae-mlp", hidden_units=[16], num_embeddings=16, embedding_dim=4, num_codes=4, seed=0)
    vq = _Recorded(model, "encode")
    got = vq_rate_distortion(vq, TestImages(data.test), batch_size=8)
    assert vq.calls == [8] * 5 + [5]
    indices = model.encode(x).numpy()
    counts = np.bincount(indices.reshape(-1), minlength=16)
    p = counts[counts > 0] / counts.sum()
    psnr = -10 * np.log10(((model.decode(indices).numpy() - x) ** 2).astype(np.float64).reshape(len(x), -1)
                          .mean(axis=1))
    assert got["codes_used"] == int((counts > 0).sum()) > 1 and got["codebook_size"] == 16 and got["num_codes"] == 4
    assert got["bytes_per_image"] == 2.0 and got["decoder_bytes"] == vq_rate_distortion(model, x)["decoder_bytes"]
    assert got["perplexity"] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=RTOL)
    assert got["psnr_db"] == pytest.approx(np.minimum(psnr, 100.0).mean(), rel=RTOL)
    bits = model.code_length_bits(indices).numpy().astype(np.float64)
    assert got["entropy_coded_bytes_per_image"] == pytest.approx(bits.mean() / 8, rel=RTOL)
    assert vq_rate_distortion(model, x) == pytest.approx(got, rel=RTOL)


@pytest.mark.parametrize("preset, kwargs", [
    ("dae-mlp", {"hidden_units": [16], "latent_dim": 2}),
    ("vqvae-mlp", {"hidden_units": [16], "num_embeddings": 16, "embedding_dim": 4, "num_codes": 4})])
def test_evaluate_run_streams_a_dae_and_a_vqvae(folder, tmp_path, monkeypatch, preset, kwargs):
    """A DAE's denoising scores and a VQ-VAE's code statistics of a streamed run come a batch at a time (decoding
    the whole test split, either way, raises here) and equal the evaluation of the split in memory."""
    from kerasae.compression import vq_rate_distortion

    out = tmp_path / "run"
    kerasae.train(preset=preset, model_kwargs=kwargs, dataset=f"images:{folder}", image_size=(28, 28),
                  color_mode="grayscale", data_mode="stream", epochs=1, batch_size=16, validation_size=8, out=str(out),
                  verbose=0)
    data, _ = ev.run_data(out)
    model = ev.load_model(out)

    def whole(*args, **kwargs):
        raise AssertionError("the whole test split was decoded")

    monkeypatch.setattr(data_lib.StreamedData, "to_memory", whole)
    monkeypatch.setattr(TestImages, "to_array", whole)
    result = ev.evaluate_run(out, progress=False)
    assert result["num_test"] == 45
    if preset == "dae-mlp":
        want = ev.evaluate_denoising(model, data.x_test)
        assert [(r["noise"], r["level"]) for r in result["denoising"]] == [(r["noise"], r["level"]) for r in want]
        for got_row, want_row in zip(result["denoising"], want):
            for key in ("psnr_noisy_db", "psnr_denoised_db", "gain_db", "mse_noisy", "mse_denoised"):
                assert got_row[key] == pytest.approx(want_row[key], rel=RTOL), key
    else:
        assert result["codes"] == pytest.approx(vq_rate_distortion(model, data.x_test), rel=RTOL)
    assert result["reconstruction"] == pytest.approx(ev.evaluate_autoencoder(model, data.x_test), rel=RTOL)


@pytest.mark.parametrize("args", [["--sizes", "100,x"], ["--k", "0"]])
def test_evaluate_memory_benchmark_bad_arguments(args):
    import subprocess
    import sys

    from conftest import REPO

    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "evaluate_memory.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "usage:" in proc.stderr and "error:" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_evaluate_memory_benchmark_quick(tmp_path):
    """benchmarks/evaluate_memory.py --quick: evaluates one run on two streamed test splits in child processes
    and records their peak RSS, the machine's lscpu model and flags, and the ratio against the target."""
    import subprocess
    import sys

    from conftest import REPO

    out = tmp_path / "evaluate_memory.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "evaluate_memory.py"), "--quick", "--out", out,
                           "--cache-dir", tmp_path / "cache"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["quick"] and result["lscpu"]["flags"] is not None
    runs = result["runs"]
    assert [r["test_images"] for r in runs] == [r["streamed"]["num_test"] for r in runs] == [100, 300]
    small, large = (r["streamed"]["peak_rss_bytes"] for r in runs)
    assert small > 50e6 and large > 50e6
    assert result["ratio_largest_to_smallest"] == pytest.approx(large / small, rel=1e-3)
    assert result["met"] == (large <= 1.25 * small)
