"""The variational autoencoder (Kingma & Welling 2014) and its importance-weighted bound (Burda et al. 2015)."""

import math

import keras
import tensorflow as tf

from kerasae import losses
from kerasae.models.base import (BaseAutoencoder, check_choice, check_number, check_positive_int, draw,
                                 flag_non_finite, register)

from kerasae.options import (DEFAULT_GAUSSIAN_SCALE, DEFAULT_LIKELIHOOD, GAUSSIAN_SCALES, LIKELIHOODS,  # noqa: F401
                             PRIORS, SCALED_LIKELIHOODS)  # (re-exported)


def _scale_softplus(t):
    """softplus(t) as ops that TFLite runs in full integer (an int8 `decode`) and without overflow.

    losses.softplus (exact far into the tails, for log-probabilities) needs select ops that int8 files keep
    in float32; a scale needs no such tails: past t = 15, softplus(t) is t to float32 precision.
    """
    return tf.math.log1p(tf.exp(tf.minimum(t, 15.0))) + tf.nn.relu(t - 15.0)


@register
class VAE(BaseAutoencoder):
    """q(z|x) = N(mean, diag exp(log_var)), prior p(z) = N(0, I), decoder p(x|z).

    Args (beyond `BaseAutoencoder`'s):
        likelihood: "bernoulli" (binary pixels; train on dynamically binarized data),
            "gaussian" (real pixels in [0, 1]; mean = sigmoid(decoder logits)) or
            "discretized_logistic" (8-bit pixels k / 255: a logistic with location
            sigmoid(decoder logits), integrated over each level's bin of width 1/255, the
            edge bins reaching to -inf / +inf; see `losses.discretized_logistic_log_prob`).
            Its log-likelihood is a probability of the 8-bit image, so -elbo is a code length
            and `bits_per_dim` is reported; a Gaussian density on [0, 1] is not one.
        gaussian_scale: the decoder's scale (Gaussian std, logistic scale): "pixel" (learned
            per pixel), "channel" (one learned per colour channel), "shared" (one learned
            scalar), "fixed" (`fixed_scale`) or "decoder" (predicted per pixel and image: the
            decoder outputs 2C channels, the location's logits then the scale's; a flat patch
            of sky gets a sharper distribution than a textured one).
        fixed_scale: the scale when gaussian_scale="fixed".
        min_scale: floor added to a learned scale, so constant pixels (MNIST's border)
            cannot drive a Gaussian density to infinity (a discretized likelihood is bounded
            by 1 anyway; the floor keeps its scale's gradients tame).
        beta: weight of the KL term (beta-VAE); 1 gives the ELBO.
        num_importance_samples: k. k = 1 trains on the ELBO (analytic KL); k > 1 on the
            IWAE bound with k samples.
        kl_warmup_steps: ramp the KL weight linearly from 0 to `beta` over this many
            training steps (Sønderby et al. 2016): early on the decoder learns to use z
            before the KL pushes unused units to the prior, so more units stay active.
            0: no warm-up. Evaluation always uses `beta`.
        prior_type: "standard" (p(z) = N(0, I)) or "vamp": the VampPrior, p(z) = (1/K) sum_k q(z | u_k)
            over K learned pseudo-images u_k (weights `pseudo_inputs`, clipped to [0, 1]), the
            encoder's own posteriors. Its KL has no closed form: training uses the Monte Carlo
            estimate log q(z|x) - log p(z) at the sampled z (the `kl` metric), `score` Hershey &
            Olsen's variational approximation (`losses.mixture_kl`).
        num_pseudo_inputs: K, for prior_type="vamp".

    Metrics (nats per example): `loss` (the training objective), `reconstruction_loss`
    (E_q[-log p(x|z)], Monte Carlo over the k samples), `kl` (KL(q || p): analytic for N(0, I)) and
    `elbo` (-reconstruction_loss - kl, whatever beta is); with the discretized likelihood
    also `bits_per_dim` = -elbo / (H * W * C * ln 2).

    `decode`, `reconstruct` and `sample` return sigmoid(logits): the mean of p(x|z) for the
    Bernoulli and Gaussian decoders, the location for the discretized logistic (its median, up
    to the 1/255 grid). Its mean differs near 0 and 1, where an edge bin takes the tail: a
    255-term sum that would cost every decode and be no better a picture.
    """

    family = "vae"

    def __init__(self, image_shape=(28, 28, 1), latent_dim=32, arch="mlp", hidden_units=(512, 256),
                 filters=(32, 64), activation="relu", likelihood=DEFAULT_LIKELIHOOD,
                 gaussian_scale=DEFAULT_GAUSSIAN_SCALE, fixed_scale=0.1, min_scale=1e-3, beta=1.0,
                 num_importance_samples=1, kl_warmup_steps=0, prior_type="standard", num_pseudo_inputs=500, **kwargs):
        super().__init__(image_shape=image_shape, latent_dim=latent_dim, arch=arch, hidden_units=hidden_units,
                         filters=filters, activation=activation, **kwargs)
        self.likelihood = check_choice("likelihood", likelihood, LIKELIHOODS)
        self.gaussian_scale = check_choice("gaussian_scale", gaussian_scale, GAUSSIAN_SCALES)
        self.fixed_scale = check_number("fixed_scale", fixed_scale, low=0.0, low_open=True)
        self.min_scale = check_number("min_scale", min_scale, low=0.0)
        self.beta = check_number("beta", beta, low=0.0)
        self.num_importance_samples = check_positive_int("num_importance_samples", num_importance_samples)
        if isinstance(kl_warmup_steps, bool) or not isinstance(kl_warmup_steps, int) or kl_warmup_steps < 0:
            raise ValueError(f"kl_warmup_steps must be a non-negative integer, got {kl_warmup_steps!r}")
        self.kl_warmup_steps = kl_warmup_steps
        self.prior_type = check_choice("prior_type", prior_type, PRIORS)
        self.num_pseudo_inputs = check_positive_int("num_pseudo_inputs", num_pseudo_inputs)
        self.pseudo_inputs = None
        if self.prior_type == "vamp":  # grey images with a little noise: inside the clip, so every pixel learns
            self.pseudo_inputs = self.add_weight(
                name="pseudo_inputs", shape=(self.num_pseudo_inputs, *self.image_shape),
                initializer=keras.initializers.RandomNormal(0.5, 0.05, seed=self.seed))
        self._raw_scale = None
        # decoder-predicted scale: 2C output channels, the extra C mapped to a scale by `_loc_scale`
        self.scale_from_decoder = self.likelihood in SCALED_LIKELIHOODS and self.gaussian_scale == "decoder"
        init = max(0.1, 2 * self.min_scale)  # a learned scale's start (softplus keeps it > 0)
        self._scale_offset = math.log(math.expm1(init - self.min_scale))
        if self.likelihood in SCALED_LIKELIHOODS and self.gaussian_scale not in ("fixed", "decoder"):
            shape = {"pixel": self.image_shape, "channel": self.image_shape[-1:], "shared": ()}[self.gaussian_scale]
            self._raw_scale = self.add_weight(
                name="decoder_scale", shape=shape,
                initializer=keras.initializers.Constant(self._scale_offset))
        self._build_networks(2 * self.latent_dim,
                             output_channels=2 * self.image_shape[-1] if self.scale_from_decoder else None)

    @property
    def metric_names(self):
        names = ("loss", "reconstruction_loss", "kl", "elbo")
        return names + (("bits_per_dim",) if self.likelihood == "discretized_logistic" else ())

    def get_config(self):
        config = super().get_config()
        config.update(likelihood=self.likelihood, gaussian_scale=self.gaussian_scale,
                      fixed_scale=self.fixed_scale, min_scale=self.min_scale, beta=self.beta,
                      num_importance_samples=self.num_importance_samples, kl_warmup_steps=self.kl_warmup_steps)
        if self.prior_type != "standard":  # configs of standard-prior models stay as they were saved
            config.update(prior_type=self.prior_type, num_pseudo_inputs=self.num_pseudo_inputs)
        return config

    @property
    def binary_data(self):
        """True when the model expects binary pixels (train on dynamically binarized data)."""
        return self.likelihood == "bernoulli"

    # ---- distributions ---------------------------------------------------------------------

    def encode(self, x, training=False):
        """Images -> (mean, log_var) of q(z|x), each [B, latent_dim]; log_var is the natural log of the variance."""
        return self._posterior_params(self.check_images(x), training)

    def _posterior_params(self, x, training=False):
        """encode() for an x already through check_images (checked once per call)."""
        h = tf.cast(self.encoder(x, training=training), tf.float32)
        # two slices, not tf.split: a split with an unused half (reconstruct needs only the mean)
        # makes the TFLite int8 converter leave SPLIT in float32
        return h[:, :self.latent_dim], h[:, self.latent_dim:]

    def posterior(self, x, training=False):
        """q(z|x) as a `tfp.distributions.MultivariateNormalDiag`."""
        return losses.diagonal_gaussian(*self.encode(x, training=training))

    def prior(self):
        """p(z) as a TFP distribution: N(0, I), or the VampPrior's equal-weight mixture."""
        return self._top_prior()

    def _top_prior(self):
        """The prior of the top code (all of z here; z2 in `HierarchicalVAE`) as a TFP distribution."""
        if self.prior_type == "standard":
            return losses.standard_normal(self.top_dim)
        mean, log_var = self.prior_components()
        return losses.tfd.MixtureSameFamily(
            losses.tfd.Categorical(logits=tf.zeros([self.num_pseudo_inputs])), losses.diagonal_gaussian(mean, log_var))

    @property
    def top_dim(self):
        """The size of the code the prior (N(0, I) or the VampPrior) is over."""
        return self.latent_dim

    def _top_posterior(self, x, training=False):
        """q(top code | x)'s (mean, log_var) for checked images x."""
        return self._posterior_params(x, training)

    def prior_components(self, training=False):
        """The VampPrior's components: q(top code | u_k)'s (mean, log_var), each [K, top_dim]."""
        if self.pseudo_inputs is None:
            raise ValueError('prior_components() needs prior_type="vamp"')
        u = tf.clip_by_value(tf.cast(self.pseudo_inputs, tf.float32), 0.0, 1.0)
        return self._pseudo_input_posterior(u, training)

    def _pseudo_input_posterior(self, u, training=False):
        """q(top code | u_k) for the clipped pseudo-inputs u [K, H, W, C]."""
        return self._top_posterior(u, training)

    def _top_log_prob(self, z, training=False):
        if self.prior_type == "standard":
            return losses.standard_normal_log_prob(z)
        return losses.mixture_log_prob(z, *self.prior_components(training))

    def _top_kl(self, mean, log_var):
        if self.prior_type == "standard":
            return losses.kl_to_standard_normal(mean, log_var)
        return losses.mixture_kl(mean, log_var, *self.prior_components())

    def _sample_top(self, n, seed=None):
        if self.prior_type == "standard":
            return draw("normal", tf.stack([n, self.top_dim]), seed)
        mean, log_var = self.prior_components()
        logits = tf.zeros([1, self.num_pseudo_inputs])
        pick = (tf.random.categorical(logits, n) if seed is None
                else tf.random.stateless_categorical(logits, n, seed=[int(seed), 1]))[0]
        eps = draw("normal", tf.stack([n, self.top_dim]), seed)
        return tf.gather(mean, pick) + tf.exp(0.5 * tf.gather(log_var, pick)) * eps

    def prior_log_prob(self, z, training=False):
        """log p(z) per code, z [..., latent_dim]."""
        return self._top_log_prob(z, training)

    def kl_divergence(self, mean, log_var):
        """KL(q(z|x) || p(z)) per example from q's parameters: exact for N(0, I), Hershey & Olsen's
        approximation for the VampPrior (deterministic either way)."""
        return self._top_kl(mean, log_var)

    def sample_codes(self, n, seed=None):
        """n codes drawn from p(z) ([n, latent_dim]); `n` may be a scalar tensor (the exported `sample`).

        VampPrior: a component per code (TFLite's MULTINOMIAL), then its Gaussian.
        """
        return self._sample_top(n, seed)

    def decoder_scale(self, z=None):
        """The decoder's scale (Gaussian std, logistic scale) as float32 [H, W, C], or [B, H, W, C] at codes z
        when the decoder predicts it (gaussian_scale="decoder", where z is required)."""
        if self.likelihood not in SCALED_LIKELIHOODS:
            raise ValueError(f"decoder_scale() is defined for likelihood in {list(SCALED_LIKELIHOODS)} only")
        if self.scale_from_decoder:
            if z is None:
                raise ValueError('decoder_scale(z): with gaussian_scale="decoder" the scale depends on the codes z')
            return self.decoder_params(z)[1]
        if self._raw_scale is None:
            scale = tf.constant(self.fixed_scale, tf.float32)
        else:
            scale = tf.nn.softplus(tf.cast(self._raw_scale, tf.float32)) + self.min_scale
        return tf.broadcast_to(scale, self.image_shape)

    def _loc_scale(self, output):
        """The decoder's raw output [..., H, W, C or 2C] -> (location in [0, 1], scale), float32."""
        output = tf.cast(output, tf.float32)
        if not self.scale_from_decoder:
            return tf.sigmoid(output), self.decoder_scale()
        c = self.image_shape[-1]
        # the offset starts a zero output where learned scales start
        scale = _scale_softplus(output[..., c:] + self._scale_offset) + self.min_scale
        return tf.sigmoid(output[..., :c]), scale

    def decode_logits(self, z, training=False):
        """The location's logits [B, H, W, C] (the decoder's scale channels, if any, left out)."""
        return super().decode_logits(z, training=training)[..., :self.image_shape[-1]]

    def decoder_params(self, z, training=False):
        """p(x|z)'s (location, scale) at codes z, each [B, H, W, C] float32 (scaled likelihoods only)."""
        if self.likelihood not in SCALED_LIKELIHOODS:
            raise ValueError(f"decoder_params() is defined for likelihood in {list(SCALED_LIKELIHOODS)} only")
        loc, scale = self._loc_scale(self.decoder(self.check_codes(z), training=training))
        return loc, tf.broadcast_to(scale, tf.shape(loc))

    def likelihood_from_logits(self, logits):
        """p(x|z) from the decoder's raw output (logits; for gaussian_scale="decoder" also the scale channels)."""
        if self.likelihood == "bernoulli":
            return losses.bernoulli_likelihood(logits)
        loc, scale = self._loc_scale(logits)
        if self.likelihood == "discretized_logistic":
            return losses.discretized_logistic_likelihood(loc, scale)
        return losses.gaussian_likelihood(loc, scale)

    def decoder_distribution(self, z, training=False):
        """p(x|z) as a TFP distribution with image-shaped events."""
        return self.likelihood_from_logits(self.decoder(self.check_codes(z), training=training))

    def reconstruct(self, x, training=False):
        """sigmoid(decoder logits) at z = the posterior mean (deterministic): see the class docstring."""
        mean, _ = self.encode(x, training=training)
        return self.decode(mean, training=training)

    def score(self, x):
        """Per-example anomaly score, nats: -log p(x | z=mean) + KL(q(z|x) || p(z)).

        The negative ELBO with its expectation replaced by the posterior mean, so it is
        deterministic (one input, one score). With the discretized likelihood p(x|z) is a
        probability of the 8-bit image, so the score reads as a code length (nats;
        `losses.bits_per_dim` converts). NaN/Inf pixels
        raise here; in a traced graph (the exported signature) they give a NaN score.
        """
        x = self.check_images(x)
        mean, log_var = self._posterior_params(x)
        log_px_z = self.log_likelihood(x, self.decoder(mean))
        return flag_non_finite(x, self.kl_divergence(mean, log_var) - log_px_z)

    # ---- training --------------------------------------------------------------------------

    def log_likelihood(self, x, logits):
        """log p(x|z) summed over the image, from the decoder's raw output [..., B, H, W, C or 2C] (leading axes
        broadcast).

        The closed form of `likelihood_from_logits(logits).log_prob(x)` that training and
        evaluation use (cheaper; tested equal to the TFP distribution).
        """
        if self.likelihood == "bernoulli":
            return losses.bernoulli_log_prob(x, logits)
        loc, scale = self._loc_scale(logits)
        if self.likelihood == "discretized_logistic":
            return losses.discretized_logistic_log_prob(x, loc, scale)
        return losses.gaussian_log_prob(x, loc, scale)

    def sample_terms(self, x, eps, training=False):
        """Per-sample terms at z = mean + sigma * eps for noise eps [k, B, latent_dim].

        Returns log p(x|z), log p(z), log q(z|x) (each [k, B]) and KL(q || p) [B] (analytic for N(0, I);
        for the VampPrior the mean over the k samples of log q - log p): what the ELBO, the IWAE bound
        and the k-sample NLL estimate are made of. x must have passed `check_inputs` (a conditional model's
        x is (images, labels)).
        """
        mean, log_var = self._posterior_params(x, training)
        z = mean + tf.exp(0.5 * log_var) * eps  # reparameterized, [k, B, D]
        logits = self._decode_samples(z, x, training)
        logits = tf.reshape(logits, [tf.shape(eps)[0], -1, *self.image_shape[:2], logits.shape[-1]])  # [k, B, H, W, C]
        log_pz, log_qz = self._top_log_prob(z, training), losses.reparameterized_log_prob(eps, log_var)
        kl = (losses.kl_to_standard_normal(mean, log_var) if self.prior_type == "standard"
              else tf.reduce_mean(log_qz - log_pz, axis=0))
        return self.log_likelihood(x[0] if isinstance(x, tuple) else x, logits), log_pz, log_qz, kl

    def _decode_samples(self, z, inputs, training=False):
        """The decoder's raw output for the codes z [k, B, D] drawn for `inputs`, as [k * B, ...]."""
        return self.decoder(tf.reshape(z, [-1, self.latent_dim]), training=training)

    def importance_weighted_bound(self, x, k):
        """The IWAE bound on log p(x) with k samples, per example (nats; k=1: a one-sample ELBO)."""
        x = self.check_inputs(x)
        images = x[0] if isinstance(x, tuple) else x
        eps = draw("normal", [check_positive_int("k", k), tf.shape(images)[0], self.latent_dim])
        log_px_z, log_pz, log_qz, _ = self.sample_terms(x, eps)
        return losses.iwae_bound(log_px_z, log_pz, log_qz)

    def kl_weight(self, step=None):
        """The KL weight at training step `step`: `beta`, ramped up from 0 during warm-up."""
        if step is None or not self.kl_warmup_steps:
            return self.beta
        progress = tf.cast(step + 1, tf.float32) / float(self.kl_warmup_steps)
        return self.beta * tf.minimum(1.0, progress)

    def compute_terms(self, x, training=False, step=None):
        k = self.num_importance_samples
        x = self.check_inputs(x)
        images = x[0] if isinstance(x, tuple) else x  # a conditional model's inputs are (images, labels)
        # Drawn batch-first ([B, k, D]): `draw` hands each replica its slice of the global batch on axis 0.
        eps = self.training_noise("normal", tf.stack([tf.shape(images)[0], k, self.latent_dim]), step)
        log_px_z, log_pz, log_qz, kl = self.sample_terms(x, tf.transpose(eps, [1, 0, 2]), training=training)
        reconstruction = -tf.reduce_mean(log_px_z, axis=0)
        beta = self.kl_weight(step if training else None)
        if k == 1:
            loss = reconstruction + beta * kl
        else:
            loss = -losses.iwae_bound(log_px_z, log_pz, log_qz, beta)
        terms = {"loss": loss, "reconstruction_loss": reconstruction, "kl": kl, "elbo": -(reconstruction + kl)}
        if self.likelihood == "discretized_logistic":
            terms["bits_per_dim"] = losses.bits_per_dim(-terms["elbo"], self.image_shape)
        return terms
