"""`compress(image) -> bytes` and `decompress(bytes) -> image`, with the pretrained quality ladder or your own codec.

A codec is a `Coder` or the folder `Coder.save` wrote; without one, `compress` takes the ladder's entry for
`quality` from the zoo and `decompress` the entry the file names.
"""

from pathlib import Path

from kerasae.codec.coder import Coder

#: Zoo entries of each family's pretrained ladder, quality 1 (fewest bytes) first.
LADDERS = {family: tuple(f"codec_{family}_q{q}_photos" for q in range(1, 6)) for family in ("hyperprior", "factorized")}
#: The default ladder: the scale hyperprior's (with optimized latents the smaller files of the two, docs/codec.md).
LADDER = LADDERS["hyperprior"]

_LOADED = {}


def ladder(family="hyperprior"):
    """The entries of `family`'s ladder installed in the zoo (a folder each, with codec.json)."""
    return [name for name in _ladder(family) if name in zoo_codecs()]


def _ladder(family):
    if family not in LADDERS:
        raise ValueError(f"family must be one of {sorted(LADDERS)}, got {family!r}")
    return LADDERS[family]


def zoo_codecs(zoo_dir=None):
    """Names of the codecs in the zoo (default: kerasae.zoo.default_zoo_dir()): its folders with a codec.json."""
    from kerasae import zoo

    root = Path(zoo_dir) if zoo_dir is not None else zoo.default_zoo_dir()
    return sorted(p.name for p in root.iterdir() if (p / "codec.json").is_file()) if root.is_dir() else []


def load_coder(model=None, quality=None, family="hyperprior"):
    """A `Coder`: `model` as it is (a Coder), from its saved folder (a path), or a zoo entry (a name); or else
    the entry for `quality` (an int from 1) of `family`'s ladder ("hyperprior" or "factorized")."""
    if isinstance(model, Coder):
        return model
    if model is None:
        entries = _ladder(family)
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= len(entries):
            raise ValueError(f"quality must be an integer from 1 (fewest bytes) to {len(entries)}, got {quality!r}")
        model = entries[quality - 1]
    if not isinstance(model, (str, Path)):
        raise TypeError(f"model must be a Coder, a saved codec's folder or a zoo name, got {type(model).__name__}")
    path = Path(model)
    if not (path / "codec.json").is_file():
        from kerasae import zoo

        entry = zoo.default_zoo_dir() / str(model)
        if not any(str(model) in entries for entries in LADDERS.values()) and not (entry / "codec.json").is_file():
            raise ValueError(f"model {str(model)!r} is neither a saved codec's folder (with codec.json) nor a "
                             f"codec in the zoo ({', '.join(zoo_codecs()) or 'none installed'})")
        if not (entry / "codec.json").is_file():
            raise ValueError(f"the pretrained codec {model} is not installed in {zoo.default_zoo_dir()}; "
                             "pass model= (a codec saved with Coder.save)")
        path = entry
    import json

    key = (str(path.resolve()), json.loads((path / "codec.json").read_text()).get("version"))  # a re-saved folder
    if key not in _LOADED:  # is loaded again
        _LOADED[key] = Coder.load(path)
    return _LOADED[key]


def compress(image, quality=3, model=None, optimize_steps=0, family="hyperprior"):
    """The bytes of a file holding `image` (uint8 or floats in [0, 1]; [H, W], [H, W, 1] or [H, W, 3]), coded by
    `model` or else by the entry for `quality` of `family`'s pretrained ladder; `optimize_steps` > 0 optimizes the
    latents for the image (`Coder.compress`): fewer bytes, slower encoding."""
    coder = load_coder(model, None if model is not None else quality, family)
    return coder.compress(image, optimize_steps=optimize_steps)


def decompress(data, model=None):
    """The uint8 image [H, W, C] in a file's bytes, decoded by `model` or by the zoo entry the file names."""
    from kerasae.codec import bitstream

    if model is None:  # the zoo entry the file names: a name, never a path a file could point anywhere with
        name = bitstream.read(data)[0].model_name
        from kerasae import zoo

        if not (zoo.default_zoo_dir() / name / "codec.json").is_file() or Path(name).name != name:
            raise ValueError(f"the file was written by codec {name!r}, which is not in the zoo: pass model= "
                             "(the folder that codec was saved to)")
        model = zoo.default_zoo_dir() / name
    return load_coder(model).decompress(data)
