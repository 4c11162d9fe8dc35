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

from kerasae import _backend  # noqa: F401  (before keras: pins the TensorFlow backend)
from kerasae.config import LR_SCHEDULES, TrainConfig
from kerasae.data import TEST_BINARIZATION_SEED
from kerasae.training.callbacks import (AtomicBackupAndRestore, AtomicModelCheckpoint, DivergenceGuard,
                                        EpochProgbarLogger, EpochTimer, ImageSummaries, weights_finite)
from kerasae.training.core import (Prepared, TrainResult, evaluation_images, fit, prepare, train,
                                   weights_digest)
from kerasae.training.core import _make_model  # noqa: F401  (tests/test_train.py builds through it)
from kerasae.training.figures import save_figures
from kerasae.training.multiworker import WorkerLostError, loop_evaluate, loop_fit
from kerasae.training.run_dir import backup_epoch, prepare_run_dir, read_history, save_model_atomic
from kerasae.training.train_functions import (one_iterator_steps, plan_executions, train_function_kind,
                                              whole_execution_train_function, xla_execution_train_function)

__all__ = [
    "LR_SCHEDULES", "TEST_BINARIZATION_SEED", "AtomicBackupAndRestore", "AtomicModelCheckpoint", "DivergenceGuard",
    "EpochProgbarLogger", "EpochTimer", "ImageSummaries", "Prepared", "TrainConfig", "TrainResult",
    "WorkerLostError", "backup_epoch", "evaluation_images", "fit", "loop_evaluate", "loop_fit", "one_iterator_steps",
    "plan_executions", "prepare", "prepare_run_dir", "read_history", "save_figures", "save_model_atomic", "train",
    "train_function_kind", "weights_digest", "weights_finite", "whole_execution_train_function",
    "xla_execution_train_function",
]
