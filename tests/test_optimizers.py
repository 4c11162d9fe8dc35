"""kerasae.optimizers.Adam: Keras' Adam, fused into one TensorFlow kernel per variable."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerasae import optimizers


def _run(optimizer, shapes, grads):
    variables = [keras.Variable(np.full(shape, 0.5, np.float32)) for shape in shapes]
    optimizer.build(variables)
    step = tf.function(lambda gs: optimizer.apply(gs, variables))
    for gs in grads:
        step([tf.constant(g) for g in gs])
    return [v.numpy() for v in variables], [v.numpy() for v in optimizer.variables]


@pytest.mark.parametrize("kwargs", [{}, {"beta_1": 0.5, "beta_2": 0.9, "epsilon": 1e-3, "weight_decay": 0.01},
                                    {"clipnorm": 0.1}])
def test_matches_keras_adam_step_for_step(kwargs):
    rng = np.random.default_rng(0)
    shapes = [(64, 32), (32,), (3, 3, 4, 8)]
    grads = [[rng.normal(size=s).astype(np.float32) * 10.0 ** rng.integers(-4, 2) for s in shapes] for _ in range(20)]
    schedule = keras.optimizers.schedules.CosineDecay(1e-2, decay_steps=20, alpha=0.05)
    want, want_slots = _run(keras.optimizers.Adam(schedule, **kwargs), shapes, grads)
    got, got_slots = _run(optimizers.Adam(schedule, **kwargs), shapes, grads)
    for a, b in zip([*want, *want_slots], [*got, *got_slots], strict=True):
        np.testing.assert_allclose(b, a, rtol=2e-5, atol=1e-7)
    assert not np.allclose(got[0], 0.5)  # it did train


def test_amsgrad_falls_back_and_config_round_trips():
    rng = np.random.default_rng(1)
    grads = [[rng.normal(size=(5,)).astype(np.float32)] for _ in range(5)]
    want, _ = _run(keras.optimizers.Adam(1e-2, amsgrad=True), [(5,)], grads)
    got, _ = _run(optimizers.Adam(1e-2, amsgrad=True), [(5,)], grads)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(optimizers.Adam(3e-4)))
    assert type(restored) is optimizers.Adam and float(restored.learning_rate) == pytest.approx(3e-4)
