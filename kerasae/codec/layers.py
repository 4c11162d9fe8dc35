"""The learned codec's building blocks (Balle et al. 2016, 2018): GDN, the factorized entropy model of the
hyper-latents, and the conditional Gaussian of the latents.

Every likelihood here is the probability mass of one integer bin, P(y - 1/2 < Y <= y + 1/2) of a density
convolved with a unit uniform: what additive uniform noise trains and what rounding plus an entropy coder pays.
"""

from kerasae import _backend  # noqa: F401
import keras
import numpy as np
import tensorflow as tf

#: Smallest probability a bin may have: -log2 of it (~30 bits) bounds the rate of an unlikely value.
LIKELIHOOD_BOUND = 1e-9
#: Smallest scale of a latent's Gaussian (tensorflow-compression's and CompressAI's 0.11): narrower bins
#: would carry almost no information and make the coder's tables huge.
SCALE_BOUND = 0.11
_PEDESTAL = 2.0 ** -36  # GDN's reparameterization: p^2 - pedestal, so that p never needs to reach 0


def _nonnegative(param, minimum=0.0):
    """p -> max(p, sqrt(minimum + pedestal))^2 - pedestal: a value >= minimum with a well-scaled gradient."""
    bound = float(np.sqrt(minimum + _PEDESTAL))
    return tf.square(tf.maximum(param, bound)) - _PEDESTAL


@keras.saving.register_keras_serializable(package="kerasae")
class GDN(keras.layers.Layer):
    """Generalized divisive normalization over channels: y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2), or its
    approximate inverse (IGDN, `inverse=True`): y_i = x_i * sqrt(beta_i + sum_j gamma_ij x_j^2).

    beta >= 1e-6 and gamma >= 0 are kept by a squared reparameterization; gamma starts at 0.1 * I, beta at 1.
    """

    def __init__(self, inverse=False, beta_min=1e-6, gamma_init=0.1, **kwargs):
        super().__init__(**kwargs)
        self.inverse = bool(inverse)
        self.beta_min = float(beta_min)
        self.gamma_init = float(gamma_init)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.beta_param = self.add_weight(name="beta", shape=(channels,),
                                          initializer=keras.initializers.Constant(np.sqrt(1.0 + _PEDESTAL)))
        gamma = np.sqrt(self.gamma_init * np.eye(channels) + _PEDESTAL)
        self.gamma_param = self.add_weight(name="gamma", shape=(channels, channels),
                                           initializer=keras.initializers.Constant(gamma))

    @property
    def beta(self):
        return _nonnegative(self.beta_param, self.beta_min)

    @property
    def gamma(self):
        return _nonnegative(self.gamma_param)

    def call(self, x):
        gamma = tf.cast(self.gamma, x.dtype)
        # a matmul over the channel axis: tf.einsum("...j,ij->...i") computed the same, but its gradient took 150x
        # as long on CPU (3.2 s vs 0.02 s for [8, 64, 64, 64])
        norm = tf.tensordot(tf.square(x), tf.transpose(gamma), axes=1) + tf.cast(self.beta, x.dtype)
        return x * tf.sqrt(norm) if self.inverse else x * tf.math.rsqrt(norm)

    def get_config(self):
        return {**super().get_config(), "inverse": self.inverse, "beta_min": self.beta_min,
                "gamma_init": self.gamma_init}


def _bin_mass(lower, upper):
    """P(lower < Y <= upper) from the logits of its CDF at both ends, computed in the tail where it is small
    (sign flip) so that bins far out keep their precision."""
    sign = -tf.sign(lower + upper)
    sign = tf.where(tf.equal(sign, 0.0), tf.ones_like(sign), sign)
    return tf.abs(tf.sigmoid(sign * upper) - tf.sigmoid(sign * lower))


@keras.saving.register_keras_serializable(package="kerasae")
class FactorizedDensity(keras.layers.Layer):
    """A learned density per channel, shared over space (Balle et al. 2018, appendix 6.1): its CDF is a monotone
    composition of per-channel affine maps with positive weights and x + a * tanh(x) nonlinearities.

    `call(y)` returns the probability mass of each value's unit bin [y - 1/2, y + 1/2), bounded below.
    """

    def __init__(self, filters=(3, 3, 3), init_scale=10.0, **kwargs):
        super().__init__(**kwargs)
        self.filters = tuple(int(f) for f in filters)
        self.init_scale = float(init_scale)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        widths = (1, *self.filters, 1)
        scale = self.init_scale ** (1.0 / (len(self.filters) + 1))
        self.matrices, self.biases, self.factors = [], [], []
        for i in range(len(widths) - 1):
            init = np.log(np.expm1(1.0 / scale / widths[i + 1]))
            self.matrices.append(self.add_weight(name=f"matrix_{i}", shape=(channels, widths[i + 1], widths[i]),
                                                 initializer=keras.initializers.Constant(init)))
            self.biases.append(self.add_weight(name=f"bias_{i}", shape=(channels, widths[i + 1], 1),
                                               initializer=keras.initializers.RandomUniform(-0.5, 0.5)))
            if i < len(widths) - 2:
                self.factors.append(self.add_weight(name=f"factor_{i}", shape=(channels, widths[i + 1], 1),
                                                    initializer="zeros"))

    def cdf_logits(self, y):
        """Logits of each channel's CDF at y [..., C] (float32)."""
        shape = tf.shape(y)
        channels = y.shape[-1]
        v = tf.reshape(tf.transpose(tf.reshape(tf.cast(y, tf.float32), [-1, channels])), [channels, 1, -1])
        for i, (matrix, bias) in enumerate(zip(self.matrices, self.biases)):
            v = tf.matmul(tf.nn.softplus(matrix), v) + bias
            if i < len(self.factors):
                v = v + tf.tanh(self.factors[i]) * tf.tanh(v)
        return tf.reshape(tf.transpose(tf.reshape(v, [channels, -1])), shape)

    def call(self, y):
        mass = _bin_mass(self.cdf_logits(y - 0.5), self.cdf_logits(y + 0.5))
        return tf.maximum(mass, LIKELIHOOD_BOUND)

    def get_config(self):
        return {**super().get_config(), "filters": list(self.filters), "init_scale": self.init_scale}


def gaussian_likelihood(y, scale):
    """Mass of y's unit bin under N(0, scale^2), scale bounded below by SCALE_BOUND (float32).

    Written on |y| with the lower tail (Phi(-t) = erfc(t / sqrt 2) / 2), which keeps bins far from 0 precise."""
    y, scale = tf.cast(y, tf.float32), tf.maximum(tf.cast(scale, tf.float32), SCALE_BOUND)
    values = tf.abs(y)
    upper = 0.5 * tf.math.erfc(-(0.5 - values) / scale / np.sqrt(2.0))
    lower = 0.5 * tf.math.erfc(-(-0.5 - values) / scale / np.sqrt(2.0))
    return tf.maximum(upper - lower, LIKELIHOOD_BOUND)
