"""The residual conv stacks (arch="resnet"): shapes at any image size, the skip, norms, checks, configs."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerasae
from kerasae import layers as stacks, optimizers

SMALL = dict(filters=(8, 16, 16), blocks_per_stage=1, latent_dim=4)


def _halvings(size, n):
    """What n stride-2 'same' convs make of `size`: ceil(size / 2), n times."""
    for _ in range(n):
        size = math.ceil(size / 2)
    return size


@pytest.mark.parametrize("shape", [(28, 28, 1), (30, 20, 3), (32, 32, 3), (64, 64, 3), (33, 33, 3), (7, 5, 2)])
@pytest.mark.parametrize("filters", [(8,), (8, 16), (8, 16, 16, 32)])
def test_shapes_at_any_image_size(shape, filters):
    model = kerasae.build("vae-resnet-32", image_shape=shape, filters=filters, blocks_per_stage=1, latent_dim=4)
    x = np.random.default_rng(0).random((2, *shape), dtype=np.float32)
    mean, log_var = model.encode(x)
    assert tuple(mean.shape) == tuple(log_var.shape) == (2, 4)
    assert tuple(model.reconstruct(x).shape) == (2, *shape)
    assert tuple(model.sample(3, seed=0).shape) == (3, *shape)

    # len(filters) - 1 downsamplings, mirrored by as many upsamplings
    names = [layer.name for layer in model.encoder.layers]
    assert [n for n in names if n.startswith("enc_down_")] == [f"enc_down_{s}" for s in range(len(filters) - 1)]
    assert len([n for n in (layer.name for layer in model.decoder.layers) if n.startswith("dec_up_")]) == \
        len(filters) - 1
    final = tuple(model.encoder.get_layer("enc_final_act").output.shape[1:])
    n = len(filters) - 1
    assert final == (_halvings(shape[0], n), _halvings(shape[1], n), filters[-1])
    assert tuple(model.decoder.get_layer("dec_reshape").output.shape[1:]) == final


@pytest.mark.parametrize("name,final", [("ae-resnet-28", (7, 7)), ("dae-resnet-32", (8, 8)),
                                        ("vae-resnet-64", (8, 8))])
def test_presets_final_map(name, final):
    model = kerasae.build(name)
    assert tuple(model.encoder.get_layer("enc_final_act").output.shape[1:3]) == final
    assert not model.auto_xla  # XLA's CPU convolutions are slow


def _conv_same(x, kernel, bias):
    """A stride-1 'same' convolution in numpy: x [B, H, W, Cin], kernel [k, k, Cin, Cout]."""
    k = kernel.shape[0]
    pad = k // 2
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    h, w = x.shape[1:3]
    out = sum(padded[:, i:i + h, j:j + w, :] @ kernel[i, j] for i in range(k) for j in range(k))
    return out + bias


def _group_norm(x, groups, gamma, beta, eps):
    b, h, w, c = x.shape
    r = x.reshape(b, h, w, groups, c // groups)
    r = (r - r.mean(axis=(1, 2, 4), keepdims=True)) / np.sqrt(r.var(axis=(1, 2, 4), keepdims=True) + eps)
    return r.reshape(b, h, w, c) * gamma + beta


@pytest.mark.parametrize("channels", [16, 4])  # 4 -> 16: the skip is a 1x1 projection
def test_block_is_input_plus_residual_computed_by_hand(channels, rng):
    inputs = keras.Input((6, 5, channels))
    block = keras.Model(inputs, stacks.residual_block(inputs, 16, norm="group", groups=8, name="b"))
    for weight in block.weights:  # random gammas and betas too, so the norm's arithmetic shows
        weight.assign(rng.normal(scale=0.3, size=weight.shape))
    x = rng.normal(size=(3, 6, 5, channels)).astype(np.float32)
    layer = block.get_layer

    def norm_relu(h, name):
        norm = layer(f"{name}_norm")
        g = _group_norm(h, norm.groups, norm.gamma.numpy(), norm.beta.numpy(), norm.epsilon)
        return np.maximum(g, 0.0)

    residual = _conv_same(norm_relu(x, "b_1"), *layer("b_conv1").get_weights())
    residual = _conv_same(norm_relu(residual, "b_2"), *layer("b_conv2").get_weights())
    skip = x if channels == 16 else _conv_same(x, *layer("b_skip").get_weights())
    assert (channels == 16) != any(w.path.startswith("b_skip") for w in block.weights)
    np.testing.assert_allclose(block(x).numpy(), skip + residual, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("channels,groups", [(16, 8), (32, 8), (4, 4), (12, 3)])
def test_group_norm_is_keras_group_normalization(channels, groups, rng):
    """Same outputs and gradients as Keras' layer with the same weights, from cheaper (int8-convertible) ops."""
    x = tf.constant(rng.normal(loc=1.0, scale=3.0, size=(4, 6, 5, channels)), tf.float32)
    ours, theirs = stacks.GroupNorm(groups), keras.layers.GroupNormalization(groups)
    ours.build(x.shape)
    theirs.build(x.shape)
    for a, b in zip(ours.weights, theirs.weights, strict=True):
        assert a.name == b.name
        value = rng.normal(size=a.shape)
        a.assign(value)
        b.assign(value)
    results = []
    for layer in (ours, theirs):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(tf.sin(y))
        results.append([y, *tape.gradient(loss, [x, *layer.trainable_weights])])
    for a, b in zip(*results):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)
    again = stacks.GroupNorm.from_config(ours.get_config())
    assert (again.groups, again.epsilon) == (groups, ours.epsilon)


