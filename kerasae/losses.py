"""Likelihoods, priors, KL and the importance-weighted bound, as TFP distributions.

Everything here returns *per-example* values in nats (shape [B] or [k, B]); averaging
over the batch (and over replicas under tf.distribute) is the training step's job.
All maths runs in float32 even when the model computes in a mixed-precision policy.
"""

import math

from kerasae import _backend  # noqa: F401
import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions
tfb = tfp.bijectors

_IMAGE_NDIMS = 3  # H, W, C are one event: log-likelihoods sum over pixels
#: The largest 8-bit level: pixels in [0, 1] are k / 255, k = 0..255.
MAX_LEVEL = 255.0


def _f32(t):
    return tf.cast(t, tf.float32)


def bernoulli_likelihood(logits):
    """p(x|z) for binary pixels: independent Bernoulli(sigmoid(logits)) per pixel."""
    return tfd.Independent(tfd.Bernoulli(logits=_f32(logits), dtype=tf.float32), _IMAGE_NDIMS)


def gaussian_likelihood(mean, scale):
    """p(x|z) for real pixels: independent Normal(mean, scale) per pixel."""
    return tfd.Independent(tfd.Normal(loc=_f32(mean), scale=_f32(scale)), _IMAGE_NDIMS)


class _PixelLevels(tfb.AutoCompositeTensorBijector):
    """k -> k / 255, whose inverse rounds x to the nearest level round(255 x).

    Maps the integer levels of a discrete distribution onto pixels in [0, 1]. The rounding makes
    log_prob robust to float32 pixels a rounding error off k / 255 (QuantizedDistribution floors, and
    tfb.Scale(1/255)'s inverse x / (1/255) lands just below k for 120 of the 256 levels), and scores
    an off-grid x by its nearest level.
    A discrete base distribution takes no Jacobian term under TransformedDistribution.
    """

    def __init__(self, validate_args=False, name="pixel_levels"):
        parameters = dict(locals())
        with tf.name_scope(name) as name:
            super().__init__(forward_min_event_ndims=0, is_constant_jacobian=True, validate_args=validate_args,
                             parameters=parameters, name=name)

    @classmethod
    def _parameter_properties(cls, dtype):
        return dict()

    def _forward(self, k):
        return k / MAX_LEVEL

    def _inverse(self, x):
        return tf.round(x * MAX_LEVEL)

    def _forward_log_det_jacobian(self, k):
        return tf.constant(-math.log(MAX_LEVEL), k.dtype)


def discretized_logistic_likelihood(loc, scale):
    """p(x|z) for 8-bit pixels x = k / 255: a Logistic(loc, scale) per pixel integrated over its level's bin.

    Bin k is [(k - 1/2) / 255, (k + 1/2) / 255], the edge bins (k = 0, 255) extended to -inf and
    +inf (Salimans et al. 2017, PixelCNN++, without the mixture), so the 256 masses sum to 1.
    Built from TFP parts as the reference for `discretized_logistic_log_prob`: a
    QuantizedDistribution of Logistic(255 loc - 1/2, 255 scale) on levels 0..255 (its bin for k is
    (k - 1, k]), mapped to [0, 1] by `_PixelLevels`. It has no closed-form mean.
    """
    loc, scale = _f32(loc), _f32(scale)
    levels = tfd.QuantizedDistribution(tfd.Logistic(loc=MAX_LEVEL * loc - 0.5, scale=MAX_LEVEL * scale),
                                       low=0.0, high=MAX_LEVEL)
    return tfd.Independent(tfd.TransformedDistribution(levels, _PixelLevels()), _IMAGE_NDIMS)


def diagonal_gaussian(mean, log_var):
    """q(z|x) = N(mean, diag(exp(log_var))), reparameterized."""
    return tfd.MultivariateNormalDiag(loc=_f32(mean), scale_diag=tf.exp(0.5 * _f32(log_var)))


def standard_normal(latent_dim):
    """The prior p(z) = N(0, I)."""
    return tfd.MultivariateNormalDiag(loc=tf.zeros([latent_dim], tf.float32))


def kl_divergence(q, p):
    """Analytic KL(q || p) per example."""
    return tfd.kl_divergence(q, p)


