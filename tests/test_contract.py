"""The standard contract, run over every registered preset.

A new autoencoder preset gets all of this for free: it builds, trains, serializes, reloads
and trains on, with the encode/decode shapes the rest of kerasae relies on. Each preset is
fed images of its own shape: MNIST at 28x28x1, smooth random colour images otherwise.
The codec presets (the learned image codec's quality ladder) have no encode/decode/sample
API: their own contract, at the end, builds, trains, saves, reloads and exports them.
"""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerasae
from kerasae import optimizers, registry
from kerasae.data import binarize

#: The autoencoder presets (the families kerasae.train trains); the codec presets' contract is at the end.
PRESETS = [name for name in registry.list_presets() if registry.get_preset(name).family in registry.FAMILIES]
CODEC_PRESETS = registry.list_presets(registry.CODEC_FAMILY)


@functools.lru_cache(maxsize=None)
def _smooth_images(shape, n):
    """n deterministic colour images in [0, 1]: low-resolution noise upsampled bilinearly (image-like blobs)."""
    h, w, c = shape
    low = np.random.default_rng(0).random((n, max(2, h // 4), max(2, w // 4), c), dtype=np.float32)
    return np.clip(tf.image.resize(low, (h, w), method="bilinear").numpy(), 0.0, 1.0)


def _batch(model, mnist_small, mnist_binary, n=64):
    """n training images of the model's shape, binarized for binary models."""
    binary = getattr(model, "binary_data", False)
    if tuple(model.image_shape) == (28, 28, 1):
        return mnist_binary[:n] if binary else mnist_small.x_train[:n]
    x = _smooth_images(tuple(model.image_shape), n)
    return binarize(x, seed=0) if binary else x


def _labels(model, mnist_small, n):
    """A conditional model's labels for `_batch`'s n images (MNIST's, else cycling through the classes); None
    for other models. `_with(labels, k)` is what to pass beside k images: () or (their labels,)."""
    if not model.conditional:
        return None
    if tuple(model.image_shape) == (28, 28, 1):
        return mnist_small.y_train[:n]
    return np.arange(n) % model.num_classes


def _with(labels, k):
    return () if labels is None else (labels[:k],)


def _fit_size(model):
    """Images the contract fits on: fewer for residual stacks (an image costs ~20x a conv preset's on CPU)."""
    if model.arch != "resnet":
        return 64
    return 16 if np.prod(model.image_shape[:2]) <= 32 * 32 else 8


def _compiled(model, lr=2e-3):
    """Compiled with kerasae's fused Adam (training's: fewer ops to trace), its slots made up front: built
    inside fit's first trace instead, they make TF trace the train step twice (~8 s for a residual stack)."""
    model.compile(optimizer=optimizers.Adam(lr))
    model.optimizer.build(model.trainable_variables)
    return model


def test_every_family_has_presets():
    assert {registry.get_preset(p).family for p in PRESETS} == {"ae", "dae", "vae", "cvae", "vqvae"}
    required = {"ae-mlp-seed", "ae-shallow", "ae-conv", "dae-mlp", "dae-conv", "vae-mlp", "vae-mlp-2d",
                "vae-conv", "vae-mlp-gaussian", "ae-sparse", "ae-contractive"}
    required |= {f"{family}-resnet-{size}" for family in ("ae", "dae", "vae") for size in (28, 32, 64)}
    assert required <= set(PRESETS)
    assert sorted(PRESETS + CODEC_PRESETS) == sorted(registry.list_presets())  # each under one of the contracts


@pytest.mark.parametrize("name", PRESETS)
def test_preset_contract(name, mnist_small, mnist_binary, tmp_path):
    keras.utils.set_random_seed(0)
    model = _compiled(kerasae.build(name))
    x = _batch(model, mnist_small, mnist_binary, n=_fit_size(model))
    y = _labels(model, mnist_small, len(x))  # a conditional model's (Keras' targets), else None
    shape = tuple(model.image_shape)

    # shapes of the public API
    codes = model.encode(x[:5], *_with(y, 5))
    z = codes[0] if isinstance(codes, tuple) else codes
    assert tuple(z.shape) == (5, model.latent_dim)
    if isinstance(codes, tuple):  # VAE: (mean, log_var)
        assert tuple(codes[1].shape) == (5, model.latent_dim)
    assert tuple(model.decode(z, *_with(y, 5)).shape) == (5, *shape)
    assert tuple(model.reconstruct(x[:5], *_with(y, 5)).shape) == (5, *shape)
    samples = model.sample_examples(3, seed=1).numpy()
    assert samples.shape == (3, *shape) and 0.0 <= samples.min() and samples.max() <= 1.0
    assert tuple(model.score(x[:5], *_with(y, 5)).shape) == (5,)

    # a few fit steps on one small batch lower the loss
    before = model.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    history = model.fit(x, y, batch_size=32, epochs=8, verbose=0, shuffle=False)
    after = model.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    assert set(model.metric_names) <= set(history.history)
    assert np.isfinite(history.history["loss"]).all()
    assert after["loss"] < before["loss"], (before, after)

    # get_config / from_config: the config is the constructor's arguments
    config = model.get_config()
    clone = type(model).from_config(config)
    assert clone.get_config() == config
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(clone.reconstruct_examples(x[:8], *_with(y, 8)).numpy(),
                                  model.reconstruct_examples(x[:8], *_with(y, 8)).numpy())
    copy = model.clone()  # the same, in one call (fine-tuning with other training settings builds on it)
    assert type(copy) is type(model) and copy.get_config() == config
    np.testing.assert_array_equal(copy.reconstruct_examples(x[:8], *_with(y, 8)).numpy(),
                                  model.reconstruct_examples(x[:8], *_with(y, 8)).numpy())
    if hasattr(model, "latent_dims"):  # a hierarchical VAE's latent_dim is their sum
        wider = {"latent_dims": (model.latent_dims[0], model.latent_dims[1] + 1)}
    elif model.family == "vqvae":  # its latent_dim is the code length, set by the architecture
        wider = {"embedding_dim": model.embedding_dim + 1}
    else:
        wider = {"latent_dim": model.latent_dim + 1}
    with pytest.raises(ValueError, match="change the architecture"):
        model.clone(**wider)

    # .keras round trip gives identical outputs, with the class and its training step back
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model) and loaded.get_config() == config
    np.testing.assert_array_equal(loaded.reconstruct_examples(x[:8], *_with(y, 8)).numpy(),
                                  model.reconstruct_examples(x[:8], *_with(y, 8)).numpy())
    np.testing.assert_array_equal(loaded.decode(z, *_with(y, 5)).numpy(), model.decode(z, *_with(y, 5)).numpy())

    # ... and trains on with fit (the optimizer state comes back too)
    assert int(loaded.optimizer.iterations.numpy()) == int(model.optimizer.iterations.numpy()) > 0
    more = loaded.fit(x, y, batch_size=32, epochs=2, verbose=0, shuffle=False)
    assert np.isfinite(more.history["loss"]).all()
    assert not np.allclose(loaded.get_weights()[0], model.get_weights()[0])


@pytest.mark.parametrize("name", PRESETS)
def test_preset_adapts_to_image_shape(name):
    model = kerasae.build(name, image_shape=(30, 20, 3))
    x = np.random.default_rng(0).random((2, 30, 20, 3), dtype=np.float32)
    labels = np.array([0, 1]) if model.conditional else None
    assert tuple(model.reconstruct_examples(x, labels).shape) == (2, 30, 20, 3)
    assert tuple(model.sample_examples(2, seed=0).shape) == (2, 30, 20, 3)


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


#: Presets whose graphs under XLA are another preset's with other sizes (XLA compiles the same ops): their XLA
#: rerun would add a minute of compiling to the suite and no op the named twin does not run.
XLA_TWINS = {"ae-shallow": "ae-mlp-seed", "vae-mlp-2d": "vae-mlp", "dae-conv": "dae-mlp + ae-conv",
             "vqvae-conv": "vqvae-mlp + ae-conv"}


def _xla_cases():
    """Every preset but the residual ones, which are represented by vae-resnet-28 (slow: XLA compiles a
    residual stack's convolutions for a minute or more on CPU, and they train without XLA unless asked,
    see `auto_xla`; the other residual presets differ in sizes and likelihood only), and XLA_TWINS."""
    cases = [n for n in PRESETS if registry.get_preset(n).kwargs.get("arch") != "resnet" and n not in XLA_TWINS]
    return cases + [pytest.param("vae-resnet-28", marks=pytest.mark.slow)]


def _nudge_weights(model, seed):
    """Multiply every float weight by 1 +- 2^-23 (one float32 rounding step, random signs): what a different
    summation order does to a value, once."""
    rng = np.random.default_rng(seed)
    model.set_weights([w * (1 + rng.choice([-1.0, 1.0], size=w.shape) * 2.0**-23).astype(w.dtype)
                       if np.issubdtype(w.dtype, np.floating) else w for w in model.get_weights()])


#: How far XLA's losses may be from TF's, in units of the spread that rounding alone causes (a `_nudge_weights` run),
#: and a floor below which they agree whatever that spread. Measured on an AMD EPYC (AVX2), relative differences
#: of the 9 steps' losses: vae-resnet-28, XLA 1.7e-3, nudged runs 6.1e-4 and 1.3e-3 (training amplifies rounding
#: through the normalized stack; a Xeon with AMX, which sums in other orders, gave XLA 1.4e-3); the other presets,
#: XLA <= 2.7e-6 (iwae-mlp) while a nudge moves their losses by <= 1.5e-6, often not at all (their loss is a float32
#: mean, XLA fuses its reductions in another order; nothing amplifies it in 9 steps).
XLA_SPREADS = 5.0
XLA_FLOOR = 2e-5


@pytest.mark.parametrize("name", _xla_cases())
def test_preset_trains_the_same_under_xla(name, mnist_small, mnist_binary, monkeypatch):
    """kerasae's XLA loop over a call's steps (the default for models whose `auto_xla` is true; any
    `xla_loop_safe` model with jit_compile=True) takes the same steps as Keras' own train function: same
    batches, same noise keys, losses equal up to rounding. A model that is not loop-safe gets Keras' per-step
    XLA from jit_compile=True instead, which must train the same too. (With TF's own random ops the noise
    itself differs: XLA's stateless Philox stream is not TF's.)

    "Up to rounding" is measured, not assumed: training amplifies a rounding difference from step to step (a
    deep normalized stack from 1e-6 at the first step to ~1e-3 after 9), by a factor that depends on the model
    and the CPU. So where XLA's losses are beyond XLA_FLOOR, TF's run is repeated with its initial weights nudged
    by one rounding step, and XLA's must be within XLA_SPREADS times the difference that caused; a different
    batch, noise key or step count moves them by far more."""
    from kerasae.data import make_dataset
    from kerasae.models import base
    from kerasae.training import TrainConfig, train_function_kind, xla_execution_train_function

    for kind in ("normal", "uniform"):
        monkeypatch.setitem(base._STATELESS, kind, _integer_hash_noise(kind))

    probe = kerasae.build(name)
    loop_safe = probe.xla_loop_safe
    chosen = train_function_kind(TrainConfig(jit_compile=True), probe, False, whole_executions=True)
    assert chosen == ("xla-execution" if loop_safe else "keras")

    def train(xla=False, nudged=False):
        keras.utils.set_random_seed(0)
        model = kerasae.build(name)
        if nudged:
            _nudge_weights(model, seed=1)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), steps_per_execution=3,  # one call per epoch
                      jit_compile=xla and not loop_safe)
        if xla and loop_safe:
            model.train_function = xla_execution_train_function(model)
        x = _batch(model, mnist_small, mnist_binary, n=40)  # batches of 16, 16, 8: the last one partial
        history = model.fit(make_dataset(x, 16, repeat=True, labels=_labels(model, mnist_small, 40)), epochs=3,
                            steps_per_epoch=3, verbose=0,
                            shuffle=False)  # fit's default True: Keras warns it ignores it for a tf.data dataset
        assert int(model.optimizer.iterations.numpy()) == 9
        return np.asarray(history.history["loss"], np.float64)

    tf_losses = train()

    def relative(losses):
        return np.abs(losses - tf_losses) / np.abs(tf_losses)

    xla_losses = train(xla=True)
    assert np.isfinite(xla_losses).all()
    if relative(xla_losses).max() <= XLA_FLOOR:
        return
    spread = relative(train(nudged=True)).max()  # only where it can matter: the floor holds for most presets
    assert spread < 0.01, f"rounding alone moves {name}'s loss by {spread:.2g}: the comparison says nothing"
    assert relative(xla_losses).max() <= XLA_SPREADS * spread, (relative(xla_losses), spread)


