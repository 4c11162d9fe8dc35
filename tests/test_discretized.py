"""The discretized logistic likelihood of 8-bit pixels and bits per dimension.

The closed form (`losses.discretized_logistic_log_prob`, what training uses) is held to TFP's
QuantizedDistribution (`losses.discretized_logistic_likelihood`) and to float64 numpy/scipy
computations that share neither's formula; the VAE that uses it is checked end to end.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.special import log_expit, logsumexp
from scipy.stats import logistic, norm

import kerasae
from kerasae import cli, losses
from kerasae import evaluate as ev

LEVELS = np.arange(256)


def _bin_edges(k):
    """Bin [lower, upper] of level k in [0, 1] units; the edge bins reach to -inf / +inf."""
    k = np.asarray(k, np.float64)
    return np.where(k == 0, -np.inf, (k - 0.5) / 255.0), np.where(k == 255, np.inf, (k + 0.5) / 255.0)


def _scipy_log_mass(k, loc, scale):
    """log P(bin k) as scipy's logistic CDF differences in float64 (survival functions right of loc, where the
    CDFs round to 1): accurate while the bin is within ~700 scales of loc."""
    lower, upper = _bin_edges(k)
    right = lower > loc
    mass = np.where(right, logistic.sf(lower, loc, scale) - logistic.sf(upper, loc, scale),
                    logistic.cdf(upper, loc, scale) - logistic.cdf(lower, loc, scale))
    with np.errstate(divide="ignore"):
        return np.log(mass)


def _log_space_mass(k, loc, scale):
    """log P(bin k) in float64 for any scale: log(exp(big) - exp(small)) of log-CDFs left of loc and of
    log-survival functions right of it (the tail where each is accurate)."""
    lower, upper = _bin_edges(k)
    zl, zu = (lower - loc) / scale, (upper - loc) / scale
    right = zl > 0
    big = np.where(right, log_expit(-zl), log_expit(zu))  # logsf(lower) | logcdf(upper)
    small = np.where(right, log_expit(-zu), log_expit(zl))  # logsf(upper) | logcdf(lower)
    with np.errstate(divide="ignore"):
        return big + np.log1p(-np.exp(small - big))


def _per_pixel(x, loc, scale, fn=losses.discretized_logistic_log_prob):
    """Per-pixel log-probabilities: every pixel its own [1, 1, 1] image (its scale broadcasts like one)."""
    x, loc, scale = (np.asarray(t, np.float32).reshape(-1, 1, 1, 1) for t in (x, loc, scale))
    if fn is losses.discretized_logistic_log_prob:
        return fn(x, loc, scale).numpy().astype(np.float64)
    return fn(loc, scale).log_prob(x).numpy().astype(np.float64)


def _images(rng, shape=(4, 5, 6, 3)):
    """8-bit images as float32 k / 255, with both edge levels present, and per-pixel locations and scales."""
    k = rng.integers(0, 256, size=shape)
    k.flat[:6] = [0, 255, 0, 255, 1, 254]
    loc = rng.random(shape).astype(np.float32)
    loc.flat[:4] = [0.0, 1.0, 0.002, 0.998]
    scale = rng.uniform(0.003, 0.5, size=shape[1:]).astype(np.float32)
    return (k / 255.0).astype(np.float32), k, loc, scale


def test_closed_form_matches_scipy_cdf_differences(rng):
    x, k, loc, scale = _images(rng)
    expected = _scipy_log_mass(k, loc.astype(np.float64), scale.astype(np.float64))
    assert np.all(np.isfinite(expected))  # the scales keep every bin inside float64's reach
    got = losses.discretized_logistic_log_prob(x, loc, scale).numpy()
    np.testing.assert_allclose(got, expected.sum(axis=(1, 2, 3)), rtol=1e-5)
    # pixel by pixel too, so an error in a few edge pixels cannot hide in the sum
    k, loc, scale = np.array([0, 0, 255, 255, 0, 255, 3]), np.array([0.0, 0.7, 1.0, 0.2, 0.01, 0.99, 0.5]), \
        np.array([0.01, 0.2, 0.05, 0.3, 0.002, 0.002, 0.4])
    np.testing.assert_allclose(_per_pixel(k / 255.0, loc, scale), _scipy_log_mass(k, loc, scale), rtol=1e-5,
                               atol=1e-6)


def test_closed_form_matches_tfp_in_value_and_gradient(rng):
    """Against TFP's QuantizedDistribution, with k decoder samples [k, B, H, W, C] broadcasting over x [B, H, W, C]."""
    x, _, loc, scale = _images(rng)
    locs = np.clip(loc[None] + rng.normal(scale=0.2, size=(3, *loc.shape)), 0.0, 1.0).astype(np.float32)

    def value_and_grads(fn):
        args = [tf.constant(locs), tf.constant(scale)]
        with tf.GradientTape() as tape:
            tape.watch(args)
            value = fn(*args)
        return [value.numpy()] + [g.numpy() for g in tape.gradient(value, args)]

    ours = value_and_grads(lambda m, s: losses.discretized_logistic_log_prob(x, m, s))
    ref = value_and_grads(lambda m, s: losses.discretized_logistic_likelihood(m, s).log_prob(np.stack([x] * 3)))
    assert ours[0].shape == (3, len(x))
    for a, e in zip(ours, ref):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("scale", [1e-4, 1e-3, 0.02, 0.3, 3.0, 50.0])
