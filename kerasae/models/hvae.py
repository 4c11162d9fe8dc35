"""A VAE with two stochastic layers (Burda et al. 2015; the layout of Tomczak & Welling 2018's HVAE)."""

import keras
import tensorflow as tf

from kerasae import layers as stacks
from kerasae import losses
from kerasae.models.base import check_positive_int, draw, register
from kerasae.models.vae import VAE


def _gaussian_log_prob(z, mean, log_var):
    """log N(z; mean, diag exp(log_var)) per code."""
    return losses.reparameterized_log_prob((z - mean) * tf.exp(-0.5 * log_var), log_var)


@register
class HierarchicalVAE(VAE):
    """p(z2) p(z1 | z2) p(x | z1, z2) with q(z2 | x) q(z1 | x, z2), all diagonal Gaussians but p(z2).

    The top code z2 reads the image directly (as in the VampPrior paper's HVAE, rather than only
    through z1), and the decoder sees both codes. One encoder tower maps x to features h; q(z2|x) is
    a Dense head on h, q(z1|x, z2) a Dense layer on [h, z2] and a head; p(z1|z2) two Dense layers
    and a head. p(z2) is N(0, I) or the VampPrior (`prior_type`), as for `VAE`.

    The public code is z = [z1, z2] (`latent_dim` = sum of `latent_dims`): `encode` gives q(z2|x)'s
    parameters and q(z1|x, z2 = its mean)'s, `decode` takes [z1, z2], `sample` draws z2 from its
    prior and z1 from p(z1|z2), and `score` is -log p(x | z = the means) + KL(q(z2|x) || p(z2)) +
    KL(q(z1|x, z2) || p(z1|z2)) at z2 = its mean: the VAE's score, one layer deeper.

    Args (beyond `VAE`'s; its `latent_dim` is derived):
        latent_dims: (size of z1, size of z2).
        stochastic_units: width of the Dense layers of the heads and of p(z1|z2). The encoder tower
            is `build_encoder`'s stack (mlp, conv or resnet) ending in a Dense layer of this width.
    """

    def __init__(self, latent_dims=(40, 40), stochastic_units=300, latent_dim=None, **kwargs):
        self.latent_dims = tuple(check_positive_int(f"latent_dims[{i}]", d) for i, d in enumerate(latent_dims))
        if len(self.latent_dims) != 2:
            raise ValueError(f"latent_dims must be (z1 size, z2 size), got {tuple(latent_dims)!r}")
        if latent_dim is not None and latent_dim != sum(self.latent_dims):
            raise ValueError(f"latent_dim is the sum of latent_dims {self.latent_dims}; got latent_dim={latent_dim}")
        self.stochastic_units = check_positive_int("stochastic_units", stochastic_units)
        super().__init__(latent_dim=sum(self.latent_dims), **kwargs)

    def _build_networks(self, encoder_output_dim, code_activation=None, output_channels=None):
        d1, d2 = self.latent_dims
        units, act, dtype = self.stochastic_units, self.activation, self.dtype_policy
        common = dict(activation=act, dtype=dtype, filters=self.filters if self.arch in stacks.CONV_ARCHS else (),
                      blocks_per_stage=self.blocks_per_stage, norm=self.norm)
        self.encoder = stacks.build_encoder(self.arch, self.image_shape, units, hidden_units=self.hidden_units,
                                            output_activation=act, **common)
        self.q_z2 = keras.Sequential([keras.Input((units,), name="h"),
                                      keras.layers.Dense(2 * d2, name="q_z2_out", dtype=dtype)], name="q_z2")
        h, z2 = keras.Input((units,), name="h"), keras.Input((d2,), name="z2")
        joint = keras.layers.Concatenate(name="q_z1_join", dtype=dtype)([h, z2])
        joint = keras.layers.Dense(units, activation=act, name="q_z1_dense", dtype=dtype)(joint)
        self.q_z1 = keras.Model([h, z2], keras.layers.Dense(2 * d1, name="q_z1_out", dtype=dtype)(joint), name="q_z1")
        self.p_z1 = keras.Sequential([keras.Input((d2,), name="z2")]
                                     + [keras.layers.Dense(units, activation=act, name=f"p_z1_dense_{i}", dtype=dtype)
                                        for i in range(2)]
                                     + [keras.layers.Dense(2 * d1, name="p_z1_out", dtype=dtype)], name="p_z1")
        self.decoder = stacks.build_decoder(self.arch, self.image_shape, d1 + d2, hidden_units=self.hidden_units,
                                            output_channels=output_channels, **common)
        self._trackers = [keras.metrics.Mean(name=name) for name in self.metric_names]
        self.build((None, *self.image_shape))

    def get_config(self):
        config = super().get_config()
        del config["latent_dim"]  # derived: the sum of latent_dims
        config.update(latent_dims=list(self.latent_dims), stochastic_units=self.stochastic_units)
        return config

    # ---- the networks as Gaussians ---------------------------------------------------------------

    @staticmethod
    def _split(params, size):
        """(mean, log_var) from a head's [..., 2 * size] output."""
        params = tf.cast(params, tf.float32)
        return params[..., :size], params[..., size:]

    def _features(self, x, training=False):
        return self.encoder(x, training=training)

    def _q_z2(self, h, training=False):
        return self._split(self.q_z2(h, training=training), self.top_dim)

    def _q_z1(self, h, z2, training=False):
        """q(z1 | x, z2) from features h [B, F] and codes z2 [..., B, d2] (leading sample axes broadcast h)."""
        lead = tf.shape(z2)[:-1]
        h = tf.broadcast_to(h, tf.concat([lead, tf.shape(h)[-1:]], 0))
        params = self.q_z1([tf.reshape(h, [-1, self.stochastic_units]), tf.reshape(z2, [-1, self.top_dim])],
                           training=training)
        return self._split(tf.reshape(params, tf.concat([lead, [2 * self.latent_dims[0]]], 0)), self.latent_dims[0])

    def _p_z1(self, z2, training=False):
        """p(z1 | z2) for codes z2 [..., d2]."""
        params = self.p_z1(tf.reshape(z2, [-1, self.top_dim]), training=training)
        return self._split(tf.reshape(params, tf.concat([tf.shape(z2)[:-1], [2 * self.latent_dims[0]]], 0)),
                           self.latent_dims[0])

    @property
    def top_dim(self):
        return self.latent_dims[1]

    def _top_posterior(self, x, training=False):
        return self._q_z2(self._features(x, training), training)

    def _posterior_params(self, x, training=False):
        """q(z2|x) and q(z1|x, z2 = its mean), as one (mean, log_var) over z = [z1, z2]."""
        h = self._features(x, training)
        mean2, log_var2 = self._q_z2(h, training)
        mean1, log_var1 = self._q_z1(h, mean2, training)
        return tf.concat([mean1, mean2], -1), tf.concat([log_var1, log_var2], -1)

    def posterior(self, x, training=False):
        """q(z2, z1 | x) as a TFP joint distribution (z2 drawn first, then z1 given it)."""
        h = self._features(self.check_images(x), training)
        top = losses.diagonal_gaussian(*self._q_z2(h, training))
        return losses.tfd.JointDistributionSequential(
            [top, lambda z2: losses.diagonal_gaussian(*self._q_z1(h, z2, training))])

    def prior(self):
        """p(z2, z1) as a TFP joint distribution (z2 first)."""
        return losses.tfd.JointDistributionSequential(
            [self._top_prior(), lambda z2: losses.diagonal_gaussian(*self._p_z1(z2))])

    # ---- the VAE's interface over z = [z1, z2] ---------------------------------------------------

    def prior_log_prob(self, z, training=False):
        """log p(z1, z2) = log p(z2) + log p(z1 | z2) per code z = [z1, z2] [..., latent_dim]."""
        z1, z2 = z[..., :self.latent_dims[0]], z[..., self.latent_dims[0]:]
        return self._top_log_prob(z2, training) + _gaussian_log_prob(z1, *self._p_z1(z2, training))

    def kl_divergence(self, mean, log_var):
        """KL(q(z2|x) || p(z2)) + KL(q(z1|x, z2) || p(z1|z2)) at z2 = q's mean, from `encode`'s parameters."""
        d1 = self.latent_dims[0]
        mean2 = mean[..., d1:]
        return (self._top_kl(mean2, log_var[..., d1:])
                + losses.gaussian_kl(mean[..., :d1], log_var[..., :d1], *self._p_z1(mean2)))

    def sample_codes(self, n, seed=None):
        """n codes [z1, z2]: z2 from its prior, z1 from p(z1 | z2)."""
        z2 = self._sample_top(n, seed)
        mean1, log_var1 = self._p_z1(z2)
        eps = draw("normal", tf.shape(mean1), seed, stream=2)
        return tf.concat([mean1 + tf.exp(0.5 * log_var1) * eps, z2], -1)

    def sample_terms(self, x, eps, training=False):
        """`VAE.sample_terms` for z = [z1, z2]: eps [k, B, latent_dim] is the noise of z1 then of z2.

        log p(z) = log p(z2) + log p(z1|z2), log q(z|x) = log q(z2|x) + log q(z1|x, z2); the KL is
        KL(q(z2|x) || p(z2)) (analytic for N(0, I), else the samples' mean of log q - log p) plus the
        samples' mean of the analytic KL(q(z1|x, z2) || p(z1|z2)).
        """
        d1, d2 = self.latent_dims
        k = tf.shape(eps)[0]
        h = self._features(x, training)
        mean2, log_var2 = self._q_z2(h, training)
        eps1, eps2 = eps[..., :d1], eps[..., d1:]
        z2 = mean2 + tf.exp(0.5 * log_var2) * eps2  # [k, B, d2]
        mean1, log_var1 = self._q_z1(h, z2, training)  # [k, B, d1]
        z1 = mean1 + tf.exp(0.5 * log_var1) * eps1
        prior_mean1, prior_log_var1 = self._p_z1(z2, training)
        logits = self.decoder(tf.reshape(tf.concat([z1, z2], -1), [-1, d1 + d2]), training=training)
        logits = tf.reshape(logits, [k, -1, *self.image_shape[:2], logits.shape[-1]])

        log_p2, log_q2 = self._top_log_prob(z2, training), losses.reparameterized_log_prob(eps2, log_var2)
        log_p1 = _gaussian_log_prob(z1, prior_mean1, prior_log_var1)
        log_q1 = losses.reparameterized_log_prob(eps1, log_var1)
        kl1 = losses.gaussian_kl(mean1, log_var1, prior_mean1, prior_log_var1)
        kl2 = (losses.kl_to_standard_normal(mean2, log_var2) if self.prior_type == "standard"
               else tf.reduce_mean(log_q2 - log_p2, axis=0))
        return (self.log_likelihood(x, logits), log_p2 + log_p1, log_q2 + log_q1,
                kl2 + tf.reduce_mean(kl1, axis=0))
