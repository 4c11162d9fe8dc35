"""The VampPrior: its closed forms against TFP, its samples, its KL estimates and its training."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from scipy.special import logsumexp

import kerasae
from kerasae import losses, optimizers

tfd = tfp.distributions


def _components(rng, k=6, d=3):
    return (rng.normal(size=(k, d)).astype("float32"), rng.normal(scale=0.5, size=(k, d)).astype("float32"))


def _tfp_mixture(means, log_vars):
    return tfd.MixtureSameFamily(tfd.Categorical(logits=tf.zeros([len(means)])),
                                 tfd.MultivariateNormalDiag(means, tf.exp(0.5 * log_vars)))


def test_mixture_log_prob_is_tfps(rng):
    means, log_vars = _components(rng)
    z = rng.normal(scale=2.0, size=(4, 5, 3)).astype("float32")
    np.testing.assert_allclose(losses.mixture_log_prob(z, means, log_vars).numpy(),
                               _tfp_mixture(means, log_vars).log_prob(z).numpy(), rtol=1e-5, atol=1e-4)


def _float64_mixture(z, means, log_vars):
    """log p(z) and d log p / dz of the equal-weight mixture, float64 numpy with the differences taken directly."""
    z, means, log_vars = (np.asarray(t, np.float64) for t in (z, means, log_vars))
    diff = z[:, None, :] - means  # [N, K, D]
    log_n = -0.5 * ((diff**2 * np.exp(-log_vars)).sum(-1) + log_vars.sum(-1) + z.shape[1] * np.log(2 * np.pi))
    log_p = logsumexp(log_n, axis=1) - np.log(len(means))
    responsibilities = np.exp(log_n - logsumexp(log_n, axis=1, keepdims=True))
    return log_p, -(responsibilities[..., None] * diff * np.exp(-log_vars)).sum(1)


@pytest.mark.parametrize("log_variance", [-3, -9, -15])
def test_mixture_log_prob_is_accurate_for_tight_components(log_variance, rng):
    """K=500 components of D=40 dimensions at log-variance -3 ... -15 (float32 matmuls of the expanded square
    were 38 nats off at -15): within 1e-3 nats of float64 near the components, within one float32 spacing of
    the float64 value far from them (|log p| ~ 1e8 there: float32 itself rounds by several nats), and the
    gradient within 1e-4 relative."""
    means = rng.normal(size=(500, 40)).astype("float32")
    log_vars = (log_variance + rng.uniform(-0.5, 0.5, size=means.shape)).astype("float32")
    pick = rng.integers(0, len(means), 200)
    near = (means[pick] + np.exp(0.5 * log_vars[pick]) * rng.normal(size=(200, 40))).astype("float32")
    far = rng.normal(scale=1.5, size=(200, 40)).astype("float32")
    for z, bound in ((near, 1e-3), (far, None)):
        expected, expected_gradient = _float64_mixture(z, means, log_vars)
        z = tf.constant(z)
        with tf.GradientTape() as tape:
            tape.watch(z)
            log_p = losses.mixture_log_prob(z, means, log_vars)
        error = np.abs(log_p.numpy() - expected)
        allowed = bound or np.spacing(np.abs(expected).astype("float32"))
        assert np.all(error <= allowed), (error.max(), np.abs(expected).max())
        gradient = tape.gradient(log_p, z).numpy()
        scale = np.abs(expected_gradient).max(axis=1, keepdims=True)
        np.testing.assert_array_less(np.abs(gradient - expected_gradient) / scale, 1e-4)


def test_mixture_kl_is_accurate_for_tight_components(rng, monkeypatch):
    """Hershey & Olsen's KL to K=500 components of D=40 dimensions at log-variance -15, for posteriors as tight
    near a component and wide far from them: within 1e-3 nats (near) and 1e-6 relative (far) of float64; in
    blocks of 7 of the 100 rows (the last one partial), as thousands of rows run."""
    monkeypatch.setattr(losses, "MIXTURE_BLOCK_ELEMENTS", 7 * 500 * 40)
    means = rng.normal(size=(500, 40)).astype("float32").astype("float64")  # float64 maths on float32 inputs
    log_vars = (-15 + rng.uniform(-0.5, 0.5, size=means.shape)).astype("float32").astype("float64")
    pick = rng.integers(0, len(means), 100)
    near = means[pick] + np.exp(0.5 * log_vars[pick]) * rng.normal(size=(100, 40))
    for mean, log_var, atol, rtol in ((near, log_vars[pick] + rng.normal(scale=0.3, size=(100, 40)), 1e-3, 0),
                                      (rng.normal(scale=1.5, size=(100, 40)), rng.normal(size=(100, 40)), 0, 1e-6)):
        mean, log_var = (t.astype("float32").astype("float64") for t in (mean, log_var))
        per_component = 0.5 * (log_vars - log_var[:, None] - 1.0
                               + (np.exp(log_var[:, None]) + (mean[:, None] - means) ** 2) * np.exp(-log_vars)).sum(-1)
        expected = -(logsumexp(-per_component, axis=1) - np.log(len(means)))
        got = losses.mixture_kl(*(t.astype("float32") for t in (mean, log_var, means, log_vars))).numpy()
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)


def test_gaussian_kl_is_tfps(rng):
    (m, lv), (pm, plv) = _components(rng, k=4), _components(rng, k=4)
    expected = tfd.kl_divergence(tfd.MultivariateNormalDiag(m, tf.exp(0.5 * lv)),
                                 tfd.MultivariateNormalDiag(pm, tf.exp(0.5 * plv)))
    np.testing.assert_allclose(losses.gaussian_kl(m, lv, pm, plv).numpy(), expected.numpy(), rtol=1e-5)


def test_mixture_kl_is_the_variational_approximation(rng):
    means, log_vars = _components(rng)
    m, lv = _components(rng, k=5)
    q = tfd.MultivariateNormalDiag(m[:, None], tf.exp(0.5 * lv[:, None]))  # [5, 1] against [6] components
    per_component = tfd.kl_divergence(q, tfd.MultivariateNormalDiag(means, tf.exp(0.5 * log_vars))).numpy()
    expected = -(np.log(np.mean(np.exp(-per_component.astype("float64")), axis=1)))
    np.testing.assert_allclose(losses.mixture_kl(m, lv, means, log_vars).numpy(), expected, rtol=1e-5)
    # one component, N(0, I): the exact KL to the standard normal
    zeros = np.zeros((1, 3), "float32")
    np.testing.assert_allclose(losses.mixture_kl(m, lv, zeros, zeros).numpy(),
                               losses.kl_to_standard_normal(m, lv).numpy(), rtol=1e-5)


@pytest.fixture(scope="module")
def vamp():
    return kerasae.build("vae-mlp-vamp", hidden_units=(64,), latent_dim=4, num_pseudo_inputs=5, seed=3)


def test_prior_is_the_mixture_of_the_pseudo_inputs_posteriors(vamp, rng):
    u = tf.clip_by_value(vamp.pseudo_inputs, 0.0, 1.0)
    means, log_vars = vamp.encode(u)
    z = rng.normal(size=(7, 4)).astype("float32")
    expected = _tfp_mixture(means, log_vars).log_prob(z).numpy()
    np.testing.assert_allclose(vamp.prior_log_prob(z).numpy(), expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(vamp.prior().log_prob(z).numpy(), expected, rtol=1e-5, atol=1e-4)


def test_sample_codes_follow_the_mixture(vamp):
    means, log_vars = (t.numpy() for t in vamp.prior_components())
    codes = vamp.sample_codes(40_000, seed=1).numpy()
    # an equal-weight mixture's mean and (per dimension) variance
    mixture_mean = means.mean(0)
    mixture_var = (np.exp(log_vars) + means**2).mean(0) - mixture_mean**2
    np.testing.assert_allclose(codes.mean(0), mixture_mean, atol=4 * np.sqrt(mixture_var / len(codes)).max())
    np.testing.assert_allclose(codes.var(0), mixture_var, rtol=0.05)
    np.testing.assert_array_equal(vamp.sample_codes(10, seed=1).numpy(), vamp.sample_codes(10, seed=1).numpy())
    assert not np.array_equal(vamp.sample_codes(10, seed=1).numpy(), vamp.sample_codes(10, seed=2).numpy())


def tfp_monte_carlo_kl(q, p, n, seed):
    """KL(q || p) by TFP alone: the mean of log q(z) - log p(z) over n draws z ~ q, and its standard error."""
    z = q.sample(n, seed=seed)
    log_ratio = (q.log_prob(z) - p.log_prob(z)).numpy().astype("float64")
    return log_ratio.mean(axis=0), log_ratio.std(axis=0, ddof=1) / np.sqrt(n)


def test_kl_terms(vamp, mnist_binary):
    x = vamp.check_images(mnist_binary[:6])
    n = 20_000
    eps = tf.random.stateless_normal([n, 6, 4], seed=[0, 0])
    log_px_z, log_pz, log_qz, kl = vamp.sample_terms(x, eps)
    # The KL sample_terms estimates from its n draws, against TFP's own draws of q and its MixtureSameFamily: two
    # independent estimates of the same KL, each with standard error se (the same spread of log q - log p).
    expected, se = tfp_monte_carlo_kl(vamp.posterior(x), vamp.prior(), n, seed=7)
    assert np.all(se < 0.05), se
    np.testing.assert_array_less(np.abs(kl.numpy() - expected), 4 * np.sqrt(2) * se)
    # a deterministic approximation close to it
    mean, log_var = vamp.encode(x)
    np.testing.assert_allclose(vamp.kl_divergence(mean, log_var).numpy(), kl.numpy(), rtol=0.1, atol=0.2)
    # log q is q's own density at the drawn z
    z = mean + tf.exp(0.5 * log_var) * eps[:3]
    np.testing.assert_allclose(log_qz[:3].numpy(), losses.diagonal_gaussian(mean, log_var).log_prob(z).numpy(),
                               rtol=1e-5, atol=1e-3)


def test_evaluation_reports_the_kl_to_the_vampprior(mnist_binary):
    from kerasae import evaluate

    vamp = kerasae.build("vae-mlp-vamp", hidden_units=(64,), latent_dim=4, num_pseudo_inputs=5, seed=3)
    # Shift every posterior mean by 3: the pseudo-inputs' posteriors (the prior) move with them, so the KL to the
    # VampPrior stays small while the KL to N(0, I) grows by ~0.5 * 3^2 * 4 = 18 nats.
    kernel, bias = vamp.encoder.get_layer("enc_out").get_weights()
    bias[:4] += 3.0
    vamp.encoder.get_layer("enc_out").set_weights([kernel, bias])
    x = mnist_binary[:8]
    stats = evaluate.posterior_statistics(vamp, x)
    eps = tf.random.stateless_normal([20_000, 8, 4], seed=[3, 4])
    monte_carlo = float(tf.reduce_mean(vamp.sample_terms(vamp.check_images(x), eps)[3]))
    mean, log_var = vamp.encode(x)
    to_standard_normal = float(tf.reduce_mean(losses.kl_to_standard_normal(mean, log_var)))
    assert stats["kl_per_dim"] is None  # a mixture prior does not split by dimension
    assert stats["kl"] == pytest.approx(monte_carlo, rel=0.1, abs=0.3)
    assert to_standard_normal - stats["kl"] > 10, (stats["kl"], to_standard_normal)


def test_training_learns_the_pseudo_inputs(mnist_binary):
    keras.utils.set_random_seed(0)
    model = kerasae.build("vae-mlp-vamp", hidden_units=(64,), latent_dim=4, num_pseudo_inputs=5, seed=0)
    before = model.pseudo_inputs.numpy().copy()
    model.compile(optimizer=optimizers.Adam(3e-3))
    history = model.fit(mnist_binary[:128], epochs=3, batch_size=32, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    assert np.abs(model.pseudo_inputs.numpy() - before).max() > 1e-3
    restored = kerasae.models.VAE.from_config(model.get_config())
    restored.set_weights(model.get_weights())
    x = mnist_binary[:4]
    np.testing.assert_allclose(restored.score(x).numpy(), model.score(x).numpy(), rtol=1e-6)


def test_configs(vamp):
    config = vamp.get_config()
    assert (config["prior_type"], config["num_pseudo_inputs"]) == ("vamp", 5)
    assert "prior_type" not in kerasae.build("vae-mlp").get_config()  # configs saved before priors unchanged
    with pytest.raises(ValueError, match="prior_type"):
        kerasae.build("vae-mlp", prior_type="mixture")
    with pytest.raises(ValueError, match="num_pseudo_inputs"):
        kerasae.build("vae-mlp-vamp", num_pseudo_inputs=0)
    with pytest.raises(ValueError, match='prior_type="vamp"'):
        kerasae.build("vae-mlp").prior_components()
