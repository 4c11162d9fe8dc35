"""The photographs the codec ladder is trained and evaluated on, all available offline, split by photograph.

Sources (each photo's `source` and `licence` say the same):
- Debian's `plasma-workspace-wallpapers` (KDE, LGPLv3 per each wallpaper's metadata.json): the wallpapers that are
  photographs, 2560 x 1600 (`apt-get install plasma-workspace-wallpapers`);
- scikit-image's `skimage.data` colour photographs (public domain or CC0, per skimage.data's docstrings);
- scikit-learn's sample images `china.jpg` and `flower.jpg` (CC BY 2.0, per sklearn/datasets/images/README.txt);
- the photographs among Debian's `lomiri-wallpapers-16.04` and `lomiri-wallpapers-20.04` (CC BY 4.0, CC BY-SA 3.0 or
  4.0, CC0 1.0) and `mate-backgrounds`' nature folder (GPL-2+): licences and authors per file in each package's
  /usr/share/doc/<package>/copyright (`apt-get install lomiri-wallpapers-16.04 lomiri-wallpapers-20.04
  mate-backgrounds`); all training photographs, in `training_photos("all")`.

Whole photographs are held out: `split="test"` for the published evaluation, `split="validation"` (one photo) to
watch a training run; none of their pixels is trained on.
"""

from pathlib import Path
from typing import NamedTuple

import numpy as np

WALLPAPERS = Path("/usr/share/wallpapers")
BACKGROUNDS = Path("/usr/share/backgrounds")
#: The Debian packages of the "background:" photographs.
BACKGROUND_PACKAGES = ("lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04", "mate-backgrounds")


class Photo(NamedTuple):
    name: str
    source: str
    licence: str
    split: str  # "train", "validation" (watched while training, never trained on) or "test" (the evidence)


def _wallpaper(name, author, split):
    return Photo(f"wallpaper:{name}", f"plasma-workspace-wallpapers {name} by {author}", "LGPLv3", split)


def _background(path, author, package, licence):
    return Photo(f"background:{path}", f"{package} {path} by {author}", licence, "train")


def _lomiri(stem, author, licence, release="16.04"):
    return _background(f"{stem}.jpg", author, f"lomiri-wallpapers-{release}", licence)


def _mate(stem, author):
    return _background(f"mate/nature/{stem}.jpg", author, "mate-backgrounds", "GPL-2+")


