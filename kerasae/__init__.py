"""kerasae: a Keras 3 / TensorFlow model zoo of autoencoders (AE, denoising AE, VAE).

    import kerasae
    model = kerasae.build("vae-mlp")            # any name from kerasae.list_presets()
    result = kerasae.train(preset="vae-mlp", epochs=5, out="runs/vae")
    vae = kerasae.load_pretrained("vae-mlp")    # the zoo in exported/, sha256-verified
"""

from kerasae import _backend  # noqa: F401  (pins KERAS_BACKEND=tensorflow before keras loads)
from kerasae.data import DataError, ImageData, load_dataset
from kerasae.models import VAE, Autoencoder, BaseAutoencoder, DenoisingAutoencoder
from kerasae.registry import build, get_preset, list_presets, register_preset
from kerasae.training import TrainConfig, TrainResult, train
from kerasae.zoo import load_pretrained

__version__ = "0.1.0"

__all__ = ["VAE", "Autoencoder", "BaseAutoencoder", "DataError", "DenoisingAutoencoder", "ImageData",
           "TrainConfig", "TrainResult", "build", "get_preset", "list_presets", "load_dataset", "load_pretrained",
           "register_preset", "train"]
