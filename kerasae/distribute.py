"""Choosing a tf.distribute strategy, and splitting the CPU into replicas for testing it without GPUs."""

from kerasae import _backend  # noqa: F401
import tensorflow as tf

STRATEGIES = ("auto", "default", "mirrored")


def configure_cpu_replicas(n):
    """Split the first physical CPU into n logical devices, so MirroredStrategy has n replicas.

    Must run before TensorFlow initializes its devices (before the first tensor is made).
    """
    if n is None or n <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == n:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError as err:
        raise RuntimeError(f"cannot split the CPU into {n} replicas: TensorFlow is already initialized "
                           "(configure cpu replicas before any TensorFlow work)") from err


def get_strategy(name="auto"):
    """auto: MirroredStrategy over all GPUs when there are two or more, else the default strategy.

    mirrored: MirroredStrategy over the GPUs, or over the logical CPUs when there is no
    GPU (see `configure_cpu_replicas`).
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)}, got {name!r}")
    gpus = tf.config.list_logical_devices("GPU")
    if name == "default" or (name == "auto" and len(gpus) < 2):
        return tf.distribute.get_strategy()
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices)


def mixed_precision_policy():
    """mixed_float16 where there is a GPU (tensor cores; needs loss scaling), else mixed_bfloat16 (CPU, TPU)."""
    return "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"
