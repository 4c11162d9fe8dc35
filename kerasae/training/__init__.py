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

The modules: core (prepare, fit, train), run_dir (the directory's files), callbacks,
train_functions (how a call's steps run), multiworker (the loop for MultiWorkerMirroredStrategy),
figures. This package re-exports what callers use, so `kerasae.training.NAME` names it wherever
it lives; patch a name where it is looked up (e.g. `kerasae.training.core` for what `fit` calls).
"""

import importlib

from kerasae import _backend  # noqa: F401  (before keras: pins the TensorFlow backend)

#: Where each re-exported name lives. They load on first use, so `kerasae.training.run_dir` (which the command line
#: reads to report a finished run) imports without TensorFlow.
_HOMES = {
    "LR_SCHEDULES": "kerasae.config", "TrainConfig": "kerasae.config", "TEST_BINARIZATION_SEED": "kerasae.data",
    **dict.fromkeys(("AtomicBackupAndRestore", "AtomicModelCheckpoint", "DivergenceGuard", "EpochProgbarLogger",
                     "EpochTimer", "ImageSummaries", "weights_finite"), "kerasae.training.callbacks"),
    **dict.fromkeys(("Prepared", "TrainResult", "evaluation_images", "finished", "finished_metrics", "fit", "prepare",
                     "train", "weights_digest", "_make_model"), "kerasae.training.core"),
    "save_figures": "kerasae.training.figures",
    **dict.fromkeys(("WorkerLostError", "loop_evaluate", "loop_fit"), "kerasae.training.multiworker"),
    **dict.fromkeys(("backup_epoch", "finished_run", "prepare_run_dir", "read_history", "save_model_atomic"),
                    "kerasae.training.run_dir"),
    **dict.fromkeys(("one_iterator_steps", "plan_executions", "train_function_kind", "whole_execution_train_function",
                     "xla_execution_train_function"), "kerasae.training.train_functions"),
}
__all__ = sorted(name for name in _HOMES if not name.startswith("_"))


def __getattr__(name):
    if name not in _HOMES:
        raise AttributeError(f"module 'kerasae.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
