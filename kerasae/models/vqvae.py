"""The vector-quantized autoencoder (VQ-VAE, van den Oord et al. 2017): images become integer codes.

The encoder maps an image to L vectors of size D (a conv/resnet stack: one per position of its
final H' x W' map, L = H' * W'; an MLP: `num_codes` of them); each is replaced by its nearest of
K codebook vectors, and the decoder sees those. An image is then L integers in [0, K), a code
of L * log2(K) bits. Gradients pass the quantization straight through (d z_q / d z_e := I); a
commitment loss keeps the encoder's outputs near their codes. The codebook follows the
exponential moving averages of the encoder outputs assigned to each code (or is learned by the
codebook loss), and codes that stop being used are restarted at encoder outputs of the batch.
"""

import math

from kerasae import _backend  # noqa: F401
import keras
import tensorflow as tf

from kerasae import layers as stacks
from kerasae import losses
from kerasae.models import base
from kerasae.models.base import (BaseAutoencoder, check_choice, check_number, check_positive_int,
                                 flag_non_finite, nan_unless, register)

#: The uniform's share in the factorized prior over codes (`VQVAE.code_log_prior`): an unseen code costs at most
#: log2(K / PRIOR_FLOOR) bits, a seen one at most log2(1 / (1 - PRIOR_FLOOR)) = 0.0014 bits more.
PRIOR_FLOOR = 1e-3
#: How the codebook learns: EMA of the assigned encoder outputs (the paper's appendix) or the codebook loss.
CODEBOOK_UPDATES = ("ema", "loss")


def flag_bad_codes(codes, num_embeddings, values):
    """`values` [B, ...] with NaN for every example with a code index outside [0, num_embeddings).

    The Python API raises on such codes (`VQVAE.check_indices`); a traced graph (an exported `decode`, a
    TFLite file) cannot, and a gather would read out of bounds or fail deep inside the runtime.
    """
    return nan_unless(tf.reduce_all(tf.logical_and(codes >= 0, codes < num_embeddings), axis=1), values)


def _replica():
    """(context, number of replicas, this replica's index); context None in a cross-replica context."""
    context = tf.distribute.get_replica_context()
    if context is None:
        return None, 1, 0
    return context, context.num_replicas_in_sync, context.replica_id_in_sync_group


def _sum_over_replicas(values):
    context, _, _ = _replica()
    return values if context is None else context.all_reduce("sum", values)


