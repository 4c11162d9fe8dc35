"""images:DIR: a folder of image files, streamed (decoded in parallel inside tf.data) or loaded.

DIR/train and DIR/test are the splits if both exist; otherwise a seeded 10% of the files is the
test set. Class subfolders give labels (sorted names -> 0, 1, ...); a flat folder has none. Every
file is decoded once up front, so a broken one is named before training, not mid-epoch; the scan is kept
in an index (kerasae.data.index), so later opens decode only new or changed files.
"""

import os
from pathlib import Path

import numpy as np

from kerasae.data import index
from kerasae.data.arrays import DataError
from kerasae.data.idx import existing
from kerasae.data.streams import Split, StreamedData, choose_shape, drop_unreadable, unreadable_error

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
DEFAULT_FOLDER_IMAGE_SIZE = (64, 64)  # for folders of mixed sizes without --image-size
FOLDER_TEST_FRACTION = 0.1
FOLDER_SPLIT_SEED = 1337


def open_image_folder(directory, image_size=None, color_mode=None, skip_bad=False, log=print) -> StreamedData:
    root = existing(directory, "images:DIR", want_dir=True)
    if (root / "train").is_dir() and (root / "test").is_dir():
        train_paths, train_labels, classes = list_images(root / "train")
        test_paths, test_labels, _ = list_images(root / "test", classes)
    else:
        paths, labels, classes = list_images(root)
        if len(paths) < 2:
            raise DataError(f"images:{root} has {len(paths)} image(s); need at least 2 to split off a test set")
        order = np.random.default_rng(FOLDER_SPLIT_SEED).permutation(len(paths))
        train, test = np.split(order, [len(paths) - max(1, int(len(paths) * FOLDER_TEST_FRACTION))])
        train_paths, test_paths = paths[train], paths[test]
        train_labels, test_labels = (None, None) if labels is None else (labels[train], labels[test])
    # Both splits in a seeded order: --max-train-samples, --max-test-samples, the validation split and the
    # figures take the first images, which must be a random subset, not the first class. (A folder without
    # train/ and test/ has its test files in random order already: they are a slice of a permutation.)
    order = np.random.default_rng(FOLDER_SPLIT_SEED + 1).permutation(len(train_paths))
    train_paths = train_paths[order]
    train_labels = None if train_labels is None else train_labels[order]
    if (root / "train").is_dir() and (root / "test").is_dir():
        order = np.random.default_rng(FOLDER_SPLIT_SEED + 2).permutation(len(test_paths))
        test_paths = test_paths[order]
        test_labels = None if test_labels is None else test_labels[order]
    has_labels = classes is not None
    culprit = f"images:{root}"
    every = np.concatenate([train_paths, test_paths])
    shapes = index.folder_shapes(root, every, log)  # decodes only what the index does not vouch for
    bad = np.flatnonzero(shapes[:, 0] < 0)
    if len(bad) and not skip_bad:
        raise unreadable_error(culprit, len(bad), len(every), every[bad[0]], every[bad[0]], True)
    dropped = tuple(str(every[i]) for i in bad)
    if dropped:
        log(f"{culprit}: skipped {len(dropped)} unreadable image(s): {', '.join(dropped[:5])}"
            + (" ..." if len(dropped) > 5 else ""))
    n = len(train_paths)
    splits = [drop_unreadable(Split((0, 0, 0), len(p), paths=p, labels=y, has_labels=has_labels),
                              np.flatnonzero(rows[:, 0] < 0))
              for p, y, rows in ((train_paths, train_labels, shapes[:n]), (test_paths, test_labels, shapes[n:]))]
    for split, name in zip(splits, ("train", "test")):
        if split.count == 0:
            raise DataError(f"{culprit}: no readable images left in the {name} split")
    shape = choose_shape(shapes[shapes[:, 0] >= 0], image_size, color_mode, DEFAULT_FOLDER_IMAGE_SIZE, culprit)
    train, test = (Split(shape, s.count, paths=s.paths, labels=s.labels, has_labels=has_labels) for s in splits)
    return StreamedData(root.name, train, test, source=culprit, class_names=classes,
                        skipped=tuple(dropped))


def list_images(directory: Path, classes=None):
    """(paths, labels or None, class names or None) of the image files under `directory`, sorted.

    Subfolders are classes (their files, recursively, get the folder's label); without subfolders the
    folder's own files are the images. Files without an image extension are ignored (README, .DS_Store).
    """
    subdirs = sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subdirs or classes:
        if classes is None:
            classes = tuple(subdirs)
        unknown = sorted(set(subdirs) - set(classes))
        if unknown:
            raise DataError(f"images:{directory}: class folder(s) {unknown} are not among the training "
                            f"classes {list(classes)}")
        paths, labels = [], []
        for label, name in enumerate(classes):
            found = _image_files(directory / name, recursive=True) if (directory / name).is_dir() else []
            paths += found
            labels += [label] * len(found)
        labels = np.asarray(labels, np.int64)
    else:
        paths, labels = _image_files(directory, recursive=False), None
    if not paths:
        raise DataError(f"images:{directory}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found")
    return np.asarray(paths), labels, classes


def _image_files(directory: Path, recursive: bool):
    # os.scandir, not pathlib or os.walk + join: this runs for every file of the folder on every open
    found, folders = [], [str(directory)]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                if entry.is_dir():  # follows links, as os.walk(followlinks=True) did
                    if recursive:
                        folders.append(entry.path)
                elif (entry.name.lower().endswith(IMAGE_EXTENSIONS) and not entry.name.startswith(".")
                      and entry.is_file()):
                    found.append(entry.path)
    return sorted(found)