# ---- the codec presets ----------------------------------------------------------------------------------------

#: CompressAI's MSE quality ladder (its bmshj2018 models, quality 1 to 8): the weights the codec presets carry.
COMPRESSAI_LAMBDAS = (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800)
CODEC_CLASSES = {"hyperprior": "ScaleHyperpriorCodec", "factorized": "FactorizedPriorCodec"}


def test_the_codec_presets_are_the_whole_quality_ladder():
    from kerasae.codec import ladder

    assert CODEC_PRESETS == [f"codec-{family}-q{q}" for family in CODEC_CLASSES for q in range(1, 9)]
    assert ladder.QUALITY_LAMBDAS == COMPRESSAI_LAMBDAS
    assert "codec" not in registry.FAMILIES  # not an --arch: kerasae.train trains autoencoders only


@pytest.mark.parametrize("name", CODEC_PRESETS)
def test_codec_preset_contract(name, tmp_path):
    """Every rung builds from its preset with the ladder's lmbda, its config rebuilds it, and kerasae.train
    (which trains autoencoders) refuses it."""
    _, family, rung = name.split("-")
    quality = int(rung[1:])
    preset = registry.get_preset(name)
    model = kerasae.build(name, seed=0)
    assert type(model).__name__ == CODEC_CLASSES[family] and model.family == preset.family == "codec"
    assert model.lmbda == COMPRESSAI_LAMBDAS[quality - 1]
    assert (model.channels, model.filters, model.latent_channels) == (3, 64, 128)
    assert f"quality {quality} of 8" in preset.description and f"{model.lmbda:.4f}" in preset.description

    config = model.get_config()
    clone = type(model).from_config(config)
    assert clone.get_config() == config
    assert [(w.path, w.shape) for w in clone.weights] == [(w.path, w.shape) for w in model.weights]

    with pytest.raises(ValueError, match=rf"preset '{name}' is a learned image codec.*train_codec.py --family "
                       rf"{family} --quality {quality}"):
        kerasae.train(preset=name, out=str(tmp_path / "run"))