@pytest.mark.parametrize("loc", [0.0, 0.0013, 0.3, 0.5, 0.999, 1.0])
def test_the_256_bins_of_a_pixel_sum_to_one(loc, scale):
    x = (LEVELS / 255.0).astype(np.float32).reshape(256, 1, 1, 1)
    ours = losses.discretized_logistic_log_prob(x, np.full_like(x, loc), np.float32([[[scale]]])).numpy()
    tfp_ = losses.discretized_logistic_likelihood(np.full_like(x, loc), np.float32([[[scale]]])).log_prob(x).numpy()
    assert np.all(np.isfinite(ours)) and np.all(ours <= 1e-6)
    assert abs(logsumexp(ours)) < 1e-5, logsumexp(ours)
    assert abs(logsumexp(tfp_)) < 1e-5, logsumexp(tfp_)
    # float32's 255 * loc is off by up to ~1e-5 levels: 4e-4 in units of the smallest scale
    reference = _log_space_mass(LEVELS, np.float64(np.float32(loc)), np.float64(np.float32(scale)))
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=5e-4)


def test_tiny_scales_stay_finite_and_exact(rng):
    """Scales far below a bin: a pixel at its location has probability ~1 (log ~0, not -inf), a pixel many bins away
    a large but finite negative log-probability equal to the float64 log-space value; gradients finite."""
    for scale in (1e-4, 1e-5, 1e-7):
        k = np.array([0, 255, 77, 77, 77, 200, 0, 255])
        loc = np.array([0.0, 1.0, 77 / 255, 78 / 255, 0.95, 0.01, 0.9, 0.1], np.float32)
        got = _per_pixel(k / 255.0, loc, np.full(len(k), scale))
        assert np.all(np.isfinite(got)), got
        np.testing.assert_allclose(got[:3], 0.0, atol=1e-6)  # at the location: the whole mass
        np.testing.assert_allclose(got, _log_space_mass(k, loc.astype(np.float64), scale), rtol=1e-4, atol=1e-6)
        assert got[3] < -0.5 / (255 * scale) and got[-1] < -200 / (255 * scale)  # one bin away / across the range
        m, s = tf.constant(loc.reshape(-1, 1, 1, 1)), tf.constant(np.full((1, 1, 1), scale, np.float32))
        with tf.GradientTape() as tape:
            tape.watch([m, s])
            value = tf.reduce_sum(losses.discretized_logistic_log_prob((k / 255.0).reshape(-1, 1, 1, 1), m, s))
        assert all(np.all(np.isfinite(g)) for g in tape.gradient(value, [m, s]))


