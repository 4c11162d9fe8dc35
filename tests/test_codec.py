"""kerasae.codec: GDN against its definition, the entropy models' bin masses against scipy and the laws of
probability, and the codec models' shapes, training step, config and saving."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.stats import norm

from kerasae.codec import GDN, FactorizedDensity, FactorizedPriorCodec, ScaleHyperpriorCodec, gaussian_likelihood
from kerasae.codec.layers import LIKELIHOOD_BOUND, SCALE_BOUND


@pytest.mark.parametrize("inverse", [False, True])
def test_gdn_matches_its_definition(inverse):
    """y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2) (times, for IGDN), written out element by element."""
    rng = np.random.default_rng(0)
    channels = 4
    layer = GDN(inverse=inverse)
    layer.build((None, 3, 5, channels))
    beta, gamma = rng.uniform(0.5, 2.0, channels), rng.uniform(0.0, 0.5, (channels, channels))
    layer.beta_param.assign(np.sqrt(beta + 2.0**-36))
    layer.gamma_param.assign(np.sqrt(gamma + 2.0**-36))
    x = rng.normal(size=(2, 3, 5, channels))
    want = np.empty_like(x)
    for index in np.ndindex(x.shape[:3]):
        for i in range(channels):
            norm_i = beta[i] + sum(gamma[i, j] * x[index][j] ** 2 for j in range(channels))
            want[index][i] = x[index][i] * (np.sqrt(norm_i) if inverse else 1.0 / np.sqrt(norm_i))
    np.testing.assert_allclose(layer(x.astype(np.float32)).numpy(), want, rtol=2e-5, atol=1e-6)


def test_gdn_keeps_beta_and_gamma_in_range():
    layer = GDN()
    layer.build((None, 1, 1, 3))
    layer.beta_param.assign(-np.ones(3))
    layer.gamma_param.assign(-np.ones((3, 3)))
    assert np.all(layer.beta.numpy() >= 1e-6 - 1e-12) and np.all(layer.gamma.numpy() >= 0.0)


def test_gaussian_bin_masses_match_scipy_in_the_tails():
    """P(y - 1/2 < Y <= y + 1/2), Y ~ N(0, s^2), to float32 relative precision even 8 sigma out, where the
    difference of two CDFs near 1 would lose every digit; scales below SCALE_BOUND act as SCALE_BOUND."""
    y = np.array([0.0, 1.0, -1.0, 3.0, -4.0, 6.0, -2.0, 9.0], np.float32)
    s = np.array([1.0, 0.3, 2.0, 0.5, 1.0, 0.7, 0.05, 1.0], np.float32)
    s_eff = np.maximum(s.astype(np.float64), SCALE_BOUND)
    yy = np.abs(y.astype(np.float64))
    want = norm.cdf((0.5 - yy) / s_eff) - norm.cdf((-0.5 - yy) / s_eff)
    got = gaussian_likelihood(y, s).numpy()
    mask = want > LIKELIHOOD_BOUND
    np.testing.assert_allclose(got[mask], want[mask], rtol=1e-5)
    assert np.all(got[~mask] == np.float32(LIKELIHOOD_BOUND)) and (~mask).any()


def test_the_factorized_density_is_a_distribution_over_integers():
    """Per channel, the bins of all integers sum to 1 and the learned CDF is monotone, whatever its weights."""
    rng = np.random.default_rng(1)
    density = FactorizedDensity()
    density.build((None, None, None, 3))
    for w in density.weights:
        w.assign(rng.normal(scale=1.0, size=w.shape))
    grid = np.arange(-400, 401, dtype=np.float32)
    y = np.tile(grid[:, None], (1, 3))[None, :, None, :]  # [1, 801, 1, 3]
    mass = density(y).numpy()[0, :, 0, :]
    np.testing.assert_allclose(mass.sum(axis=0), 1.0, atol=1e-4)
    # Each bin's mass to float32 precision, in both tails too (float64 from the CDF's float32 logits).
    from scipy.special import expit

    lower, upper = (density.cdf_logits(y + d).numpy()[0, :, 0, :].astype(np.float64) for d in (-0.5, 0.5))
    exact = np.where(lower + upper > 0, expit(-lower) - expit(-upper), expit(upper) - expit(lower))
    tails = exact > 1e-7
    assert (tails & (exact < 1e-3)).sum() >= 6  # the check reaches into the tails
    np.testing.assert_allclose(mass[tails], exact[tails], rtol=1e-3)
    logits = density.cdf_logits(np.linspace(-50, 50, 2001, dtype=np.float32)[None, :, None, None]
                                .repeat(3, axis=-1)).numpy()[0, :, 0, :]
    assert np.all(np.diff(logits, axis=0) >= -1e-5)


@pytest.mark.parametrize("cls", [FactorizedPriorCodec, ScaleHyperpriorCodec])
@pytest.mark.parametrize("channels", [1, 3])
def test_codecs_reconstruct_any_multiple_of_their_stride(cls, channels):
    model = cls(channels=channels, filters=8, latent_channels=12, seed=0)
    model.build((None, None, None, channels))
    rng = np.random.default_rng(0)
    for height, width in ((64, 64), (128, 192)):
        x = rng.random((2, height, width, channels), dtype=np.float32)
        assert model(x).shape == (2, height, width, channels)
        terms = model.compute_terms(x)
        assert all(t.shape == (2,) and np.all(np.isfinite(t.numpy())) for t in terms.values())
        # Rounded latents give a rate of whole bins: at least the hyperprior's or prior's bound, never negative.
        assert np.all(terms["bpp"].numpy() > 0)


@pytest.mark.parametrize("cls", [FactorizedPriorCodec, ScaleHyperpriorCodec])
def test_a_codec_trains_with_fit_and_saves(cls, tmp_path):
    """model.fit lowers the rate-distortion loss on a few images; a .keras file gives back the same codec."""
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).random((8, 64, 64, 3), dtype=np.float32) * 0.2 + 0.4  # smooth-ish images
    model = cls(filters=8, latent_channels=12, lmbda=0.01, seed=3)
    model.build((None, None, None, 3))
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    before = float(tf.reduce_mean(model.compute_terms(x)["loss"]))
    model.fit(x, epochs=8, batch_size=4, verbose=0)
    after = float(tf.reduce_mean(model.compute_terms(x)["loss"]))
    assert after < 0.7 * before, (before, after)
    path = tmp_path / "codec.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is cls and loaded.get_config() == model.get_config()
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-6)


@pytest.mark.parametrize("cls", [FactorizedPriorCodec, ScaleHyperpriorCodec])
def test_straight_through_training_decodes_rounded_latents_and_rates_noisy_ones(cls):
    from kerasae.codec import Coder

    x = np.random.default_rng(1).random((2, 64, 64, 3), dtype=np.float32)
    plain = cls(filters=8, latent_channels=12, seed=5)
    last = plain.analysis.layers[-1].kernel
    last.assign(last * 20.0)  # latents a few bins wide, not all within 1/2 of 0 as initialized
    through = cls.from_config({**plain.get_config(), "straight_through": True})
    through.set_weights(plain.get_weights())
    assert through.get_config()["straight_through"] is True and plain.straight_through is False
    step = tf.constant(7, tf.int64)
    rounded, noisy = plain.compute_terms(x), plain.compute_terms(x, training=True, step=step)
    assert not np.allclose(noisy["mse"], rounded["mse"], rtol=1e-3)  # so that the two below tell them apart
    with tf.GradientTape() as tape:
        terms = through.compute_terms(x, training=True, step=step)
        distortion = tf.reduce_sum(terms["mse"])
    np.testing.assert_allclose(terms["mse"], rounded["mse"], rtol=1e-5)  # the decoder sees round(y) ...
    np.testing.assert_allclose(terms["bpp"], noisy["bpp"], rtol=1e-6)  # ... the rate y + noise
    # and the distortion's gradient reaches the analysis transform (rounding's taken as 1)
    grads = tape.gradient(distortion, through.analysis.trainable_variables)
    assert all(g is not None and np.any(g.numpy() != 0) for g in grads)
    # How a model was trained is not part of its version: it decodes the same files.
    assert Coder(through).version == Coder(plain).version
    with pytest.raises(TypeError, match="straight_through must be True or False, got 'yes'"):
        cls(straight_through="yes")


@pytest.mark.parametrize("kwargs, message", [(dict(channels=2), "channels must be 1"), (dict(lmbda=0.0), "lmbda"),
                                             (dict(filters=0), "filters"), (dict(seed=-1), "seed")])
def test_bad_codec_settings_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ScaleHyperpriorCodec(**kwargs)
