"""What every kerasae model shares: its config, input checks, random draws and one training step.

A model's `__init__` arguments *are* its config (`get_config` returns them), so
`Model.from_config(model.get_config())` rebuilds it exactly and `.keras` files need no
custom objects beyond the registered classes. Subclasses only say how to turn a batch
into per-example loss terms (`compute_terms`); the base class turns those into a
distribution-correct gradient step and `keras.metrics.Mean` trackers.
"""

import numbers

from kerasae import _backend  # noqa: F401
import keras
import numpy as np
import tensorflow as tf

from kerasae import layers as stacks
from kerasae.distribute import ReplicaSafeBuild
from kerasae.options import check_choice, check_number, check_positive_int  # noqa: F401  (re-exported)

#: The one registration decorator: every model class is serializable as "kerasae>Name".
register = keras.saving.register_keras_serializable(package="kerasae")


def _int_tuple(name, values, allow_empty=True):
    values = tuple(values)
    if not allow_empty and not values:
        raise ValueError(f"{name} must not be empty")
    return tuple(check_positive_int(f"{name}[{i}]", v) for i, v in enumerate(values))


_STATEFUL = {"normal": tf.random.normal, "uniform": tf.random.uniform}
_STATELESS = {"normal": tf.random.stateless_normal, "uniform": tf.random.stateless_uniform}


def draw(kind, shape, seed=None, step=None, stream=0):
    """Standard normal or U[0, 1) draws of `shape` ([B, ...]).

    - seed None: fresh draws from stateful TF ops (not `keras.random` with seed=None,
      which bakes one constant seed into a traced graph: every step would reuse it).
    - seed int, step None: reproducible draws keyed by (seed, stream).
    - seed int, step tensor (inside a training step): one draw for the whole *global*
      batch keyed by (seed, step, stream), of which this replica keeps its own slice. The
      noise an example gets then does not depend on how the batch is split across
      replicas, so mirrored training matches single-device training step for step
      (given equal per-replica batches).
    """
    if seed is None:
        return _STATEFUL[kind](shape)
    if step is None:
        return _STATELESS[kind](shape, seed=[int(seed), stream])
    context = tf.distribute.get_replica_context()
    replicas, replica = context.num_replicas_in_sync, context.replica_id_in_sync_group
    local = shape[0]
    key = tf.stack([tf.cast(seed, tf.int64), tf.cast(step, tf.int64) * 16 + stream])
    full = _STATELESS[kind](tf.concat([[local * replicas], shape[1:]], axis=0), seed=key)
    return full[replica * local:(replica + 1) * local]


_STATELESS_V2 = {"normal": tf.raw_ops.StatelessRandomNormalV2, "uniform": tf.raw_ops.StatelessRandomUniformV2}


