"""Every dataset kerasae iterates has tf.data's autotuning off: with it on, dropping an iterator waits for the
autotuner's next wake-up, which left half of a run's `fit` calls at one busy core (kerasae/data/tuning.py;
benchmarks/fit_stalls.py measures it)."""

import numpy as np
import tensorflow as tf
from PIL import Image

from kerasae import data
from kerasae.codec import photos
from kerasae.data import make_dataset, open_dataset


def autotuned(ds):
    return ds.options().autotune.enabled is not False  # None: tf.data's default, on


def class_folder(root, per_class=6):
    rng = np.random.default_rng(0)
    for name in ("cats", "dogs"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / name / f"{i}.png")


def test_training_and_evaluation_datasets_have_autotuning_off(tmp_path):
    x = np.random.default_rng(1).random((10, 4, 4, 1)).astype(np.float32)
    arrays = [make_dataset(x, 4, shuffle=True, binarize=True, seed=0),
              make_dataset(x, 4, fixed_binarization_seed=3),
              make_dataset(x, 4, labels=np.arange(10) % 2, repeat=True)]
    class_folder(tmp_path / "folder")
    split = open_dataset(f"images:{tmp_path / 'folder'}", mode="stream").train
    streamed = [make_dataset(split, 4, shuffle=True, seed=0), make_dataset(split, 4, labels=True)]
    crops = [photos.crop_dataset([np.zeros((40, 40, 3), np.uint8)], 16, 2, 2),
             photos.crop_dataset([np.zeros((40, 40, 3), np.uint8)], 16, 2, 4, reseed_every=2)]
    assert [autotuned(ds) for ds in arrays + streamed + crops] == [False] * 7
    assert autotuned(tf.data.Dataset.range(3))  # what the check tells apart


def test_datasets_read_in_python_have_autotuning_off(tmp_path, monkeypatch):
    """Scanning a folder, reading its labels, decoding it into memory, converting it to TFRecords and reading
    those back: every as_numpy_iterator() loop on the way."""
    seen = []
    original = tf.data.Dataset.as_numpy_iterator

    def recording(self):
        seen.append(autotuned(self))
        return original(self)

    monkeypatch.setattr(tf.data.Dataset, "as_numpy_iterator", recording)
    class_folder(tmp_path / "folder")
    source = open_dataset(f"images:{tmp_path / 'folder'}", mode="stream")
    source.train.to_arrays()
    data.num_classes(source)
    data.write_tfrecords(source, tmp_path / "records", log=lambda *a: None)
    open_dataset(f"tfrecord:{tmp_path / 'records'}", mode="memory")
    assert len(seen) >= 4 and not any(seen), seen
