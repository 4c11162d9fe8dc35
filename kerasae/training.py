"""Train a kerasae model with `model.fit` under a tf.distribute strategy, into a run directory.

A run directory holds:
    config.json     what was asked (TrainConfig) and the model's full config
    model.keras     the final model (written atomically at the end)
    best.keras      the best model on validation loss (AtomicModelCheckpoint: never half-written)
    metrics.json    test metrics in nats per example, wall time, versions
    history.csv     one row per epoch (train and validation metrics)
    logs/           TensorBoard: scalars (train/, validation/) and images (images/)
    backup/         BackupAndRestore state while training; gone when a run completes
    figures/        reconstructions.png, samples.png, latent.png (2-D codes only)

Rerunning the same command after an interruption resumes from the last completed epoch.
"""

import csv
import dataclasses
import errno
import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import NamedTuple

from kerasae import _backend  # noqa: F401
import keras
import numpy as np
import tensorflow as tf

from kerasae import data as data_lib
from kerasae import distribute, optimizers, plots, registry
from kerasae.files import atomic_path, json_text, library_versions, load_keras_model, write_checksum, write_json
from kerasae.config import _IGNORED_FOR_COMPAT, LR_SCHEDULES, TrainConfig  # noqa: F401  (re-exported)

#: Seed of the fixed binarization of validation and test images for Bernoulli models.
TEST_BINARIZATION_SEED = data_lib.TEST_BINARIZATION_SEED


class Prepared(NamedTuple):
    """What `prepare` made, in the order `fit` takes it."""

    run_dir: Path
    data: data_lib.ImageData
    val_size: int
    strategy: tf.distribute.Strategy
    model: keras.Model


@dataclasses.dataclass
class TrainResult:
    model: keras.Model
    run_dir: Path
    history: list  # one dict per epoch, from history.csv (covers resumed runs too)
    metrics: dict


# ---- files ------------------------------------------------------------------------------------

def save_model_atomic(model, path):
    """model.save to a temporary file next to `path`, renamed onto it when complete (see `atomic_path`).

    Whenever the process dies or the write fails (disk full, permission denied: an OSError naming
    `path`), `path` holds the previous model or nothing, never half a file.
    """
    with atomic_path(path, suffix=".keras") as tmp:  # Keras insists on the extension
        model.save(tmp)
        write_checksum(path, tmp)  # checked by load_keras_model


def prepare_run_dir(config):
    """Create the run directory, refusing one that holds a run with a different config."""
    run_dir = Path(config.out)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"out: cannot write to run directory {str(run_dir)!r} ({err.strerror})") from err
    wanted = {k: v for k, v in json.loads(json_text(config.to_json())).items()
              if k not in _IGNORED_FOR_COMPAT}
    config_path = run_dir / "config.json"
    if config_path.exists():
        try:
            previous = json.loads(config_path.read_text()).get("train", {})
        except (json.JSONDecodeError, AttributeError) as err:
            raise ValueError(f"out: {config_path} is not a kerasae run config; use another --out") from err
        differing = sorted(k for k in set(wanted) | set(previous)
                           if k not in _IGNORED_FOR_COMPAT and wanted.get(k) != previous.get(k))
        if differing:
            raise ValueError(f"out: {str(run_dir)!r} holds a run with a different config (differs in: "
                             f"{', '.join(differing)}); choose another --out or delete that directory")
    return run_dir


def backup_epoch(backup_dir):
    """The epoch a run in `backup_dir` resumes from (0: no backup)."""
    meta = Path(backup_dir) / "training_metadata.json"
    return int(json.loads(meta.read_text())["epoch"]) if meta.exists() else 0


