"""Encoder and decoder stacks shared by every model, MLP or convolutional.

Each builder returns a `keras.Sequential` that starts with a `keras.Input`, so it is
built (has its weights) the moment it is made. The owning model can then be restored
from its config alone, which keeps `.keras` round trips exact.

Decoders always output *logits* shaped like the images: the models turn them into a
mean (sigmoid) or a likelihood (Bernoulli logits, Gaussian mean), so one decoder
serves every loss.
"""

import math

from kerasae import _backend  # noqa: F401
import keras
from keras import layers

ARCHS = ("mlp", "conv")


def _dense_stack(units, activation, prefix, dtype):
    return [layers.Dense(u, activation=activation, name=f"{prefix}_dense_{i}", dtype=dtype)
            for i, u in enumerate(units)]


def build_encoder(arch, image_shape, output_dim, *, hidden_units=(), filters=(), activation="relu",
                  output_activation=None, dtype=None, name="encoder"):
    """Images [B, H, W, C] -> features [B, output_dim].

    mlp:  flatten -> Dense(hidden_units) -> Dense(output_dim)
    conv: Conv2D(filters, 3, stride 2) per entry -> flatten -> Dense(hidden_units) -> Dense(output_dim)

    `dtype` is the layers' dtype policy: the owning model passes its own, so a mixed-precision
    model rebuilt from its config gets mixed-precision stacks again.
    """
    stack = [keras.Input(shape=tuple(image_shape), name="x")]
    if arch == "conv":
        stack += [layers.Conv2D(f, 3, strides=2, padding="same", activation=activation, name=f"enc_conv_{i}",
                                dtype=dtype) for i, f in enumerate(filters)]
    stack.append(layers.Flatten(name="enc_flatten", dtype=dtype))
    stack += _dense_stack(hidden_units, activation, "enc", dtype)
    stack.append(layers.Dense(output_dim, activation=output_activation, name="enc_out", dtype=dtype))
    return keras.Sequential(stack, name=name)


def build_decoder(arch, image_shape, latent_dim, *, hidden_units=(), filters=(), activation="relu",
                  dtype=None, name="decoder"):
    """Codes [B, latent_dim] -> logits [B, H, W, C], mirroring `build_encoder`.

    The conv decoder upsamples from ceil(H / 2^n) with Conv2DTranspose (stride 2) and
    crops the surplus, so any image size works, not just multiples of 2^n.
    """
    h, w, c = image_shape
    stack = [keras.Input(shape=(latent_dim,), name="z")]
    stack += _dense_stack(tuple(reversed(hidden_units)), activation, "dec", dtype)
    if arch == "mlp":
        stack += [layers.Dense(h * w * c, name="dec_out", dtype=dtype),
                  layers.Reshape((h, w, c), name="dec_reshape", dtype=dtype)]
        return keras.Sequential(stack, name=name)

    scale = 2 ** len(filters)
    h0, w0 = math.ceil(h / scale), math.ceil(w / scale)
    top = filters[-1] if filters else c
    stack += [layers.Dense(h0 * w0 * top, activation=activation, name="dec_project", dtype=dtype),
              layers.Reshape((h0, w0, top), name="dec_reshape", dtype=dtype)]
    stack += [layers.Conv2DTranspose(f, 3, strides=2, padding="same", activation=activation, name=f"dec_deconv_{i}",
                                     dtype=dtype) for i, f in enumerate(reversed(filters))]
    stack.append(layers.Conv2D(c, 3, padding="same", name="dec_out", dtype=dtype))
    dh, dw = h0 * scale - h, w0 * scale - w
    if dh or dw:
        stack.append(layers.Cropping2D(((dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2)), name="dec_crop",
                                       dtype=dtype))
    return keras.Sequential(stack, name=name)
