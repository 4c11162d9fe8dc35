"""Learned image compression: hyperprior autoencoders (Balle et al. 2018) trained for rate and distortion, and the
files they write.

`FactorizedPriorCodec` and `ScaleHyperpriorCodec` are Keras models trained with `model.fit`; their objective's
rate is the bits an entropy coder would write for the rounded latents under the models' learned densities.
`Coder(model)` turns a trained one into files (`compress`, `decompress`), range-coded with integer tables;
`compress(image, quality)` and `decompress(data)` do the same with a pretrained ladder (`LADDERS`: the scale
hyperprior's, the default, and the factorized prior's) or a saved codec;
`optimize_steps=N` makes the encoder optimize each image's latents first (`kerasae.codec.optimize`): slower encoding,
smaller files, the same decoder.

Names load on first use, so `kerasae compress --help` answers before TensorFlow loads.
"""

import importlib

_HOMES = {
    "LADDER": "api", "LADDERS": "api", "compress": "api", "decompress": "api", "load_coder": "api",
    "Coder": "coder",
    "GDN": "layers", "FactorizedDensity": "layers", "gaussian_likelihood": "layers",
    "QUALITY_LAMBDAS": "ladder", "LADDER_MODEL": "ladder", "FactorizedPriorCodec": "models", "ImageCodec": "models",
    "ScaleHyperpriorCodec": "models",
}
__all__ = sorted(_HOMES)


def __getattr__(name):
    if name not in _HOMES:
        raise AttributeError(f"module 'kerasae.codec' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"kerasae.codec.{_HOMES[name]}"), name)
    globals()[name] = value
    return value
