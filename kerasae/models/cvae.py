"""The conditional VAE (Sohn et al. 2015): encoder and decoder see a class label, so samples come in a chosen class."""

import keras
import tensorflow as tf

from kerasae import layers as stacks
from kerasae import losses
from kerasae.models.base import check_positive_int, flag_non_finite, nan_unless, register
from kerasae.models.vae import VAE


def flag_bad_labels(labels, num_classes, values):
    """`values` [B, ...] with NaN for every example whose label is outside [0, num_classes).

    The Python API raises on such labels (`ConditionalVAE.check_labels`); a traced graph (an exported
    signature, a TFLite file) cannot, and tf.one_hot would silently make an all-zero code of them.
    """
    return nan_unless(tf.logical_and(labels >= 0, labels < num_classes), values)


@register
class ConditionalVAE(VAE):
    """q(z | x, y) and p(x | z, y) for a class label y in [0, num_classes); p(z) = N(0, I) or a VampPrior.

    The label enters as a one-hot vector: the MLP encoder reads it beside the flattened image, a
    conv or resnet encoder as `num_classes` constant channels beside the image's; the decoder reads
    [z, one-hot]. Every method that takes images also takes their labels (int [B]); `sample(n, label)`
    draws n images of one class (or of labels [n]). `model.fit(images, labels)` trains it: Keras'
    targets are the labels.

    z is independent of y in the generative model, so p(z) is the same for every class. With
    prior_type="vamp" it is (1/K) sum_k q(z | u_k, y_k): learned pseudo-images u_k paired with fixed
    pseudo-labels y_k = k mod num_classes, so the mixture approximates the aggregate posterior over
    (image, label) pairs with the classes equally represented.

    Args (beyond `VAE`'s): num_classes: how many classes the labels name.
    """

    family = "cvae"

    def __init__(self, num_classes=10, **kwargs):
        self.num_classes = check_positive_int("num_classes", num_classes)
        super().__init__(**kwargs)

    def _build_networks(self, encoder_output_dim, code_activation=None, output_channels=None):
        h, w, c = self.image_shape
        k, dtype = self.num_classes, self.dtype_policy
        common = dict(hidden_units=self.hidden_units, activation=self.activation, dtype=dtype,
                      filters=self.filters if self.arch in stacks.CONV_ARCHS else (),
                      blocks_per_stage=self.blocks_per_stage, norm=self.norm)
        x, y = keras.Input((h, w, c), name="x"), keras.Input((k,), name="y")
        if self.arch == "mlp":  # the one-hot beside the pixels (as channels it would multiply the first layer by k)
            flat = keras.layers.Concatenate(name="enc_join", dtype=dtype)(
                [keras.layers.Flatten(name="enc_flatten", dtype=dtype)(x), y])
            stack = stacks.build_encoder("mlp", (1, 1, h * w * c + k), encoder_output_dim, **common)
            out = stack(keras.layers.Reshape((1, 1, h * w * c + k), name="enc_reshape", dtype=dtype)(flat))
        else:
            planes = keras.layers.Reshape((1, 1, k), name="enc_label_pixel", dtype=dtype)(y)  # -> k constant planes
            planes = keras.layers.UpSampling2D((h, w), name="enc_label_planes", dtype=dtype)(planes)
            joined = keras.layers.Concatenate(name="enc_join", dtype=dtype)([x, planes])
            out = stacks.build_encoder(self.arch, (h, w, c + k), encoder_output_dim, **common)(joined)
        self.encoder = keras.Model([x, y], out, name="encoder")
        self.decoder = stacks.build_decoder(self.arch, self.image_shape, self.latent_dim + k,
                                            output_channels=output_channels, **common)
        self._trackers = [keras.metrics.Mean(name=name) for name in self.metric_names]
        self.build((None, *self.image_shape))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}

    # ---- inputs -----------------------------------------------------------------------------------

    def check_labels(self, labels, n=None, like=None, name="labels"):
        """int32 labels [B], or a clear error on a wrong dtype, shape or value. A scalar label is repeated
        `n` times; `like` (a checked batch) is what the labels must match in length."""
        if not tf.is_tensor(labels):
            labels = tf.convert_to_tensor(labels)
        if not labels.dtype.is_integer:
            raise TypeError(f"{name} must be integer class indices in [0, {self.num_classes}), got dtype "
                            f"{labels.dtype.name}")
        labels = tf.cast(labels, tf.int32)
        if labels.shape.rank == 0 and n is not None:
            labels = tf.fill([n], labels)
        if labels.shape.rank != 1:
            raise ValueError(f"{name} must have shape [batch], got shape {list(labels.shape)}")
        if tf.executing_eagerly():  # concrete values (a traced graph flags them instead: flag_bad_labels)
            size = n if like is None else like.shape[0]
            if size is not None and labels.shape[0] != size:
                raise ValueError(f"{name} must hold one label per example ({size}), got {labels.shape[0]}")
            values = labels.numpy()
            bad = values[(values < 0) | (values >= self.num_classes)]
            if bad.size:
                raise ValueError(f"{name} must be in [0, {self.num_classes}), found {int(bad[0])}")
        return labels

    def _one_hot(self, labels):
        return tf.one_hot(labels, self.num_classes, dtype=tf.float32)

    # ---- the VAE's interface, with labels -----------------------------------------------------------

    def call(self, inputs, training=False):
        x, labels = inputs
        return self.reconstruct(x, labels, training=training)

    def encode(self, x, labels, training=False):
        """(images, labels) -> (mean, log_var) of q(z | x, y), each [B, latent_dim]."""
        return self._posterior_params(self.check_inputs((x, labels)), training)

    def _posterior_params(self, inputs, training=False):
        x, labels = inputs
        h = tf.cast(self.encoder([x, self._one_hot(labels)], training=training), tf.float32)
        return h[:, :self.latent_dim], h[:, self.latent_dim:]

    def pseudo_labels(self):
        """The VampPrior's fixed labels y_k = k mod num_classes, int32 [K]."""
        return tf.range(self.num_pseudo_inputs, dtype=tf.int32) % self.num_classes

    def _pseudo_input_posterior(self, u, training=False):
        """q(z | u_k, y_k): each pseudo-image with its pseudo-label."""
        return self._posterior_params((u, self.pseudo_labels()), training)

    def posterior(self, x, labels, training=False):
        return losses.diagonal_gaussian(*self.encode(x, labels, training=training))

    def _decoder_output(self, z, labels, training=False):
        return self.decoder(tf.concat([tf.cast(z, tf.float32), self._one_hot(labels)], -1), training=training)

    def decode_logits(self, z, labels, training=False):
        z = self.check_codes(z)
        labels = self.check_labels(labels, like=z)
        return tf.cast(self._decoder_output(z, labels, training), tf.float32)[..., :self.image_shape[-1]]

    def decode(self, z, labels, training=False):
        """Codes [B, latent_dim] and labels [B] -> mean images [B, H, W, C]."""
        return tf.sigmoid(self.decode_logits(z, labels, training=training))

    def decoder_params(self, z, labels, training=False):
        z = self.check_codes(z)
        loc, scale = self._loc_scale(self._decoder_output(z, self.check_labels(labels, like=z), training))
        return loc, tf.broadcast_to(scale, tf.shape(loc))

    def decoder_distribution(self, z, labels, training=False):
        z = self.check_codes(z)
        return self.likelihood_from_logits(self._decoder_output(z, self.check_labels(labels, like=z), training))

    def reconstruct(self, x, labels, training=False):
        mean, _ = self.encode(x, labels, training=training)
        return self.decode(mean, labels, training=training)

    def sample(self, n, labels, seed=None):
        """n images of class `labels` (one int for all, or [n]) from z ~ N(0, I)."""
        n = check_positive_int("n", n)
        return self.decode(self.sample_codes(n, seed), self.check_labels(labels, n))

    def score(self, x, labels):
        """-log p(x | z = mean, y) + KL(q(z|x, y) || N(0, I)), nats (NaN for a bad label in a traced graph)."""
        x, labels = self.check_inputs((x, labels))
        mean, log_var = self._posterior_params((x, labels))
        value = self.kl_divergence(mean, log_var) - self.log_likelihood(x, self._decoder_output(mean, labels))
        return flag_bad_labels(labels, self.num_classes, flag_non_finite(x, value))

    conditional = True

    def reconstruct_examples(self, x, labels=None):
        if labels is None:
            raise ValueError("a ConditionalVAE reconstructs images given their labels")
        return self.reconstruct(x, labels)

    def sample_examples(self, n, seed=None):
        return self.sample(n, tf.range(n) % self.num_classes, seed=seed)

    def latent_codes(self, x, labels, batch_size=1000):
        return tf.concat([self.encode(x[i:i + batch_size], labels[i:i + batch_size])[0]
                          for i in range(0, len(x), batch_size)], 0).numpy()

    def importance_weighted_bound(self, x, labels, k):
        return super().importance_weighted_bound((x, labels), k)

    # ---- training ---------------------------------------------------------------------------------

    def _decode_samples(self, z, inputs, training=False):
        """Each of the k codes per example [k, B, D] decoded with that example's label."""
        tiled = tf.reshape(tf.broadcast_to(inputs[1], tf.shape(z)[:2]), [-1])
        return self._decoder_output(tf.reshape(z, [-1, self.latent_dim]), tiled, training)

    def check_inputs(self, inputs):
        x, labels = inputs
        x = self.check_images(x)
        return x, self.check_labels(labels, like=x)

    def batch_inputs(self, data):
        x, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        if labels is None:
            raise ValueError("a ConditionalVAE trains on (images, labels): pass the labels as Keras' targets, "
                             "model.fit(images, labels)")
        return x, labels
