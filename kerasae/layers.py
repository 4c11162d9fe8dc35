"""Encoder and decoder stacks shared by every model: MLP, convolutional or residual.

Each builder returns a Keras model that starts with a `keras.Input`, so it is built (has
its weights) the moment it is made. The owning model can then be restored from its config
alone, which keeps `.keras` round trips exact. MLP and conv stacks are `keras.Sequential`;
residual stacks branch, so they are functional models. Layer names are fixed by position
(`enc_s1_b0_conv2`), so weights line up across rebuilds.

Decoders always output *logits* shaped like the images (or `output_channels` per pixel):
the models turn them into a mean (sigmoid) or a likelihood (Bernoulli logits, Gaussian
mean), so one decoder serves every loss.
"""

import math

from kerasae import _backend  # noqa: F401
import keras
import numpy as np
from keras import layers, ops

ARCHS = ("mlp", "conv", "resnet")
#: Archs built from convolutions: they take `filters` (non-empty) and XLA does not pay on CPU.
CONV_ARCHS = ("conv", "resnet")
NORMS = ("group", "batch", "none")
#: GroupNormalization's groups per layer: min(GROUPS, width), which must divide the width.
GROUPS = 8


def _dense_stack(units, activation, prefix, dtype):
    return [layers.Dense(u, activation=activation, name=f"{prefix}_dense_{i}", dtype=dtype)
            for i, u in enumerate(units)]


def check_norm_widths(norm, filters, groups=GROUPS):
    """Raise a ValueError naming the width when norm="group" cannot split it into min(groups, width) groups."""
    if norm != "group":
        return
    if isinstance(groups, bool) or not isinstance(groups, int) or groups <= 0:
        raise ValueError(f"groups must be a positive integer, got {groups!r}")
    for i, width in enumerate(filters):
        if width % min(groups, width):
            raise ValueError(f"norm='group' splits each width into min(groups={groups}, width) groups: "
                             f"filters[{i}]={width} is not divisible by {min(groups, width)}; use widths that are, "
                             "or norm='batch' or 'none'")


@keras.saving.register_keras_serializable(package="kerasae")
class GroupNorm(layers.Layer):
    """Group normalization (Wu & He 2018) of NHWC maps, built from 4-D means and products only.

    The arithmetic and weights (gamma, beta) of `keras.layers.GroupNormalization(groups,
    epsilon=1e-3)`, computed differently: per-channel means over H, W, pooled within each group by
    a constant [C, C] matmul. Keras' layer reshapes to 5-D and reduces across non-adjacent axes,
    which costs ~2x on CPU and ~2.5x the graph ops to trace, and leaves NEG and SQUARE, which
    TFLite has no int8 kernels for (its int8 files then fail to be fully integer). Statistics are
    taken in float32 under a mixed policy.
    """

    def __init__(self, groups=GROUPS, epsilon=1e-3, **kwargs):
        super().__init__(**kwargs)
        self.groups, self.epsilon = groups, epsilon

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels % self.groups:
            raise ValueError(f"groups={self.groups} does not divide the {channels} channels")
        self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros")
        size = channels // self.groups  # pool[i, j] = 1 / size where channels i and j share a group
        self._pool = np.kron(np.eye(self.groups), np.full((size, size), 1.0 / size)).astype("float32")

    def _group_mean(self, t):
        """[B, H, W, C] -> [B, 1, 1, C]: each channel's mean over H, W and the channels of its group."""
        pooled = ops.matmul(ops.mean(t, axis=(1, 2)), ops.convert_to_tensor(self._pool))
        return ops.reshape(pooled, (-1, 1, 1, t.shape[-1]))

    def call(self, x):
        x = ops.cast(x, "float32")
        centred = x - self._group_mean(x)
        scale = ops.rsqrt(self._group_mean(centred * centred) + self.epsilon) * ops.cast(self.gamma, "float32")
        return ops.cast(centred * scale + ops.cast(self.beta, "float32"), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "groups": self.groups, "epsilon": self.epsilon}


def _norm_act(x, norm, groups, activation, name, dtype):
    """norm -> activation: what precedes every conv of a pre-activation residual stack."""
    if norm == "group":
        x = GroupNorm(min(groups, x.shape[-1]), name=f"{name}_norm", dtype=dtype)(x)
    elif norm == "batch":
        x = layers.BatchNormalization(name=f"{name}_norm", dtype=dtype)(x)
    return layers.Activation(activation, name=f"{name}_act", dtype=dtype)(x)


