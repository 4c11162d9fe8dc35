"""Learned image codecs as Keras models (Balle et al. 2018): an analysis transform g_a (four stride-2 5x5 convs
with GDN) maps an image to latents y, a synthesis transform g_s (transposed convs with IGDN) maps them back.

- `FactorizedPriorCodec`: y's integers are coded under one learned density per channel.
- `ScaleHyperpriorCodec`: a hyper-analysis h_a maps |y| to hyper-latents z (coded under a factorized density),
  from which h_s predicts the scale of a zero-mean Gaussian for every element of y (side information).

Training (`model.fit` on images [B, H, W, C] in [0, 1], H and W multiples of `stride`) minimizes
lmbda * 255^2 * MSE + bits per pixel, with additive uniform noise standing in for rounding (for the rate always;
for the synthesis' input too unless `straight_through`, which feeds it the rounded latents it will decode, with
rounding's gradient taken as 1: Minnen & Singh 2020's mixed quantization); evaluation rounds (`training=False`),
so its bits per pixel are what an entropy coder with these models' tables would write, up to the coder's overhead.
"""

import numbers

from kerasae import _backend  # noqa: F401
import keras
import numpy as np
import tensorflow as tf

from kerasae.codec.ladder import QUALITY_LAMBDAS
from kerasae.codec.layers import GDN, FactorizedDensity, gaussian_likelihood
from kerasae.models.base import draw, register
from kerasae.options import check_number, check_positive_int

#: The default rate-distortion weight: quality 4 of the ladder (the ladder's presets: kerasae.codec.ladder).
DEFAULT_LMBDA = QUALITY_LAMBDAS[3]


def _conv(filters, kernel, stride, name, transpose=False, activation=None, dtype="float32"):
    cls = keras.layers.Conv2DTranspose if transpose else keras.layers.Conv2D
    return cls(filters, kernel, strides=stride, padding="same", activation=activation, name=name, dtype=dtype)


def _float32_sequential(layers, name):
    """A Sequential whose own policy is float32 whatever the model's: under a mixed policy it would cast its inputs
    (pixels, latents) to bfloat16 before its first layer."""
    sequential = keras.Sequential(layers, name=name)
    sequential.dtype_policy = "float32"
    return sequential