def _trim_history(history_path, resume_epoch):
    """Keep the history rows of epochs before `resume_epoch`; a fresh run starts a fresh history."""
    if not history_path.exists():
        return
    with open(history_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if resume_epoch == 0 or not rows:
        history_path.unlink()
        return
    with open(history_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if int(r["epoch"]) < resume_epoch)


def read_history(history_path):
    if not Path(history_path).exists():
        return []
    with open(history_path, newline="") as f:
        # CSVLogger writes "NA" for a metric an epoch lacks (val_* when training without validation)
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items() if v not in ("NA", "", None)}
                for row in csv.DictReader(f)]


# ---- callbacks --------------------------------------------------------------------------------

def weights_finite(model):
    return all(np.isfinite(w).all() for w in model.get_weights())


def _check_free_space(directory, needed):
    """Raise ENOSPC before an HDF5 write that would not fit: HDF5 crashes the whole process (segfault in
    H5Fclose) when the disk fills during a .h5 write, instead of raising an error."""
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (needs about {needed:,} bytes, {free:,} free)")


class DivergenceGuard(keras.callbacks.Callback):
    """Stop at the first non-finite loss (per step) or weight (per epoch), and remember it.

    Goes first in the callback list: the backup and the figures then see the flag and leave
    the last good state alone, and `fit` reports the divergence instead of writing NaNs.
    """

    def __init__(self):
        super().__init__()
        self.diverged = False

    def _stop(self):
        self.diverged = self.model.stop_training = True

    def on_train_batch_end(self, batch, logs=None):
        if logs and "loss" in logs and not np.isfinite(float(logs["loss"])):
            self._stop()

    def on_epoch_end(self, epoch, logs=None):
        losses = [float(v) for k, v in (logs or {}).items() if k.endswith("loss")]
        if not (np.isfinite(losses).all() and weights_finite(self.model)):
            self._stop()


class EpochTimer(keras.callbacks.Callback):
    """Add `epoch_time_s` (training + validation wall time of the epoch) to the logs, hence history.csv."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_time_s"] = time.perf_counter() - self._start


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """BackupAndRestore whose saved state is never half-written.

    Keras' version overwrites `latest.weights.h5` and then the metadata in place, so a
    kill during a save can leave corrupt weights or weights one epoch ahead of their
    metadata. Here each save writes a new weights file (temp name, then rename), then
    atomically replaces the metadata that names it, then removes older weights: whenever
    the process dies, the metadata points at a complete file of the epoch it records.
    """

    def __init__(self, backup_dir, save=True):
        # save=False: a multi-worker non-chief restores from the chief's backup, never writes it.
        super().__init__(backup_dir, delete_checkpoint=save)
        self.save = save

    def _save_model(self):
        if not self.save or self.model.stop_training:  # stopped: diverged (DivergenceGuard); keep the last good
            return
        backup = Path(self.backup_dir)
        backup.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{self._current_epoch}.weights.h5"
        with atomic_path(backup / name, suffix=".weights.h5") as tmp:
            _check_free_space(backup, self._weights_bytes(backup))
            self.model.save_weights(tmp, overwrite=True)
        write_json(self._training_metadata_path,
                   {"epoch": self._current_epoch, "batch": self._last_batch_seen, "weights": name})
        for stale in backup.glob("*.weights.h5"):
            if stale.name != name:
                stale.unlink()

    def _weights_bytes(self, backup):
        """A generous estimate of the next weights file's size: the last one's, or the variables' bytes + HDF5's."""
        previous = [p.stat().st_size for p in backup.glob("epoch-*.weights.h5")]
        optimizer = getattr(self.model, "optimizer", None)
        variables = list(self.model.weights) + list(getattr(optimizer, "variables", None) or [])
        estimate = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables) * 1.1
        return int(max(previous + [estimate + 8192 * len(variables)]))

    def on_train_end(self, logs=None):
        if not self.model.stop_training:  # a diverged run keeps its last good backup
            super().on_train_end(logs)

    def _load_model(self):
        meta = Path(self._training_metadata_path)
        if not meta.exists():
            return
        state = json.loads(meta.read_text())
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)  # so its slots load too
        self.model.load_weights(Path(self.backup_dir) / state["weights"])
        self.model._initial_epoch = state["epoch"]


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint (whole model, one path such as best.keras) written with `save_model_atomic`.

    Keras' version writes the .keras file in place: a kill or a full disk during the save
    leaves a truncated best.keras where the previous best was.
    """

    def _save_model(self, epoch, batch, logs):
        if self.save_weights_only:
            raise ValueError("AtomicModelCheckpoint saves whole models; use save_weights_only=False")
        filepath = self._get_file_path(epoch, batch, logs)
        if self._should_save_model(epoch, batch, logs, filepath):
            save_model_atomic(self.model, filepath)
            if self.verbose > 0:
                print(f"\nEpoch {epoch + 1}: finished saving model to {filepath}")


