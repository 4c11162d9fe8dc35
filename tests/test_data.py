"""Tests for kerasae.data: loaders, validation of bad inputs, and the tf.data pipeline."""

import importlib.resources

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from kerasae import data
from kerasae.data import DataError

from conftest import write_idx

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def write_png(path, value, size=(10, 8), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, (value,) * len(mode) if mode != "L" else value).save(path)


@pytest.fixture(scope="module")
def mnist():
    return data.load_mnist()


# --- embedded MNIST ----------------------------------------------------------------------

def test_mnist_shapes_and_range(mnist):
    assert mnist.name == "mnist"
    assert mnist.x_train.shape == (60000, 28, 28, 1) and mnist.x_test.shape == (10000, 28, 28, 1)
    assert mnist.image_shape == (28, 28, 1)
    for x in (mnist.x_train, mnist.x_test):
        assert x.dtype == np.float32 and x.min() == 0.0 and x.max() == 1.0
    for y in (mnist.y_train, mnist.y_test):
        assert y.dtype == np.int64 and set(np.unique(y)) == set(range(10))


def test_mnist_content_matches_known_facts(mnist):
    assert np.bincount(mnist.y_train).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(mnist.y_test).tolist() == MNIST_TEST_COUNTS
    assert mnist.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    first = mnist.x_train[0]
    assert 50 < first.sum() < 200  # a drawn digit: ~100-150 "ink" pixels' worth
    assert not np.array_equal(mnist.x_train[0], mnist.x_train[1])
    assert mnist.x_train[:100].reshape(100, -1).std(axis=0).max() > 0.3


@pytest.fixture
def mnist_copy(tmp_path):
    embedded = importlib.resources.files("kerasae.datasets") / "mnist"
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / name).write_bytes((embedded / name).read_bytes())
    return tmp_path


def test_mnist_copy_loads_and_corruption_is_rejected(mnist_copy):
    assert data.load_mnist(mnist_copy).y_test[:3].tolist() == [7, 2, 1]
    victim = mnist_copy / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz.*corrupt"):
        data.load_mnist(mnist_copy)


def test_mnist_missing_file_is_named(mnist_copy):
    (mnist_copy / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        data.load_mnist(mnist_copy)


# --- IDX -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, dtype, gz):
    rng = np.random.default_rng(0)
    array = (rng.random((3, 5, 4)) * 100 - (0 if dtype == np.uint8 else 50)).astype(dtype)
    back = data.read_idx(write_idx(tmp_path / "a.idx", array, gz=gz))
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, array)


def test_read_idx_rejects_truncated_and_garbage(tmp_path):
    path = write_idx(tmp_path / "t.idx", np.arange(24, dtype=np.int32).reshape(2, 3, 4))
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match="t.idx.*truncated"):
        data.read_idx(path)
    gz = write_idx(tmp_path / "t.idx.gz", np.zeros((50, 50), np.uint8))
    gz.write_bytes(gz.read_bytes()[:20])
    with pytest.raises(DataError, match="t.idx.gz"):
        data.read_idx(gz)
    (tmp_path / "junk").write_bytes(b"\x12\x34\x08\x01rest")
    with pytest.raises(DataError, match="junk.*magic"):
        data.read_idx(tmp_path / "junk")


def test_idx_folder_with_variant_names(tmp_path):
    x_train = np.random.default_rng(1).integers(0, 256, (6, 7, 5), dtype=np.uint8)
    write_idx(tmp_path / "train-images.idx3-ubyte", x_train)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(6, dtype=np.uint8))
    write_idx(tmp_path / "test-images-idx3-ubyte.gz", x_train[:2])  # no test labels
    (tmp_path / "README.txt").write_text("not data")
    ds = data.load_dataset(f"idx:{tmp_path}")
    assert ds.name == tmp_path.name
    assert ds.x_train.shape == (6, 7, 5, 1) and ds.x_test.shape == (2, 7, 5, 1)
    np.testing.assert_allclose(ds.x_train[..., 0], x_train / 255.0, atol=1e-7)
    assert ds.y_train.tolist() == list(range(6)) and ds.y_train.dtype == np.int64
    assert ds.y_test is None


