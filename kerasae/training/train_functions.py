"""How `model.fit` runs a call's steps: the steps per execution that keep one iterator for the run,
kerasae's two train functions (whole executions under several replicas; one XLA loop on one device),
the choice between them and Keras' own, and the compile step that installs the chosen one.

The performance-critical part of training, kept together because the three depend on one invariant:
whole executions (steps per execution dividing every epoch, `one_iterator_steps`).
"""

import math

import keras
import tensorflow as tf

from kerasae import optimizers


def one_iterator_steps(steps_per_epoch, val_steps, wanted):
    """The steps per execution that let `model.fit` keep one iterator for the whole run, or None.

    model.fit makes a new iterator every epoch unless it gets a repeated dataset and step
    counts; a new iterator idles every other epoch's first execution for 1.5-2 s on a 2-core CPU
    (a third of an MNIST epoch). With one iterator, Keras runs whole executions, so
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
    `fit` uses it under several replicas only: on one device it is no faster than Keras' own
    without XLA (16.6k vs 16.4k samples/s), and one device gets `xla_execution_train_function`.
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
                model.train_step(tf.nest.map_structure(lambda t: t[i], full_batches))
        return model.train_step(last_batch)  # logs: the metrics' running means, as Keras' last step gives

    @tf.function(reduce_retracing=True)
    def execution(iterator):
        batches = [iterator.get_next() for _ in range(steps)]  # images, or (images, labels)
        stacked = tf.nest.map_structure(lambda *t: tf.stack(t), *batches[:-1]) if steps > 1 else None
        return run_steps(stacked, batches[-1])

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


def compile_for_fit(model, config, steps_per_epoch, strategy, steps_per_execution, kind):
    """model.compile (Adam, the learning-rate schedule) and the train function of `kind`."""
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


def plan_executions(steps_per_epoch, val_steps, wanted, *, replicated, custom_loop):
    """(steps per execution, one iterator for the run?): what `fit` compiles and how it feeds the data.

    Whole executions on one repeated iterator where `one_iterator_steps` finds a divisor; else a new
    iterator per epoch, with one step per call under several replicas (Keras' multi-step train function
    fails there: `whole_execution_train_function`) and in `multiworker.loop_fit` (it calls one step at a
    time), and otherwise at most the epoch's steps per call: a call cannot run more, and Keras'
    progress bar counted the steps asked for (16/15).
    """
    if custom_loop:
        return 1, False
    whole = one_iterator_steps(steps_per_epoch, val_steps, wanted)
    if whole is not None:
        return whole, True
    return (1 if replicated else min(wanted, steps_per_epoch)), False
