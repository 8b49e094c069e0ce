"""Networks: VAE/CVAE (``vae``) and AC-GAN generator/discriminator (``acgan``)."""

from .acgan import ACGAN, ACGANConfig, Discriminator, Generator
from .vae import CVAE, VAE, Decoder, Encoder, VAEConfig, VAEOutput

__all__ = ["ACGAN", "ACGANConfig", "Generator", "Discriminator", "VAE", "CVAE", "VAEConfig", "VAEOutput", "Encoder", "Decoder"]