class ImageCodec(keras.Model):
    """What the codecs share: the transforms, the training objective, metrics and config.

    Args:
        channels: image channels (1 or 3).
        filters: N, the width of the transforms' hidden layers.
        latent_channels: M, the channels of the latents y.
        lmbda: the weight of lmbda * 255^2 * MSE against the rate in bits per pixel (the ladder's: QUALITY_LAMBDAS).
        seed: seed of the training noise (None picks one).
        straight_through: while training, the synthesis decodes round(y) (gradient passed straight through) rather
            than y + noise. Measured on the quality-3 hyperprior, 1,000 steps of fine-tuning from the same weights:
            +0.125 dB at equal rate over fine-tuning with noise, on each of 7 held-out photographs.
    """

    family = "codec"
    metric_names = ("loss", "bpp", "mse", "psnr")
    #: y is H/16 x W/16: images must be a multiple of this (`kerasae.codec` pads and crops).
    stride = 16

    def __init__(self, channels=3, filters=128, latent_channels=192, lmbda=DEFAULT_LMBDA, seed=None,
                 straight_through=False, **kwargs):
        super().__init__(**kwargs)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
        if seed is None:
            seed = int(np.random.randint(0, 2**31 - 1))
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
        self.channels, self.seed = int(channels), int(seed)
        self.filters = check_positive_int("filters", filters)
        self.latent_channels = check_positive_int("latent_channels", latent_channels)
        self.lmbda = check_number("lmbda", lmbda, low=0.0, low_open=True)
        if not isinstance(straight_through, (bool, np.bool_)):
            raise TypeError(f"straight_through must be True or False, got {straight_through!r}")
        self.straight_through = bool(straight_through)
        n, m = self.filters, self.latent_channels
        # The model's dtype policy (e.g. mixed_bfloat16, for training on bfloat16 matrix units) applies to the
        # transforms' hidden layers only. The layers that take the pixels and the latents and make the latents and
        # the pixels, the hyper transforms and the entropy models stay float32: bfloat16's 8-bit significand would
        # move a latent of 40 by up to 0.125, across a rounding boundary, and a pixel near 1 by half a grey level.
        mixed = self.dtype_policy
        self.analysis = _float32_sequential(
            [_conv(n, 5, 2, "ga_conv0"), GDN(name="ga_gdn0", dtype=mixed),
             _conv(n, 5, 2, "ga_conv1", dtype=mixed), GDN(name="ga_gdn1", dtype=mixed),
             _conv(n, 5, 2, "ga_conv2", dtype=mixed), GDN(name="ga_gdn2", dtype=mixed),
             _conv(m, 5, 2, "ga_conv3")], "analysis")
        self.synthesis = _float32_sequential(
            [_conv(n, 5, 2, "gs_conv0", True), GDN(inverse=True, name="gs_igdn0", dtype=mixed),
             _conv(n, 5, 2, "gs_conv1", True, dtype=mixed), GDN(inverse=True, name="gs_igdn1", dtype=mixed),
             _conv(n, 5, 2, "gs_conv2", True, dtype=mixed), GDN(inverse=True, name="gs_igdn2", dtype=mixed),
             _conv(self.channels, 5, 2, "gs_conv3", True)], "synthesis")
        self._trackers = [keras.metrics.Mean(name=name) for name in self.metric_names]

    def build(self, input_shape):
        if self.built:  # built in __init__ already: every weight exists from the start
            return
        self.analysis.build((None, None, None, self.channels))
        self.synthesis.build((None, None, None, self.latent_channels))
        self.build_priors()
        self.built = True

    def build_priors(self):
        raise NotImplementedError

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "filters": self.filters,
                "latent_channels": self.latent_channels, "lmbda": self.lmbda, "seed": self.seed,
                "straight_through": self.straight_through}

    # ---- the objective ----------------------------------------------------------------

    def quantize_latents(self, v, training, step=None, stream=0):
        """Training: v + U(-1/2, 1/2) noise (keyed by seed, step and stream); otherwise rounded to integers."""
        if training:
            return v + draw("uniform", tf.shape(v), None if step is None else self.seed, step, stream) - 0.5
        return tf.round(v)

    def likelihoods(self, y, training=False, step=None):
        """(quantized y, [likelihood tensors whose -log2 sums give the bits]) of latents y."""
        raise NotImplementedError

    def entropy_likelihoods(self, y_hat, z_hat=None, training=False):
        """The likelihood tensors of quantized latents y_hat (and, for a hyperprior, hyper-latents z_hat) under the
        model's entropy model: what `likelihoods` gives, for latents chosen by other means (`kerasae.codec.optimize`)."""
        raise NotImplementedError

    def compute_terms(self, x, training=False, step=None):
        """Per-example loss, bits per pixel, MSE and PSNR of images x [B, H, W, C] in [0, 1]."""
        x = tf.cast(x, tf.float32)
        y = self.analysis(x, training=training)
        y_hat, likelihoods = self.likelihoods(y, training, step)
        if training and self.straight_through:
            y_hat = y + tf.stop_gradient(tf.round(y) - y)
        x_hat = self.synthesis(y_hat, training=training)
        pixels = tf.cast(tf.shape(x)[1] * tf.shape(x)[2], tf.float32)
        bits = tf.add_n([tf.reduce_sum(-tf.math.log(p), axis=[1, 2, 3]) for p in likelihoods]) / np.log(2.0)
        bpp = bits / pixels
        mse = tf.reduce_mean(tf.square(x - x_hat), axis=[1, 2, 3])
        clipped = tf.reduce_mean(tf.square(x - tf.clip_by_value(x_hat, 0.0, 1.0)), axis=[1, 2, 3])
        psnr = -10.0 * tf.math.log(tf.maximum(clipped, 1e-10)) / np.log(10.0)
        return {"loss": self.lmbda * 255.0**2 * mse + bpp, "bpp": bpp, "mse": mse, "psnr": psnr}

    def call(self, x, training=False):
        """The reconstruction of x after quantization (rounded latents unless training)."""
        y = self.analysis(tf.cast(x, tf.float32), training=training)
        y_hat, _ = self.likelihoods(y, training)
        return self.synthesis(y_hat, training=training)

    # ---- Keras training ------------------------------------------------------------------

    @property
    def metrics(self):
        return list(self._trackers)

    def _update(self, terms):
        for tracker in self._trackers:
            tracker.update_state(terms[tracker.name])
        return {tracker.name: tracker.result() for tracker in self._trackers}

    def train_step(self, data):
        x = keras.utils.unpack_x_y_sample_weight(data)[0]
        with tf.GradientTape() as tape:
            terms = self.compute_terms(x, training=True, step=self.optimizer.iterations)
            loss = tf.nn.compute_average_loss(terms["loss"])
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        return self._update(terms)

    def test_step(self, data):
        return self._update(self.compute_terms(keras.utils.unpack_x_y_sample_weight(data)[0], training=False))


