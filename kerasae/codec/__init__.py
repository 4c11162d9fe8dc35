"""Learned image compression: hyperprior autoencoders (Balle et al. 2018) trained for rate and distortion.

`FactorizedPriorCodec` and `ScaleHyperpriorCodec` are Keras models trained with `model.fit`; their objective's
rate is the bits an entropy coder would write for the rounded latents under the models' learned densities.
"""

from kerasae.codec.layers import GDN, FactorizedDensity, gaussian_likelihood
from kerasae.codec.models import QUALITY_LAMBDAS, FactorizedPriorCodec, ImageCodec, ScaleHyperpriorCodec

__all__ = ["GDN", "FactorizedDensity", "FactorizedPriorCodec", "ImageCodec", "QUALITY_LAMBDAS",
           "ScaleHyperpriorCodec", "gaussian_likelihood"]