def test_blocks_with_zeroed_last_conv_are_the_identity(rng):
    """With each block's second conv zeroed, every block hands its input through unchanged."""
    model = kerasae.build("ae-resnet-28", filters=(8, 16), blocks_per_stage=2, latent_dim=4)
    inputs = {  # each block's input, named independently of the block itself
        "enc_s0_b0": "enc_stem", "enc_s0_b1": "enc_s0_b0_add", "enc_s1_b0": "enc_down_0", "enc_s1_b1": "enc_s1_b0_add",
        "dec_s1_b0": "dec_reshape", "dec_s1_b1": "dec_s1_b0_add", "dec_s0_b0": "dec_up_1", "dec_s0_b1": "dec_s0_b0_add"}
    for net, data in ((model.encoder, rng.random((2, 28, 28, 1))), (model.decoder, rng.normal(size=(2, 4)))):
        blocks = [b for b in inputs if b.startswith(net.name[:3])]
        for b in blocks:
            conv = net.get_layer(f"{b}_conv2")
            conv.set_weights([np.zeros_like(w) for w in conv.get_weights()])
        probe = keras.Model(net.input, [[net.get_layer(inputs[b]).output, net.get_layer(f"{b}_add").output]
                                         for b in blocks])
        for block_in, block_out in probe(data.astype(np.float32)):
            assert np.abs(block_in.numpy()).max() > 0
            np.testing.assert_array_equal(block_out.numpy(), block_in.numpy())


@pytest.mark.parametrize("norm,kind", [("group", stacks.GroupNorm), ("batch", keras.layers.BatchNormalization),
                                       ("none", None)])
