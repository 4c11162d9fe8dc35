"""Patches cut from the colour photographs that scikit-image bundles, split by photograph.

Real 8-bit photographs that no one here made, for the colour models' evidence (`scripts/reproduce.py
--stages photos`). Training patches overlap (a stride below the patch size), are rotated, flipped
and colour-permuted at random (`augment`) and come in a seeded random order, so a run's validation
split (the last images) and `--max-train-samples` (the first) are random subsets; test patches tile
the test photographs without overlap and unchanged, so each pixel is coded once, as a lossless codec
codes it. No photograph contributes to both splits.

scikit-image is an optional dependency (`pip install scikit-image`), imported only here.
"""

import itertools
from pathlib import Path

import numpy as np

from kerasae.files import atomic_path

#: skimage.data photographs (colour, natural or scientific, not synthetic). The stereo pair's two views
#: are one scene, so both stay on one side of the split.
TRAIN_PHOTOS = ("astronaut", "rocket", "motorcycle_left", "motorcycle_right", "immunohistochemistry",
                "hubble_deep_field", "retina")
TEST_PHOTOS = ("chelsea", "coffee")


def train_stride(size):
    """Where training patches start: every size // 2 pixels, so neighbours overlap by half."""
    return max(1, size // 2)


def load_photo(name):
    """One bundled photograph as uint8 [H, W, 3]."""
    try:
        from skimage import data
    except ImportError as err:
        raise ImportError("the photo patches need scikit-image: pip install scikit-image") from err
    if name in ("motorcycle_left", "motorcycle_right"):
        left, right, _ = data.stereo_motorcycle()
        image = left if name == "motorcycle_left" else right
    elif name in TRAIN_PHOTOS + TEST_PHOTOS:
        image = getattr(data, name)()
    else:
        raise ValueError(f"photo must be one of {', '.join(TRAIN_PHOTOS + TEST_PHOTOS)}, got {name!r}")
    return np.ascontiguousarray(image[..., :3], dtype=np.uint8)


def cut_patches(image, size, stride):
    """Every size x size patch whose top-left corner is on the stride grid (row-major), [N, size, size, C]."""
    if size < 1 or stride < 1:
        raise ValueError(f"size and stride must be >= 1, got {size} and {stride}")
    h, w = image.shape[:2]
    if h < size or w < size:
        raise ValueError(f"a {h}x{w} image has no {size}x{size} patch")
    windows = np.lib.stride_tricks.sliding_window_view(image, (size, size), axis=(0, 1))[::stride, ::stride]
    # sliding_window_view puts the window axes last: [rows, cols, C, size, size] -> [N, size, size, C]
    return np.ascontiguousarray(windows.reshape(-1, *windows.shape[2:]).transpose(0, 2, 3, 1))


def augment(patches, rng):
    """Each patch through a random one of the 8 rotations and flips and of the 6 orders of its colour channels.

    Seven photographs hold few colours and orientations: a model trained on them as they are
    meets the test photographs' browns and reds as something new (see docs/results.md).
    """
    orders = list(itertools.permutations(range(patches.shape[-1])))
    turns, flips, perms = (rng.integers(0, n, len(patches)) for n in (4, 2, len(orders)))
    out = np.empty_like(patches)
    for i, patch in enumerate(patches):
        patch = np.rot90(patch, turns[i])
        out[i] = (patch[:, ::-1] if flips[i] else patch)[..., orders[perms[i]]]
    return out


def patch_dataset(size=32, stride=None, seed=0, photos=None, augmented=True):
    """x_train/y_train (overlapping patches of the training photos, shuffled, each `augment`ed unless
    augmented=False), x_test/y_test (tiles of the test photos as they are, in photo then row-major order);
    y is the index of the patch's photo in `names`. Training patches start every `stride` pixels
    (default `train_stride(size)`).

    `photos` ({name: uint8 [H, W, 3]}, names in TRAIN_PHOTOS and TEST_PHOTOS) replaces the bundled ones.
    """
    photos = photos if photos is not None else {n: load_photo(n) for n in TRAIN_PHOTOS + TEST_PHOTOS}
    names = [n for n in TRAIN_PHOTOS + TEST_PHOTOS if n in photos]
    split = {}
    strides = {"train": train_stride(size) if stride is None else stride, "test": size}
    for part, members in (("train", TRAIN_PHOTOS), ("test", TEST_PHOTOS)):
        chunks = [(names.index(n), cut_patches(photos[n], size, strides[part])) for n in members if n in photos]
        if not chunks:
            raise ValueError(f"photos: none of the {part} photographs ({', '.join(members)}) was given")
        split[f"x_{part}"] = np.concatenate([c for _, c in chunks])
        split[f"y_{part}"] = np.concatenate([np.full(len(c), i, np.int32) for i, c in chunks])
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(split["x_train"]))
    split["x_train"], split["y_train"] = split["x_train"][order], split["y_train"][order]
    if augmented:
        split["x_train"] = augment(split["x_train"], rng)
    return {**split, "names": np.array(names)}


def write_patches(path, size=32, stride=None, seed=0, photos=None, augmented=True):
    """Write `patch_dataset(...)` as an .npz (for `--dataset npz:PATH`), atomically; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = patch_dataset(size, stride, seed, photos, augmented)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    return path