PHOTOS = (
    _wallpaper("BytheWater", "Maciej Wiklo", "train"),
    _wallpaper("ColdRipple", "Risto Saukonpää", "train"),
    _wallpaper("ColorfulCups", "Dmitri Popov", "train"),
    _wallpaper("DarkestHour", "Risto Saukonpää", "train"),
    _wallpaper("FallenLeaf", "Martin Klapetek", "train"),
    _wallpaper("Grey", "Sigi Sagi", "train"),
    _wallpaper("OneStandsOut", "Risto Saukonpää", "train"),
    _wallpaper("Path", "Risto Saukonpää", "train"),
    _wallpaper("summer_1am", "Risto Saukonpää", "train"),
    Photo("skimage:motorcycle_left", "skimage.data.stereo_motorcycle (Middlebury 2014 stereo benchmark)",
          "free for research use, per the Middlebury benchmark", "validation"),
    Photo("skimage:hubble_deep_field", "skimage.data.hubble_deep_field (NASA)", "public domain", "train"),
    _wallpaper("EveningGlow", "Ian Hex", "test"),
    Photo("skimage:astronaut", "skimage.data.astronaut (NASA, Eileen Collins)", "public domain", "test"),
    Photo("skimage:chelsea", "skimage.data.chelsea (Stefan van der Walt)", "CC0", "test"),
    Photo("skimage:coffee", "skimage.data.coffee (Rachel Michetti)", "CC0", "test"),
    Photo("skimage:rocket", "skimage.data.rocket (SpaceX, DSCOVR launch)", "public domain", "test"),
    Photo("sklearn:china", "sklearn.datasets.load_sample_image('china.jpg') (danielbuechele, Flickr)",
          "CC BY 2.0", "test"),
    Photo("sklearn:flower", "sklearn.datasets.load_sample_image('flower.jpg') (vultilion, Flickr)", "CC BY 2.0",
          "test"),
    # Training photographs with more texture (leaves, grass, rock, bark, water), the lomiri ones 2,056-6,028 pixels
    # wide, the MATE ones 1,280-2,560. Left out: the renders and drawings of these packages (Fossa, Infinite-Sea,
    # Painting-Colors, umang, and the unlisted ones).
    _lomiri("Bridge_by_Sander_Klootwijk", "Sander Klootwijk", "CC BY-SA 4.0"),
    _lomiri("Dragonfly_by_Bolly", "Bolly", "CC BY-SA 4.0"),
    _lomiri("Picture_0B_by_freespace", "Trevor 'Freespace'", "CC BY 4.0"),
    _lomiri("Picture_1A_by_freespace", "Trevor 'Freespace'", "CC BY 4.0"),
    _lomiri("Wine_by_Jakkub_Mede", "Jakub Mede", "CC BY 4.0"),
    _lomiri("aitzgorri_by_Aitzol_Berasategi", "Aitzol Berasategi", "CC BY 4.0"),
    _lomiri("analogpattern_by_Peter_Nerlich", "Peter Nerlich", "CC BY-SA 4.0"),
    _lomiri("free_by_Peter_Nerlich", "Peter Nerlich", "CC BY-SA 4.0"),
    _lomiri("friends_by_Aitzol_Berasategi", "Aitzol Berasategi", "CC BY 4.0"),
    _lomiri("greentock_by_Peter_Nerlich", "Peter Nerlich", "CC BY-SA 4.0"),
    _lomiri("life_by_Aitzol_Berasategi", "Aitzol Berasategi", "CC BY 4.0"),
    _lomiri("picosdeeuropa_by_Aitzol_Berasategi", "Aitzol Berasategi", "CC BY 4.0"),
    _lomiri("seeding_by_Clements_Engelhardt", "Clemens Engelhardt", "CC0 1.0"),
    _lomiri("sunset_by_Aitzol_Berasategi", "Aitzol Berasategi", "CC BY 4.0"),
    _lomiri("Kleiber_by_Lukas_Baubkus", "Lukas Baubkus", "CC BY-SA 3.0", release="20.04"),
    _mate("Aqua", "Charles Barbin"),
    _mate("Blinds", "Lennart Poettering, Andrea Cimitan"),
    _mate("Dune", "Marco Cogoni, Hylke Bons"),
    _mate("FreshFlower", "Jens Ansorg"),
    _mate("Garden", "Charles Barbin"),
    _mate("GreenMeadow", "Timothy Schellhase, Lapo Calamandrei"),
    _mate("LadyBird", "Charles Barbin"),
    _mate("RainDrops", "blackcombwhistler07"),
    _mate("Storm", "Sergey Nazarov"),
    _mate("TwoWings", "Charles Barbin, Hylke Bons"),
    _mate("Wood", "Jean-François Fortin Tam"),
    _mate("YellowFlower", "Charles Barbin"),
)


SPLITS = ("train", "validation", "test")