class ImageSummaries(keras.callbacks.Callback):
    """Each epoch, log to TensorBoard reconstructions of fixed images and samples from fixed prior draws."""

    def __init__(self, log_dir, images, num_samples=16, seed=0):
        super().__init__()
        self.images = tf.constant(images, tf.float32)
        self.num_samples = num_samples
        self.seed = seed
        self.log_dir = str(log_dir)
        self._writer = None

    def on_train_begin(self, logs=None):
        self._writer = tf.summary.create_file_writer(self.log_dir)

    def on_epoch_end(self, epoch, logs=None):
        if self.model.stop_training:  # diverged: nothing meaningful to show
            return
        recon = plots.reconstruction_grid(self.images.numpy(), self.model.reconstruct(self.images).numpy())
        samples = plots.image_grid(self.model.sample(self.num_samples, seed=self.seed).numpy(), 4)
        with self._writer.as_default(step=epoch):
            tf.summary.image("reconstructions", recon[None], description="top: inputs, bottom: reconstructions")
            tf.summary.image("samples", samples[None], description="decoded draws z ~ N(0, I), fixed across epochs")
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()


# ---- the run ----------------------------------------------------------------------------------

def _build_model(config, image_shape, strategy):
    """Build (or load) the model in the strategy's scope, under a mixed policy if asked.

    The policy is set only while the model is made: its layers keep it (and save it), and
    the process-wide default stays as the caller had it. Losses stay float32 regardless.
    """
    previous = keras.mixed_precision.global_policy()
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy(distribute.mixed_precision_policy())
    try:
        return _make_model(config, image_shape, strategy)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _make_model(config, image_shape, strategy):
    with strategy.scope():
        if config.init_from:
            model = load_keras_model(config.init_from)  # CRC-checked, safe_mode=True
            if tuple(model.image_shape) != tuple(image_shape):
                raise ValueError(f"init_from: the saved model takes images {tuple(model.image_shape)}, "
                                 f"but the dataset has {tuple(image_shape)}")
            if config.model_kwargs:  # training settings only (e.g. num_importance_samples)
                try:
                    model = model.clone(**config.model_kwargs)
                except ValueError as err:
                    raise ValueError(f"init_from {config.init_from}: model_kwargs {err}") from None
        else:
            model = registry.build(config.preset, image_shape=image_shape, **config.model_kwargs)
        return model


def one_iterator_steps(steps_per_epoch, val_steps, wanted):
    """The steps per execution that let `model.fit` keep one iterator for the whole run, or None.

    model.fit makes a new iterator every epoch unless it gets a repeated dataset and step
    counts; a new iterator idled every other epoch's first execution for 1.5-2 s on the 2-core
    benchmark machine (a third of an epoch). With one iterator, Keras runs whole executions, so
    the steps per execution must divide the training and validation steps per epoch (or epochs
    stop being exact passes). The largest such divisor <= `wanted`, if it is at least 4 (or
    `wanted`): fewer steps per call would bring back the per-call overhead `wanted` amortizes.
    """
    common = math.gcd(steps_per_epoch, val_steps) if val_steps else steps_per_epoch
    divisor = max(d for d in range(1, min(wanted, common) + 1) if common % d == 0)
    return divisor if divisor >= min(wanted, 4) else None