@register
class VQVAE(BaseAutoencoder):
    """x -> encoder -> z_e [B, L, D] -> nearest codebook vectors z_q -> decoder -> x_hat.

    Args (beyond `BaseAutoencoder`'s; its `latent_dim` is the code length L, derived):
        num_embeddings: K, the codebook's size: each code index is in [0, K).
        embedding_dim: D, the size of each code vector.
        num_codes: L for an MLP (the encoder's Dense output is split into L vectors); conv and
            resnet models have one code per position of their final map (leave it None).
        commitment_cost: beta of the commitment loss beta * ||z_e - sg(z_q)||^2 (sum per image).
        codebook_update: "ema" (codebook = EMA of the encoder outputs assigned to each code,
            decay `ema_decay`, Laplace-smoothed counts) or "loss" (trained by ||sg(z_e) - z_q||^2).
        ema_decay: the decay of the codebook's (and the code usage's) moving averages.
        restart_threshold: a code whose moving-average use per batch falls below this is
            restarted at a random encoder output of the batch (a dead code helps no image); 0
            turns restarts off. Every code starts unused, so the first step places the whole
            codebook on encoder outputs.
        reconstruction_loss: "bce" (Bernoulli nats per image, binary or [0, 1] targets) or "mse"
            (squared error of sigmoid(logits), summed per image).

    Metrics: `loss`, `reconstruction_loss`, `commitment_loss` (and `codebook_loss`), `mse` and
    `perplexity`: exp(entropy) of the codes' use over the (global) batch, from 1 (one code for
    everything) to K (all used equally).

    `encode(x)` gives int32 codes [B, L] (row-major over the map), `decode(codes)` images;
    `sample(n)` draws each position's code from the moving-average frequencies of codes there in
    training (a factorized prior, `code_frequencies`), then decodes: the paper's samples need
    an autoregressive prior over the codes, which this is not.
    """

    family = "vqvae"

    def __init__(self, image_shape=(28, 28, 1), arch="conv", hidden_units=(), filters=(32, 64), activation="relu",
                 num_embeddings=512, embedding_dim=64, num_codes=None, commitment_cost=0.25,
                 codebook_update="ema", ema_decay=0.99, restart_threshold=1.0, reconstruction_loss="bce",
                 latent_dim=None, **kwargs):
        self.num_embeddings = check_positive_int("num_embeddings", num_embeddings)
        self.embedding_dim = check_positive_int("embedding_dim", embedding_dim)
        check_choice("arch", arch, stacks.ARCHS)
        if arch in stacks.CONV_ARCHS:
            if num_codes is not None:
                raise ValueError(f"num_codes is for arch='mlp'; a {arch} model has one code per position of its "
                                 f"final map, got num_codes={num_codes!r}")
            if not filters:
                raise ValueError(f"filters must not be empty for arch={arch!r}")
            if tuple(hidden_units):
                raise ValueError(f"hidden_units are for arch='mlp': a {arch} VQ-VAE's codes are its final map's "
                                 f"positions, with no Dense layers; got hidden_units={tuple(hidden_units)!r}")
            self.code_grid = stacks.feature_map_size(arch, tuple(image_shape), tuple(filters))
        else:
            self.code_grid = (check_positive_int("num_codes", 8 if num_codes is None else num_codes),)
        self.num_codes = math.prod(self.code_grid)
        if latent_dim is not None and latent_dim != self.num_codes:
            raise ValueError(f"latent_dim is the code length (L = {self.num_codes} here), derived from the "
                             f"architecture; got latent_dim={latent_dim!r}")
        self.commitment_cost = check_number("commitment_cost", commitment_cost, low=0.0)
        self.codebook_update = check_choice("codebook_update", codebook_update, CODEBOOK_UPDATES)
        self.ema_decay = check_number("ema_decay", ema_decay, 0.0, 1.0, high_open=True)
        self.restart_threshold = check_number("restart_threshold", restart_threshold, low=0.0)
        self.reconstruction_loss = check_choice("reconstruction_loss", reconstruction_loss, ("bce", "mse"))
        super().__init__(image_shape=image_shape, latent_dim=self.num_codes, arch=arch, hidden_units=hidden_units,
                         filters=filters, activation=activation, **kwargs)
        k, d = self.num_embeddings, self.embedding_dim
        # Updated by assignment in train_step: every replica computes the same value from all-reduced
        # statistics, and the first replica's is kept.
        state = dict(trainable=False, aggregation="only_first_replica")
        self.codebook = self.add_weight(
            name="codebook", shape=(k, d), initializer=keras.initializers.RandomUniform(-1.0, 1.0, seed=self.seed),
            trainable=self.codebook_update == "loss", aggregation="only_first_replica")
        self.code_usage = self.add_weight(name="code_usage", shape=(k,), initializer="zeros", **state)
        self.code_sums = (self.add_weight(name="code_sums", shape=(k, d), initializer="zeros", **state)
                          if self.codebook_update == "ema" else None)
        self.code_frequencies = self.add_weight(name="code_frequencies", shape=(self.num_codes, k),
                                                initializer=keras.initializers.Constant(1.0 / k), **state)
        self._build_networks()

    def _build_networks(self, encoder_output_dim=None, code_activation=None, output_channels=None):
        common = dict(hidden_units=self.hidden_units, activation=self.activation, dtype=self.dtype_policy,
                      filters=self.filters if self.arch in stacks.CONV_ARCHS else (),
                      blocks_per_stage=self.blocks_per_stage, norm=self.norm)
        spatial = self.arch in stacks.CONV_ARCHS
        width = self.embedding_dim if spatial else self.num_codes * self.embedding_dim
        self.encoder = stacks.build_encoder(self.arch, self.image_shape, width, spatial=spatial, **common)
        self.decoder = stacks.build_decoder(self.arch, self.image_shape, width, spatial=spatial, **common)
        self._trackers = [keras.metrics.Mean(name=name) for name in self.metric_names]
        self.build((None, *self.image_shape))

    def get_config(self):
        config = super().get_config()
        del config["latent_dim"]  # derived
        config.update(num_embeddings=self.num_embeddings, embedding_dim=self.embedding_dim,
                      num_codes=None if self.arch in stacks.CONV_ARCHS else self.num_codes,
                      commitment_cost=self.commitment_cost, codebook_update=self.codebook_update,
                      ema_decay=self.ema_decay, restart_threshold=self.restart_threshold,
                      reconstruction_loss=self.reconstruction_loss)
        return config

    @property
    def metric_names(self):
        extra = ("codebook_loss",) if self.codebook_update == "loss" else ()
        return ("loss", "reconstruction_loss", "commitment_loss", *extra, "mse", "perplexity")

    @property
    def bits_per_image(self):
        """The fixed-length code: L * log2(K) bits."""
        return self.num_codes * math.log2(self.num_embeddings)

    # ---- codes ------------------------------------------------------------------------------

    def check_indices(self, codes, name="codes"):
        """int32 codes [B, L], or a clear error on a wrong dtype, shape or an index outside [0, K)."""
        if not tf.is_tensor(codes):
            codes = tf.convert_to_tensor(codes)
        if not codes.dtype.is_integer:
            raise TypeError(f"{name} must be integer code indices in [0, {self.num_embeddings}), got dtype "
                            f"{codes.dtype.name}")
        if codes.shape.rank != 2 or (codes.shape[1] is not None and codes.shape[1] != self.num_codes):
            raise ValueError(f"{name} must have shape [batch, {self.num_codes}], got shape {list(codes.shape)}")
        codes = tf.cast(codes, tf.int32)
        if tf.executing_eagerly():  # a traced graph flags them instead (flag_bad_codes)
            values = codes.numpy()
            bad = values[(values < 0) | (values >= self.num_embeddings)]
            if bad.size:
                raise ValueError(f"{name} must be in [0, {self.num_embeddings}), found {int(bad[0])}")
        return codes

    check_codes = check_indices

    def encoder_outputs(self, x, training=False):
        """Images (checked) -> z_e [B, L, D] float32, before quantization."""
        h = self.encoder(x, training=training)
        return tf.reshape(tf.cast(h, tf.float32), [-1, self.num_codes, self.embedding_dim])

    def nearest(self, z_e):
        """Index of the nearest codebook vector of each z_e [..., D] (squared Euclidean distance)."""
        flat = tf.reshape(z_e, [-1, self.embedding_dim])
        codebook = tf.cast(self.codebook, tf.float32)
        # products, not tf.square: TFLite's SQUARE has no int8 kernel
        distances = (tf.reduce_sum(flat * flat, 1, keepdims=True) - 2.0 * tf.matmul(flat, codebook, transpose_b=True)
                     + tf.reduce_sum(codebook * codebook, 1)[None])
        return tf.reshape(tf.argmin(distances, axis=1, output_type=tf.int32), tf.shape(z_e)[:-1])

    def encode(self, x, training=False):
        """Images -> int32 code indices [B, L]."""
        return self.nearest(self.encoder_outputs(self.check_images(x), training=training))

    def _decode_vectors(self, z_q, training=False):
        """Code vectors [B, L, D] -> logits, shaped for the decoder (a grid for conv stacks)."""
        shape = [-1, *self.code_grid, self.embedding_dim] if len(self.code_grid) == 2 else [-1, self.num_codes
                                                                                         * self.embedding_dim]
        z = tf.cast(tf.reshape(z_q, shape), self.compute_dtype)
        return tf.cast(self.decoder(z, training=training), tf.float32)

    def decode_logits(self, codes, training=False):
        codes = self.check_indices(codes)
        safe = tf.clip_by_value(codes, 0, self.num_embeddings - 1)  # out-of-range codes are flagged, not read
        logits = self._decode_vectors(tf.gather(tf.cast(self.codebook, tf.float32), safe), training)
        return flag_bad_codes(codes, self.num_embeddings, logits)

    def reconstruct(self, x, training=False):
        return self.decode(self.encode(x, training=training), training=training)

    def code_log_prior(self):
        """log p(code k at position l) [L, K] of the factorized prior: the training frequencies mixed with
        PRIOR_FLOOR of the uniform, so a code never seen at a position still has a finite code length."""
        freq = tf.cast(self.code_frequencies, tf.float32)
        freq = freq / tf.reduce_sum(freq, axis=1, keepdims=True)
        return tf.math.log((1.0 - PRIOR_FLOOR) * freq + PRIOR_FLOOR / self.num_embeddings)

    def sample_codes(self, n, seed=None):
        """n codes [n, L], each position's index drawn from the factorized prior; `n` may be a scalar tensor."""
        logits = self.code_log_prior()
        if seed is None:  # tf.random.categorical: TFLite's MULTINOMIAL (see VAE._sample_top)
            draws = tf.random.categorical(logits, n, dtype=tf.int32)
        else:
            draws = tf.random.stateless_categorical(logits, n, seed=[int(seed), 0], dtype=tf.int32)
        return tf.transpose(draws)

    def score(self, x):
        """Per-example reconstruction loss of the quantized reconstruction (nats for "bce"); NaN for a NaN pixel."""
        x = self.check_images(x)
        logits = self._decode_vectors(tf.gather(tf.cast(self.codebook, tf.float32),
                                                self.nearest(self.encoder_outputs(x))))
        return flag_non_finite(x, losses.reconstruction_error(x, logits, self.reconstruction_loss))

    def code_length_bits(self, codes):
        """Bits per image of `codes` [B, L] entropy-coded with the factorized prior (`code_log_prior`)."""
        one_hot = tf.one_hot(self.check_indices(codes), self.num_embeddings, dtype=tf.float32)  # [B, L, K]
        return -tf.reduce_sum(self.code_log_prior()[None] * one_hot, axis=[1, 2]) / math.log(2.0)

    # ---- training ---------------------------------------------------------------------------

    def _forward(self, x, training=False):
        """(terms, z_e [B, L, D], indices [B, L]) for a checked batch x."""
        z_e = self.encoder_outputs(x, training=training)
        indices = self.nearest(z_e)
        z_q = tf.gather(tf.cast(self.codebook, tf.float32), indices)
        z_st = z_e + tf.stop_gradient(z_q - z_e)  # straight through: the decoder's gradient reaches the encoder
        logits = self._decode_vectors(z_st, training)
        reconstruction = losses.reconstruction_error(x, logits, self.reconstruction_loss)
        commitment = self.commitment_cost * tf.reduce_sum(tf.square(z_e - tf.stop_gradient(z_q)), axis=[1, 2])
        terms = {"reconstruction_loss": reconstruction, "commitment_loss": commitment,
                 "mse": losses.mean_squared_error(x, tf.sigmoid(logits))}
        loss = reconstruction + commitment
        if self.codebook_update == "loss":
            terms["codebook_loss"] = tf.reduce_sum(tf.square(tf.stop_gradient(z_e) - z_q), axis=[1, 2])
            loss += terms["codebook_loss"]
        terms["loss"] = loss
        return terms, z_e, indices

    def _usage(self, indices):
        """All-reduced over replicas: (assignments per code [K], per position and code [L, K], global batch)."""
        one_hot = tf.one_hot(indices, self.num_embeddings, dtype=tf.float32)  # [B, L, K]
        per_position, batch = _sum_over_replicas([tf.reduce_sum(one_hot, axis=0),
                                                  tf.cast(tf.shape(indices)[0], tf.float32)])
        return tf.reduce_sum(per_position, axis=0), per_position, batch

    def _perplexity(self, counts, batch_size):
        p = counts / tf.maximum(tf.reduce_sum(counts), 1.0)
        perplexity = tf.exp(-tf.reduce_sum(tf.math.multiply_no_nan(tf.math.log(p), p)))
        return tf.fill([batch_size], perplexity)  # a batch-level value, shared by every example

    def compute_terms(self, x, training=False, step=None):
        x = self.check_images(x)
        terms, z_e, indices = self._forward(x, training)
        if training:  # the codebook update after the optimizer's step (`after_train_step`) counts the codes
            return dict(terms, _z_e=z_e, _indices=indices)
        counts, _, _ = self._usage(indices)
        terms["perplexity"] = self._perplexity(counts, tf.shape(x)[0])
        return terms

    def _restart_candidates(self, z_e, step):
        """K encoder outputs drawn uniformly from the *global* batch's (the same on every replica), [K, D]."""
        context, _, replica = _replica()
        local = tf.reshape(z_e, [-1, self.embedding_dim])
        sizes = tf.shape(local)[:1] if context is None else context.all_gather(tf.shape(local)[:1], axis=0)
        offset, total = tf.reduce_sum(sizes[:replica]), tf.reduce_sum(sizes)
        key = tf.stack([tf.cast(self.seed, tf.int64), tf.cast(step, tf.int64) * 16 + 7])
        uniform = base._STATELESS["uniform"]([self.num_embeddings], seed=key)  # looked up now: tests swap it
        picks = tf.minimum(tf.cast(tf.floor(uniform * tf.cast(total, tf.float32)), tf.int32), total - 1)
        mine = tf.logical_and(picks >= offset, picks < offset + tf.shape(local)[0])
        rows = tf.gather(local, tf.clip_by_value(picks - offset, 0, tf.shape(local)[0] - 1))
        return _sum_over_replicas(tf.where(mine[:, None], rows, tf.zeros_like(rows)))

    def update_codebook(self, z_e, indices, step):
        """The codebook's moving averages and dead-code restarts after a step (identical on every replica)."""
        counts, per_position, batch = self._usage(indices)
        decay = self.ema_decay
        usage = decay * self.code_usage + (1.0 - decay) * counts
        freq = decay * self.code_frequencies + (1.0 - decay) * per_position / tf.maximum(batch, 1.0)
        self.code_frequencies.assign(freq)
        codebook = tf.cast(self.codebook, tf.float32)
        if self.code_sums is not None:
            flat = tf.reshape(tf.stop_gradient(z_e), [-1, self.embedding_dim])
            sums = _sum_over_replicas(tf.math.unsorted_segment_sum(flat, tf.reshape(indices, [-1]),
                                                                   self.num_embeddings))
            sums = decay * self.code_sums + (1.0 - decay) * sums
            total = tf.reduce_sum(usage)  # Laplace smoothing: no count is 0, the total is kept
            smoothed = (usage + 1e-5) / (total + self.num_embeddings * 1e-5) * total
            codebook = sums / tf.maximum(smoothed, 1e-12)[:, None]
        if self.restart_threshold > 0:
            dead = usage < self.restart_threshold
            candidates = self._restart_candidates(z_e, step)
            codebook = tf.where(dead[:, None], candidates, codebook)
            usage = tf.where(dead, tf.maximum(1.0, self.restart_threshold), usage)
            if self.code_sums is not None:
                sums = tf.where(dead[:, None], candidates * usage[:, None], sums)
        if self.code_sums is not None:
            self.code_sums.assign(sums)
        if self.code_sums is not None or self.restart_threshold > 0:
            self.codebook.assign(tf.cast(codebook, self.codebook.dtype))
        self.code_usage.assign(usage)
        return counts

    def after_train_step(self, terms):
        terms = dict(terms)
        z_e, indices = terms.pop("_z_e"), terms.pop("_indices")
        counts = self.update_codebook(z_e, indices, self.optimizer.iterations)
        terms["perplexity"] = self._perplexity(counts, tf.shape(indices)[0])
        return terms