# ---- closed forms for the training step ---------------------------------------------------------
# The same values as the TFP distributions above (tests hold them to it), in a few fused-friendly
# ops: TFP's Independent(Bernoulli).log_prob and MVNDiag KL cost ~0.6 ms of a 6.5 ms training
# step of the benchmark VAE (batch 128) with their gradients; these cost ~0.4 ms. Leading axes
# broadcast, so k samples' logits [k, B, H, W, C] meet images [B, H, W, C] without tiling them.

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def bernoulli_log_prob(x, logits):
    """log p(x | logits) of independent Bernoulli(sigmoid(logits)) pixels, summed over the image [...].

    x * logits - softplus(logits): exact for binary x and, like TFP's, the negative binary
    cross-entropy for x in [0, 1]. `_softplus`, not tf.nn.softplus: an exported `score` runs this in
    TFLite, where a confident pixel's logit past ~88 would otherwise score -inf.
    """
    x, logits = _f32(x), _f32(logits)
    return tf.reduce_sum(x * logits - _softplus(logits), axis=[-3, -2, -1])


def gaussian_log_prob(x, mean, scale):
    """log N(x; mean, scale) of independent pixels summed over the image; scale is [H, W, C] (shared by the
    batch) or shaped like mean (per image)."""
    x, mean, scale = _f32(x), _f32(mean), _f32(scale)
    log_norm = tf.reduce_sum(tf.math.log(scale) + _HALF_LOG_2PI, axis=[-3, -2, -1])
    return -0.5 * tf.reduce_sum(tf.square((x - mean) / scale), axis=[-3, -2, -1]) - log_norm


def _softplus(t):
    """log(1 + e^t) from exp(-|t|), which cannot overflow.

    tf.nn.softplus is exact in TensorFlow, but TFLite lowers it to log(exp(t) + 1), which stops at
    ~88.4: a pixel far from its location would get a wrong score in the exported files. The
    selects give the exact gradient sigmoid(t) everywhere, t = 0 included.
    """
    positive = t > 0.0
    return tf.where(positive, t, 0.0) + tf.math.log1p(tf.exp(tf.where(positive, -t, t)))


def _log1mexp(w):
    """log(1 - e^-w) for w > 0: a series in w below 1/4, log1p(-e^-w) above (Maechler 2012).

    log(-expm1(-w)) would do in TensorFlow, but TFLite lowers expm1 to exp - 1, which loses a small w
    (a scale of many bins). The truncated series is within 2e-9 below 1/4.
    """
    small = w < 0.25
    ws, wl = tf.where(small, w, 0.25), tf.where(small, 1.0, w)  # each branch finite in value and gradient
    series = tf.math.log(ws) - 0.5 * ws + tf.square(ws) / 24.0 - tf.square(tf.square(ws)) / 2880.0
    return tf.where(small, series, tf.math.log1p(-tf.exp(-wl)))


def discretized_logistic_log_prob(x, loc, scale):
    """log p(x | loc, scale) of the discretized logistic (`discretized_logistic_likelihood`), summed over the image.

    x is rounded to the nearest level k = round(255 x). With a, b = (k +- 1/2 - 255 loc) / (255 scale),
    bin k's mass sigmoid(a) - sigmoid(b) equals sigmoid(a) sigmoid(-b) (1 - exp(b - a)), so its log is

        -softplus(-a) - softplus(b) + log(1 - exp(-1 / (255 scale)))

    exact and finite for any scale and any distance from loc: nothing subtracts two CDFs that
    round to the same float, which is why PixelCNN++ needs a mid-bin density fallback and this
    does not. The edge bins keep one factor: log sigmoid(a) for k = 0, log sigmoid(-b) for k = 255.
    scale is [H, W, C] (shared by the batch) or shaped like loc (predicted per image); leading axes of
    loc broadcast against x. Written with ops
    that TFLite runs as accurately as TensorFlow (see `_softplus`, `_log1mexp`).
    """
    x, loc, scale = _f32(x), _f32(loc), _f32(scale)
    k = tf.round(x * MAX_LEVEL)
    inv = 1.0 / (MAX_LEVEL * scale)  # per pixel (and per image when the decoder predicts it)
    centre = (k - MAX_LEVEL * loc) * inv
    a, b = centre + 0.5 * inv, centre - 0.5 * inv
    log_width = _log1mexp(inv)  # log(1 - exp(b - a)): scale only
    log_p = (tf.where(k < MAX_LEVEL, -_softplus(-a), 0.0) + tf.where(k > 0.0, -_softplus(b), 0.0)
             + tf.where((k > 0.0) & (k < MAX_LEVEL), log_width, 0.0))
    return tf.reduce_sum(log_p, axis=[-3, -2, -1])


