"""A training run end to end: `prepare` (config, data, model: everything that can fail on bad input),
`fit` (model.fit or the multi-worker loop, the test metrics, every output of the run directory) and
`train`, the two in one.

The rest of the package serves this module: run_dir (files), callbacks, train_functions (how a
call's steps run), multiworker (the loop for MultiWorkerMirroredStrategy) and figures.
"""

import contextlib
import dataclasses
import functools
import hashlib
import json
import time
import zipfile
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from kerasae import data as data_lib
from kerasae.data.streams import first_unreadable, plain_error_message
from kerasae import distribute, registry
from kerasae.config import ZOO_PREFIX, TrainConfig
from kerasae.files import library_versions, load_keras_model, write_json
from kerasae.training.callbacks import (AtomicBackupAndRestore, AtomicModelCheckpoint, DivergenceGuard,
                                        EpochProgbarLogger, EpochTimer, ImageSummaries)
from kerasae.training.figures import save_figures
from kerasae.training import precision, recipe
from kerasae.training.multiworker import chiefs_finished_run, loop_evaluate, loop_fit, prepare_run_dir_on_chief
from kerasae.training.run_dir import (backup_epoch, check_run_dir, finished_message, finished_run, prepare_run_dir,
                                      read_history, save_model_atomic, trim_history)
from kerasae.training.train_functions import compile_for_fit, plan_executions, train_function_kind


#: Test images decoded for the figures and image summaries of a streamed dataset.
FIGURE_IMAGES = 2000


class Prepared(NamedTuple):
    """What `prepare` made, in the order `fit` takes it."""

    run_dir: Path
    data: data_lib.ImageData | data_lib.StreamedData
    val_size: int
    strategy: tf.distribute.Strategy
    model: keras.Model
    record: dict | None = None  # config.json's "data" and "objective" (see kerasae.training.recipe)


@dataclasses.dataclass
class TrainResult:
    model: keras.Model
    run_dir: Path
    history: list  # one dict per epoch, from history.csv (covers resumed runs too)
    metrics: dict


def _build_model(config, image_shape, strategy, policy="float32"):
    """Build (or load) the model in the strategy's scope under the Keras dtype policy `policy`.

    The policy is set only while the model is made: its layers keep it (and save it), and
    the process-wide default stays as the caller had it. Losses stay float32 regardless.
    """
    with precision.global_policy(policy):
        return _make_model(config, image_shape, strategy)


def _load_init_model(init_from):
    """The model `init_from` names: a .keras file (CRC-checked, safe_mode=True) or a verified zoo entry."""
    if str(init_from).startswith(ZOO_PREFIX):
        from kerasae import zoo  # the zoo sits above training (it exports); only this option reaches up to it

        return zoo.load_keras_model(init_from)
    return load_keras_model(init_from)


def _init_config(init_from):
    """The config of the model `init_from` names (zoo manifest or the .keras file's config.json), or None where
    it does not read: nothing is built, and loading the model says what is wrong."""
    try:
        if str(init_from).startswith(ZOO_PREFIX):
            from kerasae import export, zoo  # above training; only this option reaches up to them

            return export.model_record(zoo.version_dir(*zoo.parse_spec(init_from)))["config"]
        with zipfile.ZipFile(Path(init_from)) as archive:
            return json.loads(archive.read("config.json"))["config"]
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile):
        return None


def _init_image_shape(init_from):
    """The image shape (H, W, C) the model `init_from` names takes, read from its config: nothing is built."""
    try:
        return tuple(_init_config(init_from)["image_shape"])
    except (KeyError, TypeError):
        return None


def _init_warmup_steps(init_from):
    """The KL warm-up steps the model `init_from` names was configured with (0 if none or unknown)."""
    config = _init_config(init_from)
    return int(config.get("kl_warmup_steps") or 0) if isinstance(config, dict) else 0


