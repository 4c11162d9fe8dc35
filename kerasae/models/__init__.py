"""kerasae's model classes (all `keras.Model` subclasses, serializable as "kerasae>Name")."""

from kerasae.models.ae import Autoencoder
from kerasae.models.base import BaseAutoencoder
from kerasae.models.cvae import ConditionalVAE
from kerasae.models.dae import DenoisingAutoencoder
from kerasae.models.hvae import HierarchicalVAE
from kerasae.models.vae import VAE
from kerasae.models.vqvae import VQVAE

__all__ = ["Autoencoder", "BaseAutoencoder", "ConditionalVAE", "DenoisingAutoencoder", "HierarchicalVAE", "VAE",
           "VQVAE"]
