"""The Keras callbacks `fit` trains with: divergence guard, epoch timer, atomic backup and checkpoint,
TensorBoard images, and a progress bar that stops at the epoch's last step.

Each fixes one thing Keras' own callbacks do not (NaNs written as checkpoints, files half-written by a
kill or a full disk, step counts past the end of an epoch); the loops in `core` and `multiworker`
only list them.
"""

import json
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kerasae import plots
from kerasae.files import atomic_path, write_json
from kerasae.training.run_dir import check_free_space, save_model_atomic


def weights_finite(model):
    return all(np.isfinite(w).all() for w in model.get_weights())


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


class EpochProgbarLogger(keras.callbacks.ProgbarLogger):
    """Keras' progress bar, but never past the epoch's last step.

    Keras' epoch iterator reports each call as ending at its first step + steps_per_execution - 1
    (Keras 3.15, keras/src/trainers/epoch_iterator.py), also an epoch's last call when
    steps_per_execution does not divide the epoch's steps: with a new iterator each epoch that call
    runs only the steps left, but the bar showed e.g. 12/9. `fit` passes this one instead (Keras
    then adds none of its own).
    """

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch if not self.target else min(batch, self.target - 1), logs)


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
            check_free_space(backup, self._weights_bytes(backup))
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

    def __init__(self, log_dir, images, num_samples=16, seed=0, labels=None):
        super().__init__()
        self.images = tf.constant(images, tf.float32)
        self.labels = labels  # a conditional model's, of the images
        self.num_samples = num_samples
        self.seed = seed
        self.log_dir = str(log_dir)
        self._writer = None

    def on_train_begin(self, logs=None):
        self._writer = tf.summary.create_file_writer(self.log_dir)

    def on_epoch_end(self, epoch, logs=None):
        if self.model.stop_training:  # diverged: nothing meaningful to show
            return
        recon = plots.reconstruction_grid(self.images.numpy(),
                                          self.model.reconstruct_examples(self.images, self.labels).numpy())
        samples = plots.image_grid(self.model.sample_examples(self.num_samples, seed=self.seed).numpy(), 4)
        with self._writer.as_default(step=epoch):
            tf.summary.image("reconstructions", recon[None], description="top: inputs, bottom: reconstructions")
            tf.summary.image("samples", samples[None], description="decoded draws z ~ N(0, I), fixed across epochs")
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