def _crops(n, size=64):
    """n crops of size x size of a photograph (skimage's coffee), halved: the codecs' training data in small."""
    import skimage.data

    from kerasae.codec import photos

    return photos.random_crops([skimage.data.coffee()], size, n, np.random.default_rng(0), scales=(0.5, 0.5))


# One preset per codec class: the other rungs differ from it only by lmbda, which test_codec_preset_contract checks.
@pytest.mark.parametrize("name", ["codec-factorized-q3", "codec-hyperprior-q3"])
def test_codec_trains_saves_reloads_and_exports(name, tmp_path):
    """Two steps on 64 x 64 crops lower the loss; the .keras file reloads to the same rounded-latent terms and
    trains on with the optimizer's state; the export's SavedModel computes the model's transforms, and its coder
    decodes its own files. Cheap on CPU: eager steps (tracing the preset's train step costs ~20 s on a busy 2-core
    machine, two eager steps ~4 s; the ladder's graph-mode training and resuming are tests/test_codec_training.py's)
    and no TFLite files (their conversion of these layers and the decoder run without kerasae are
    tests/test_codec_files.py's, on small codecs)."""
    from kerasae.codec import Coder, export, training

    _, family, rung = name.split("-")
    keras.utils.set_random_seed(0)
    model = kerasae.build(name, seed=0)
    # the ladder's training builds its rung from the preset
    assert training.build(family, int(rung[1:])).get_config() == {**model.get_config(), "name": f"{family}_{rung}"}
    training._compile(model, 1e-3, steps=100)  # as the ladder trains: Adam, cosine decay, clipped gradients
    model.run_eagerly = True
    x = _crops(8)

    def loss(m):  # rounded latents: the rate a file would cost
        return float(np.mean(m.compute_terms(x)["loss"]))

    before = loss(model)
    history = model.fit(x, batch_size=8, epochs=2, verbose=0, shuffle=False)
    assert set(model.metric_names) <= set(history.history) and np.isfinite(history.history["loss"]).all()
    assert loss(model) < before, (before, loss(model))

    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model) and loaded.get_config() == model.get_config()
    for key, value in model.compute_terms(x[:2]).items():
        np.testing.assert_array_equal(loaded.compute_terms(x[:2])[key].numpy(), value.numpy())
    assert int(loaded.optimizer.iterations.numpy()) == int(model.optimizer.iterations.numpy()) == 2
    assert loaded.optimizer.global_clipnorm == 1.0
    loaded.run_eagerly = True
    more = loaded.fit(x, batch_size=8, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(more.history["loss"]).all() and int(loaded.optimizer.iterations.numpy()) == 3
    assert not np.allclose(loaded.get_weights()[0], model.get_weights()[0])

    coder = Coder(loaded, name=name)
    image = (x[0] * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(coder.decompress(coder.compress(image)), coder.reconstruct(image))
    folder = export.export_codec(coder, tmp_path / "export", tflite=False)
    assert {"saved_model", "tables.npz", "codec.json", "decode.py", "bitstream.py", "entropy.py"} <= {
        p.name for p in folder.iterdir()}
    endpoints = tf.saved_model.load(str(folder / "saved_model"))
    assert hasattr(endpoints, "scales") == hasattr(endpoints, "hyper_analysis") == (family == "hyperprior")
    y = loaded.analysis(x[:1]).numpy()
    np.testing.assert_allclose(endpoints.analysis(tf.constant(x[:1])).numpy(), y, atol=1e-5)
    np.testing.assert_allclose(endpoints.synthesis(tf.constant(np.round(y))).numpy(),
                               loaded.synthesis(np.round(y)).numpy(), atol=1e-5)