def test_idx_folder_without_images(tmp_path):
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(6, dtype=np.uint8))
    with pytest.raises(DataError, match=f"{tmp_path}.*train-images-idx3-ubyte"):
        data.load_dataset(f"idx:{tmp_path}")


# --- image folders ---------------------------------------------------------------------------

def test_image_folder_with_classes_is_split_deterministically(tmp_path):
    for i in range(10):
        write_png(tmp_path / "cats" / f"{i}.png", 10 * i)
        write_png(tmp_path / "dogs" / f"{i}.png", 255 - i)
    ds = data.load_dataset(f"images:{tmp_path}", image_size=(6, 4))
    assert ds.x_train.shape == (18, 6, 4, 3) and ds.x_test.shape == (2, 6, 4, 3)
    assert ds.x_train.dtype == np.float32 and 0 <= ds.x_train.min() and ds.x_train.max() <= 1
    labels = np.concatenate([ds.y_train, ds.y_test])
    assert np.bincount(labels).tolist() == [10, 10]
    # Solid images: each keeps its exact value, and dogs (label 1) are the bright ones.
    np.testing.assert_allclose(ds.x_train[ds.y_train == 1].min(), 246 / 255, atol=1e-6)
    again = data.load_dataset(f"images:{tmp_path}", image_size=(6, 4))
    np.testing.assert_array_equal(again.x_test, ds.x_test)


def test_image_folder_train_test_flat_grayscale(tmp_path):
    for split, n in (("train", 4), ("test", 2)):
        for i in range(n):
            write_png(tmp_path / split / f"{i}.png", 100, mode="L")
    ds = data.load_dataset(f"images:{tmp_path}")  # one size and all grayscale: kept as they are
    assert ds.x_train.shape == (4, 8, 10, 1) and ds.x_test.shape == (2, 8, 10, 1)
    assert ds.y_train is None and ds.y_test is None
    np.testing.assert_allclose(ds.x_test, 100 / 255, atol=1e-6)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        data.load_dataset(f"images:{tmp_path / 'nowhere'}")
    with pytest.raises(DataError, match="no image files"):
        data.load_dataset(f"images:{tmp_path}")


# --- npz -------------------------------------------------------------------------------------

def test_npz_uint8_and_float(tmp_path):
    x = np.random.default_rng(2).integers(0, 256, (5, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "u8.npz", x_train=x, x_test=x[:2], y_train=np.arange(5, dtype=np.int32))
    ds = data.load_dataset(f"npz:{tmp_path / 'u8.npz'}")
    assert ds.name == "u8" and ds.image_shape == (4, 4, 1) and ds.y_test is None
    np.testing.assert_allclose(ds.x_train[..., 0], x / 255.0, atol=1e-7)
    assert ds.y_train.dtype == np.int64

    xf = np.random.default_rng(3).random((3, 4, 4, 3))
    np.savez(tmp_path / "f.npz", x_train=xf, x_test=xf)
    ds = data.load_dataset(f"npz:{tmp_path / 'f.npz'}", image_size=(2, 2), color_mode="grayscale")
    assert ds.x_train.shape == (3, 2, 2, 1) and ds.x_train.dtype == np.float32


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "big.npz", x_train=np.full((2, 3, 3), 2.5), x_test=np.zeros((1, 3, 3)))
    with pytest.raises(DataError, match=r"\[0, 1\].*max 2.5"):
        data.load_dataset(f"npz:{tmp_path / 'big.npz'}")
    np.savez(tmp_path / "wide.npz", x_train=np.full((2, 3, 3), 300, np.int32),
             x_test=np.zeros((1, 3, 3), np.int32))
    with pytest.raises(DataError, match="300"):
        data.load_dataset(f"npz:{tmp_path / 'wide.npz'}")
    np.savez(tmp_path / "half.npz", x_train=np.zeros((2, 3, 3), np.uint8), y_train=[0, 1])
    with pytest.raises(DataError, match=r"x_test.*\['x_train', 'y_train'\]"):
        data.load_dataset(f"npz:{tmp_path / 'half.npz'}")
    with pytest.raises(DataError, match="missing.npz"):
        data.load_dataset(f"npz:{tmp_path / 'missing.npz'}")


