"""The denoising autoencoder (Vincent et al. 2008): corrupt the input, reconstruct the clean one."""

import tensorflow as tf

from kerasae.models.ae import Autoencoder
from kerasae.models.base import check_choice, check_number, draw, register

from kerasae.options import NOISE_TYPES  # noqa: F401  (re-exported)


def apply_noise(x, noise_type, level, noise):
    """Corrupt float32 images x with `noise(kind, shape)` draws ("normal" or "uniform") per NOISE_TYPES."""
    shape = tf.shape(x)
    if noise_type == "gaussian":
        return tf.clip_by_value(x + level * noise("normal", shape), 0.0, 1.0)
    if noise_type == "masking":
        return x * tf.cast(noise("uniform", shape) >= level, x.dtype)
    u = noise("uniform", shape)
    salt = tf.cast(u < level / 2, x.dtype)  # half the hits are salt (1), half pepper (0)
    return tf.where(u < level, salt, x)


@register
class DenoisingAutoencoder(Autoencoder):
    """An `Autoencoder` whose encoder sees a corrupted input during training only.

    The target is always the clean input; validation, `reconstruct` and `encode` use the
    input as given. `corrupt(x, seed)` is public so evaluation can make the same noise.

    Args (beyond `Autoencoder`'s):
        noise_type: "gaussian" (add N(0, level^2), clip to [0, 1]), "masking" (zero each
            pixel with probability level) or "salt_and_pepper" (set each pixel with
            probability level to 0 or 1, equally likely).
        noise_level: the std or probability above.
    """

    family = "dae"

    def __init__(self, noise_type="gaussian", noise_level=0.5, **kwargs):
        super().__init__(**kwargs)
        self.noise_type = check_choice("noise_type", noise_type, NOISE_TYPES)
        if noise_type == "gaussian":
            self.noise_level = check_number("noise_level", noise_level, low=0.0, low_open=True)
        else:
            self.noise_level = check_number("noise_level", noise_level, 0.0, 1.0, low_open=True, high_open=True)

    def get_config(self):
        config = super().get_config()
        config.update(noise_type=self.noise_type, noise_level=self.noise_level)
        return config

    @property
    def auto_xla(self):
        # No gain on CPU (dae-mlp 1.02x): its per-pixel noise costs ~6x more under XLA than in TF's kernels.
        return False

    def corrupt(self, x, seed=None):
        """Corrupted copy of images x; a fresh draw per call, or a reproducible one for an int seed."""
        return self._corrupt(x, lambda kind, shape: draw(kind, shape, seed))

    def _corrupt(self, x, noise):
        return apply_noise(self.check_images(x), self.noise_type, self.noise_level, noise)

    def encoder_input(self, x, training, step=None):
        if not training:
            return x
        return self._corrupt(x, lambda kind, shape: self.training_noise(kind, shape, step))