def photos(split):
    """The `Photo`s of a split ("train", "validation" or "test")."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return [p for p in PHOTOS if p.split == split]


def validation_image():
    """uint8 pixels of the validation photograph: watched while training (and in each zoo entry's metric), never
    trained on."""
    return load(photos("validation")[0])


#: The sets of training photographs a run can train on (`training_photos`): "ten", the plasma wallpapers and the
#: Hubble deep field (what the ladders' first stages trained on), and "all" (with the lomiri and MATE photographs).
TRAINING_SETS = ("ten", "all")


def training_photos(photo_set="all"):
    """The training `Photo`s of `photo_set` (see TRAINING_SETS)."""
    if photo_set not in TRAINING_SETS:
        raise ValueError(f"photo_set must be one of {TRAINING_SETS}, got {photo_set!r}")
    train = photos("train")
    return train if photo_set == "all" else [p for p in train if not p.name.startswith("background:")]


def load(photo):
    """uint8 [H, W, 3] pixels of a `Photo` (or its name)."""
    name = photo.name if isinstance(photo, Photo) else str(photo)
    kind, _, key = name.partition(":")
    if kind == "wallpaper":
        from PIL import Image

        folder = WALLPAPERS / key / "contents" / "images"
        files = sorted(folder.glob("*.*")) if folder.is_dir() else []
        if not files:
            raise FileNotFoundError(f"{folder} holds no image: install Debian's plasma-workspace-wallpapers")
        sizes = [Image.open(f).size for f in files]
        with Image.open(files[int(np.argmax([w * h for w, h in sizes]))]) as image:
            return np.asarray(image.convert("RGB"))
    if kind == "background":
        from PIL import Image

        path = BACKGROUNDS / key
        if not path.is_file():
            raise FileNotFoundError(f"{path} is not there: install Debian's {', '.join(BACKGROUND_PACKAGES)}")
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    if kind == "skimage":
        try:
            import skimage.data
        except ImportError as err:
            raise ImportError("the skimage photographs need scikit-image (pip install scikit-image)") from err
        if key == "motorcycle_left":
            return skimage.data.stereo_motorcycle()[0]
        return getattr(skimage.data, key)()
    if kind == "sklearn":
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{key}.jpg")
    raise ValueError(f"unknown photo {name!r}: expected one of {[p.name for p in PHOTOS]}")


def random_crops(images, size, count, rng, scales=(0.125, 0.5)):
    """`count` float32 crops [count, size, size, 3] in [0, 1]: each from a random photo, downscaled by a factor drawn
    log-uniformly from `scales` = (low, high) (a crop of size/factor pixels resized with a box filter; capped at the
    photo's shorter side), flipped left-right half of the time.

    Why downscaled: a 128-pixel crop of a 2560-pixel wallpaper is far smoother than the same crop of a 500-pixel
    photo. The mean absolute difference of neighbouring pixels (grey levels) of the test photos is 3.0-14.2 (median
    6.4); the training photos' is 0.65-8.9 (median 2.7) at full size, 0.66-14.0 (median 4.9) at 1/4 and 0.73-15.7
    (median 7.1) at 1/8."""
    return _random_crops_uint8(images, size, count, rng, scales).astype(np.float32) / 255.0


def _random_crops_uint8(images, size, count, rng, scales):
    low, high = scales
    if not 0 < low <= high <= 1:
        raise ValueError(f"scales must be (low, high) with 0 < low <= high <= 1, got {scales!r}")
    from PIL import Image

    out = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        image = images[rng.integers(len(images))]
        h, w = image.shape[:2]
        side = min(int(round(size / np.exp(rng.uniform(np.log(low), np.log(high))))), h, w)
        r, c = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = image[r:r + side, c:c + side]
        if side != size:
            crop = np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BOX))
        out[i] = crop[:, ::-1] if rng.random() < 0.5 else crop
    return out


def crop_dataset(images, size=128, batch_size=16, steps=1000, seed=0, scales=(0.125, 0.5), reseed_every=None):
    """A tf.data.Dataset of `steps` batches of random crops (see `random_crops`), the same for the same seed;
    with `reseed_every` = k, batches i*k onwards are drawn with seed + i*k (a run resumed at batch i*k draws
    the batches an uninterrupted one would have). tf.data's autotuning is off (kerasae.data.tuning).

    The crops are drawn k batches at a time (all `steps` without `reseed_every`) in one numpy call, and the next
    k are drawn while the current ones train: a generator called once per batch made training steps ~1.7x
    slower (0.42-0.48 instead of 0.22-0.25 s per step of the ladder's hyperprior, 8 crops of 128 x 128).
    """
    import tensorflow as tf

    from kerasae.data.tuning import untuned

    block = reseed_every or steps
    firsts = np.arange(0, steps, block)

    def draw(index):  # uint8 [n, batch_size, size, size, 3]: the batches from firsts[index] on
        first = int(firsts[index])
        rng = np.random.default_rng(seed + first)
        return np.stack([_random_crops_uint8(images, size, batch_size, rng, scales)
                         for _ in range(min(block, steps - first))])

    blocks = tf.data.Dataset.range(len(firsts)).map(
        lambda i: tf.ensure_shape(tf.numpy_function(draw, [i], tf.uint8), [None, batch_size, size, size, 3]))
    batches = blocks.flat_map(tf.data.Dataset.from_tensor_slices).prefetch(block)
    return untuned(batches.map(lambda b: tf.cast(b, tf.float32) / 255.0).prefetch(2))
