"""Run by test_distribute.py in a fresh process: train the same model with the default strategy and
with MirroredStrategy over 2 CPU replicas on the same batches, print what differs as JSON.

`mirrored_check.py PRESET`: plain `model.fit` with SGD, one step per call.
`mirrored_check.py train PRESET`: the real path, `kerasae.train` (Adam, several steps per call),
once where every call runs whole executions on one iterator and once where they cannot.

A separate process because the CPU must be split into logical devices before TensorFlow starts.
"""

import json
import sys
import tempfile
from pathlib import Path

from kerasae import distribute

distribute.configure_cpu_replicas(2)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import kerasae  # noqa: E402
from kerasae import data  # noqa: E402


def run(strategy, preset, x, init_weights, overrides, labels=None):
    with strategy.scope():
        model = kerasae.build(preset, seed=123, **overrides)
        model.set_weights(init_weights)
        # plain SGD: unlike Adam, its step scales with the gradient, so a mis-scaled loss shows
        model.compile(optimizer=keras.optimizers.SGD(1e-4))
    history = model.fit(data.make_dataset(x, 64, labels=labels), epochs=2, verbose=0, shuffle=False)
    return model.get_weights(), history.history


def small(preset):
    """A small version of `preset` (a hierarchical VAE's latent_dim is the sum of its latent_dims)."""
    if preset.startswith("vqvae"):
        return dict(hidden_units=(64, 32), num_codes=4, num_embeddings=16, embedding_dim=4)
    if preset.startswith("hvae"):
        return dict(hidden_units=(64,), latent_dims=(4, 4), stochastic_units=32, num_pseudo_inputs=10)
    return dict(hidden_units=(64, 32), latent_dim=8)


def main(preset):
    overrides = small(preset)
    mnist = data.load_mnist().take(256, 1)
    x = mnist.x_train
    keras.utils.set_random_seed(0)
    template = kerasae.build(preset, seed=123, **overrides)
    if getattr(template, "binary_data", False):
        x = data.binarize(x, seed=1)
    init = template.get_weights()
    mirrored = distribute.get_strategy("mirrored")
    assert mirrored.num_replicas_in_sync == 2, mirrored.num_replicas_in_sync
    labels = mnist.y_train if template.conditional else None  # a conditional model trains on (images, labels)
    w1, h1 = run(tf.distribute.get_strategy(), preset, x, init, overrides, labels)
    w2, h2 = run(mirrored, preset, x, init, overrides, labels)
    print(json.dumps({
        "replicas": mirrored.num_replicas_in_sync,
        "max_weight_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(w1, w2)),
        "max_weight_change": max(float(np.max(np.abs(a - b))) for a, b in zip(w1, init)),
        "history_single": h1, "history_mirrored": h2,
    }))


def train_paths(preset):
    """kerasae.train under both strategies, for two training-set sizes (batch 64, 4 steps per call wanted):
    512 + 256 validation images (8 and 4 steps: one iterator, 4 steps per call) and 576 + 128 (9 and 2
    steps: per-epoch iterators)."""
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, train_images, val_images in (("whole", 512, 256), ("partial", 576, 128)):
            for strategy in ("default", "mirrored"):
                result = kerasae.train(
                    preset=preset, model_kwargs=dict(hidden_units=[64, 32], latent_dim=8, seed=5), epochs=2,
                    batch_size=64, steps_per_execution=4, max_train_samples=train_images + val_images,
                    validation_size=val_images, max_test_samples=128, seed=3, strategy=strategy,
                    cpu_replicas=2 if strategy == "mirrored" else None, out=str(Path(tmp) / f"{name}-{strategy}"),
                    verbose=0)
                runs[f"{name}-{strategy}"] = {
                    "replicas": result.metrics["replicas"], "one_iterator": result.metrics["one_iterator"],
                    "steps_per_execution": result.metrics["steps_per_execution"],
                    "iterations": int(result.model.optimizer.iterations.numpy()),
                    "history": result.history, "test": result.metrics["test"]}
        # another model (other shapes) under mirrored in the same process: its all-reduce must not meet the
        # first one's; and XLA with several replicas must be refused up front
        other = kerasae.train(preset="ae-shallow", epochs=1, batch_size=64, max_train_samples=512,
                              validation_size=0, max_test_samples=64, strategy="mirrored", cpu_replicas=2,
                              out=str(Path(tmp) / "other"), verbose=0)
        runs["other-model"] = {"test": other.metrics["test"], "replicas": other.metrics["replicas"]}
        # sets smaller than the batch, odd: every first batch splits 14/13 or 13/12 across the replicas
        uneven = kerasae.train(preset=preset, model_kwargs=dict(hidden_units=[64, 32], latent_dim=8), epochs=2,
                               batch_size=64, max_train_samples=27 + 25, validation_size=25, max_test_samples=25,
                               strategy="mirrored", cpu_replicas=2, out=str(Path(tmp) / "uneven"), verbose=0)
        runs["uneven"] = {"history": uneven.history, "test": uneven.metrics["test"],
                          "replicas": uneven.metrics["replicas"]}
        try:
            kerasae.train(preset="ae-shallow", epochs=1, strategy="mirrored", cpu_replicas=2, jit_compile=True,
                          max_train_samples=512, out=str(Path(tmp) / "jit"), verbose=0)
            runs["jit_error"] = None
        except ValueError as err:
            runs["jit_error"] = str(err)
    print(json.dumps(runs))


if __name__ == "__main__":
    if sys.argv[1] == "train":
        train_paths(sys.argv[2])
    else:
        main(sys.argv[1])