@register
class FactorizedPriorCodec(ImageCodec):
    """Balle et al. 2018's factorized-prior model: each latent channel coded under its own learned density."""

    def __init__(self, channels=3, filters=128, latent_channels=192, lmbda=DEFAULT_LMBDA, seed=None,
                 straight_through=False, **kwargs):
        super().__init__(channels=channels, filters=filters, latent_channels=latent_channels, lmbda=lmbda, seed=seed,
                         straight_through=straight_through, **kwargs)
        self.build((None, None, None, self.channels))  # every weight exists from the start: fit, save, count

    def build_priors(self):
        self.prior = FactorizedDensity(name="prior", dtype="float32")
        self.prior.build((None, None, None, self.latent_channels))

    def likelihoods(self, y, training=False, step=None):
        y_hat = self.quantize_latents(y, training, step)
        return y_hat, self.entropy_likelihoods(y_hat, training=training)

    def entropy_likelihoods(self, y_hat, z_hat=None, training=False):
        return [self.prior(y_hat)]


@register
class ScaleHyperpriorCodec(ImageCodec):
    """Balle et al. 2018's scale hyperprior: hyper-latents z (coded under a factorized density) carry the scale of
    a zero-mean Gaussian for every latent. `hyper_filters`: the width of h_a and h_s."""

    stride = 64  # z is H/64 x W/64

    def __init__(self, channels=3, filters=128, latent_channels=192, lmbda=DEFAULT_LMBDA, hyper_filters=None, seed=None,
                 straight_through=False, **kwargs):
        super().__init__(channels=channels, filters=filters, latent_channels=latent_channels, lmbda=lmbda, seed=seed,
                         straight_through=straight_through, **kwargs)
        self.hyper_filters = check_positive_int("hyper_filters", hyper_filters or self.filters)
        n = self.hyper_filters
        self.hyper_analysis = _float32_sequential(
            [_conv(n, 3, 1, "ha_conv0", activation="relu"), _conv(n, 5, 2, "ha_conv1", activation="relu"),
             _conv(n, 5, 2, "ha_conv2")], "hyper_analysis")
        self.hyper_synthesis = _float32_sequential(
            [_conv(n, 5, 2, "hs_conv0", True, "relu"), _conv(n, 5, 2, "hs_conv1", True, "relu"),
             _conv(self.latent_channels, 3, 1, "hs_conv2", activation="relu")], "hyper_synthesis")
        self.build((None, None, None, self.channels))

    def build_priors(self):
        self.hyper_analysis.build((None, None, None, self.latent_channels))
        self.hyper_synthesis.build((None, None, None, self.hyper_filters))
        self.hyperprior = FactorizedDensity(name="hyperprior", dtype="float32")
        self.hyperprior.build((None, None, None, self.hyper_filters))

    def get_config(self):
        return {**super().get_config(), "hyper_filters": self.hyper_filters}

    def scales(self, z_hat, training=False):
        """The Gaussian scale of every latent, from the quantized hyper-latents."""
        return self.hyper_synthesis(z_hat, training=training)

    def likelihoods(self, y, training=False, step=None):
        z = self.hyper_analysis(tf.abs(y), training=training)
        z_hat = self.quantize_latents(z, training, step, stream=1)
        y_hat = self.quantize_latents(y, training, step)
        return y_hat, self.entropy_likelihoods(y_hat, z_hat, training)

    def entropy_likelihoods(self, y_hat, z_hat=None, training=False):
        return [gaussian_likelihood(y_hat, self.scales(z_hat, training)), self.hyperprior(z_hat)]
