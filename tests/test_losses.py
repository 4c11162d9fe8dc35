"""VAE maths checked against independent numpy formulas."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.special import logsumexp
from scipy.stats import logistic, norm

import kerasae
from kerasae import losses


def test_kl_matches_closed_form(rng):
    mean = rng.normal(size=(7, 5)).astype(np.float32)
    log_var = rng.normal(scale=0.7, size=(7, 5)).astype(np.float32)
    kl = losses.kl_divergence(losses.diagonal_gaussian(mean, log_var), losses.standard_normal(5)).numpy()
    expected = 0.5 * np.sum(mean**2 + np.exp(log_var) - log_var - 1.0, axis=-1)
    np.testing.assert_allclose(kl, expected, rtol=1e-5, atol=1e-5)


def test_bernoulli_log_likelihood_is_minus_summed_bce(rng):
    logits = rng.normal(scale=3.0, size=(4, 6, 5, 1)).astype(np.float32)
    for x in ((rng.random(logits.shape) < 0.5).astype(np.float32), rng.random(logits.shape).astype(np.float32)):
        bce = np.maximum(logits, 0) - logits * x + np.log1p(np.exp(-np.abs(logits)))
        log_p = losses.bernoulli_likelihood(logits).log_prob(x).numpy()
        np.testing.assert_allclose(log_p, -bce.sum(axis=(1, 2, 3)), rtol=1e-5)
        np.testing.assert_allclose(losses.reconstruction_error(x, logits, "bce").numpy(), bce.sum(axis=(1, 2, 3)),
                                   rtol=1e-5)


def test_gaussian_log_likelihood(rng):
    mean = rng.random((3, 4, 4, 2)).astype(np.float32)
    scale = rng.uniform(0.05, 1.0, size=(4, 4, 2)).astype(np.float32)
    x = rng.random((3, 4, 4, 2)).astype(np.float32)
    expected = np.sum(-0.5 * ((x - mean) / scale) ** 2 - np.log(scale) - 0.5 * np.log(2 * np.pi), axis=(1, 2, 3))
    np.testing.assert_allclose(losses.gaussian_likelihood(mean, scale).log_prob(x).numpy(), expected, rtol=1e-5)


def _value_and_grads(fn, *args):
    args = [tf.constant(a) for a in args]
    with tf.GradientTape() as tape:
        tape.watch(args)
        value = fn(*args)
    return [value.numpy()] + [g.numpy() for g in tape.gradient(value, args)]


def test_closed_forms_match_the_tfp_distributions_in_value_and_gradient(rng):
    """The training step's closed forms against TFP's distributions (what they replace for speed)."""
    k, b, d = 3, 4, 5
    logits = rng.normal(scale=4.0, size=(k, b, 6, 5, 1)).astype(np.float32)
    mean, log_var = rng.normal(size=(b, d)).astype(np.float32), rng.normal(scale=0.7, size=(b, d)).astype(np.float32)
    eps = rng.normal(size=(k, b, d)).astype(np.float32)
    binary = (rng.random((b, 6, 5, 1)) < 0.4).astype(np.float32)
    for x in (binary, rng.random((b, 6, 5, 1)).astype(np.float32)):  # binary and grey pixels
        ours = _value_and_grads(lambda s: losses.bernoulli_log_prob(x, s), logits)  # x broadcasts over k
        tfp_ = _value_and_grads(lambda s: losses.bernoulli_likelihood(s).log_prob(np.stack([x] * k)), logits)
        assert ours[0].shape == (k, b)
        for a, e in zip(ours, tfp_):
            np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)

    scale = rng.uniform(0.05, 1.0, size=(6, 5, 1)).astype(np.float32)
    pixels = rng.random((k, b, 6, 5, 1)).astype(np.float32)
    x = rng.random((b, 6, 5, 1)).astype(np.float32)
    ours = _value_and_grads(lambda m, s: losses.gaussian_log_prob(x, m, s), pixels, scale)
    tfp_ = _value_and_grads(lambda m, s: losses.gaussian_likelihood(m, s).log_prob(np.stack([x] * k)), pixels, scale)
    for a, e in zip(ours, tfp_):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-4)

    prior = losses.standard_normal(d)
    for ours, tfp_ in [
        (lambda m, v: losses.kl_to_standard_normal(m, v),
         lambda m, v: losses.kl_divergence(losses.diagonal_gaussian(m, v), prior)),
        # log q(z|x) at z = mean + sigma * eps, and log p(z): gradients flow through z into mean, log_var
        (lambda m, v: losses.reparameterized_log_prob(eps, v) + 0.0 * tf.reduce_sum(m),
         lambda m, v: losses.diagonal_gaussian(m, v).log_prob(m + tf.exp(0.5 * v) * eps)),
        (lambda m, v: losses.standard_normal_log_prob(m + tf.exp(0.5 * v) * eps),
         lambda m, v: prior.log_prob(m + tf.exp(0.5 * v) * eps)),
    ]:
        for a, e in zip(_value_and_grads(ours, mean, log_var), _value_and_grads(tfp_, mean, log_var)):
            np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("preset, kwargs", [
    ("vae-mlp", {}), ("vae-mlp-gaussian", {"gaussian_scale": "pixel"}),
    ("vae-mlp-gaussian", {"likelihood": "discretized_logistic", "gaussian_scale": "pixel"}),
])
def test_model_log_likelihood_is_the_decoder_distributions(preset, kwargs, rng):
    model = kerasae.build(preset, **kwargs)
    z = rng.normal(size=(2, 3, model.latent_dim)).astype(np.float32)
    x = (rng.random((3, 28, 28, 1)) < 0.3).astype(np.float32)
    logits = tf.reshape(model.decode_logits(z.reshape(6, -1)), [2, 3, 28, 28, 1])
    expected = np.stack([model.decoder_distribution(z[i]).log_prob(x).numpy() for i in range(2)])
    np.testing.assert_allclose(model.log_likelihood(x, logits).numpy(), expected, rtol=1e-5)


def test_log_mean_exp_is_stable_and_exact(rng):
    log_w = rng.normal(loc=-2000.0, scale=5.0, size=(50, 3))  # exp underflows to 0 in float64
    expected = logsumexp(log_w, axis=0) - np.log(50)
    np.testing.assert_allclose(losses.log_mean_exp(tf.constant(log_w)).numpy(), expected, rtol=1e-12)


def test_iwae_bound_hand_computed_and_against_scipy(rng):
    """log (1/k) sum_i w_i with log w_i = log p(x|z_i) + beta (log p(z_i) - log q(z_i|x))."""
    zero = tf.zeros([2, 1], tf.float64)
    # weights 1 and 3: log 2; weights e^-5 and e^-5: -5
    log_px_z = tf.constant([[0.0, -5.0], [np.log(3.0), -5.0]], tf.float64)
    np.testing.assert_allclose(losses.iwae_bound(log_px_z, zero, zero).numpy(), [np.log(2.0), -5.0], rtol=1e-12)
    log_pz, log_qz = tf.constant([[-1.0], [-2.0]], tf.float64), tf.constant([[-3.0], [-1.0]], tf.float64)
    # log w = 2 beta and -beta: beta = 0.5 gives log((e + e^-0.5) / 2)
    expected = np.log((np.e + np.exp(-0.5)) / 2)
    np.testing.assert_allclose(losses.iwae_bound(zero, log_pz, log_qz, beta=0.5).numpy(), [expected], rtol=1e-12)
    for k, beta in ((1, 1.0), (9, 1.0), (9, 0.3)):
        log_px_z = rng.normal(-100.0, 5.0, size=(k, 6))
        log_pz, log_qz = rng.normal(-3.0, 1.0, size=(2, k, 6))
        bound = losses.iwae_bound(*(tf.constant(t) for t in (log_px_z, log_pz, log_qz)), beta=beta).numpy()
        np.testing.assert_allclose(bound, logsumexp(log_px_z + beta * log_pz - beta * log_qz, axis=0) - np.log(k),
                                   rtol=1e-12)


def _numpy_sample_terms(model, x, eps):
    """log p(x|z), log p(z), log q(z|x) [k, B] at z = mean + sigma * eps [k, B, D], in float64 with scipy's
    normal densities and logistic CDF differences and numpy's Bernoulli log-likelihood; only the networks (and
    the decoder's scale) are the model's."""
    mean, log_var = (t.numpy().astype(np.float64) for t in model.encode(x))
    z = mean + np.exp(0.5 * log_var) * eps
    logits = model.decode_logits(z.reshape(-1, model.latent_dim).astype(np.float32)).numpy().astype(np.float64)
    logits = logits.reshape(len(eps), len(x), -1)
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    if model.likelihood == "bernoulli":
        log_px_z = (x * logits - np.logaddexp(0.0, logits)).sum(axis=-1)
    elif model.likelihood == "discretized_logistic":  # 8-bit bins, the edge ones open-ended
        k = np.round(x * 255.0)
        loc, scale = 1.0 / (1.0 + np.exp(-logits)), model.decoder_scale().numpy().astype(np.float64).reshape(-1)
        upper = np.where(k == 255, 1.0, logistic.cdf((k + 0.5) / 255.0, loc, scale))
        lower = np.where(k == 0, 0.0, logistic.cdf((k - 0.5) / 255.0, loc, scale))
        log_px_z = np.log(upper - lower).sum(axis=-1)
    else:
        scale = model.decoder_scale().numpy().astype(np.float64).reshape(-1)
        log_px_z = norm.logpdf(x, loc=1.0 / (1.0 + np.exp(-logits)), scale=scale).sum(axis=-1)
    log_pz = norm.logpdf(z).sum(axis=-1)
    log_qz = norm.logpdf(z, loc=mean, scale=np.exp(0.5 * log_var)).sum(axis=-1)
    return log_px_z, log_pz, log_qz, mean, log_var


@pytest.mark.parametrize("preset, kwargs", [
    ("vae-mlp", {}),
    ("vae-mlp", {"num_importance_samples": 3}),
    ("vae-mlp", {"num_importance_samples": 4, "beta": 0.5}),
    ("vae-mlp-gaussian", {"gaussian_scale": "pixel"}),
    ("vae-mlp-gaussian", {"gaussian_scale": "fixed", "fixed_scale": 0.3, "beta": 2.0}),
    ("vae-mlp-gaussian", {"likelihood": "discretized_logistic", "gaussian_scale": "pixel"}),
    ("vae-mlp-gaussian", {"likelihood": "discretized_logistic", "gaussian_scale": "channel",
                          "num_importance_samples": 3}),
])
def test_vae_training_terms_with_known_noise(preset, kwargs, mnist_binary, mnist_small, rng, monkeypatch):
    """compute_terms of a training step with the reparameterization noise fixed to a known array, against
    numpy/scipy: reconstruction = -mean_k log p(x|z_k), kl = KL(q || N(0, I)) in closed form, elbo =
    -(reconstruction + kl), and loss = reconstruction + beta kl (k = 1) or -log mean_k w_k with
    log w = log p(x|z) + beta (log p(z) - log q(z|x)) (the beta-IWAE bound, k > 1)."""
    model = kerasae.build(preset, hidden_units=(32,), latent_dim=3, seed=0, **kwargs)
    x = mnist_binary[:6] if model.likelihood == "bernoulli" else mnist_small.x_train[:6]
    k, beta = model.num_importance_samples, model.beta
    eps = rng.standard_normal((len(x), k, model.latent_dim)).astype(np.float32)  # drawn batch-first [B, k, D]
    monkeypatch.setattr(model, "training_noise", lambda kind, shape, step=None, stream=0: tf.constant(eps))
    terms = model.compute_terms(x, training=True, step=tf.constant(5, tf.int64))
    log_px_z, log_pz, log_qz, mean, log_var = _numpy_sample_terms(model, x, np.swapaxes(eps, 0, 1).astype(np.float64))
    reconstruction = -log_px_z.mean(axis=0)
    kl = 0.5 * np.sum(mean**2 + np.exp(log_var) - log_var - 1.0, axis=-1)
    if k == 1:
        loss = reconstruction + beta * kl
    else:
        loss = -(logsumexp(log_px_z + beta * (log_pz - log_qz), axis=0) - np.log(k))
    expected = {"reconstruction_loss": reconstruction, "kl": kl, "elbo": -(reconstruction + kl), "loss": loss}
    if model.likelihood == "discretized_logistic":  # the ELBO of the 8-bit image in bits per subpixel
        expected["bits_per_dim"] = (reconstruction + kl) / (x[0].size * np.log(2.0))
    assert set(terms) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(terms[name].numpy(), value, rtol=1e-5, atol=1e-4, err_msg=name)
    evaluation = model.compute_terms(x, training=False)  # same noise (patched), so the same terms
    np.testing.assert_allclose(evaluation["loss"].numpy(), loss, rtol=1e-5, atol=1e-4)


def test_model_importance_weighted_bound_with_known_noise(trained_vae, mnist_binary, rng, monkeypatch):
    from kerasae.models import vae as vae_module

    x, k = mnist_binary[:10], 6
    eps = rng.standard_normal((k, len(x), trained_vae.latent_dim)).astype(np.float32)
    monkeypatch.setattr(vae_module, "draw", lambda kind, shape, seed=None, step=None, stream=0: tf.constant(eps))
    log_px_z, log_pz, log_qz, _, _ = _numpy_sample_terms(trained_vae, x, eps.astype(np.float64))
    np.testing.assert_allclose(trained_vae.importance_weighted_bound(x, k).numpy(),
                               logsumexp(log_px_z + log_pz - log_qz, axis=0) - np.log(k), rtol=1e-5)


@pytest.fixture(scope="module")
def trained_vae(mnist_binary):
    keras.utils.set_random_seed(3)
    model = kerasae.build("vae-mlp", latent_dim=8)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(mnist_binary, batch_size=64, epochs=3, verbose=0)
    return model


def test_model_terms_match_numpy(trained_vae, mnist_binary):
    x = mnist_binary[:32]
    terms = trained_vae.compute_terms(x)
    mean, log_var = (t.numpy() for t in trained_vae.encode(x))
    kl = 0.5 * np.sum(mean**2 + np.exp(log_var) - log_var - 1.0, axis=-1)
    np.testing.assert_allclose(terms["kl"].numpy(), kl, rtol=1e-4, atol=1e-4)
    # score: -log p(x | z = mean) + KL, from numpy BCE on the decoder's logits at the mean
    logits = trained_vae.decode_logits(mean).numpy()
    bce = (np.maximum(logits, 0) - logits * x + np.log1p(np.exp(-np.abs(logits)))).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(trained_vae.score(x).numpy(), bce + kl, rtol=1e-4)


def test_iwae_bound_matches_elbo_at_k1_and_grows_with_k(trained_vae, mnist_binary):
    x = mnist_binary[:64]
    tf.random.set_seed(0)
    repeats = 40
    elbo = np.stack([trained_vae.compute_terms(x)["elbo"].numpy() for _ in range(repeats)])
    draws = {k: np.stack([trained_vae.importance_weighted_bound(x, k).numpy() for _ in range(repeats)])
             for k in (1, 5, 50)}
    # k=1 is an unbiased one-sample estimate of the ELBO (sampled KL here, analytic KL there):
    # equal means within 4 standard errors.
    stderr = np.sqrt((elbo.var(0).mean() + draws[1].var(0).mean()) / elbo.size)
    assert abs(draws[1].mean() - elbo.mean()) < 4 * stderr, (draws[1].mean(), elbo.mean(), stderr)
    bounds = {k: v.mean() for k, v in draws.items()}
    assert bounds[1] < bounds[5] < bounds[50], bounds


def test_beta_weighs_the_kl(mnist_binary):
    x = mnist_binary[:16]
    a = kerasae.build("vae-mlp", beta=1.0)
    b = kerasae.VAE.from_config({**a.get_config(), "beta": 4.0})
    b.set_weights(a.get_weights())
    tf.random.set_seed(1)
    ta = a.compute_terms(x)
    tf.random.set_seed(1)
    tb = b.compute_terms(x)
    np.testing.assert_allclose((tb["loss"] - ta["loss"]).numpy(), 3.0 * ta["kl"].numpy(), rtol=1e-4, atol=1e-3)


def test_gaussian_decoder_distribution(rng):
    model = kerasae.build("vae-mlp-gaussian", gaussian_scale="pixel")
    z = rng.normal(size=(3, model.latent_dim)).astype(np.float32)
    x = rng.random((3, 28, 28, 1)).astype(np.float32)
    mean, scale = model.decode(z).numpy(), model.decoder_scale().numpy()
    assert scale.shape == (28, 28, 1) and np.all(scale > 0)
    expected = np.sum(-0.5 * ((x - mean) / scale) ** 2 - np.log(scale) - 0.5 * np.log(2 * np.pi), axis=(1, 2, 3))
    np.testing.assert_allclose(model.decoder_distribution(z).log_prob(x).numpy(), expected, rtol=1e-4)
    fixed = kerasae.build("vae-mlp-gaussian", gaussian_scale="fixed", fixed_scale=0.25)
    np.testing.assert_allclose(fixed.decoder_scale().numpy(), 0.25)
    assert len(fixed.trainable_weights) == len(model.trainable_weights) - 1  # no learned scale


def test_bernoulli_log_prob_in_tflite_is_tensorflows_far_into_the_tails():
    """An exported `score` runs bernoulli_log_prob in TFLite, whose own softplus (log(exp(t) + 1)) overflows past
    t ~ 88.4: a confident decoder's pixels must score there as in TensorFlow, with builtin ops only."""
    from ai_edge_litert import interpreter as litert

    from kerasae.export import non_builtin_ops

    spec = tf.TensorSpec([None, 1, 1, 1], tf.float32)
    module = tf.Module()
    module.fn = fn = tf.function(lambda x, logits: {"log_p": losses.bernoulli_log_prob(x, logits)},
                                 input_signature=[spec, spec])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    flatbuffer = converter.convert()
    assert non_builtin_ops(flatbuffer) == []
    logits = np.array([-300.0, -95.0, -20.0, -0.5, 0.0, 0.5, 20.0, 95.0, 300.0] * 2, np.float32)
    x = np.repeat(np.float32([1.0, 0.0]), 9)  # each logit with the pixel on and off
    feeds = {"x": x.reshape(-1, 1, 1, 1), "logits": logits.reshape(-1, 1, 1, 1)}
    got = litert.Interpreter(model_content=flatbuffer).get_signature_runner()(**feeds)["log_p"]
    exact = x * logits - (np.maximum(logits, 0.0) + np.log1p(np.exp(-np.abs(logits.astype(np.float64)))))
    np.testing.assert_allclose(fn(**feeds)["log_p"].numpy(), exact, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got, exact, rtol=1e-6, atol=1e-6)