def _make_model(config, image_shape, strategy):
    with strategy.scope():
        if config.init_from:
            model = _load_init_model(config.init_from)
            if model.family == registry.CODEC_FAMILY:
                raise ValueError(f"init_from {config.init_from} is a learned image codec ({type(model).__name__}), "
                                 "which trains with scripts/train_codec.py or model.fit (docs/codec.md), not with "
                                 "kerasae's autoencoder training")
            if tuple(model.image_shape) != tuple(image_shape):
                raise ValueError(f"init_from: the saved model takes images {tuple(model.image_shape)}, "
                                 f"but the dataset has {tuple(image_shape)}")
            overrides = recipe.training_overrides(model, config.model_kwargs)  # training settings only
            if overrides:
                try:
                    model = model.clone(**overrides)
                except ValueError as err:
                    raise ValueError(f"init_from {config.init_from}: model_kwargs {err}") from None
        else:
            model = registry.build(config.preset, image_shape=image_shape, **config.model_kwargs)
        return model


def evaluation_images(model, x):
    """What a model is evaluated on: a fixed binarization for Bernoulli models, else x itself."""
    if getattr(model, "binary_data", False):
        return data_lib.binarize(x, seed=data_lib.TEST_BINARIZATION_SEED)
    return x


def training_labels(model, data, val_size):
    """{"train", "val", "test": what make_dataset's `labels` takes} for a conditional model ({} otherwise):
    arrays split as the images are (checked here), or for streamed splits a StreamLabels (checked in the graph)."""
    if not model.conditional:
        return {}
    has_labels = (data.train.has_labels and data.test.has_labels) if data.streamed else (
        data.y_train is not None and data.y_test is not None)
    if not has_labels:
        raise data_lib.DataError(f"{type(model).__name__} trains on labelled images, and {data.name} has no labels "
                                 "(class folders, a tfrecord label key, an npz with y_train and y_test)")
    if data.streamed:
        return {name: data_lib.StreamLabels(model.num_classes, name) for name in ("train", "val", "test")}
    y_train, y_val = data_lib.split_validation(data.y_train, val_size)
    bad = [int(y) for y in (data.y_train.min(), data.y_train.max(), data.y_test.min(), data.y_test.max())
           if not 0 <= y < model.num_classes]
    if bad:
        raise data_lib.DataError(f"{data.name}: labels must be in [0, num_classes={model.num_classes}), found {bad[0]}")
    return {"train": y_train, "val": y_val, "test": data.y_test}


def _conditional_preset(config):
    """Whether `config` builds a new conditional model (a cvae preset, or one with a num_classes setting)."""
    if config.init_from:
        return False
    preset = registry.get_preset(config.preset)
    return preset.family == "cvae" or "num_classes" in preset.kwargs


def _check_classes(model, data, classes):
    """Refuse a conditional model whose classes are fewer than the labels of `data` name (before training)."""
    if classes is None:  # no labels: training_labels says so
        training_labels(model, data, 0)
    elif classes > model.num_classes:
        named = f" (class folders {list(data.class_names)[:5]}{' ...' if classes > 5 else ''})" if getattr(
            data, "class_names", None) else ""
        raise data_lib.DataError(f"{getattr(data, 'source', data.name)}: the labels name {classes} classes{named}, "
                                 f"more than the model's num_classes={model.num_classes}; pass --num-classes "
                                 f"{classes} (or leave it out to take the data's count)")


