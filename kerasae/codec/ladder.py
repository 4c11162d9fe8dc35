"""The learned codec's quality ladder as data: its rate-distortion weights, its transforms' sizes, and the names
of its registry presets (`codec-hyperprior-q3`).

No TensorFlow here: the registry registers the ladder's presets from these when it is imported, and the CLI
imports the registry before TensorFlow loads.
"""

#: Rate-distortion weights of the quality ladder, quality 1 (fewest bytes) to 8 (CompressAI's MSE ladder,
#: for distortion = lmbda * 255^2 * MSE on [0, 1] pixels).
QUALITY_LAMBDAS = (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800)
#: The ladder's transforms: N = 64 hidden channels, M = 128 latent channels (CompressAI's low-rate models use
#: N = 128, M = 192; a smaller model keeps a ladder's training within a 2-core CPU's budget and the zoo's size).
LADDER_MODEL = {"filters": 64, "latent_channels": 128}
#: The ladder's families and their classes ("module:ClassName", imported on first use).
CODEC_CLASSES = {"hyperprior": "kerasae.codec.models:ScaleHyperpriorCodec",
                 "factorized": "kerasae.codec.models:FactorizedPriorCodec"}
#: What each family is, for the presets' descriptions.
_MODELS = {"hyperprior": "Scale-hyperprior image codec (Balle et al. 2018)",
           "factorized": "Factorized-prior image codec (Balle et al. 2018)"}


def check_rung(family, quality):
    """Raise ValueError unless `family` is a ladder's family and `quality` one of its qualities (1 to 8)."""
    if family not in CODEC_CLASSES:
        raise ValueError(f"family must be one of {sorted(CODEC_CLASSES)}, got {family!r}")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= len(QUALITY_LAMBDAS):
        raise ValueError(f"quality must be an integer from 1 to {len(QUALITY_LAMBDAS)}, got {quality!r}")


def preset_name(family, quality):
    """The registry preset of a rung: codec-<family>-q<quality>."""
    check_rung(family, quality)
    return f"codec-{family}-q{quality}"


def presets():
    """(name, class path, description, kwargs) of every rung: what the registry registers."""
    for family, class_path in CODEC_CLASSES.items():
        for quality, lmbda in enumerate(QUALITY_LAMBDAS, start=1):
            description = (f"{_MODELS[family]}, quality {quality} of {len(QUALITY_LAMBDAS)} (1 = fewest bytes): "
                           f"lmbda {lmbda:.4f} weighs 255^2 * MSE against bits per pixel; N={LADDER_MODEL['filters']}, "
                           f"M={LADDER_MODEL['latent_channels']}. Trains with scripts/train_codec.py.")
            yield preset_name(family, quality), class_path, description, {**LADDER_MODEL, "lmbda": lmbda}


def train_command(family, quality):
    """The command that trains a rung (kerasae.codec.training.main), resumable."""
    return f"python scripts/train_codec.py --family {family} --quality {quality}"


def rung(name):
    """(family, quality) of ladder preset `name`, or None for any other name."""
    for family in CODEC_CLASSES:
        for quality in range(1, len(QUALITY_LAMBDAS) + 1):
            if name == preset_name(family, quality):
                return family, quality
    return None