def bits_per_dim(nats, image_shape):
    """Nats per image -> bits per pixel channel: nats / (H * W * C * ln 2).

    For the negative log-likelihood of a discrete (8-bit) image this is a code length: what an
    entropy coder driven by the model would spend per subpixel (8 for a uniform model).
    """
    return nats / (math.prod(image_shape) * math.log(2.0))


def kl_to_standard_normal(mean, log_var):
    """KL(N(mean, diag exp(log_var)) || N(0, I)) per example."""
    mean, log_var = _f32(mean), _f32(log_var)
    return 0.5 * tf.reduce_sum(tf.exp(log_var) + tf.square(mean) - 1.0 - log_var, axis=-1)


def standard_normal_log_prob(z):
    """log N(z; 0, I) per sample [...]."""
    z = _f32(z)
    return -0.5 * tf.reduce_sum(tf.square(z), axis=-1) - z.shape[-1] * _HALF_LOG_2PI


def reparameterized_log_prob(eps, log_var):
    """log q(z | x) at z = mean + exp(log_var / 2) * eps, from the noise eps that drew it.

    (z - mean) / scale is eps, so this equals q.log_prob(z) in value and in gradient (the
    dependence on mean cancels either way) without recomputing it.
    """
    eps, log_var = _f32(eps), _f32(log_var)
    return (-0.5 * tf.reduce_sum(tf.square(eps), axis=-1) - 0.5 * tf.reduce_sum(log_var, axis=-1)
            - eps.shape[-1] * _HALF_LOG_2PI)


def gaussian_kl(mean, log_var, prior_mean, prior_log_var):
    """KL(N(mean, exp(log_var)) || N(prior_mean, exp(prior_log_var))) per example, diagonal; axes broadcast."""
    mean, log_var, prior_mean, prior_log_var = map(_f32, (mean, log_var, prior_mean, prior_log_var))
    return 0.5 * tf.reduce_sum(prior_log_var - log_var - 1.0
                               + (tf.exp(log_var) + tf.square(mean - prior_mean)) * tf.exp(-prior_log_var), axis=-1)


#: The most float32 elements of one [rows, K, D] block of mean-minus-component differences in `mixture_kl` (16 MB):
#: a static number of rows (eager evaluation of thousands of images) runs in blocks of rows.
MIXTURE_BLOCK_ELEMENTS = 2**22


def _scaled_distances(x, means, precisions):
    """sum_d (x_nd - m_kd)^2 p_kd for every row against every component: [n, D] x [K, D] -> [n, K].

    Differences first: expanding the square into float32 matmuls (x^2 p - 2 x m p + m^2 p) cancels
    catastrophically when the precision p is large (see `mixture_log_prob`).
    """
    return tf.reduce_sum(tf.square(x[:, None, :] - means) * precisions, axis=-1)