def test_off_grid_pixels_score_their_nearest_level(rng):
    """float32 pixels k / 255 scaled back to levels can land a rounding error below k (TFP's QuantizedDistribution
    floors: such a pixel would fall into the bin below); pixels off the grid count as the nearest level, in both
    forms."""
    x = (LEVELS / 255.0).astype(np.float32).reshape(256, 1, 1, 1)
    loc, scale = rng.random((256, 1, 1, 1)).astype(np.float32), np.float32([[[0.05]]])
    exact = losses.discretized_logistic_log_prob(x, loc, scale).numpy()
    np.testing.assert_allclose(_per_pixel(x, loc, np.full(256, 0.05), fn=losses.discretized_logistic_likelihood),
                               exact, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(exact, _scipy_log_mass(LEVELS, loc.ravel().astype(np.float64), 0.05), rtol=1e-5)
    for shift in (0.4 / 255, -0.4 / 255):
        off = np.clip(x + shift, 0.0, 1.0)
        np.testing.assert_allclose(losses.discretized_logistic_log_prob(off, loc, scale).numpy(), exact, rtol=1e-6)
        np.testing.assert_allclose(losses.discretized_logistic_likelihood(loc, scale).log_prob(off).numpy(), exact,
                                   rtol=1e-4, atol=1e-5)


def test_tflite_computes_it_as_tensorflow_does():
    """Builtin ops only, and the same numbers far from the location and at large scales, where TFLite's own
    lowerings of softplus (stuck at ~88.4) and expm1 (exp - 1) would not give them."""
    from ai_edge_litert import interpreter as litert

    from kerasae.export import non_builtin_ops

    spec = tf.TensorSpec([None, 1, 1, 1], tf.float32)
    module = tf.Module()
    module.fn = fn = tf.function(lambda x, loc, scale: {"log_p": losses.discretized_logistic_log_prob(x, loc, scale)},
                                 input_signature=[spec, spec, spec])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    flatbuffer = converter.convert()
    assert non_builtin_ops(flatbuffer) == []
    k = np.array([0, 255, 255, 0, 128, 3, 77, 200, 0, 255, 128], np.float64)
    loc = np.array([1.0, 0.0, 0.5, 0.98, 0.0, 1.0, 0.3, 0.4, 0.5, 0.5, 0.5])
    scale = np.array([1e-3, 1e-3, 1e-3, 2e-3, 1e-3, 1e-3, 0.05, 0.1, 30.0, 300.0, 3000.0])
    feeds = {name: v.astype(np.float32).reshape(-1, 1, 1, 1) for name, v in (("x", k / 255), ("loc", loc),
                                                                              ("scale", scale))}
    runner = litert.Interpreter(model_content=flatbuffer).get_signature_runner()
    got = runner(**feeds)["log_p"]
    want = fn(**feeds)["log_p"].numpy()
    assert np.all(np.isfinite(got)) and want.min() < -900  # pixels ~1000 scales from their location
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(want, _log_space_mass(k.astype(int), feeds["loc"].ravel().astype(np.float64), scale),
                               rtol=1e-5, atol=1e-5)


def test_samples_are_8_bit_levels():
    dist = losses.discretized_logistic_likelihood(np.full((1, 4, 4, 1), 0.4, np.float32), np.full((4, 4, 1), 0.1,
                                                                                                   np.float32))
    draws = dist.sample(2000, seed=1).numpy()
    levels = draws * 255.0
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
    assert draws.min() == 0.0 and draws.max() <= 1.0  # the lower edge bin holds ~2% of the mass here
    assert abs(np.median(draws) - 0.4) <= 1 / 255  # the location is the median


def test_bits_per_dim():
    assert losses.bits_per_dim(784 * math.log(256.0), (28, 28, 1)) == pytest.approx(8.0)  # a uniform 8-bit model
    assert losses.bits_per_dim(3 * 32 * 32 * math.log(2.0), (32, 32, 3)) == pytest.approx(1.0)
    np.testing.assert_allclose(losses.bits_per_dim(tf.constant([math.log(2.0) * 784]), (28, 28, 1)).numpy(), [1.0])


# ---- the VAE with the discretized likelihood ---------------------------------------------------------------

def _vae(**kwargs):
    return kerasae.build("vae-mlp-gaussian", hidden_units=(32,), latent_dim=4, likelihood="discretized_logistic",
                         seed=0, **kwargs)


@pytest.mark.parametrize("scale, shape", [("pixel", (8, 8, 3)), ("channel", (3,)), ("shared", ()), ("fixed", None)])
def test_scale_options(scale, shape, rng):
    model = _vae(image_shape=(8, 8, 3), gaussian_scale=scale, fixed_scale=0.07)
    learned = [w for w in model.weights if "decoder_scale" in w.path]
    assert [tuple(w.shape) for w in learned] == ([] if shape is None else [shape])
    if learned:
        learned[0].assign(rng.normal(size=shape).astype(np.float32))
    s = model.decoder_scale().numpy()
    assert s.shape == (8, 8, 3) and np.all(s >= model.min_scale)
    if scale == "channel":  # one value per colour channel, different across channels
        assert np.all(s == s[:1, :1, :]) and len(np.unique(s)) == 3
    if scale == "fixed":
        np.testing.assert_allclose(s, 0.07)
    clone = kerasae.VAE.from_config(model.get_config())
    assert clone.gaussian_scale == scale and clone.likelihood == "discretized_logistic"


def test_decoder_distribution_decode_and_score(rng, mnist_small):
    model = _vae(gaussian_scale="channel")
    x = mnist_small.x_train[:5]
    z = rng.normal(size=(5, model.latent_dim)).astype(np.float32)
    logits = model.decode_logits(z)
    np.testing.assert_allclose(model.decoder_distribution(z).log_prob(x).numpy(),
                               model.log_likelihood(x, logits).numpy(), rtol=1e-5)
    np.testing.assert_allclose(model.decode(z).numpy(), tf.sigmoid(logits).numpy())  # x_mean is the location
    assert not model.binary_data and model.sample(3).shape == (3, 28, 28, 1)
    mean, log_var = (t.numpy() for t in model.encode(x))
    loc = tf.sigmoid(model.decode_logits(mean)).numpy().astype(np.float64)
    scale = model.decoder_scale().numpy().astype(np.float64)
    k = np.round(x * 255.0)
    log_px = _scipy_log_mass(k, loc, np.broadcast_to(scale, loc.shape)).sum(axis=(1, 2, 3))
    kl = 0.5 * np.sum(mean**2 + np.exp(log_var) - log_var - 1.0, axis=-1)
    np.testing.assert_allclose(model.score(x).numpy(), kl - log_px, rtol=1e-5)
    with pytest.raises(ValueError, match="decoder_scale"):
        kerasae.build("vae-mlp").decoder_scale()


def test_decoder_predicted_scale(rng, mnist_small):
    """gaussian_scale="decoder": the decoder's second C channels give each image its own scale,
    softplus(t + offset) + min_scale with the offset putting t = 0 at the learned scales' start (0.1)."""
    model = _vae(gaussian_scale="decoder")
    assert model.decoder.output_shape == (None, 28, 28, 2) and not [w for w in model.weights
                                                                   if "decoder_scale" in w.path]
    x = mnist_small.x_train[:6]
    z = rng.normal(size=(6, model.latent_dim)).astype(np.float32)
    raw = model.decoder(z).numpy().astype(np.float64)
    loc = 1 / (1 + np.exp(-raw[..., :1]))
    scale = np.log1p(np.exp(raw[..., 1:] + np.log(np.expm1(0.1 - 1e-3)))) + 1e-3
    assert np.ptp(scale, axis=0).max() > 1e-3  # the scale differs between images
    np.testing.assert_allclose(model.decoder_scale(z).numpy(), scale, rtol=1e-5)
    np.testing.assert_allclose(model.decode(z).numpy(), loc, rtol=1e-5)
    assert model.decode_logits(z).shape == (6, 28, 28, 1)
    log_px = _scipy_log_mass(np.round(x * 255.0), loc, scale).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(model.decoder_distribution(z).log_prob(x).numpy(), log_px, rtol=1e-5)
    np.testing.assert_allclose(model.log_likelihood(x, model.decoder(z)).numpy(), log_px, rtol=1e-5)
    mean, log_var = (t.numpy() for t in model.encode(x))
    raw = model.decoder(mean).numpy().astype(np.float64)
    at_mean = _scipy_log_mass(np.round(x * 255.0), 1 / (1 + np.exp(-raw[..., :1])),
                              np.log1p(np.exp(raw[..., 1:] + np.log(np.expm1(0.099)))) + 1e-3).sum(axis=(1, 2, 3))
    kl = 0.5 * np.sum(mean**2 + np.exp(log_var) - log_var - 1.0, axis=-1)
    np.testing.assert_allclose(model.score(x).numpy(), kl - at_mean, rtol=1e-5)
    with pytest.raises(ValueError, match="depends on the codes z"):
        model.decoder_scale()
    zeroed = _vae(gaussian_scale="decoder")
    for w in [layer for layer in zeroed.decoder.layers if layer.weights][-1].weights:  # zero output: loc 0.5, scale 0.1
        w.assign(np.zeros(w.shape, np.float32))
    loc0, scale0 = (t.numpy() for t in zeroed.decoder_params(z[:2]))
    np.testing.assert_allclose(loc0, 0.5)
    np.testing.assert_allclose(scale0, 0.1, rtol=1e-5)
    gaussian = kerasae.build("vae-mlp-gaussian", hidden_units=(32,), latent_dim=4, gaussian_scale="decoder", seed=0)
    raw = gaussian.decoder(z).numpy().astype(np.float64)  # a density with the same per-image scale
    loc, scale = 1 / (1 + np.exp(-raw[..., :1])), np.log1p(np.exp(raw[..., 1:] + np.log(np.expm1(0.099)))) + 1e-3
    np.testing.assert_allclose(gaussian.log_likelihood(x, gaussian.decoder(z)).numpy(),
                               norm.logpdf(x, loc, scale).sum(axis=(1, 2, 3)), rtol=1e-5)
    keras.utils.set_random_seed(0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(mnist_small.x_train[:128], batch_size=64, epochs=3, verbose=0).history
    assert history["bits_per_dim"][-1] < history["bits_per_dim"][0]
    clone = kerasae.VAE.from_config(model.get_config())
    assert clone.gaussian_scale == "decoder" and clone.decoder.output_shape == (None, 28, 28, 2)


def test_training_reports_bits_per_dim_and_the_iwae_bound_runs(mnist_small):
    keras.utils.set_random_seed(0)
    model = _vae(gaussian_scale="pixel")
    assert model.metric_names[-1] == "bits_per_dim" and "bits_per_dim" not in kerasae.build("vae-mlp").metric_names
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    x = mnist_small.x_train[:128]
    history = model.fit(x, batch_size=64, epochs=2, verbose=0).history
    assert history["bits_per_dim"][-1] < history["bits_per_dim"][0]
    np.testing.assert_allclose(history["bits_per_dim"], -np.array(history["elbo"]) / (784 * math.log(2)), rtol=1e-5)
    terms = model.compute_terms(x[:8])
    np.testing.assert_allclose(terms["bits_per_dim"].numpy(), -terms["elbo"].numpy() / (784 * math.log(2)), rtol=1e-6)
    bound = model.importance_weighted_bound(x[:8], 5).numpy()
    assert bound.shape == (8,) and np.all(np.isfinite(bound)) and np.all(bound < 0)  # log of a probability
    result = ev.evaluate_vae(model, mnist_small.x_test[:8], k=4, progress=False)
    assert result["nll_bits_per_dim"] == pytest.approx(result["nll"] / (784 * math.log(2)))
    assert result["elbo_bits_per_dim"] == pytest.approx(-result["elbo"] / (784 * math.log(2)))
    assert 0 < result["nll_bits_per_dim"] < 8  # a code length, and better than storing the raw bytes
    gaussian = kerasae.build("vae-mlp-gaussian", hidden_units=(32,), latent_dim=4)
    assert "nll_bits_per_dim" not in ev.evaluate_vae(gaussian, mnist_small.x_test[:8], k=2, progress=False)


def test_the_command_line_accepts_the_likelihood():
    parser = cli.build_train_parser()
    config = cli.config_from_args(parser, parser.parse_args(["--preset", "vae-conv", "--likelihood",
                                                             "discretized_logistic"]))
    assert config.model_kwargs == {"likelihood": "discretized_logistic"}