def test_unknown_spec_lists_forms():
    with pytest.raises(DataError, match="tfds:NAME.*idx:DIR.*images:DIR.*npz:FILE"):
        data.load_dataset("cifar10")
    with pytest.raises(DataError, match="idx:DIR"):
        data.load_dataset("idx:")


def test_bad_image_size_and_color_mode():
    with pytest.raises(DataError, match="--image-size"):
        data.load_dataset("mnist", image_size=(0, 5))
    with pytest.raises(DataError, match="--color-mode"):
        data.load_dataset("mnist", color_mode="cmyk")


# --- tensorflow-datasets (mocked: no network) --------------------------------------------------

def test_tfds_mocked(tmp_path):
    with tfds.testing.mock_data(num_examples=6):
        mn = data.load_dataset("tfds:mnist", data_dir=str(tmp_path))
        cifar = data.load_dataset("tfds:cifar10", data_dir=str(tmp_path))
        gray = data.load_dataset("tfds:cifar10", color_mode="grayscale", image_size=(16, 16))
        with pytest.raises(DataError, match="--image-size"):
            data.load_dataset("tfds:oxford_flowers102")  # images of varying size
    assert mn.name == "mnist" and mn.x_train.shape == (6, 28, 28, 1)
    assert cifar.x_train.shape == (6, 32, 32, 3) and cifar.x_test.shape == (6, 32, 32, 3)
    assert cifar.x_train.dtype == np.float32 and 0 <= cifar.x_train.min() <= cifar.x_train.max() <= 1
    assert cifar.y_train.dtype == np.int64 and cifar.y_train.max() < 10
    assert gray.image_shape == (16, 16, 1)


def test_tfds_offline_and_unprepared_names_data_dir(tmp_path, monkeypatch):
    def no_network(self, *args, **kwargs):
        raise ConnectionError("network unreachable")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_network)
    with pytest.raises(DataError, match="could not be downloaded.*--data-dir") as info:
        data.load_dataset("tfds:mnist", data_dir=str(tmp_path))
    assert isinstance(info.value.__cause__, ConnectionError)
    assert str(tmp_path) in str(info.value)


def test_tfds_unknown_name():
    with pytest.raises(DataError, match="unknown tensorflow-datasets dataset 'no_such_set'"):
        data.load_dataset("tfds:no_such_set")


# --- transforms and pipeline -------------------------------------------------------------------

def test_binarize():
    x = np.random.default_rng(4).random((200, 8, 8, 1)).astype(np.float32)
    b = data.binarize(x, seed=5)
    assert b.dtype == np.float32 and set(np.unique(b)) == {0.0, 1.0}
    np.testing.assert_array_equal(b, data.binarize(x, seed=5))
    assert not np.array_equal(b, data.binarize(x, seed=6))
    assert abs(b.mean() - x.mean()) < 0.01
    assert data.binarize(np.zeros((4, 2))).max() == 0 and data.binarize(np.ones((4, 2))).min() == 1


def test_make_dataset_shapes():
    x = np.random.default_rng(5).random((50, 6, 6, 1)).astype(np.float32)
    ds = data.make_dataset(x, 16)
    batches = list(ds.as_numpy_iterator())
    assert [len(b) for b in batches] == [16, 16, 16, 2] and ds.cardinality() == 4
    assert batches[0].dtype == np.float32 and batches[0].shape[1:] == (6, 6, 1)
    np.testing.assert_array_equal(np.concatenate(batches), x)  # no shuffle: original order
    assert ds.options().experimental_distribute.auto_shard_policy.name == "DATA"
    assert ds.options().deterministic