def prepare(config):
    """Validate the config, load the data and build the model: everything that can fail on bad input.

    Raises ValueError (data errors included) before any training starts, so a CLI can
    turn it into a usage error.
    """
    config.validate()
    strategy = _strategy(config)
    if config.jit_compile and strategy.num_replicas_in_sync > 1:
        raise ValueError(f"jit_compile does not work with {strategy.num_replicas_in_sync} replicas: XLA cannot "
                         "compile a step whose variables live on several devices (Keras turns it off under "
                         "tf.distribute too); drop jit_compile or use strategy 'default'")
    keras.utils.set_random_seed(config.seed)  # Python, NumPy and TF seeds: weights, shuffling, binarization
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    check_run_dir(config)  # a run of another config there: refused before the data loads
    image_size, color_mode, fitted_to = config.image_size, config.color_mode, None
    if config.init_from and image_size is None and color_mode is None:  # fit the data to the model's input
        shape = _init_image_shape(config.init_from)
        if shape is not None:
            image_size, color_mode = shape[:2], "grayscale" if shape[2] == 1 else "rgb"
            fitted_to = config.init_from
    log = print if config.verbose != 0 else (lambda *args: None)
    data = data_lib.open_dataset(config.dataset, data_dir=config.data_dir, image_size=image_size,
                                 color_mode=color_mode, mode=config.data_mode,
                                 skip_bad_images=config.skip_bad_images, log=log)
    data = data.take(config.max_train_samples, config.max_test_samples)
    val_size = config.validation_size
    if val_size is None:
        val_size = min(5000, data.num_train // 10)
    if val_size >= data.num_train:
        raise ValueError(f"validation_size {val_size} leaves no training images (have {data.num_train})")
    classes = data_lib.num_classes(data) if _conditional_preset(config) else None
    model_config = config  # a new conditional model without num_classes takes the data's count
    if classes is not None and "num_classes" not in config.model_kwargs:
        model_config = dataclasses.replace(config, model_kwargs={**config.model_kwargs, "num_classes": classes})
    chosen = precision.choose(config.precision, config.mixed_precision)
    model = _build_model(model_config, data.image_shape, strategy, chosen["policy"])
    if getattr(model, "conditional", False):
        _check_classes(model, data, classes if _conditional_preset(config) else data_lib.num_classes(data))
    binary = getattr(model, "binary_data", False)
    record = {"data": recipe.data_record(image_size, color_mode, data.image_shape, binary, fitted_to,
                                         fitted_to and recipe.source_image_shape(config.dataset)),
              "objective": recipe.objective(model), "precision": chosen}
    if chosen["asked"] != "float32":
        log(precision.describe(chosen))
    if fitted_to:  # the conversion --init-from implied, said once
        line = recipe.describe_data(config.dataset, record["data"])
        if line:
            log(line)
    saved_warmup = (config.init_from and "kl_warmup_steps" not in config.model_kwargs
                    and _init_warmup_steps(config.init_from))
    log(recipe.describe_objective(record["objective"], config.init_from, saved_warmup))
    # Only now: a usage error above leaves no empty run directory behind. Multi-worker: the chief's alone.
    run_dir = (prepare_run_dir_on_chief(config, strategy) if distribute.is_multi_worker(strategy)
               else prepare_run_dir(config))
    return Prepared(run_dir, data, val_size, strategy, model, record)


def _strategy(config):
    distribute.configure_cpu_replicas(config.cpu_replicas)
    return distribute.get_strategy(config.strategy)  # first: multi-worker must precede other TF work


def train(config=None, **kwargs):
    """Train per `config` (or TrainConfig(**kwargs)) and write the run directory; returns a TrainResult.

    A finished run of this config already in config.out is returned as it is (see `finished`), as the command
    line reports it, instead of being trained again from scratch; overwrite=True trains it again. An
    interrupted run resumes.
    """
    config = config or TrainConfig(**kwargs)
    done = finished(config)
    if done is not None:
        return done
    return fit(config, *prepare(config))


def finished(config):
    """The finished run of `config` in config.out as a TrainResult, else None (see `finished_metrics`).

    Its model is model.keras loaded as `kerasae.load_model` loads it (checked; not compiled), its history and
    metrics are history.csv and metrics.json: nothing in the directory is written. Says so in one line (unless
    verbose=0).
    """
    metrics = finished_metrics(config)
    if metrics is None:
        return None
    if config.verbose != 0:
        print(finished_message(config.out, metrics))
    run_dir = Path(config.out)
    return TrainResult(model=load_keras_model(run_dir / "model.keras"), run_dir=run_dir,
                       history=read_history(run_dir / "history.csv"), metrics=metrics)


def finished_metrics(config):
    """metrics.json of a finished run of `config` in config.out (run_dir.finished_run), else None (always with
    config.overwrite). Under strategy 'multiworker' the chief's answer, which every worker must ask for."""
    config.validate()
    if config.overwrite:
        return None
    metrics = finished_run(config)
    if config.strategy == "multiworker":
        metrics = chiefs_finished_run(_strategy(config), metrics, config.out)
    return metrics


def fit(config, run_dir, data, val_size, strategy, model, record=None):
    """The training half of `train`: fit, evaluate on the test split, write every output. `record`: what
    `prepare` found (the data options in effect, the objective) for config.json."""
    start = time.time()
    x_train, x_val, x_test, y_test = data.split_validation(val_size)
    binary = getattr(model, "binary_data", False)
    custom_loop = distribute.is_multi_worker(strategy)  # model.fit cannot drive it (keras#20585)
    workers = distribute.num_workers(strategy) if custom_loop and data.streamed else 1
    steps_per_epoch = data_lib.num_batches(len(x_train), config.batch_size, workers)
    val_steps = data_lib.num_batches(len(x_val), config.batch_size, workers)
    replicated = strategy.num_replicas_in_sync > 1
    execution, repeat = plan_executions(steps_per_epoch, val_steps, config.steps_per_execution,
                                        replicated=replicated, custom_loop=custom_loop)
    if data.streamed:  # fixed binarization per batch of the stream; the figures' images decoded here
        fixed_seed = data_lib.TEST_BINARIZATION_SEED if binary else None
        x_fig, y_fig = x_test.head(FIGURE_IMAGES).to_arrays()
        x_fig = evaluation_images(model, x_fig)
    else:  # binarized once: for the image summaries and the test metrics
        fixed_seed, (x_val, x_test) = None, (evaluation_images(model, x) for x in (x_val, x_test))
        x_fig, y_fig = x_test, y_test
    pipeline = functools.partial(input_pipeline, config.batch_size, custom_loop and data.streamed)
    labels = training_labels(model, data, val_size)  # {split: labels for make_dataset} of a conditional model
    train_ds = pipeline(x_train, shuffle=True, binarize=binary, seed=config.seed, repeat=repeat,
                        labels=labels.get("train"))
    val_ds = (pipeline(x_val, repeat=repeat, fixed_binarization_seed=fixed_seed, labels=labels.get("val"))
              if len(x_val) else None)
    kind = train_function_kind(config, model, replicated, whole_executions=repeat)
    compile_for_fit(model, config, steps_per_epoch, strategy, execution, kind)

    chief = distribute.is_chief(strategy)  # only the chief writes files
    if chief:
        config_json = {"train": config.to_json(), "preset": None if config.init_from else config.preset,
                       "model": {"class": type(model).__name__, "config": model.get_config()},
                       **(record or {"objective": recipe.objective(model)}), "versions": library_versions()}
        write_json(run_dir / "config.json", config_json)
    backup_dir, history_path = run_dir / "backup", run_dir / "history.csv"
    resumed_from = backup_epoch(backup_dir)
    if chief:
        trim_history(history_path, resumed_from)
        (run_dir / "figures").mkdir(exist_ok=True)
    if resumed_from and config.verbose != 0:
        print(f"Resuming from {backup_dir} after epoch {resumed_from}")
    guard = DivergenceGuard()
    callbacks = [guard, EpochTimer()]
    if chief:
        callbacks += [
            AtomicModelCheckpoint(str(run_dir / "best.keras"), save_best_only=True,
                                  monitor="val_loss" if val_ds is not None else "loss"),
            keras.callbacks.CSVLogger(str(history_path), append=True),
            keras.callbacks.TensorBoard(str(run_dir / "logs")),
            ImageSummaries(run_dir / "logs" / "images", x_fig[:8], labels=None if y_fig is None else y_fig[:8]),
        ]
    # The backup writes last: an epoch counts as done (and is not redone on resume) only once its history row
    # and best.keras are written, so a kill between them cannot lose the row.
    callbacks.append(AtomicBackupAndRestore(str(backup_dir), save=chief))
    if config.verbose != 0:
        callbacks.append(EpochProgbarLogger())  # last, as Keras places its own: it shows epoch_time_s
    with _data_errors(data):
        if custom_loop:
            loop_fit(model, strategy, train_ds, config.epochs, val_ds, callbacks, config.verbose, steps=steps_per_epoch)
        else:
            model.fit(train_ds, epochs=config.epochs, validation_data=val_ds, callbacks=callbacks,
                      steps_per_epoch=steps_per_epoch if repeat else None,
                      validation_steps=val_steps if repeat and val_ds is not None else None,
                      verbose=config.verbose, shuffle=False)  # the pipeline shuffles (seeded); fit's default warns
    if guard.diverged or model.stop_training:
        kept = [str(p) for p in (run_dir / "best.keras", backup_dir) if p.exists()]
        raise FloatingPointError("training diverged (non-finite loss or weights); "
                                 + (f"the last good state is kept in {' and '.join(kept)}" if kept
                                    else "it did so before any epoch completed")
                                 + "; try a lower --learning-rate (in a new --out)")

    test_ds = pipeline(x_test, fixed_binarization_seed=fixed_seed, labels=labels.get("test"))
    with _data_errors(data):
        if custom_loop:
            test = loop_evaluate(model, strategy, test_ds)
        else:
            if replicated:
                # A fresh test function: under MirroredStrategy the one traced for fit's repeated validation
                # iterator returns no logs for this finite one (Keras 3.15), which would leave the test metrics
                # empty.
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
        "dataset": config.dataset, "streamed": data.streamed,
        "skipped_images": list(getattr(data, "skipped", ())),
        "test_binarization_seed": data_lib.TEST_BINARIZATION_SEED if binary else None,
        "units": "nats per example (mse: per pixel)",
        "replicas": strategy.num_replicas_in_sync,
        "steps_per_execution": model.steps_per_execution, "one_iterator": repeat, "train_function": kind,
        "weights_sha256": weights_digest(model),
        "versions": library_versions(),
    }
    if chief:
        save_model_atomic(model, run_dir / "model.keras")
        write_json(run_dir / "metrics.json", metrics)
        save_figures(model, x_fig, y_fig, run_dir / "figures")
    return TrainResult(model=model, run_dir=run_dir, history=history, metrics=metrics)