def residual_block(x, width, *, norm="group", groups=GROUPS, activation="relu", name="block", dtype=None):
    """x + F(x), F = norm -> act -> conv3x3 -> norm -> act -> conv3x3 (pre-activation, He et al. 2016).

    The identity skip leaves every block a clean gradient path, so stacks stay trainable as
    they deepen; a 1x1 conv projects the skip only when x is not `width` wide.
    """
    h = _norm_act(x, norm, groups, activation, f"{name}_1", dtype)
    h = layers.Conv2D(width, 3, padding="same", name=f"{name}_conv1", dtype=dtype)(h)
    h = _norm_act(h, norm, groups, activation, f"{name}_2", dtype)
    h = layers.Conv2D(width, 3, padding="same", name=f"{name}_conv2", dtype=dtype)(h)
    skip = x if x.shape[-1] == width else layers.Conv2D(width, 1, name=f"{name}_skip", dtype=dtype)(x)
    return layers.Add(name=f"{name}_add", dtype=dtype)([skip, h])


def _scale(arch, filters):
    """How many times smaller a conv (one stride-2 conv per entry) or resnet (one between stages) stack's map is."""
    return 2 ** (len(filters) - 1 if arch == "resnet" else len(filters))


def feature_map_size(arch, image_shape, filters):
    """(H', W') of a conv or resnet stack's final map: each stride-2 stage halves a side, rounding up."""
    scale = _scale(arch, filters)
    return math.ceil(image_shape[0] / scale), math.ceil(image_shape[1] / scale)


def build_encoder(arch, image_shape, output_dim, *, hidden_units=(), filters=(), activation="relu",
                  output_activation=None, blocks_per_stage=2, norm="group", groups=GROUPS, dtype=None,
                  name="encoder", spatial=False):
    """Images [B, H, W, C] -> features [B, output_dim], or [B, H', W', output_dim] when `spatial`.

    `spatial` (conv and resnet only) ends the stack with a 1x1 conv to output_dim channels on the
    final map instead of flatten -> Dense: a grid of code vectors, one per position (the VQ-VAE's).

    mlp:    flatten -> Dense(hidden_units) -> Dense(output_dim)
    conv:   Conv2D(filters, 3, stride 2) per entry -> flatten -> Dense(hidden_units) -> Dense(output_dim)
    resnet: conv3x3 stem to filters[0]; per entry s, `blocks_per_stage` residual blocks at width
            filters[s], then (but after the last) a stride-2 conv3x3 to filters[s + 1]; then
            norm -> act -> flatten -> Dense(hidden_units) -> Dense(output_dim). len(filters) - 1
            downsamplings: the final map is ceil(H / 2^(n-1)) x ceil(W / 2^(n-1)).

    `dtype` is the layers' dtype policy: the owning model passes its own, so a mixed-precision
    model rebuilt from its config gets mixed-precision stacks again.
    """
    if spatial and arch not in CONV_ARCHS:
        raise ValueError(f"a spatial encoder needs a conv or resnet arch, got {arch!r}")
    inputs = keras.Input(shape=tuple(image_shape), name="x")
    if arch == "resnet":
        check_norm_widths(norm, filters, groups)
        x = layers.Conv2D(filters[0], 3, padding="same", name="enc_stem", dtype=dtype)(inputs)
        for s, width in enumerate(filters):
            for b in range(blocks_per_stage):
                x = residual_block(x, width, norm=norm, groups=groups, activation=activation, name=f"enc_s{s}_b{b}",
                                   dtype=dtype)
            if s + 1 < len(filters):
                x = layers.Conv2D(filters[s + 1], 3, strides=2, padding="same", name=f"enc_down_{s}",
                                  dtype=dtype)(x)
        x = _norm_act(x, norm, groups, activation, "enc_final", dtype)
        if spatial:
            return keras.Model(inputs, layers.Conv2D(output_dim, 1, name="enc_out", dtype=dtype)(x), name=name)
        x = layers.Flatten(name="enc_flatten", dtype=dtype)(x)
        for layer in _dense_stack(hidden_units, activation, "enc", dtype):
            x = layer(x)
        x = layers.Dense(output_dim, activation=output_activation, name="enc_out", dtype=dtype)(x)
        return keras.Model(inputs, x, name=name)

    stack = [inputs]
    if arch == "conv":
        stack += [layers.Conv2D(f, 3, strides=2, padding="same", activation=activation, name=f"enc_conv_{i}",
                                dtype=dtype) for i, f in enumerate(filters)]
    if spatial:
        stack.append(layers.Conv2D(output_dim, 1, name="enc_out", dtype=dtype))
        return keras.Sequential(stack, name=name)
    stack.append(layers.Flatten(name="enc_flatten", dtype=dtype))
    stack += _dense_stack(hidden_units, activation, "enc", dtype)
    stack.append(layers.Dense(output_dim, activation=output_activation, name="enc_out", dtype=dtype))
    return keras.Sequential(stack, name=name)


