"""The photo patches (kerasae.datasets.photos), lossless codec rates, and reproduce's fashion and photos stages."""

import json

import numpy as np
import pytest

from kerasae import compression
from kerasae import experiments, reproduce, reproduce_images
from kerasae.data import load_mnist
from kerasae.data.idx import load_npz
from kerasae.datasets import photos

from conftest import REPO, run_script, write_idx

RESULTS = REPO / "benchmarks" / "results"


@pytest.fixture(scope="module")
def patches():
    return photos.patch_dataset()


def test_patches_are_split_by_photograph_and_tile_the_test_photos(patches):
    names = list(patches["names"])
    assert names == list(photos.TRAIN_PHOTOS + photos.TEST_PHOTOS)
    test_index = {names.index(n) for n in photos.TEST_PHOTOS}
    assert set(np.unique(patches["y_train"])).isdisjoint(test_index)
    assert set(np.unique(patches["y_test"])) == test_index
    for name in photos.TEST_PHOTOS:  # non-overlapping tiles, row-major: they rebuild the photograph's top-left
        photo = photos.load_photo(name)
        tiles = patches["x_test"][patches["y_test"] == names.index(name)]
        rebuilt = reproduce_images._tiles_to_photo(tiles, photo.shape)
        np.testing.assert_array_equal(rebuilt, photo[:rebuilt.shape[0], :rebuilt.shape[1]])
        assert photo.shape[0] - rebuilt.shape[0] < 32 and photo.shape[1] - rebuilt.shape[1] < 32
    # Training patches overlap by half (stride 16) and are shuffled: each comes from its own photograph.
    plain = photos.patch_dataset(augmented=False)
    rocket = photos.load_photo("rocket")
    rocket_patches = plain["x_train"][plain["y_train"] == names.index("rocket")]
    expected = photos.cut_patches(rocket, 32, 16)
    assert len(rocket_patches) == len(expected) == ((427 - 32) // 16 + 1) * ((640 - 32) // 16 + 1)
    assert not np.array_equal(rocket_patches, expected)  # shuffled ...
    assert sorted(map(bytes, rocket_patches)) == sorted(map(bytes, expected))  # ... the same patches
    np.testing.assert_array_equal(expected[1], rocket[0:32, 16:48])
    np.testing.assert_array_equal(plain["y_train"], patches["y_train"])  # augmenting keeps the order
    np.testing.assert_array_equal(plain["x_test"], patches["x_test"])  # ... and leaves the test tiles alone
    again = photos.patch_dataset()
    np.testing.assert_array_equal(again["x_train"], patches["x_train"])  # the order and transforms are seeded
    large = photos.patch_dataset(64, augmented=False)  # 64x64 patches: stride 32, tiles of 64
    expected = photos.cut_patches(rocket, 64, 32)
    got = large["x_train"][large["y_train"] == names.index("rocket")]
    assert len(got) == ((427 - 64) // 32 + 1) * ((640 - 64) // 32 + 1)
    assert sorted(map(bytes, got)) == sorted(map(bytes, expected))
    assert len(large["x_test"]) == (300 // 64) * (451 // 64) + (400 // 64) * (600 // 64)  # chelsea, coffee


def test_augmented_patches_are_rotations_flips_and_channel_orders_of_the_originals(patches):
    plain = photos.patch_dataset(augmented=False)["x_train"]
    kinds = set()
    for original, augmented in zip(plain[:300], patches["x_train"][:300]):
        matches = [(turns, flip, order) for turns in range(4) for flip in (False, True)
                   for order in ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
                   if np.array_equal(augmented, (np.rot90(original, turns)[:, ::-1] if flip
                                                 else np.rot90(original, turns))[..., order])]
        assert matches, "an augmented patch is no rotation/flip/channel order of its original"
        kinds.add(matches[0])
    assert len(kinds) > 30  # of the 48 transforms (some coincide on symmetric patches)


def test_patches_of_given_photos_and_bad_arguments(tmp_path):
    rng = np.random.default_rng(0)
    given = {"rocket": rng.integers(0, 256, (40, 70, 3), np.uint8), "coffee": rng.integers(0, 256, (64, 33, 3),
                                                                                          np.uint8)}
    path = photos.write_patches(tmp_path / "p" / "patches.npz", size=16, stride=8, photos=given)
    data = load_npz(path)
    assert data.x_train.shape == (4 * 7, 16, 16, 3) and data.x_test.shape == (4 * 2, 16, 16, 3)
    assert list(np.load(path)["names"]) == ["rocket", "coffee"] and set(data.y_test) == {1}
    assert [p.name for p in path.parent.iterdir()] == ["patches.npz"]  # no temporary file left
    with pytest.raises(ValueError, match="test photographs"):
        photos.patch_dataset(photos={"rocket": given["rocket"]})
    with pytest.raises(ValueError, match="no 64x64 patch"):
        photos.cut_patches(given["rocket"], 64, 8)
    with pytest.raises(ValueError, match="photo must be one of"):
        photos.load_photo("lena")


def test_lossless_bits_per_dim_are_file_sizes_of_lossless_files():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (3, 32, 32, 3)).astype(np.float32) / 255.0
    flat = np.full((2, 32, 32, 1), 0.5, np.float32)
    for codec in compression.LOSSLESS_CODECS:
        bits = compression.lossless_bits_per_dim(noise, codec)
        assert bits.shape == (3,) and np.all(bits > 8.0)  # noise cannot be compressed: headers on top of 8 bits
        assert np.all(compression.lossless_bits_per_dim(flat, codec) < 1.0)
    with pytest.raises(ValueError, match="codec must be one of"):
        compression.lossless_bits_per_dim(flat, "GIF")


@pytest.mark.parametrize("stage", ["fashion", "photos", "photos-64"])
def test_results_doc_quotes_the_published_json(stage):
    """docs/results.md shows each table of the stage's summary as reproduce printed it from the full run."""
    result = json.loads((RESULTS / reproduce.RESULT_FILES[stage]).read_text())
    assert result["mode"] == "full"
    doc = (REPO / "docs" / "results.md").read_text()
    parts = reproduce_images.summary_parts({stage: result})
    assert parts and all(part.split("\n\n", 1)[1] in doc for part in parts)


@pytest.fixture(scope="module")
def whole_photo_rates():
    """{(photo, codec): bits/dim of the whole test photograph}, measured once for both patch sizes (WebP's
    slowest method takes tens of seconds per photograph on a busy CPU)."""
    return {(name, codec): compression.lossless_bits_per_dim(photos.load_photo(name)[None] / 255.0, codec)[0]
            for name in photos.TEST_PHOTOS for codec in compression.LOSSLESS_CODECS}


@pytest.mark.parametrize("stage,size", [("photos", 32), ("photos-64", 64)])
def test_published_codec_rates_of_the_photographs_are_measured_again(stage, size, whole_photo_rates):
    """The PNG and WebP rates of photos.json and photos_64.json, recomputed from the bundled photographs (2% for
    other zlib/libwebp builds of Pillow; the VAE's rates need its run, which is not shipped)."""
    result = json.loads((RESULTS / reproduce.RESULT_FILES[stage]).read_text())
    assert result["data"]["patch"] == [size, size, 3]
    assert sorted(result["per_photo"]) == sorted(photos.TEST_PHOTOS)
    for name, published in result["per_photo"].items():
        tiles = photos.cut_patches(photos.load_photo(name), size, size) / 255.0
        assert published["num_patches"] == len(tiles)
        for codec in compression.LOSSLESS_CODECS:
            assert published["codecs_per_patch"][codec] == pytest.approx(
                compression.lossless_bits_per_dim(tiles, codec).mean(), rel=0.02)
            assert published["codecs_whole_photo"][codec] == pytest.approx(whole_photo_rates[name, codec], rel=0.02)


def test_reproduce_fashion_needs_its_data(tmp_path):
    proc = run_script("reproduce.py", "--quick", "--stages", "fashion", "--fashion-mnist", tmp_path / "none",
                      "--root", tmp_path, cwd=tmp_path)
    assert proc.returncode == 2 and "apt install dataset-fashion-mnist" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("reproduce.py: error: --stages fashion")


@pytest.mark.slow
def test_reproduce_quick_fashion_and_photos(tmp_path):
    """Both stages end to end in quick mode; Fashion-MNIST's place taken by IDX files written here."""
    fashion = tmp_path / "fashion"
    fashion.mkdir()
    mnist = load_mnist().take(3600, 300)
    for split, n in (("train", 3600), ("t10k", 300)):
        x, y = (mnist.x_train, mnist.y_train) if split == "train" else (mnist.x_test, mnist.y_test)
        write_idx(fashion / f"{split}-images-idx3-ubyte.gz", 255 - np.rint(x[:n, ..., 0] * 255).astype(np.uint8))
        write_idx(fashion / f"{split}-labels-idx1-ubyte.gz", y[:n].astype(np.uint8))
    root = tmp_path / "root"
    proc = run_script("reproduce.py", "--quick", "--stages", "fashion,photos,photos-64", "--fashion-mnist", fashion,
                      "--root", root, "--verbose", "0", cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results, figures = root / "quick" / "results", root / "quick" / "figures"

    out = json.loads((results / "fashion_mnist.json").read_text())
    assert out["runs"]["fashion-vae"]["train_config"]["dataset"] == f"idx:{fashion}"
    num_test = min(300, experiments.QUICK["max_test_samples"])  # the IDX test split, cut to the quick size
    assert [r["code_size"] for r in out["ae_vs_pca"]] == [2, 32] and out["data"]["num_test"] == num_test
    vae = out["vae"]
    assert 0 < vae["nll_bits_per_dim"] <= vae["elbo_bits_per_dim"] < 8 and vae["k"] == 20
    png = out["lossless_bits_per_dim"]["PNG"]
    inverted = (255 - np.rint(mnist.x_test[:num_test] * 255)) / 255.0  # the test images as written above
    assert 0 < png < 8 and png == pytest.approx(compression.lossless_bits_per_dim(inverted).mean())

    out = json.loads((results / "photos.json").read_text())
    dataset = out["runs"]["photos-vae-resnet-32"]["train_config"]["dataset"]
    assert dataset == f"npz:{root / 'quick' / 'data' / 'photos-32.npz'}"
    assert {n: r["num_patches"] for n, r in out["per_photo"].items()} == {"chelsea": 9 * 14, "coffee": 12 * 18}
    assert out["runs"]["photos-vae-resnet-32"]["model_config"]["gaussian_scale"] == "decoder"
    assert out["test"]["k"] == reproduce.QUICK_K_PHOTOS
    for r in out["per_photo"].values():
        assert 0 < r["vae"]["nll_bits_per_dim"] <= r["vae"]["elbo_bits_per_dim"]
        assert 0 < r["codecs_per_patch"]["WebP lossless"] < r["codecs_per_patch"]["PNG"] < 8
    weights = np.array([126, 216]) / 342
    expected = sum(w * r["vae"]["nll_bits_per_dim"] for w, r in zip(weights, out["per_photo"].values()))
    assert out["test"]["nll_bits_per_dim"] == pytest.approx(expected)
    out = json.loads((results / "photos_64.json").read_text())
    run = out["runs"]["photos-vae-resnet-64"]
    assert run["train_config"]["dataset"] == f"npz:{root / 'quick' / 'data' / 'photos-64.npz'}"
    assert run["model_config"]["image_shape"] == [64, 64, 3] and out["data"]["train_stride"] == 32
    assert {n: r["num_patches"] for n, r in out["per_photo"].items()} == {"chelsea": 4 * 7, "coffee": 6 * 9}
    for name in ("fashion_reconstructions", "fashion_vae_samples", "photos_reconstructions", "photos_samples",
                 "photos_interpolation", "photos_64_reconstructions", "photos_64_samples", "photos_64_interpolation"):
        assert (figures / f"{name}.png").stat().st_size > 1000, name
    assert "Fashion-MNIST: AE vs PCA" in proc.stdout and "| coffee | 216 |" in proc.stdout
    assert "64x64 patches" in proc.stdout and "| coffee | 54 |" in proc.stdout