def whole_execution_train_function(model):
    """`model.fit`'s train function when every call runs exactly `steps_per_execution` steps.

    Keras' own wraps each step in a tf.cond, in case the iterator runs out mid-execution;
    under a multi-replica strategy the optimizer's merge_call inside that cond fails ("You
    must feed a value for placeholder tensor", keras-team/keras#19246). With one repeated
    iterator and steps per execution dividing the epoch (`one_iterator_steps`), no call can
    run out: a loop over `get_next()` does the same steps with no cond and no Optional.
    `fit` uses it under several replicas (without XLA it was no faster than Keras' own on one
    device, 16.6k vs 16.4k samples/s; one device gets `xla_execution_train_function`).
    """
    strategy, steps = model.distribute_strategy, model.steps_per_execution

    @tf.function(reduce_retracing=True)  # no XLA: `prepare` refuses jit_compile with several replicas
    def one_step(batch):
        logs = strategy.run(model.train_step, args=(batch,))
        # Keras' reduction for fit: the mean over replicas of each replica's metric results
        return tf.nest.map_structure(lambda v: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None), logs)

    @tf.function(reduce_retracing=True)
    def execution(iterator):
        logs = one_step(iterator.get_next())
        for _ in tf.range(steps - 1):
            logs = one_step(iterator.get_next())
        return logs

    return execution


def xla_execution_train_function(model):
    """`model.fit`'s train function on one device: each call's steps compiled together by XLA.

    Keras' `jit_compile` compiles one step per XLA call, so every step copies the weights and
    optimizer slots in and out of XLA (slower than no XLA on the MLP VAE: 10.5k vs 13.5k
    samples/s). Compiling all `steps_per_execution` steps as one XLA loop keeps them in XLA's
    buffers between steps and fuses the ~100 small ops of a step (loss, Adam, activations) that
    TF otherwise hands between threads. The batches are pulled first and stacked, as XLA cannot
    read an iterator; an epoch's partial last batch, when there is one, is the execution's last
    batch (`one_iterator_steps`), so it is passed on its own. Needs whole executions, like
    `whole_execution_train_function`.
    """
    steps = model.steps_per_execution

    @tf.function(jit_compile=True, reduce_retracing=True)
    def run_steps(full_batches, last_batch):
        if full_batches is not None:
            for i in tf.range(steps - 1):
                model.train_step(full_batches[i])
        return model.train_step(last_batch)  # logs: the metrics' running means, as Keras' last step gives

    @tf.function(reduce_retracing=True)
    def execution(iterator):
        batches = [iterator.get_next() for _ in range(steps)]
        return run_steps(tf.stack(batches[:-1]) if steps > 1 else None, batches[-1])

    return execution


def train_function_kind(config, model, replicated, whole_executions):
    """Which train function `fit` uses: "xla-execution", "replicated-execution" or "keras".

    jit_compile True compiles whole executions on one device, or falls back to Keras' per-step
    XLA where executions are not whole or the model is not `xla_loop_safe`; None (auto) compiles
    whole executions where the model gains from it (`model.auto_xla`: MLPs, not convolutions or
    per-pixel noise), else no XLA.
    """
    if replicated:
        return "replicated-execution" if whole_executions else "keras"
    wanted = config.jit_compile if config.jit_compile is not None else getattr(model, "auto_xla", False)
    loop_safe = getattr(model, "xla_loop_safe", True)  # else True means Keras' per-step XLA
    return "xla-execution" if whole_executions and wanted and loop_safe else "keras"