def _over_row_blocks(fn, rows, width):
    """fn(rows [n, C]) -> [n], at most MIXTURE_BLOCK_ELEMENTS // width rows at a time where n is static.

    An unknown n (a traced signature's batch) runs in one piece: a loop would put control flow into the TFLite
    files of `score`.
    """
    size = max(1, MIXTURE_BLOCK_ELEMENTS // width) if width else None
    n = rows.shape[0]
    if size is None or n is None or n <= size:
        return fn(rows)
    return tf.concat([fn(rows[i:i + size]) for i in range(0, n, size)], axis=0)


def _width(means):
    k, d = means.shape
    return k * d if k is not None and d is not None else None


def mixture_log_prob(z, means, log_vars):
    """log p(z) for the equal-weight mixture of diagonal Gaussians N(means[k], exp(log_vars[k])) (the VampPrior):
    z [..., D], components [K, D] -> [...].

    sum_d (z_d - m_kd)^2 / v_kd expanded into two matmuls (no [N, K, D] tensor: 500 importance samples x 100 images
    x 500 components x 40 dimensions would be 4 GB), in float64: in float32 the expansion cancels catastrophically
    for tight components (against float64 with K=500, D=40: 0.16 nats off at component log-variance -9, 56 at -15).
    The result is float32, within its rounding of the float64 density. Cost (benchmarks/vamp_mixture.py): a
    hvae-mlp-vamp training step ~7% slower than with float32 matmuls, where the differences taken directly in
    float32 ([N, K, D] at once) cost ~50%.
    """
    z, means, log_vars = (tf.cast(t, tf.float64) for t in (z, means, log_vars))
    flat = tf.reshape(z, [-1, z.shape[-1]])
    precisions = tf.exp(-log_vars)
    quadratic = (tf.matmul(tf.square(flat), precisions, transpose_b=True)
                 - 2.0 * tf.matmul(flat, means * precisions, transpose_b=True)
                 + tf.reduce_sum(tf.square(means) * precisions, axis=-1))  # [N, K]
    log_n = -0.5 * (quadratic + tf.reduce_sum(log_vars, axis=-1)) - z.shape[-1] * _HALF_LOG_2PI
    return _f32(tf.reshape(log_mean_exp(log_n, axis=1), tf.shape(z)[:-1]))


def mixture_kl(mean, log_var, means, log_vars):
    """Hershey & Olsen's (2007) variational approximation of KL(q || p) for a diagonal Gaussian q [B, D] and an
    equal-weight mixture p of K diagonal Gaussians [K, D]: -log mean_k exp(-KL(q || p_k)), per example.

    Deterministic and closed form; exact when the components coincide (K = 1: the Gaussian KL). The squared
    distances are taken directly (float32 and no float64 matmul, which TFLite's `score` files could not hold).
    """
    mean, log_var, means, log_vars = map(_f32, (mean, log_var, means, log_vars))
    precisions = tf.exp(-log_vars)
    d = mean.shape[-1]

    def block(rows):
        m, lv = rows[:, :d], rows[:, d:]
        # the variances' term has no cancellation (all terms positive): one matmul
        kl = 0.5 * (tf.matmul(tf.exp(lv), precisions, transpose_b=True) + _scaled_distances(m, means, precisions)
                    + tf.reduce_sum(log_vars, axis=-1) - tf.reduce_sum(lv, axis=-1, keepdims=True) - d)  # [n, K]
        return -log_mean_exp(-kl, axis=1)

    return _over_row_blocks(block, tf.concat([mean, log_var], axis=-1), _width(means))


def log_mean_exp(log_w, axis=0):
    """log(mean(exp(log_w))) along `axis`, stable (log-sum-exp minus log k)."""
    k = tf.cast(tf.shape(log_w)[axis], log_w.dtype)
    return tf.reduce_logsumexp(log_w, axis=axis) - tf.math.log(k)


def iwae_bound(log_px_z, log_pz, log_qz, beta=1.0):
    """Importance-weighted bound log (1/k) sum_i p(x, z_i) / q(z_i|x), z_i ~ q, per example.

    Inputs are [k, B]. With k = 1 it is the single-sample ELBO; it tightens as k grows
    (Burda et al. 2015). `beta` weighs log p(z) - log q(z|x) as in the beta-ELBO.
    """
    return log_mean_exp(log_px_z + beta * (log_pz - log_qz), axis=0)


def reconstruction_error(x, logits, kind):
    """Per-example AE reconstruction loss summed over pixels.

    "bce": binary cross-entropy of x against sigmoid(logits), in nats (x may be
    intensities in [0, 1]); "mse": squared error of sigmoid(logits).
    """
    x, logits = _f32(x), _f32(logits)
    if kind == "bce":
        per_pixel = tf.nn.sigmoid_cross_entropy_with_logits(labels=x, logits=logits)
    elif kind == "mse":
        per_pixel = tf.square(tf.sigmoid(logits) - x)
    else:
        raise ValueError(f"reconstruction loss must be 'bce' or 'mse', got {kind!r}")
    return tf.reduce_sum(per_pixel, axis=[1, 2, 3])


def mean_squared_error(x, x_hat):
    """Per-example mean squared error per pixel (comparable across models and PCA)."""
    return tf.reduce_mean(tf.square(_f32(x_hat) - _f32(x)), axis=[1, 2, 3])


def bernoulli_kl(rho, rho_hat, eps=1e-6):
    """KL(Bernoulli(rho) || Bernoulli(rho_hat)) summed over units, for KL sparsity targets."""
    rho_hat = tf.clip_by_value(_f32(rho_hat), eps, 1.0 - eps)
    return tf.reduce_sum(rho * tf.math.log(rho / rho_hat)
                         + (1.0 - rho) * tf.math.log((1.0 - rho) / (1.0 - rho_hat)), axis=-1)