@pytest.mark.parametrize("preset", ["ae-resnet-28", "vae-resnet-32"])
def test_each_norm_builds_and_trains(norm, kind, preset):
    keras.utils.set_random_seed(0)
    shape = (12, 10, 1) if preset == "ae-resnet-28" else (12, 10, 3)
    model = kerasae.build(preset, image_shape=shape, norm=norm, **SMALL)
    norms = [layer for net in (model.encoder, model.decoder) for layer in net.layers
             if isinstance(layer, (stacks.GroupNorm, keras.layers.BatchNormalization))]
    assert {type(layer) for layer in norms} == ({kind} if kind else set())
    # 2 per block (3 stages x 1 block per net) + the encoder's and the decoder's final one
    assert len(norms) == (2 * 3 * 2 + 2 if kind else 0)
    model.compile(optimizer=optimizers.Adam(1e-3))
    x = np.random.default_rng(0).random((8, *shape), dtype=np.float32)
    if getattr(model, "binary_data", False):
        x = (x > 0.5).astype(np.float32)
    before = [w.numpy().copy() for w in model.weights]
    history = model.fit(x, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    changed = {w.path for w, b in zip(model.weights, before) if not np.array_equal(w.numpy(), b)}
    assert {w.path for w in model.trainable_weights} <= changed
    if norm == "batch":  # the moving statistics follow the batches
        assert any("moving_mean" in path for path in changed)


@pytest.mark.parametrize("kwargs,match", [
    (dict(norm="layer"), r"norm must be one of \['group', 'batch', 'none'\], got 'layer'"),
    (dict(blocks_per_stage=0), "blocks_per_stage must be a positive integer"),
    (dict(blocks_per_stage=1.5), "blocks_per_stage must be a positive integer"),
    (dict(filters=()), "filters must not be empty"),
    (dict(filters=(16, 12)), r"filters\[1\]=12 is not divisible by 8"),
])
def test_bad_arguments_name_themselves(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kerasae.build("ae-resnet-28", **kwargs)


def test_group_widths_and_groups_are_checked():
    kerasae.build("ae-resnet-28", filters=(4, 12, 16), norm="batch")  # only GroupNorm splits widths
    kerasae.build("ae-resnet-28", filters=(4, 16), latent_dim=2)  # min(8, 4) = 4 groups divide 4
    with pytest.raises(ValueError, match=r"groups=3.*filters\[0\]=8"):
        stacks.build_encoder("resnet", (8, 8, 1), 2, filters=(8,), groups=3)
    with pytest.raises(ValueError, match="groups must be a positive integer"):
        stacks.build_decoder("resnet", (8, 8, 1), 2, filters=(8,), groups=0)


@pytest.mark.parametrize("arch,filters", [("mlp", ()), ("conv", (8, 16)), ("resnet", (8, 16))])
def test_output_channels(arch, filters):
    """A likelihood with several parameters per channel asks the decoder for more logits per pixel."""
    decoder = stacks.build_decoder(arch, (9, 7, 3), 4, filters=filters, output_channels=6, blocks_per_stage=1)
    assert tuple(decoder(np.zeros((2, 4), np.float32)).shape) == (2, 9, 7, 6)


def test_config_round_trip(tmp_path):
    keras.utils.set_random_seed(0)
    model = kerasae.build("vae-resnet-28", norm="batch", blocks_per_stage=2, filters=(8, 16), latent_dim=4)
    config = model.get_config()
    assert (config["arch"], config["norm"], config["blocks_per_stage"]) == ("resnet", "batch", 2)
    model.compile(optimizer=optimizers.Adam(1e-3))
    x = (np.random.default_rng(0).random((16, 28, 28, 1)) > 0.5).astype(np.float32)
    model.fit(x, batch_size=8, epochs=1, verbose=0)  # moving statistics away from their initial values
    clone = type(model).from_config(config)
    assert clone.get_config() == config
    assert [w.path for w in clone.weights] == [w.path for w in model.weights]  # deterministic names
    path = tmp_path / "resnet.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_config() == config
    np.testing.assert_array_equal(loaded.reconstruct(x).numpy(), model.reconstruct(x).numpy())


def test_configs_without_the_new_keys_still_load():
    """Configs saved before resnet existed lack blocks_per_stage and norm; mlp/conv configs still do."""
    conv = kerasae.build("ae-conv")
    config = conv.get_config()
    assert "norm" not in config and "blocks_per_stage" not in config
    again = kerasae.Autoencoder.from_config(config)
    assert again.get_config() == config
    resnet = kerasae.build("vae-resnet-32", filters=(8, 16), latent_dim=4).get_config()
    del resnet["norm"], resnet["blocks_per_stage"]
    model = kerasae.VAE.from_config(resnet)
    assert (model.norm, model.blocks_per_stage) == ("group", 2)
    assert {"enc_s1_b1_add", "enc_s1_b0_1_norm"} <= {layer.name for layer in model.encoder.layers}
