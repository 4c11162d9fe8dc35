"""kerasae: a Keras 3 / TensorFlow model zoo of autoencoders (AE, denoising AE, VAE and its relatives, VQ-VAE).

    import kerasae
    model = kerasae.build("vae-mlp")            # any name from kerasae.list_presets()
    result = kerasae.train(preset="vae-mlp", epochs=5, out="runs/vae")
    vae = kerasae.from_preset("iwae_mlp_50d_mnist")  # a pretrained model (sha256-verified), trainable
    served = kerasae.load_pretrained("iwae_mlp_50d_mnist")  # its SavedModel, same methods
    model = kerasae.load_model("runs/vae")      # a run's model.keras (or any .keras file kerasae wrote)

The names below load on first use (PEP 562), so `import kerasae` and the command-line
tools' `--help` do not wait for TensorFlow. Using any model name registers kerasae's
classes with Keras, as does importing kerasae after keras; `kerasae.load_model` reads a
saved model in any case (or call `kerasae.register_classes()` before `keras.saving.load_model`).
"""

import importlib
import sys

__version__ = "0.1.0"

# public name -> the module that defines it ("module:name" where the names differ)
_EXPORTS = {
    "VAE": "kerasae.models", "Autoencoder": "kerasae.models", "BaseAutoencoder": "kerasae.models",
    "DenoisingAutoencoder": "kerasae.models", "ConditionalVAE": "kerasae.models", "HierarchicalVAE": "kerasae.models",
    "VQVAE": "kerasae.models",
    "DataError": "kerasae.data", "ImageData": "kerasae.data", "load_dataset": "kerasae.data",
    "build": "kerasae.registry", "get_preset": "kerasae.registry", "list_presets": "kerasae.registry",
    "register_preset": "kerasae.registry",
    "TrainConfig": "kerasae.config", "TrainResult": "kerasae.training", "train": "kerasae.training",
    "load_pretrained": "kerasae.zoo", "from_preset": "kerasae.zoo", "load_model": "kerasae.files:load_keras_model",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        module, _, attr = _EXPORTS[name].partition(":")
        value = getattr(importlib.import_module(module), attr or name)
        globals()[name] = value  # later lookups skip this function
        return value
    try:  # a submodule, e.g. kerasae.export after a bare `import kerasae`
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


def register_classes():
    """Register kerasae's Keras classes (models, and the optimizer compiled .keras files name) with Keras."""
    importlib.import_module("kerasae.models")
    importlib.import_module("kerasae.optimizers")
    importlib.import_module("kerasae.codec.models")


if "keras" in sys.modules:  # Keras is loaded already, so registering costs nothing
    register_classes()