def test_make_dataset_dynamic_binarization_redraws_each_epoch():
    x = np.full((40, 5, 5, 1), 0.5, np.float32)
    ds = data.make_dataset(x, 8, binarize=True, seed=3)
    epoch1, epoch2 = (np.concatenate(list(ds.as_numpy_iterator())) for _ in range(2))
    assert set(np.unique(epoch1)) == {0.0, 1.0}
    assert abs(epoch1.mean() - 0.5) < 0.05
    assert 0.3 < (epoch1 != epoch2).mean() < 0.7  # independent draws differ about half the time
    rebuilt = data.make_dataset(x, 8, binarize=True, seed=3)
    np.testing.assert_array_equal(np.concatenate(list(rebuilt.as_numpy_iterator())), epoch1)


def test_dynamic_binarization_has_each_pixels_probability():
    levels = np.array([0.0, 1 / 255, 0.1, 0.5, 0.9, 254 / 255, 1.0], np.float32)
    x = np.broadcast_to(levels[:, None, None, None], (7, 3, 3, 1)).astype(np.float32)  # 63 pixels: odd size
    ds = data.make_dataset(np.concatenate([x] * 3), 7, binarize=True, seed=1, repeat=True)
    draws = np.concatenate(list(ds.take(600).as_numpy_iterator()))  # 600 images per level, 9 pixels each
    assert draws.shape == (4200, 3, 3, 1) and set(np.unique(draws)) == {0.0, 1.0}
    freq = draws.reshape(-1, 7, 9).mean(axis=(0, 2))
    assert freq[0] == 0.0 and freq[-1] == 1.0  # exact at the ends
    n = 600 * 9
    stderr = np.sqrt(levels * (1 - levels) / n)
    assert np.all(np.abs(freq - levels)[1:-1] < 4 * stderr[1:-1] + 2**-16), (freq, levels)


def test_make_dataset_shuffle_reproducible_and_repeat():
    x = np.arange(30, dtype=np.float32).reshape(30, 1, 1, 1)
    first = [np.concatenate(list(data.make_dataset(x, 7, shuffle=True, seed=9)))
             for _ in range(2)]
    np.testing.assert_array_equal(first[0], first[1])
    assert not np.array_equal(first[0], x)
    np.testing.assert_array_equal(np.sort(first[0].ravel()), x.ravel())  # a permutation
    endless = data.make_dataset(x, 7, repeat=True)
    assert endless.cardinality() == -1 and len(list(endless.take(10).as_numpy_iterator())) == 10


@pytest.mark.parametrize("batch_size", [0, -4])
def test_make_dataset_rejects_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        data.make_dataset(np.zeros((4, 2, 2, 1), np.float32), batch_size)


def test_split_validation():
    x = np.arange(10)
    train, val = data.split_validation(x, 3)
    assert train.tolist() == list(range(7)) and val.tolist() == [7, 8, 9]
    train, val = data.split_validation(x, 0)
    assert train.tolist() == list(range(10)) and val.shape == (0,)
    for bad in (10, 11, -1):
        with pytest.raises(DataError, match="validation size"):
            data.split_validation(x, bad)


def test_take_and_image_data_validation(mnist):
    small = mnist.take(100, 20)
    assert small.x_train.shape == (100, 28, 28, 1) and small.y_test.shape == (20,)
    assert mnist.take().x_train.shape == mnist.x_train.shape
    unlabeled = data.ImageData("u", small.x_train, None, small.x_test, None).take(5)
    assert unlabeled.y_train is None and len(unlabeled.x_train) == 5
    with pytest.raises(DataError, match="train images"):
        data.ImageData("bad", small.x_train, None, np.zeros((2, 5, 5, 1), np.float32), None)
