"""Training under MultiWorkerMirroredStrategy, which `model.fit` cannot drive (keras-team/keras#20585):
`loop_fit` and `loop_evaluate` run the model's own train and test steps with `strategy.run`, through the
same callbacks as `fit`, and turn a dead peer into WorkerLostError. The workers share the run directory, which
the chief alone writes: `prepare_run_dir_on_chief` and `chiefs_finished_run` make the others follow the chief.
"""

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kerasae import distribute
from kerasae.training.run_dir import prepare_run_dir


class WorkerLostError(RuntimeError):
    """A peer worker died or stopped answering during multi-worker training."""


def _replicated(model, strategy, step):
    @tf.function
    def run(batch):
        strategy.run(step, args=(batch,))

    return run


def _logs(model, prefix=""):
    return {prefix + m.name: float(m.result()) for m in model.metrics}  # a collective read: every worker calls it


def distribute_dataset(strategy, dataset):
    """A tf.data.Dataset (auto-sharded) or a function of a tf.distribute.InputContext (each worker builds its
    own shard: streamed files) as the strategy's distributed dataset."""
    if callable(dataset):
        return strategy.distribute_datasets_from_function(dataset)
    return strategy.experimental_distribute_dataset(dataset)


def loop_evaluate(model, strategy, dataset, prefix=""):
    """model.evaluate for multi-worker: the model's own test_step over the sharded dataset."""
    model.reset_metrics()
    step = _replicated(model, strategy, model.test_step)
    for batch in distribute_dataset(strategy, dataset):
        step(batch)
    return _logs(model, prefix)


def loop_fit(model, strategy, dataset, epochs, validation_data=None, callbacks=(), verbose="auto", steps=None):
    """model.fit for MultiWorkerMirroredStrategy: `strategy.run(model.train_step)` per batch.

    The same training step, callbacks (BackupAndRestore, CSVLogger, TensorBoard...) and
    History as fit. A dead peer surfaces as WorkerLostError within the collective timeout.
    """
    if steps is None and not callable(dataset):
        steps = int(dataset.cardinality())
    callback_list = keras.callbacks.CallbackList(
        list(callbacks), add_history=True, add_progbar=verbose != 0, model=model,
        verbose=1 if verbose == "auto" else verbose, epochs=epochs, steps=steps if steps and steps > 0 else None)
    with strategy.scope():
        model.optimizer.build(model.trainable_variables)  # outside tf.function: creates its variables once
    train_step = _replicated(model, strategy, model.train_step)
    batches = distribute_dataset(strategy, dataset)
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


def prepare_run_dir_on_chief(config, strategy):
    """`prepare_run_dir` on the chief alone; every worker returns only once the chief's is done.

    The workers share --out (they resume from the chief's backup). Were each to prepare it, with overwrite each
    would rename the run aside and delete it, a late one taking the directory the chief had begun the new run in;
    and a worker could read the old run's backup before the chief had put it aside. So the others touch nothing
    and wait for the chief (a collective), and a chief that fails (a bad --out) fails them all at once, instead of
    leaving them waiting out the collective timeout.
    """
    error = None
    if distribute.is_chief(strategy):
        try:
            prepare_run_dir(config)
        except Exception as err:  # noqa: BLE001  (re-raised below, once the others know)
            error = err
    (failed,) = _sum_over_workers(strategy, [int(error is not None)])
    if error is not None:
        raise error
    if failed:
        raise ValueError(f"out: the chief worker could not prepare the run directory {str(config.out)!r} (its "
                         "error says why)")
    return Path(config.out)


def chiefs_finished_run(strategy, metrics, out):
    """The chief's finished run, as `metrics` (this worker's run_dir.finished_run), or None: every worker trains
    or none does. A collective that every worker calls.

    Only the chief writes the run, so its answer counts; a worker that does not see the chief's finished run
    has another --out than the chief, which is refused (were it to train, it would wait for the chief forever).
    """
    (chief_done,) = _sum_over_workers(strategy, [int(distribute.is_chief(strategy) and metrics is not None)])
    if not chief_done:
        return None
    if metrics is None:
        raise ValueError(f"out: the chief's --out holds this finished run, but {str(out)!r} does not here: put "
                         "--out on storage every worker shares (or --overwrite to train it again)")
    return metrics


def _sum_over_workers(strategy, values):
    """`values` (ints) summed over every replica of every worker: a collective, so every worker must call it, at
    the same point."""
    @tf.function
    def reduce():
        per_replica = strategy.run(lambda: tf.constant(values, tf.int64))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return reduce().numpy().tolist()


def _check_workers_agree(strategy, initial_epoch):
    """Every worker must resume from the same epoch, else their steps would not line up."""
    # all values equal  <=>  n * sum(v^2) == sum(v)^2  (ReduceOp has only SUM and MEAN)
    n, total, squares = _sum_over_workers(strategy, [1, initial_epoch, initial_epoch**2])
    if n * squares != total * total:
        raise ValueError(f"workers would resume from different epochs (this one from {initial_epoch}): every "
                         "worker must read the chief's backup, so put --out on storage they all share")
