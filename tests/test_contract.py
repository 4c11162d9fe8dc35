"""The standard contract, run over every registered preset.

A new preset gets all of this for free: it builds, trains, serializes, reloads and
trains on, with the encode/decode shapes the rest of kerasae relies on.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerasae
from kerasae import registry

PRESETS = registry.list_presets()


def _batch(model, mnist_small, mnist_binary, n=64):
    return mnist_binary[:n] if getattr(model, "binary_data", False) else mnist_small.x_train[:n]


def _compiled(model, lr=2e-3):
    model.compile(optimizer=keras.optimizers.Adam(lr))
    return model


def test_every_family_has_presets():
    assert {registry.get_preset(p).family for p in PRESETS} == {"ae", "dae", "vae"}
    required = {"ae-mlp-seed", "ae-shallow", "ae-conv", "dae-mlp", "dae-conv", "vae-mlp", "vae-mlp-2d",
                "vae-conv", "vae-mlp-gaussian", "ae-sparse", "ae-contractive"}
    assert required <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_contract(name, mnist_small, mnist_binary, tmp_path):
    keras.utils.set_random_seed(0)
    model = _compiled(kerasae.build(name))
    x = _batch(model, mnist_small, mnist_binary)

    # shapes of the public API
    codes = model.encode(x[:5])
    z = codes[0] if isinstance(codes, tuple) else codes
    assert tuple(z.shape) == (5, model.latent_dim)
    if isinstance(codes, tuple):  # VAE: (mean, log_var)
        assert tuple(codes[1].shape) == (5, model.latent_dim)
    assert tuple(model.decode(z).shape) == (5, 28, 28, 1)
    assert tuple(model.reconstruct(x[:5]).shape) == (5, 28, 28, 1)
    samples = model.sample(3, seed=1).numpy()
    assert samples.shape == (3, 28, 28, 1) and 0.0 <= samples.min() and samples.max() <= 1.0
    assert tuple(model.score(x[:5]).shape) == (5,)

    # a few fit steps on one small batch lower the loss
    before = model.evaluate(x, batch_size=64, verbose=0, return_dict=True)
    history = model.fit(x, batch_size=32, epochs=8, verbose=0, shuffle=False)
    after = model.evaluate(x, batch_size=64, verbose=0, return_dict=True)
    assert set(model.metric_names) <= set(history.history)
    assert np.isfinite(history.history["loss"]).all()
    assert after["loss"] < before["loss"], (before, after)

    # get_config / from_config: the config is the constructor's arguments
    config = model.get_config()
    clone = type(model).from_config(config)
    assert clone.get_config() == config
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(clone.reconstruct(x[:8]).numpy(), model.reconstruct(x[:8]).numpy())
    copy = model.clone()  # the same, in one call (fine-tuning with other training settings builds on it)
    assert type(copy) is type(model) and copy.get_config() == config
    np.testing.assert_array_equal(copy.reconstruct(x[:8]).numpy(), model.reconstruct(x[:8]).numpy())
    with pytest.raises(ValueError, match="change the architecture"):
        model.clone(latent_dim=model.latent_dim + 1)

    # .keras round trip gives identical outputs, with the class and its training step back
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model) and loaded.get_config() == config
    np.testing.assert_array_equal(loaded.reconstruct(x[:8]).numpy(), model.reconstruct(x[:8]).numpy())
    np.testing.assert_array_equal(loaded.decode(z).numpy(), model.decode(z).numpy())

    # ... and trains on with fit (the optimizer state comes back too)
    assert int(loaded.optimizer.iterations.numpy()) == int(model.optimizer.iterations.numpy()) > 0
    more = loaded.fit(x, batch_size=32, epochs=2, verbose=0, shuffle=False)
    assert np.isfinite(more.history["loss"]).all()
    assert not np.allclose(loaded.get_weights()[0], model.get_weights()[0])


@pytest.mark.parametrize("name", PRESETS)
def test_preset_adapts_to_image_shape(name):
    model = kerasae.build(name, image_shape=(30, 20, 3))
    x = np.random.default_rng(0).random((2, 30, 20, 3), dtype=np.float32)
    assert tuple(model.reconstruct(x).shape) == (2, 30, 20, 3)
    assert tuple(model.sample(2, seed=0).shape) == (2, 30, 20, 3)


def _integer_hash_noise(kind):
    """A stand-in for tf.random.stateless_*: integer hashing, so TF's kernels and XLA give the same draws
    (their Philox streams differ), still keyed by (seed, step) and fresh per step and example."""
    def noise(shape, seed):
        seed = tf.cast(seed, tf.int64)
        index = tf.range(tf.reduce_prod(shape), dtype=tf.int64)
        h = (index * 2654435761 + seed[0] * 97531 + seed[1] * 40503 + 12345) % 2**31
        h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 15)) * 1274126177 % 2**31
        h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 13))
        u = (tf.cast(h % 2**24, tf.float32) + 0.5) / 2**24
        return tf.reshape(u if kind == "uniform" else tf.math.ndtri(u), shape)
    return noise


@pytest.mark.parametrize("name", PRESETS)
def test_preset_trains_the_same_under_xla(name, mnist_small, mnist_binary, monkeypatch):
    """kerasae's XLA loop over a call's steps (the default for models whose `auto_xla` is true; any
    `xla_loop_safe` model with jit_compile=True) takes the same steps as Keras' own train function: same
    batches, same noise keys, losses equal up to rounding. A model that is not loop-safe gets Keras' per-step
    XLA from jit_compile=True instead, which must train the same too. (With TF's own random ops the noise
    itself differs: XLA's stateless Philox stream is not TF's.)"""
    from kerasae.data import make_dataset
    from kerasae.models import base
    from kerasae.training import TrainConfig, train_function_kind, xla_execution_train_function

    for kind in ("normal", "uniform"):
        monkeypatch.setitem(base._STATELESS, kind, _integer_hash_noise(kind))

    probe = kerasae.build(name)
    loop_safe = probe.xla_loop_safe
    chosen = train_function_kind(TrainConfig(jit_compile=True), probe, False, whole_executions=True)
    assert chosen == ("xla-execution" if loop_safe else "keras")
    losses = {}
    for xla in (False, True):
        keras.utils.set_random_seed(0)
        model = kerasae.build(name)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), steps_per_execution=3,  # one call per epoch
                      jit_compile=xla and not loop_safe)
        if xla and loop_safe:
            model.train_function = xla_execution_train_function(model)
        x = _batch(model, mnist_small, mnist_binary, n=40)  # batches of 16, 16, 8: the last one partial
        history = model.fit(make_dataset(x, 16, repeat=True), epochs=3, steps_per_epoch=3, verbose=0,
                            shuffle=False)  # fit's default True: Keras warns it ignores it for a tf.data dataset
        assert int(model.optimizer.iterations.numpy()) == 9
        losses[xla] = history.history["loss"]
    assert np.isfinite(losses[True]).all()
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-4)