def _compile(model, config, steps_per_epoch, strategy, steps_per_execution, kind):
    lr = config.learning_rate
    if config.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, config.epochs * steps_per_epoch),
                                                    alpha=0.05)
    with strategy.scope():
        # Keras' own jit_compile (one step per XLA call) only where kerasae compiles no whole executions
        model.compile(optimizer=optimizers.Adam(lr), steps_per_execution=steps_per_execution,
                      jit_compile=bool(config.jit_compile) and kind == "keras")
    if kind == "xla-execution":
        model.train_function = xla_execution_train_function(model)  # fit keeps a train function it finds
    elif kind == "replicated-execution":
        model.train_function = whole_execution_train_function(model)


def evaluation_images(model, x):
    """What a model is evaluated on: a fixed binarization for Bernoulli models, else x itself."""
    if getattr(model, "binary_data", False):
        return data_lib.binarize(x, seed=TEST_BINARIZATION_SEED)
    return x


def prepare(config):
    """Validate the config, load the data and build the model: everything that can fail on bad input.

    Raises ValueError (data errors included) before any training starts, so a CLI can
    turn it into a usage error.
    """
    config.validate()
    distribute.configure_cpu_replicas(config.cpu_replicas)
    strategy = distribute.get_strategy(config.strategy)  # first: multi-worker must precede other TF work
    if config.jit_compile and strategy.num_replicas_in_sync > 1:
        raise ValueError(f"jit_compile does not work with {strategy.num_replicas_in_sync} replicas: XLA cannot "
                         "compile a step whose variables live on several devices (Keras turns it off under "
                         "tf.distribute too); drop jit_compile or use strategy 'default'")
    keras.utils.set_random_seed(config.seed)  # Python, NumPy and TF seeds: weights, shuffling, binarization
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    run_dir = prepare_run_dir(config)
    data = data_lib.load_dataset(config.dataset, data_dir=config.data_dir, image_size=config.image_size,
                                 color_mode=config.color_mode)
    data = data.take(config.max_train_samples, config.max_test_samples)
    val_size = config.validation_size
    if val_size is None:
        val_size = min(5000, len(data.x_train) // 10)
    if val_size >= len(data.x_train):
        raise ValueError(f"validation_size {val_size} leaves no training images (have {len(data.x_train)})")
    model = _build_model(config, data.image_shape, strategy)
    return Prepared(run_dir, data, val_size, strategy, model)


def train(config=None, **kwargs):
    """Train per `config` (or TrainConfig(**kwargs)) and write the run directory; returns a TrainResult."""
    config = config or TrainConfig(**kwargs)
    return fit(config, *prepare(config))


def fit(config, run_dir, data, val_size, strategy, model):
    """The training half of `train`: fit, evaluate on the test split, write every output."""
    start = time.time()
    x_train, x_val = data_lib.split_validation(data.x_train, val_size)
    binary = getattr(model, "binary_data", False)
    custom_loop = distribute.is_multi_worker(strategy)  # model.fit cannot drive it (keras#20585)
    steps_per_epoch = -(-len(x_train) // config.batch_size)
    val_steps = -(-len(x_val) // config.batch_size)
    execution = None if custom_loop else one_iterator_steps(steps_per_epoch, val_steps, config.steps_per_execution)
    repeat = execution is not None
    replicated = strategy.num_replicas_in_sync > 1
    if replicated and not repeat:
        execution = 1  # Keras' multi-step train function fails under several replicas: whole_execution_train_function
    train_ds = data_lib.make_dataset(x_train, config.batch_size, shuffle=True, binarize=binary, seed=config.seed,
                                     repeat=repeat)
    val_ds = (data_lib.make_dataset(evaluation_images(model, x_val), config.batch_size, repeat=repeat)
              if len(x_val) else None)
    x_test = evaluation_images(model, data.x_test)  # binarized once: for the image summaries and the test metrics
    kind = train_function_kind(config, model, replicated, whole_executions=repeat)
    _compile(model, config, steps_per_epoch, strategy, execution or config.steps_per_execution, kind)

    chief = distribute.is_chief(strategy)  # only the chief writes files
    if chief:
        config_json = {"train": config.to_json(), "preset": None if config.init_from else config.preset,
                       "model": {"class": type(model).__name__, "config": model.get_config()},
                       "versions": library_versions()}
        write_json(run_dir / "config.json", config_json)
    backup_dir, history_path = run_dir / "backup", run_dir / "history.csv"
    resumed_from = backup_epoch(backup_dir)
    if chief:
        _trim_history(history_path, resumed_from)
        (run_dir / "figures").mkdir(exist_ok=True)
    if resumed_from and config.verbose != 0:
        print(f"Resuming from {backup_dir} after epoch {resumed_from}")
    guard = DivergenceGuard()
    callbacks = [guard, EpochTimer(), AtomicBackupAndRestore(str(backup_dir), save=chief)]
    if chief:
        callbacks += [
            AtomicModelCheckpoint(str(run_dir / "best.keras"), save_best_only=True,
                                  monitor="val_loss" if val_ds is not None else "loss"),
            keras.callbacks.CSVLogger(str(history_path), append=True),
            keras.callbacks.TensorBoard(str(run_dir / "logs")),
            ImageSummaries(run_dir / "logs" / "images", x_test[:8]),
        ]
    if custom_loop:
        loop_fit(model, strategy, train_ds, config.epochs, val_ds, callbacks, config.verbose)
    else:
        model.fit(train_ds, epochs=config.epochs, validation_data=val_ds, callbacks=callbacks,
                  steps_per_epoch=steps_per_epoch if repeat else None,
                  validation_steps=val_steps if repeat and val_ds is not None else None,
                  verbose=config.verbose, shuffle=False)  # the pipeline shuffles (seeded)
    if guard.diverged or model.stop_training:
        kept = [str(p) for p in (run_dir / "best.keras", backup_dir) if p.exists()]
        raise FloatingPointError("training diverged (non-finite loss or weights); "
                                 + (f"the last good state is kept in {' and '.join(kept)}" if kept
                                    else "it did so before any epoch completed")
                                 + "; try a lower --learning-rate (in a new --out)")

    test_ds = data_lib.make_dataset(x_test, config.batch_size)
    if custom_loop:
        test = loop_evaluate(model, strategy, test_ds)
    else:
        if replicated:
            # A fresh test function: under MirroredStrategy the one traced for fit's repeated validation
            # iterator returns no logs for this finite one (Keras 3.15): the test metrics came out {}.
            model.test_function = None
        test = model.evaluate(test_ds, return_dict=True, verbose=0)
    history = read_history(history_path)
    metrics = {
        "test": {k: float(v) for k, v in test.items()},
        "final_epoch": history[-1] if history else None,
        "epochs": len(history),
        "resumed_from_epoch": resumed_from,
        "wall_time_s": round(time.time() - start, 2),  # this invocation only (a resumed run restarts the clock)
        "num_train": len(x_train), "num_validation": len(x_val), "num_test": len(x_test),
        "dataset": config.dataset,
        "test_binarization_seed": TEST_BINARIZATION_SEED if binary else None,
        "units": "nats per example (mse: per pixel)",
        "replicas": strategy.num_replicas_in_sync,
        "steps_per_execution": model.steps_per_execution, "one_iterator": repeat, "train_function": kind,
        "weights_sha256": weights_digest(model),
        "versions": library_versions(),
    }
    if chief:
        save_model_atomic(model, run_dir / "model.keras")
        write_json(run_dir / "metrics.json", metrics)
        save_figures(model, x_test, data.y_test, run_dir / "figures")
    return TrainResult(model=model, run_dir=run_dir, history=history, metrics=metrics)


def weights_digest(model):
    """sha256 of the model's weights: equal digests mean bit-identical weights (across workers, reruns)."""
    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()


# ---- the loop for strategies model.fit cannot drive --------------------------------------------

class WorkerLostError(RuntimeError):
    """A peer worker died or stopped answering during multi-worker training."""


def _replicated(model, strategy, step):
    @tf.function
    def run(batch):
        strategy.run(step, args=(batch,))

    return run


def _logs(model, prefix=""):
    return {prefix + m.name: float(m.result()) for m in model.metrics}  # a collective read: every worker calls it


def loop_evaluate(model, strategy, dataset, prefix=""):
    """model.evaluate for multi-worker: the model's own test_step over the sharded dataset."""
    model.reset_metrics()
    step = _replicated(model, strategy, model.test_step)
    for batch in strategy.experimental_distribute_dataset(dataset):
        step(batch)
    return _logs(model, prefix)


def loop_fit(model, strategy, dataset, epochs, validation_data=None, callbacks=(), verbose="auto"):
    """model.fit for MultiWorkerMirroredStrategy: `strategy.run(model.train_step)` per batch.

    The same training step, callbacks (BackupAndRestore, CSVLogger, TensorBoard...) and
    History as fit. A dead peer surfaces as WorkerLostError within the collective timeout.
    """
    steps = int(dataset.cardinality())
    callback_list = keras.callbacks.CallbackList(
        list(callbacks), add_history=True, add_progbar=verbose != 0, model=model,
        verbose=1 if verbose == "auto" else verbose, epochs=epochs, steps=steps if steps > 0 else None)
    with strategy.scope():
        model.optimizer.build(model.trainable_variables)  # outside tf.function: creates its variables once
    train_step = _replicated(model, strategy, model.train_step)
    batches = strategy.experimental_distribute_dataset(dataset)
    model.stop_training, model._initial_epoch = False, None
    logs = {}
    try:
        callback_list.on_train_begin()
        initial_epoch = model._initial_epoch or 0
        _check_workers_agree(strategy, initial_epoch)
        for epoch in range(initial_epoch, epochs):
            model.reset_metrics()
            callback_list.on_epoch_begin(epoch)
            for i, batch in enumerate(batches):
                callback_list.on_train_batch_begin(i)
                train_step(batch)
                callback_list.on_train_batch_end(i, {})
            logs = _logs(model)
            if validation_data is not None:
                logs.update(loop_evaluate(model, strategy, validation_data, prefix="val_"))
            if not np.isfinite(logs["loss"]):
                model.stop_training = True
                break
            callback_list.on_epoch_end(epoch, logs)
            if model.stop_training:
                break
        callback_list.on_train_end(logs)
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
            tf.errors.CancelledError) as err:
        raise WorkerLostError(
            f"a peer worker died or stopped answering ({type(err).__name__}); restart every worker with the "
            "same command to resume from the last completed epoch") from err
    return model.history


def _check_workers_agree(strategy, initial_epoch):
    """Every worker must resume from the same epoch, else their steps would not line up."""
    # all values equal  <=>  n * sum(v^2) == sum(v)^2  (ReduceOp has only SUM and MEAN)
    @tf.function
    def reduce():
        per_replica = strategy.run(lambda: tf.constant([1, initial_epoch, initial_epoch**2], tf.int64))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    n, total, squares = reduce().numpy().tolist()
    if n * squares != total * total:
        raise ValueError(f"workers would resume from different epochs (this one from {initial_epoch}): every "
                         "worker must read the chief's backup, so put --out on storage they all share")


def save_figures(model, x_test, y_test, fig_dir, n=10, seed=0):
    """reconstructions.png, samples.png and, for a 2-D code, latent.png."""
    x = x_test[:n]
    plots.save_image(plots.reconstruction_grid(x, model.reconstruct(x).numpy()), fig_dir / "reconstructions.png",
                     "test images (top) and reconstructions (bottom)")
    plots.save_image(plots.image_grid(model.sample(64, seed=seed).numpy(), 8), fig_dir / "samples.png",
                     "decoded samples z ~ N(0, I)")
    if model.latent_dim == 2:
        plots.save_latent_scatter(model.latent_codes(x_test), y_test, fig_dir / "latent.png")
