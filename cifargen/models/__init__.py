"""Networks: VAE/CVAE (``vae``) and AC-GAN generator/discriminator (``acgan``)."""

from .acgan import ACGAN, ACGANConfig, Discriminator, Generator
from .classifier import Classifier, ClassifierConfig
from .vae import CVAE, VAE, Decoder, Encoder, VAEConfig, VAEOutput

__all__ = ["Classifier", "ClassifierConfig", "ACGAN", "ACGANConfig", "Generator",
           "Discriminator", "VAE", "CVAE", "VAEConfig", "VAEOutput", "Encoder", "Decoder"]