def _crop(image_shape, h0, w0, scale, dtype):
    """Cropping2D from (h0 * scale, w0 * scale) to the image's H x W, centred; None when they match."""
    dh, dw = h0 * scale - image_shape[0], w0 * scale - image_shape[1]
    if not (dh or dw):
        return None
    return layers.Cropping2D(((dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2)), name="dec_crop", dtype=dtype)


def build_decoder(arch, image_shape, latent_dim, *, hidden_units=(), filters=(), activation="relu",
                  output_channels=None, blocks_per_stage=2, norm="group", groups=GROUPS, dtype=None,
                  name="decoder", spatial=False):
    """Codes [B, latent_dim] -> logits [B, H, W, output_channels (default C)], mirroring `build_encoder`.

    `spatial` (conv and resnet): the codes are a grid [B, H', W', latent_dim] (`feature_map_size`),
    projected by a 3x3 conv instead of Dense -> reshape.

    The conv decoders upsample from ceil(H / 2^n) by stride-2 Conv2DTranspose (a quarter of the
    multiply-adds of nearest upsampling + conv3x3; TFLite's TRANSPOSE_CONV) and crop the surplus,
    so any image size works, not just multiples of 2^n. The resnet decoder projects linearly to
    the smallest map (its blocks normalize and activate first), runs the stages in reverse with
    an upsampling between them, and ends norm -> act -> conv3x3.
    """
    h, w, c = image_shape
    out_channels = c if output_channels is None else output_channels
    if spatial and arch not in CONV_ARCHS:
        raise ValueError(f"a spatial decoder needs a conv or resnet arch, got {arch!r}")
    h0, w0 = feature_map_size(arch, image_shape, filters) if arch in CONV_ARCHS else (h, w)
    stack = [keras.Input(shape=(h0, w0, latent_dim) if spatial else (latent_dim,), name="z")]
    if not spatial:
        stack += _dense_stack(tuple(reversed(hidden_units)), activation, "dec", dtype)
    if arch == "mlp":
        stack += [layers.Dense(h * w * out_channels, name="dec_out", dtype=dtype),
                  layers.Reshape((h, w, out_channels), name="dec_reshape", dtype=dtype)]
        return keras.Sequential(stack, name=name)

    scale = _scale(arch, filters)
    top = filters[-1] if filters else c
    crop = _crop(image_shape, h0, w0, scale, dtype)
    if arch == "resnet":
        check_norm_widths(norm, filters, groups)
        x = stack[0]
        for layer in stack[1:]:
            x = layer(x)
        if spatial:
            x = layers.Conv2D(top, 3, padding="same", name="dec_project", dtype=dtype)(x)
        else:
            x = layers.Dense(h0 * w0 * top, name="dec_project", dtype=dtype)(x)
            x = layers.Reshape((h0, w0, top), name="dec_reshape", dtype=dtype)(x)
        for s in reversed(range(len(filters))):
            for b in range(blocks_per_stage):
                x = residual_block(x, filters[s], norm=norm, groups=groups, activation=activation,
                                   name=f"dec_s{s}_b{b}", dtype=dtype)
            if s:
                x = layers.Conv2DTranspose(filters[s - 1], 3, strides=2, padding="same", name=f"dec_up_{s}",
                                           dtype=dtype)(x)
        x = _norm_act(x, norm, groups, activation, "dec_final", dtype)
        x = layers.Conv2D(out_channels, 3, padding="same", name="dec_out", dtype=dtype)(x)
        return keras.Model(stack[0], crop(x) if crop else x, name=name)

    if spatial:
        stack.append(layers.Conv2D(top, 3, padding="same", activation=activation, name="dec_project", dtype=dtype))
    else:
        stack += [layers.Dense(h0 * w0 * top, activation=activation, name="dec_project", dtype=dtype),
                  layers.Reshape((h0, w0, top), name="dec_reshape", dtype=dtype)]
    stack += [layers.Conv2DTranspose(f, 3, strides=2, padding="same", activation=activation, name=f"dec_deconv_{i}",
                                     dtype=dtype) for i, f in enumerate(reversed(filters))]
    stack.append(layers.Conv2D(out_channels, 3, padding="same", name="dec_out", dtype=dtype))
    if crop:
        stack.append(crop)
    return keras.Sequential(stack, name=name)
