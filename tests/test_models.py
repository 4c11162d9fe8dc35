"""Model behaviour beyond the shared contract: denoising, regularizers, config and input checks."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerasae
from kerasae import registry


def test_dae_corrupts_only_in_training(mnist_small, monkeypatch):
    model = kerasae.build("dae-mlp", hidden_units=(32,), latent_dim=8)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    x = mnist_small.x_train[:64]
    calls = []
    original = model._corrupt
    monkeypatch.setattr(model, "_corrupt", lambda images, noise: calls.append(1) or original(images, noise))
    model.fit(x, batch_size=32, epochs=1, verbose=0)
    assert calls, "the training step never corrupted its input"
    calls.clear()
    model.evaluate(x, batch_size=32, verbose=0)
    model.predict(x, batch_size=32, verbose=0)
    model.reconstruct(x[:4])
    assert not calls, "evaluation/inference corrupted the input"


def _softplus(t):
    return np.logaddexp(0.0, t)


def _numpy_bce_and_mse(x, logits):
    """Per-image binary cross-entropy (nats, from logits) and MSE per pixel of sigmoid(logits), in float64."""
    x, logits = np.asarray(x, np.float64), np.asarray(logits, np.float64)
    bce = (_softplus(logits) - x * logits).sum(axis=(1, 2, 3))
    return bce, ((1.0 / (1.0 + np.exp(-logits)) - x) ** 2).mean(axis=(1, 2, 3))


@pytest.mark.parametrize("noise_type, level", [("gaussian", 0.5), ("masking", 0.4), ("salt_and_pepper", 0.3)])
def test_dae_training_loss_is_the_clean_images_reconstruction_error(noise_type, level, mnist_small, rng,
                                                                     monkeypatch):
    """A training step encodes the corrupted images and scores the reconstruction against the CLEAN ones;
    evaluation (training=False, `evaluate`) encodes the clean images. Noise fixed to a known array."""
    model = kerasae.build("dae-mlp", hidden_units=(32,), latent_dim=8, noise_type=noise_type, noise_level=level,
                          seed=3)
    out = model.decoder.get_layer("dec_out")
    kernel, bias = out.get_weights()
    out.set_weights([kernel, rng.normal(scale=3.0, size=bias.shape)])  # confident pixels: targets matter
    x = mnist_small.x_train[:16]
    normal = rng.standard_normal(x.shape).astype(np.float32)
    uniform = rng.random(x.shape).astype(np.float32)
    requests = []

    def known_noise(kind, shape, step=None, stream=0):
        requests.append((kind, int(step)))
        return tf.constant({"normal": normal, "uniform": uniform}[kind])

    monkeypatch.setattr(model, "training_noise", known_noise)
    # the corruptions, written out in numpy
    if noise_type == "gaussian":
        corrupted = np.clip(x + level * normal, 0.0, 1.0)
    elif noise_type == "masking":
        corrupted = np.where(uniform < level, 0.0, x)
    else:
        corrupted = np.where(uniform < level / 2, 1.0, np.where(uniform < level, 0.0, x))
    assert np.mean(corrupted != x) > 0.05  # masking changes ink only (~19% of MNIST pixels)

    terms = model.compute_terms(x, training=True, step=tf.constant(7, tf.int64))
    assert requests and all(step == 7 for _, step in requests)
    logits = model.decoder(model.encoder(corrupted.astype(np.float32))).numpy()
    bce, mse = _numpy_bce_and_mse(x, logits)
    np.testing.assert_allclose(terms["reconstruction_loss"].numpy(), bce, rtol=1e-5)
    np.testing.assert_allclose(terms["loss"].numpy(), bce, rtol=1e-5)
    np.testing.assert_allclose(terms["mse"].numpy(), mse, rtol=1e-5)
    wrong_target, _ = _numpy_bce_and_mse(corrupted, logits)  # what reconstructing the corrupted input would give
    assert np.abs(wrong_target - bce).max() > 100 * 1e-5 * bce.max(), "cannot tell the clean target from the corrupted"

    requests.clear()
    clean_bce, clean_mse = _numpy_bce_and_mse(x, model.decoder(model.encoder(x)).numpy())
    evaluation = model.compute_terms(x, training=False)
    np.testing.assert_allclose(evaluation["loss"].numpy(), clean_bce, rtol=1e-5)
    np.testing.assert_allclose(evaluation["mse"].numpy(), clean_mse, rtol=1e-5)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    result = model.evaluate(x, batch_size=8, verbose=0, return_dict=True)
    assert result["loss"] == pytest.approx(clean_bce.mean(), rel=1e-5)
    assert result["mse"] == pytest.approx(clean_mse.mean(), rel=1e-5)
    assert not requests, "evaluation drew training noise"


@pytest.mark.parametrize("noise_type,level", [("gaussian", 0.3), ("masking", 0.5), ("salt_and_pepper", 0.2)])
def test_corruption_statistics(noise_type, level, mnist_small):
    model = kerasae.build("dae-mlp", hidden_units=(16,), latent_dim=4, noise_type=noise_type, noise_level=level)
    x = mnist_small.x_train[:128]
    noisy = model.corrupt(x, seed=7).numpy()
    np.testing.assert_array_equal(noisy, model.corrupt(x, seed=7).numpy())  # seeded: reproducible
    assert not np.array_equal(noisy, model.corrupt(x, seed=8).numpy())
    assert noisy.min() >= 0.0 and noisy.max() <= 1.0
    if noise_type == "gaussian":
        grey = np.full((64, 28, 28, 1), 0.5, np.float32)  # against numpy's clipped normal at 0.5
        expected = np.clip(0.5 + level * np.random.default_rng(0).normal(size=10**6), 0, 1).std()
        assert abs(model.corrupt(grey, seed=3).numpy().std() - expected) < 0.005
    elif noise_type == "masking":
        ink = x > 0
        assert abs(np.mean(noisy[ink] == 0) - level) < 0.02
        np.testing.assert_array_equal(noisy[~ink], 0.0)
        np.testing.assert_array_equal(noisy[ink & (noisy > 0)], x[ink & (noisy > 0)])
    else:
        changed = noisy != x
        assert np.isin(noisy[changed], (0.0, 1.0)).all()
        background = x == 0  # pepper on background is invisible: count salt there, 1 per 2 hits
        assert abs(np.mean(noisy[background] == 1.0) - level / 2) < 0.01


def test_contractive_penalty_is_the_jacobian_frobenius_norm(rng):
    model = kerasae.build("ae-contractive", hidden_units=(16,), latent_dim=3, image_shape=(4, 4, 1),
                          contractive_weight=0.5)
    x = tf.constant(rng.random((5, 4, 4, 1)), tf.float32)
    penalty = model.compute_terms(x)["penalty"].numpy()
    expected = []
    for i in range(5):
        xi = x[i:i + 1]
        with tf.GradientTape() as tape:
            tape.watch(xi)
            z = model.encoder(xi)
        jac = tape.jacobian(z, xi).numpy()  # [1, 3, 1, 4, 4, 1]
        expected.append(0.5 * np.sum(jac**2))
    np.testing.assert_allclose(penalty, expected, rtol=1e-4)


def test_sparsity_penalties(rng):
    x = tf.constant(rng.random((6, 28, 28, 1)), tf.float32)
    l1 = kerasae.build("ae-sparse", sparsity_weight=0.1)
    np.testing.assert_allclose(l1.compute_terms(x)["penalty"].numpy(),
                               0.1 * np.abs(l1.encode(x).numpy()).sum(axis=-1), rtol=1e-5)
    kl = kerasae.build("ae-sparse-kl", sparsity_weight=2.0, sparsity_target=0.1)
    rho_hat = kl.encode(x).numpy().mean(axis=0)
    expected = 2.0 * np.sum(0.1 * np.log(0.1 / rho_hat) + 0.9 * np.log(0.9 / (1 - rho_hat)))
    np.testing.assert_allclose(kl.compute_terms(x)["penalty"].numpy(), expected, rtol=1e-4)
    with pytest.raises(ValueError, match="code_activation='sigmoid'"):
        kerasae.build("ae-sparse-kl", code_activation="relu")


def _trained(preset, x, **kwargs):
    keras.utils.set_random_seed(0)
    model = kerasae.build(preset, **kwargs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(x, batch_size=32, epochs=8, verbose=0)
    return model


def test_sparse_training_makes_sparser_codes(mnist_small):
    x = mnist_small.x_train
    sparse, plain = _trained("ae-sparse", x), _trained("ae-sparse", x, sparsity=None)
    assert np.abs(sparse.encode(x).numpy()).mean() < 0.6 * np.abs(plain.encode(x).numpy()).mean()


def test_contractive_training_shrinks_the_jacobian(mnist_small):
    x = tf.constant(mnist_small.x_train)
    norms = []
    for weight in (0.1, 0.0):
        model = _trained("ae-contractive", x, contractive_weight=weight)
        with tf.GradientTape() as tape:
            tape.watch(x)
            z = model.encoder(x)
        norms.append(np.sum(tape.batch_jacobian(z, x).numpy() ** 2) / len(x))
    assert norms[0] < 0.5 * norms[1], norms


@pytest.mark.parametrize("kwargs,match", [
    (dict(latent_dim=0), "latent_dim must be a positive integer"),
    (dict(latent_dim=2.5), "latent_dim must be a positive integer"),
    (dict(arch="rnn"), "arch must be one of"),
    (dict(hidden_units=(64, -1)), r"hidden_units\[1\]"),
    (dict(image_shape=(28, 28)), "image_shape must be"),
    (dict(reconstruction_loss="l2"), "reconstruction_loss must be one of"),
    (dict(activation="nope"), "nope"),
])
def test_bad_model_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kerasae.build("ae-shallow", **kwargs)


@pytest.mark.parametrize("preset,kwargs,match", [
    ("vae-mlp", dict(beta=-1.0), "beta must be in"),
    ("vae-mlp", dict(num_importance_samples=0), "num_importance_samples"),
    ("vae-mlp", dict(likelihood="poisson"), "likelihood must be one of"),
    ("dae-mlp", dict(noise_type="masking", noise_level=1.5), "noise_level"),
    ("dae-mlp", dict(noise_type="blur"), "noise_type must be one of"),
])
def test_bad_family_config(preset, kwargs, match):
    with pytest.raises(ValueError, match=match):
        kerasae.build(preset, **kwargs)


def test_registry_errors_list_the_valid_choices():
    with pytest.raises(ValueError, match=r"unknown preset 'vae-huge' \(\d+ presets: `kerasae train --list-presets` "
                                         r"or kerasae.list_presets\(\)\)"):
        kerasae.build("vae-huge")
    with pytest.raises(ValueError, match="unknown preset 'vae-mpl'; did you mean 'vae-mlp'"):
        kerasae.build("vae-mpl")
    with pytest.raises(ValueError, match="unknown keyword.*laten_dim.*valid:.*latent_dim"):
        kerasae.build("vae-mlp", laten_dim=3)
    with pytest.raises(ValueError, match="noise_type"):  # DAE keywords are not VAE keywords
        kerasae.build("vae-mlp", noise_type="gaussian")
    assert "noise_level" in registry.valid_keywords(kerasae.DenoisingAutoencoder)
    assert "latent_dim" in registry.valid_keywords(kerasae.DenoisingAutoencoder)


def test_wrong_inputs_get_clear_errors():
    model = kerasae.build("vae-mlp", hidden_units=(16,), latent_dim=4)
    with pytest.raises(ValueError, match=r"shape \[batch, 28, 28, 1\].*got shape \[2, 28, 28\]"):
        model.reconstruct(np.zeros((2, 28, 28), np.float32))
    with pytest.raises(ValueError, match=r"got shape \[2, 32, 32, 1\]"):
        model.encode(np.zeros((2, 32, 32, 1), np.float32))
    with pytest.raises(TypeError, match="uint8"):
        model.reconstruct(np.zeros((2, 28, 28, 1), np.uint8))
    with pytest.raises(ValueError, match=r"z must have shape \[batch, 4\]"):
        model.decode(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="n must be a positive integer"):
        model.sample(0)


def test_bad_values_get_clear_errors():
    model = kerasae.build("vae-mlp", hidden_units=(16,), latent_dim=4)
    x = np.full((2, 28, 28, 1), 0.5, np.float32)
    for bad, match in ((np.nan, "x contains NaN or Inf"), (np.inf, "x contains NaN or Inf"),
                       (1.5, r"pixel values in \[0, 1\], found values in \[0.5, 1.5\]"),
                       (-0.1, r"found values in \[-0.1, 0.5\]")):
        x_bad = x.copy()
        x_bad[1, 3, 4, 0] = bad
        for method in (model.reconstruct, model.encode, model.score):
            with pytest.raises(ValueError, match=match):
                method(x_bad)
    with pytest.raises(ValueError, match="z contains NaN or Inf"):
        model.decode(np.array([[0.0, np.nan, 0.0, 0.0]], np.float32))


def test_kl_warmup_ramps_the_kl_weight_during_training_only(mnist_binary):
    vae = kerasae.build("vae-mlp", hidden_units=[16], latent_dim=3, kl_warmup_steps=10, beta=2.0, seed=0)
    assert [float(vae.kl_weight(tf.constant(s, tf.int64))) for s in (0, 4, 9, 50)] == pytest.approx(
        [0.2, 1.0, 2.0, 2.0])
    assert vae.kl_weight(None) == 2.0
    x = mnist_binary[:8]
    warm = vae.compute_terms(x, training=True, step=tf.constant(4, tf.int64))
    np.testing.assert_allclose(warm["loss"], warm["reconstruction_loss"] + 1.0 * warm["kl"], rtol=1e-5)
    evaluation = vae.compute_terms(x, training=False)
    np.testing.assert_allclose(evaluation["loss"], evaluation["reconstruction_loss"] + 2.0 * evaluation["kl"],
                               rtol=1e-5)
    assert type(vae).from_config(vae.get_config()).kl_warmup_steps == 10
    with pytest.raises(ValueError, match="kl_warmup_steps"):
        kerasae.build("vae-mlp", kl_warmup_steps=-1)
