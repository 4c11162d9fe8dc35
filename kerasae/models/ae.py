"""Deterministic autoencoders: plain, sparse and contractive."""

import tensorflow as tf

from kerasae import losses
from kerasae.models.base import BaseAutoencoder, check_choice, check_number, flag_non_finite, register


@register
class Autoencoder(BaseAutoencoder):
    """x -> encoder -> z -> decoder -> x_hat, trained to reconstruct x.

    Args (beyond `BaseAutoencoder`'s):
        code_activation: activation of the code layer (None: linear).
        reconstruction_loss: "bce" (binary cross-entropy on logits, nats per image) or
            "mse" (squared error of sigmoid outputs, summed per image).
        sparsity: None, "l1" (sparsity_weight * sum |z|) or "kl" (sparsity_weight *
            KL(target || mean activation of each unit over the batch); needs a sigmoid code).
        sparsity_weight: weight of the sparsity penalty.
        sparsity_target: the target mean activation for "kl".
        contractive_weight: weight of ||dz/dx||_F^2, the contractive penalty (Rifai et al. 2011).
    """

    family = "ae"

    def __init__(self, image_shape=(28, 28, 1), latent_dim=32, arch="mlp", hidden_units=(512, 256),
                 filters=(32, 64), activation="relu", code_activation=None, reconstruction_loss="bce",
                 sparsity=None, sparsity_weight=0.0, sparsity_target=0.05, contractive_weight=0.0, **kwargs):
        super().__init__(image_shape=image_shape, latent_dim=latent_dim, arch=arch, hidden_units=hidden_units,
                         filters=filters, activation=activation, **kwargs)
        self.code_activation = code_activation
        self.reconstruction_loss = check_choice("reconstruction_loss", reconstruction_loss, ("bce", "mse"))
        self.sparsity = check_choice("sparsity", sparsity, (None, "l1", "kl"))
        self.sparsity_weight = check_number("sparsity_weight", sparsity_weight, low=0.0)
        self.sparsity_target = check_number("sparsity_target", sparsity_target, 0.0, 1.0,
                                            low_open=True, high_open=True)
        self.contractive_weight = check_number("contractive_weight", contractive_weight, low=0.0)
        if sparsity == "kl" and code_activation != "sigmoid":
            raise ValueError("sparsity='kl' needs code_activation='sigmoid' (activations must be in (0, 1)), "
                             f"got code_activation={code_activation!r}")
        self._build_networks(latent_dim, code_activation)

    @property
    def regularized(self):
        return (self.sparsity is not None and self.sparsity_weight > 0) or self.contractive_weight > 0

    @property
    def auto_xla(self):
        return super().auto_xla and self.xla_loop_safe

    @property
    def xla_loop_safe(self):
        # The contractive penalty's batch Jacobian trains wrongly inside one XLA loop (its losses drift from
        # Keras' step's: XLA apparently constant-folds the weights it reads, stale after the first step), and
        # slower (1.7x the time per step). Keras' per-step XLA trains it correctly.
        return self.contractive_weight == 0

    @property
    def metric_names(self):
        return ("loss", "reconstruction_loss", "mse") + (("penalty",) if self.regularized else ())

    def get_config(self):
        config = super().get_config()
        config.update(code_activation=self.code_activation, reconstruction_loss=self.reconstruction_loss,
                      sparsity=self.sparsity, sparsity_weight=self.sparsity_weight,
                      sparsity_target=self.sparsity_target, contractive_weight=self.contractive_weight)
        return config

    def encode(self, x, training=False):
        """Images -> codes z [B, latent_dim]."""
        return self.encoder(self.check_images(x), training=training)

    def reconstruct(self, x, training=False):
        return self.decode(self.encode(x, training=training), training=training)

    def score(self, x):
        """Per-example anomaly score: the reconstruction loss (nats for "bce").

        NaN/Inf pixels raise here; in a traced graph (the exported signature) they give a NaN score.
        """
        x = self.check_images(x)
        score = losses.reconstruction_error(x, self.decode_logits(self.encoder(x)), self.reconstruction_loss)
        return flag_non_finite(x, score)

    def encoder_input(self, x, training, step=None):
        """What the encoder sees in a training step (the denoising AE corrupts it)."""
        return x

    def _encode_with_jacobian_penalty(self, x_in, training):
        with tf.GradientTape() as tape:
            tape.watch(x_in)
            z = self.encoder(x_in, training=training)
        jacobian = tape.batch_jacobian(z, x_in)  # [B, latent, H, W, C]
        return z, tf.reduce_sum(tf.square(tf.cast(jacobian, tf.float32)), axis=[1, 2, 3, 4])

    def compute_terms(self, x, training=False, step=None):
        x = self.check_images(x)
        x_in = self.encoder_input(x, training, step)
        penalty = tf.zeros(tf.shape(x)[:1], tf.float32)
        if self.contractive_weight > 0:
            z, frobenius = self._encode_with_jacobian_penalty(x_in, training)
            penalty += self.contractive_weight * frobenius
        else:
            z = self.encoder(x_in, training=training)
        logits = self.decoder(z, training=training)
        reconstruction = losses.reconstruction_error(x, logits, self.reconstruction_loss)
        codes = tf.cast(z, tf.float32)
        if self.sparsity == "l1":
            penalty += self.sparsity_weight * tf.reduce_sum(tf.abs(codes), axis=-1)
        elif self.sparsity == "kl":
            batch_kl = losses.bernoulli_kl(self.sparsity_target, tf.reduce_mean(codes, axis=0))
            penalty += self.sparsity_weight * batch_kl  # one batch-level value, shared by every example
        terms = {"reconstruction_loss": reconstruction,
                 "mse": losses.mean_squared_error(x, tf.sigmoid(tf.cast(logits, tf.float32))),
                 "loss": reconstruction + penalty}
        if self.regularized:
            terms["penalty"] = penalty
        return terms
