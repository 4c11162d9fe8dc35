"""Encoder-side latent optimization (`Coder.compress(image, optimize_steps=N)`): smaller, better files that the
unchanged decoder reads back exactly, never worse than the analysis transform's latents by the model's measure."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from kerasae.codec import Coder, FactorizedPriorCodec, ScaleHyperpriorCodec, api, bitstream, optimize, photos

from conftest import REPO


def file_loss(coder, image, data):
    """The rate-distortion loss of a real file: lmbda * 255^2 * MSE of what decoding gives + its bits per pixel."""
    decoded = coder.decompress(data).astype(np.float64)
    mse = np.mean((decoded - image) ** 2) / 255.0**2
    return coder.model.lmbda * 255.0**2 * mse + 8 * len(data) / (image.shape[0] * image.shape[1])


@pytest.fixture(scope="module")
def chelsea():
    return photos.load("skimage:chelsea")  # 300 x 451: not a multiple of the stride; a test photograph


@pytest.mark.parametrize("quality", [1, 5])
def test_optimized_files_are_smaller_and_better_and_decode_exactly(chelsea, quality):
    """The zoo's codec on a held-out photograph: 20 steps lower the real file's loss (its bytes and decoded pixels;
    measured -2.8% at quality 1, -4.8% at quality 5; without a gain the encoder keeps the analysis transform's
    latents, a change of 0); the unchanged decoder gives the optimizing encoder's reconstruction bit for bit, and the
    streams cost what the tables say."""
    coder = api.load_coder(quality=quality)
    plain = coder.compress(chelsea)
    data = coder.compress(chelsea, optimize_steps=20)
    assert file_loss(coder, chelsea, data) < 0.99 * file_loss(coder, chelsea, plain)
    np.testing.assert_array_equal(coder.decompress(data), coder.reconstruct(chelsea, optimize_steps=20))
    coded = sum(len(s) for tile in bitstream.read(data)[1] for s in tile.streams)
    ideal = coder.information_bits(chelsea, optimize_steps=20) / 8
    assert ideal < coded <= 1.01 * ideal + 64


def model_loss(model, x, y, z):
    """The model's loss of rounded latents (what the optimizer minimizes), float64 in numpy."""
    import tensorflow as tf

    from kerasae.codec.layers import gaussian_likelihood

    y_hat, z_hat = tf.round(y), tf.round(z)
    mse = float(tf.reduce_mean(tf.square(x - model.synthesis(y_hat))))
    if isinstance(model, ScaleHyperpriorCodec):
        nats = -tf.reduce_sum(tf.math.log(gaussian_likelihood(y_hat, model.scales(z_hat))))
        nats -= tf.reduce_sum(tf.math.log(model.hyperprior(z_hat)))
    else:
        nats = -tf.reduce_sum(tf.math.log(model.prior(y_hat)))
    return model.lmbda * 255.0**2 * mse + float(nats) / np.log(2.0) / (x.shape[1] * x.shape[2])


def trained(cls):
    """The zoo's quality-1 hyperprior; or a factorized prior with its trained transforms (and an untrained prior)."""
    model = api.load_coder(quality=1).model
    if cls is ScaleHyperpriorCodec:
        return model
    keras.utils.set_random_seed(0)  # the prior's initial density
    factorized = FactorizedPriorCodec(filters=model.filters, latent_channels=model.latent_channels, lmbda=model.lmbda)
    factorized.analysis.set_weights(model.analysis.get_weights())
    factorized.synthesis.set_weights(model.synthesis.get_weights())
    return factorized


@pytest.mark.parametrize("cls", [FactorizedPriorCodec, ScaleHyperpriorCodec])
def test_never_worse_than_the_analysis_transform(cls, chelsea, monkeypatch):
    """With its own step size the optimizer lowers the model's loss of the rounded latents; steps far too large
    make every iterate worse, and it then returns the analysis transform's latents."""
    model = trained(cls)
    tile = chelsea[:128, :128]
    padded = Coder(model)._pad(tile)
    y0 = model.analysis(padded).numpy()
    z0 = model.hyper_analysis(np.abs(y0)).numpy() if cls is ScaleHyperpriorCodec else y0
    start = model_loss(model, padded, y0, z0)
    # 100 steps, as the benchmark: measured -1.4% (factorized), -3.4% (hyperprior). With 40 steps the shipped
    # hyperprior's quality 1 found no better latents for this tile (its own were kept; another tile: -0.6%).
    y, z = optimize.latent_optimizer(model)(padded, 128, 128, 100)
    assert model_loss(model, padded, y.numpy(), z.numpy()) < start
    monkeypatch.setattr(optimize, "LEARNING_RATE", 1e3)
    y, z = optimize.latent_optimizer(model)(padded, 128, 128, 10)
    np.testing.assert_array_equal(np.round(y.numpy()), np.round(y0))
    np.testing.assert_array_equal(np.round(z.numpy()), np.round(z0))


def test_bad_step_counts_are_refused(chelsea, tmp_path):
    coder = Coder(FactorizedPriorCodec(filters=12, latent_channels=16, seed=1))
    with pytest.raises(ValueError, match="optimize_steps"):
        coder.compress(chelsea, optimize_steps=-1)
    for steps in (2.5, True, "10"):
        with pytest.raises(TypeError, match="optimize_steps"):
            coder.compress(chelsea, optimize_steps=steps)
    Image.fromarray(chelsea).save(tmp_path / "in.png")
    run = subprocess.run([sys.executable, "-m", "kerasae", "compress", tmp_path / "in.png", tmp_path / "out",
                          "--optimize-steps", "-3"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 2 and "--optimize-steps" in run.stderr and not (tmp_path / "out").exists()


def test_the_command_line_optimizes_as_the_api_does(chelsea, tmp_path):
    """`kerasae compress --optimize-steps 5` in a fresh process writes the bytes `kerasae.codec.compress` does."""
    Image.fromarray(chelsea).save(tmp_path / "in.png")
    run = subprocess.run([sys.executable, "-m", "kerasae", "compress", tmp_path / "in.png", tmp_path / "out.kaec",
                          "--quality", "2", "--optimize-steps", "5"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr
    data = (tmp_path / "out.kaec").read_bytes()
    assert data == api.compress(chelsea, quality=2, optimize_steps=5)
    assert data != api.compress(chelsea, quality=2)