def draw_rows(kind, shape, seed, first, stream=0):
    """Rows first .. first + shape[0] of draw(kind, [M, *shape[1:]], seed, stream=stream), for any M that holds
    them: the same numbers, so a split corrupted a batch at a time gets the noise of corrupting it whole.

    A stateless Philox draw's element i comes from counter value (start + i // 4) alone (four numbers per
    value), so rows from `first` on are the draw from that counter, less the (first * row size) % 4 it
    starts with.
    """
    shape = [int(s) for s in shape]
    key, counter = tf.raw_ops.StatelessRandomGetKeyCounter(seed=[int(seed), stream])
    alg = tf.raw_ops.StatelessRandomGetAlg()
    if int(alg) != 1:  # Philox; another device's algorithm would lay its numbers out differently
        raise NotImplementedError(f"draw_rows needs the Philox algorithm (1), this device's is {int(alg)}")
    group, skip = divmod(first * int(np.prod(shape[1:])), 4)
    low = int(counter[0]) + group  # the 128-bit counter as two uint64 words, low first
    counter = tf.constant([low % 2**64, (int(counter[1]) + low // 2**64) % 2**64], tf.uint64)
    flat = _STATELESS_V2[kind](shape=[skip + int(np.prod(shape))], key=key, counter=counter, alg=alg,
                               dtype=tf.float32)
    return tf.reshape(flat[skip:], shape)


def _check_finite(t, name):
    if not bool(tf.reduce_all(tf.math.is_finite(t))):
        raise ValueError(f"{name} contains NaN or Inf values")


def flag_non_finite(x, values):
    """`values` [B] with NaN wherever example b of the images x [B, H, W, C] has a NaN or Inf pixel.

    The Python API rejects such input (`check_images`), but a traced graph (an exported
    `score` signature, a TFLite file) cannot raise: there a non-finite pixel must not yield a
    plausible number (TFLite's RELU maps NaN to 0, for one). Converts to TFLite builtins
    (EQUAL, SUB, REDUCE_ALL, SELECT_V2).
    """
    finite = tf.reduce_all(tf.math.is_finite(x), axis=[1, 2, 3])
    return tf.where(finite, values, tf.constant(float("nan"), values.dtype))


def nan_unless(ok, values):
    """`values` [B, ...] (any rank) with NaN for every example b where ok [B] is False: how a traced graph, which
    cannot raise, answers an input it must not read (a label or code index out of range)."""
    ok = tf.reshape(ok, tf.concat([tf.shape(ok), tf.ones([tf.rank(values) - 1], tf.int32)], 0))
    return tf.where(ok, values, tf.constant(float("nan"), values.dtype))


class BaseAutoencoder(ReplicaSafeBuild, keras.Model):
    """Encoder/decoder pair over images [B, H, W, C] in [0, 1].

    Args:
        image_shape: (H, W, C) of the images; MLP stacks flatten inside.
        latent_dim: size of the code z.
        arch: "mlp", "conv" or "resnet" (see `kerasae.layers.build_encoder`).
        hidden_units: Dense widths of the encoder (the decoder mirrors them). For conv and
            resnet models, Dense layers after the convolutions.
        filters: conv: Conv2D filters per stride-2 stage; resnet: the width of each stage,
            with a stride-2 downsampling between consecutive stages.
        activation: hidden activation.
        blocks_per_stage: residual blocks per resnet stage.
        norm: the resnet blocks' normalization: "group" (GroupNormalization, min(8, width)
            groups: independent of the batch, so training and inference agree), "batch" or "none".
        seed: seed of the training noise (DAE corruption, VAE reparameterization),
            which is keyed by (seed, step, example): see `draw`. None picks one.
    """

    family = None  # "ae", "dae", "vae" or "cvae": the CLI's --arch

    def __init__(self, image_shape=(28, 28, 1), latent_dim=32, arch="mlp", hidden_units=(512, 256),
                 filters=(32, 64), activation="relu", seed=None, blocks_per_stage=2, norm="group", **kwargs):
        super().__init__(**kwargs)
        if seed is None:  # resolved now (from numpy's global state) and kept in the config
            seed = int(np.random.randint(0, 2**31 - 1))
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
        self.seed = int(seed)
        self.image_shape = _int_tuple("image_shape", image_shape, allow_empty=False)
        if len(self.image_shape) != 3:
            raise ValueError(f"image_shape must be (height, width, channels), got {tuple(image_shape)!r}")
        self.latent_dim = check_positive_int("latent_dim", latent_dim)
        self.arch = check_choice("arch", arch, stacks.ARCHS)
        self.hidden_units = _int_tuple("hidden_units", hidden_units)
        self.filters = _int_tuple("filters", filters, allow_empty=arch not in stacks.CONV_ARCHS)
        self.activation = activation
        keras.activations.get(activation)  # fail now, with Keras' message, on an unknown name
        # Resnet only; configs of other archs, and all saved before resnet existed, lack them: defaults.
        self.blocks_per_stage = check_positive_int("blocks_per_stage", blocks_per_stage)
        self.norm = check_choice("norm", norm, stacks.NORMS)  # widths vs groups: checked by the resnet builders

    def _build_networks(self, encoder_output_dim, code_activation=None, output_channels=None):
        """Create the encoder/decoder stacks and metric trackers (after subclass attributes are set).

        `output_channels`: decoder logits per pixel (default the image's channels), for a
        likelihood with several parameters per channel.
        """
        common = dict(hidden_units=self.hidden_units, activation=self.activation, dtype=self.dtype_policy,
                      filters=self.filters if self.arch in stacks.CONV_ARCHS else (),
                      blocks_per_stage=self.blocks_per_stage, norm=self.norm)
        self.encoder = stacks.build_encoder(self.arch, self.image_shape, encoder_output_dim,
                                            output_activation=code_activation, **common)
        self.decoder = stacks.build_decoder(self.arch, self.image_shape, self.latent_dim,
                                            output_channels=output_channels, **common)
        self._trackers = [keras.metrics.Mean(name=name) for name in self.metric_names]
        self.build((None, *self.image_shape))

    def build(self, input_shape):
        # The stacks are built at construction (they start with keras.Input); only mark this model built.
        self.built = True

    def get_config(self):
        config = super().get_config()
        config.update(image_shape=list(self.image_shape), latent_dim=self.latent_dim, arch=self.arch,
                      hidden_units=list(self.hidden_units), filters=list(self.filters),
                      activation=self.activation, seed=self.seed)
        if self.arch == "resnet":  # only where they mean something: mlp/conv configs stay as they were saved
            config.update(blocks_per_stage=self.blocks_per_stage, norm=self.norm)
        return config

    @property
    def auto_xla(self):
        """Whether training with jit_compile None (auto) compiles whole executions with XLA.

        Measured on CPU, one execution of 16 steps, interleaved: MLPs train 1.2-1.5x faster;
        XLA's CPU convolutions make vae-conv ~25x slower (2.0-2.4 s vs 90 ms per step), so
        conv and resnet models train without it.
        """
        return self.arch == "mlp"

    @property
    def xla_loop_safe(self):
        """Whether XLA may compile several training steps as one loop (see training.xla_execution_train_function)."""
        return True

    def clone(self, **overrides):
        """A new model of this class and config with `overrides` applied, holding a copy of these weights.

        For changing how a trained network is trained or exported (e.g. the ELBO -> the IWAE bound,
        KL warm-up off), not its architecture: an override that changes a weight's shape is a ValueError.
        """
        try:
            model = type(self).from_config({**self.get_config(), **overrides})
        except (TypeError, ValueError) as err:  # an unknown keyword or a bad value
            raise ValueError(f"{sorted(overrides)} do not apply to {type(self).__name__}: {err}") from None
        new, old = model.weights, self.weights
        mismatch = [(w.path, tuple(w.shape), tuple(v.shape)) for w, v in zip(new, old) if w.shape != v.shape]
        if len(new) != len(old) or mismatch:
            raise ValueError(f"{sorted(overrides)} change the architecture ({len(new)} vs {len(old)} weights; "
                             f"first differing (path, new, saved): {mismatch[:1]}); only training settings may "
                             "be overridden")
        for w, v in zip(new, old):
            w.assign(v)
        return model

    # ---- inputs -------------------------------------------------------------------------

    def check_images(self, x, name="x"):
        """Return x as a float32 tensor, or raise a clear error on a wrong dtype, rank, shape or value.

        float32 even under a mixed policy: losses use it as the target; the layers cast
        their inputs to their own compute dtype.
        """
        if not tf.is_tensor(x):
            x = tf.convert_to_tensor(x)
        if not x.dtype.is_floating:
            raise TypeError(f"{name} must be floating-point images in [0, 1], got dtype {x.dtype.name}; "
                            "scale integer pixels with x / 255")
        expected = (None, *self.image_shape)
        given = tuple(x.shape)
        if len(given) != 4 or any(g is not None and g != e for g, e in zip(given[1:], expected[1:])):
            raise ValueError(f"{name} must have shape [batch, {', '.join(map(str, self.image_shape))}] "
                             f"(rank 4, NHWC), got shape {list(given)}")
        if tf.executing_eagerly():  # concrete values (inside a traced step they are symbolic: no check)
            _check_finite(x, name)
            low, high = float(tf.reduce_min(x)), float(tf.reduce_max(x))
            if x.shape[0] and (low < 0.0 or high > 1.0):
                raise ValueError(f"{name} must hold pixel values in [0, 1], found values in [{low:g}, {high:g}]")
        return tf.cast(x, tf.float32)

    def check_codes(self, z, name="z"):
        if not tf.is_tensor(z):
            z = tf.convert_to_tensor(z)
        if not z.dtype.is_floating:
            raise TypeError(f"{name} must be floating-point codes, got dtype {z.dtype.name}")
        if z.shape.rank != 2 or (z.shape[1] is not None and z.shape[1] != self.latent_dim):
            raise ValueError(f"{name} must have shape [batch, {self.latent_dim}], got shape {list(z.shape)}")
        if tf.executing_eagerly():
            _check_finite(z, name)
        return tf.cast(z, tf.float32)

    # ---- public API shared by all models ---------------------------------------------------

    def call(self, x, training=False):
        return self.reconstruct(x, training=training)

    def decode_logits(self, z, training=False):
        return tf.cast(self.decoder(self.check_codes(z), training=training), tf.float32)

    def decode(self, z, training=False):
        """Codes [B, latent_dim] -> mean images [B, H, W, C] in [0, 1]."""
        return tf.sigmoid(self.decode_logits(z, training=training))

    def sample(self, n, seed=None):
        """Draw n codes from N(0, I) and decode them to mean images.

        For a plain AE this shows how poorly its code space matches the prior.
        """
        return self.decode(self.sample_codes(check_positive_int("n", n), seed))

    def sample_codes(self, n, seed=None):
        """n codes from the prior: N(0, I), [n, latent_dim]; `n` may be a scalar tensor."""
        return draw("normal", tf.stack([n, self.latent_dim]), seed)

    # What figures and summaries show, whatever the model needs besides images (a conditional model: labels).
    conditional = False

    def reconstruct_examples(self, x, labels=None):
        """Reconstructions of example images for a figure (`labels` matter to conditional models only)."""
        return self.reconstruct(x)

    def sample_examples(self, n, seed=None):
        """n samples for a figure (a conditional model's cycle through its classes)."""
        return self.sample(n, seed=seed)

    def latent_codes(self, x, batch_size=1000):
        """Codes of x as a numpy array, in batches: z for AEs, the posterior mean for VAEs."""
        codes = []
        for i in range(0, len(x), batch_size):
            z = self.encode(x[i:i + batch_size])
            codes.append((z[0] if isinstance(z, (tuple, list)) else z).numpy())
        return np.concatenate(codes)

    # ---- training -------------------------------------------------------------------------

    metric_names = ("loss",)

    def compute_terms(self, x, training=False, step=None):
        """Per-example loss terms {name: [B] float32}, including "loss", for a batch x.

        `step` (the optimizer's iteration, passed by `train_step`) keys the training noise.
        """
        raise NotImplementedError

    def training_noise(self, kind, shape, step=None, stream=0):
        """Noise for a training step: keyed by (self.seed, step) when step is given, else fresh."""
        return draw(kind, shape, None if step is None else self.seed, step, stream)

    @property
    def metrics(self):
        return list(self._trackers)

    def _update_metrics(self, terms):
        for tracker in self._trackers:
            tracker.update_state(terms[tracker.name])
        return {tracker.name: tracker.result() for tracker in self._trackers}

    def check_inputs(self, inputs):
        """A batch's model inputs, checked: the images (`check_images`); a conditional model's (images, labels)."""
        return self.check_images(inputs)

    def batch_inputs(self, data):
        """The model inputs of a batch from fit/evaluate: the images (Keras' x; any targets are ignored)."""
        return keras.utils.unpack_x_y_sample_weight(data)[0]

    def train_step(self, data):
        x = self.batch_inputs(data)
        with tf.GradientTape() as tape:
            terms = self.compute_terms(x, training=True, step=self.optimizer.iterations)
            # Sum over the local batch divided by the *global* batch size: under
            # tf.distribute the optimizer sums gradients across replicas.
            loss = tf.nn.compute_average_loss(terms["loss"])
            if self.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(self.losses))
            scaled_loss = self.optimizer.scale_loss(loss)  # loss scaling under mixed_float16
        grads = tape.gradient(scaled_loss, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        return self._update_metrics(self.after_train_step(terms))

    def after_train_step(self, terms):
        """The step's terms after the optimizer's update; a model with state learned outside the gradient
        (a VQ-VAE's codebook) updates it here, from entries its `compute_terms` added for training."""
        return terms

    def test_step(self, data):
        x = self.batch_inputs(data)
        return self._update_metrics(self.compute_terms(x, training=False))
