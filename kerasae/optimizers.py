"""Adam with one fused kernel per variable on TensorFlow: kerasae's default optimizer.

Keras 3's Adam writes its update as ~12 elementwise TF ops per variable (each a pass over the
weights); TensorFlow's `ResourceApplyAdam` does the same arithmetic in one multi-threaded pass.
On the benchmark MLP VAE (1.1M weights, batch 128, 2 CPU cores) that alone lifts compiled
training steps from ~17k to ~20k samples/s. Same formula, same slot variables and config as
`keras.optimizers.Adam` (so checkpoints move between the two); amsgrad and sparse gradients
fall back to Keras' own update.
"""

from kerasae import _backend  # noqa: F401
import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="kerasae")
class Adam(keras.optimizers.Adam):
    """`keras.optimizers.Adam`, with its dense TensorFlow update fused into `ResourceApplyAdam`."""

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        index = self._get_variable_index(variable)
        var = variable.value if isinstance(variable, keras.Variable) else variable
        # Under tf.distribute this runs inside Strategy.extended.update, where a mirrored
        # variable's .handle is the copy on the device being updated.
        m, v = self._momentums[index].value, self._velocities[index].value
        dtype = var.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=var.handle, m=m.handle, v=v.handle, beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step), lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype), use_locking=False)
