"""Run by test_distribute.py in a fresh process: train the same model with the default strategy and
with MirroredStrategy over 2 CPU replicas on the same batches, print what differs as JSON.

A separate process because the CPU must be split into logical devices before TensorFlow starts.
"""

import json
import sys

from kerasae import distribute

distribute.configure_cpu_replicas(2)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import kerasae  # noqa: E402
from kerasae import data  # noqa: E402


def run(strategy, preset, x, init_weights, overrides):
    with strategy.scope():
        model = kerasae.build(preset, seed=123, **overrides)
        model.set_weights(init_weights)
        # plain SGD: unlike Adam, its step scales with the gradient, so a mis-scaled loss shows
        model.compile(optimizer=keras.optimizers.SGD(1e-4))
    history = model.fit(data.make_dataset(x, 64), epochs=2, verbose=0, shuffle=False)
    return model.get_weights(), history.history


def main(preset):
    overrides = dict(hidden_units=(64, 32), latent_dim=8)
    x = data.load_mnist().take(256, 1).x_train
    keras.utils.set_random_seed(0)
    template = kerasae.build(preset, seed=123, **overrides)
    if getattr(template, "binary_data", False):
        x = data.binarize(x, seed=1)
    init = template.get_weights()
    mirrored = distribute.get_strategy("mirrored")
    assert mirrored.num_replicas_in_sync == 2, mirrored.num_replicas_in_sync
    w1, h1 = run(tf.distribute.get_strategy(), preset, x, init, overrides)
    w2, h2 = run(mirrored, preset, x, init, overrides)
    print(json.dumps({
        "replicas": mirrored.num_replicas_in_sync,
        "max_weight_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(w1, w2)),
        "max_weight_change": max(float(np.max(np.abs(a - b))) for a, b in zip(w1, init)),
        "history_single": h1, "history_mirrored": h2,
    }))


if __name__ == "__main__":
    main(sys.argv[1])
