"""Choosing a tf.distribute strategy, and splitting the CPU into replicas for testing it without GPUs.

Keras 3's `model.fit` runs the default, mirrored and TPU strategies. It does not run
`MultiWorkerMirroredStrategy` (keras-team/keras#20585), so `kerasae.training` drives that
one with its own loop over `strategy.run(model.train_step)`: the same training step.
"""

import json
import os

from kerasae import _backend  # noqa: F401
import tensorflow as tf

from kerasae.options import STRATEGIES  # noqa: F401  (re-exported)

#: Seconds a collective op may wait for a peer before failing: a dead worker must not hang the others.
COLLECTIVE_TIMEOUT_S = 120


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

    mirrored: MirroredStrategy over the GPUs, or over the logical CPUs when there is no GPU
    (see `configure_cpu_replicas`). multiworker: MultiWorkerMirroredStrategy configured by
    the TF_CONFIG environment variable (create it first thing: it must precede other TF
    work). tpu: TPUStrategy on the TPU named by $TPU_NAME (default: the local one).
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)}, got {name!r}")
    if name == "multiworker":
        return _multi_worker()
    if name == "tpu":
        return _tpu()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "default" or (name == "auto" and len(gpus) < 2):
        return tf.distribute.get_strategy()
    devices = tuple(d.name for d in gpus) or tuple(d.name for d in tf.config.list_logical_devices("CPU"))
    if devices not in _MIRRORED:
        _MIRRORED[devices] = tf.distribute.MirroredStrategy(list(devices))
    return _MIRRORED[devices]


#: One MirroredStrategy per device set and process. Each new one numbers its collective ops from the
#: same keys, so a second model trained in the process under a second strategy would meet the first's
#: all-reduce and fail ("Shape mismatch in the collective instance 100").
_MIRRORED = {}


def _multi_worker():
    try:
        cluster = json.loads(os.environ["TF_CONFIG"])["cluster"]
    except (KeyError, ValueError, TypeError) as err:
        raise ValueError("strategy 'multiworker' needs the TF_CONFIG environment variable: "
                         '{"cluster": {"worker": ["host0:port", "host1:port"]}, "task": {"type": "worker", '
                         '"index": I}}') from err
    if not isinstance(cluster, dict) or not cluster:
        raise ValueError(f"TF_CONFIG has no usable cluster: {cluster!r}")
    key = os.environ["TF_CONFIG"]
    if key not in _MULTI_WORKER:
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=COLLECTIVE_TIMEOUT_S)
        _MULTI_WORKER[key] = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    return _MULTI_WORKER[key]


#: One MultiWorkerMirroredStrategy per TF_CONFIG and process, for the reason of `_MIRRORED`: `train` asks for it
#: once to hear the chief on a finished run, and again to train.
_MULTI_WORKER = {}


def _tpu():
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=os.environ.get("TPU_NAME", ""))
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError) as err:
        raise ValueError(f"strategy 'tpu': no TPU could be reached ({err})") from err
    return tf.distribute.TPUStrategy(resolver)


def is_multi_worker(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def num_workers(strategy):
    """How many worker processes (input pipelines) share the training: 1 unless multi-worker."""
    resolver = getattr(strategy, "cluster_resolver", None) if is_multi_worker(strategy) else None
    spec = resolver.cluster_spec() if resolver is not None else None
    if not spec or not spec.jobs:
        return 1
    return sum(spec.num_tasks(job) for job in spec.jobs if job in ("chief", "worker"))


def is_chief(strategy):
    """Whether this process writes the run's files: the chief, or worker 0 of a cluster without one."""
    if not is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    if resolver.task_type in (None, "chief"):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


class ReplicaSafeBuild:
    """A mixin for keras.Model subclasses: `fit` and `evaluate` under several replicas with a first batch that
    does not split evenly across them (a validation or training set smaller than the global batch).

    Keras (3.15) builds the metrics from that first batch MEAN-reduced across the replicas, only for its
    shapes; with replicas holding 13 and 12 images the reduction fails ("Inputs to operation AddN ... must have
    the same size and shape") before a step runs. The first replica's part has the shapes the build needs.
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = getattr(self, "_distribute_strategy", None)
        if iterator is None or strategy is None or strategy.num_replicas_in_sync == 1:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        for _, _, batches in iterator:  # as Keras reads it: the first batch of the epoch iterator
            first = next(batches)
            break
        else:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        first = tf.nest.map_structure(
            lambda v: strategy.experimental_local_results(v)[0] if isinstance(v, tf.distribute.DistributedValues)
            else v, first)
        return super()._maybe_symbolic_build(data_batch=first)