def input_pipeline(batch_size, per_worker, x, **kwargs):
    """make_dataset for `x`; under multi-worker training on streamed data, a function of the worker's
    InputContext, so that each worker reads only its own files."""
    if not per_worker:
        return data_lib.make_dataset(x, batch_size, **kwargs)

    def per_worker_dataset(context):
        return data_lib.make_dataset(x, batch_size, num_workers=context.num_input_pipelines,
                                     worker_index=context.input_pipeline_id, **kwargs)

    return per_worker_dataset


@contextlib.contextmanager
def _data_errors(data):
    """An image that breaks while training (changed or removed after the scan) as a one-line DataError."""
    if not data.streamed:
        yield
        return
    try:
        yield
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.DataLossError) as err:
        bad_label = data_lib.labels.message_of(err.message or "")
        if bad_label:  # labels are checked in the graph (a file changed, or no count was known before training)
            raise data_lib.DataError(f"{data.source}: {bad_label}") from None
        first = plain_error_message(err) if err.message else str(err)
        try:
            culprit = first_unreadable(data)  # one more decode pass, to name the file
        except tf.errors.OpError:
            culprit = None
        raise data_lib.DataError(
            f"reading {data.source} failed during training ({type(err).__name__}: {first})"
            + (f"; {culprit} no longer reads" if culprit else "")
            + "; a file changed or disappeared since the run started? Fix it and rerun the same command: "
            "training resumes from the last completed epoch") from None


def weights_digest(model):
    """sha256 of the model's weights: equal digests mean bit-identical weights (across workers, reruns)."""
    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()
