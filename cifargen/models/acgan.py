"""AC-GAN (Odena et al., 2017): a class-conditional generator and a two-headed discriminator.

The generator is the VAE decoder (:class:`~cifargen.models.vae.Decoder`) with LeakyReLU
activations and a class embedding concatenated to z. The discriminator is a convolutional
trunk with a real/fake head (one logit) and an auxiliary classifier head (one logit per class).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from ..errors import ConfigError
from .layers import Dropout, Flatten, group_norm
from .vae import Decoder, VAEConfig, leaky_relu, sample_latents


@dataclass
class ACGANConfig:
    """Architecture of the AC-GAN. The defaults are the ones behind the README's results."""

    latent_dim: int = 128
    width: int = 32            # generator: channels before the image, as the VAE decoder
    d_width: int = 32          # discriminator: channels after its first convolution (64: 2.4x the step time on CPU)
    num_downsamples: int = 3
    convs_per_level: int = 1   # generator, as the VAE decoder's
    image_size: int = 32
    image_channels: int = 3
    num_classes: int = 10
    class_embed_dim: int = 32
    dropout: float = 0.25
    spectral_norm: bool = False
    # Discriminator: normalisation after every convolution but the first: "batch", "group"
    # (GroupNorm: no running statistics, the same in training and evaluation) or "none".
    # Test accuracy after 300 steps (README): group 0.379, batch 0.361, none 0.272.
    norm: str = "group"
    # Channels per GroupNorm group. 16, not 4-8: the CPU's bf16 channels-last kernel is about 8x
    # faster with 16 (models/layers.py). None: 8 groups per layer, the layout before it.
    norm_group_size: int | None = 16

    # Fields added after model files and run configurations were first written, with the value
    # that reproduces what such a file describes (modelfile.build_model and --resume read it).
    # "norm": "none" describes session 1's discriminator exactly, but its weights do not load: its
    # layer list had no placeholder where "none" now puts nn.Identity, so the indices differ, and
    # load() stops saying so.
    VALUES_BEFORE_FIELD: ClassVar[dict] = {"norm_group_size": None, "norm": "none"}

    @classmethod
    def upgrade_saved(cls, values: dict) -> dict:
        """Renamed settings in a saved configuration: ``batch_norm`` (a bool) became ``norm``."""
        if "batch_norm" not in values:
            return values
        values = dict(values)
        batch_norm = values.pop("batch_norm")
        values.setdefault("norm", "batch" if batch_norm else "none")
        return values

    def __post_init__(self):
        for name in ("latent_dim", "width", "d_width", "num_classes", "class_embed_dim"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.norm not in ("batch", "group", "none"):
            raise ConfigError(f"norm must be 'batch', 'group' or 'none', got {self.norm!r}")
        if self.norm_group_size is not None and self.norm_group_size <= 0:
            raise ConfigError(f"norm_group_size must be positive (or None), got {self.norm_group_size}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")

    def decoder_config(self) -> VAEConfig:
        return VAEConfig(latent_dim=self.latent_dim, width=self.width, num_downsamples=self.num_downsamples,
                         convs_per_level=self.convs_per_level,
                         image_size=self.image_size, image_channels=self.image_channels,
                         num_classes=self.num_classes, class_embed_dim=self.class_embed_dim, conditional=True)

    def to_dict(self) -> dict:
        return asdict(self)


class Generator(Decoder):
    """The VAE decoder with LeakyReLU, conditioned on the class: ``generator(z, y)`` -> images in [0, 1]."""

    def __init__(self, config: ACGANConfig):
        super().__init__(config.decoder_config(), activation=leaky_relu)
        self.latent_dim = config.latent_dim
        self.num_classes = config.num_classes


class Discriminator(nn.Module):
    """Shared trunk, then ``(adv_logit (N,), class_logits (N, num_classes))``.

    Two 3x3 convolutions per resolution (the second strided), group norm (all but the first
    convolution), LeakyReLU and dropout (``layers.Dropout``: nn.Dropout's distribution, a faster mask).
    """

    def __init__(self, config: ACGANConfig):
        super().__init__()
        wrap = nn.utils.spectral_norm if config.spectral_norm else (lambda m: m)
        c = config.d_width
        layers = [wrap(nn.Conv2d(config.image_channels, c, 3, padding=1)), nn.LeakyReLU(0.2)]
        norm = {"batch": nn.BatchNorm2d, "group": lambda channels: group_norm(channels, config.norm_group_size),
                "none": lambda channels: nn.Identity()}[config.norm]
        for _ in range(config.num_downsamples):
            layers += [wrap(nn.Conv2d(c, c, 3, padding=1)), norm(c), nn.LeakyReLU(0.2),
                       wrap(nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)), norm(2 * c), nn.LeakyReLU(0.2),
                       Dropout(config.dropout)]
            c *= 2
        self.trunk = nn.Sequential(*layers, Flatten())
        features = c * (config.image_size // 2 ** config.num_downsamples) ** 2
        self.adv_head = wrap(nn.Linear(features, 1))
        self.class_head = nn.Linear(features, config.num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.adv_head(h).squeeze(1), self.class_head(h)


class ACGAN(nn.Module):
    """Generator and discriminator together, for saving, loading and sampling."""

    kind = "acgan"

    def __init__(self, config: ACGANConfig | None = None, **overrides):
        super().__init__()
        config = config or ACGANConfig()
        if overrides:
            config = ACGANConfig(**{**config.to_dict(), **overrides})
        self.config = config
        self.generator = Generator(config)
        self.discriminator = Discriminator(config)

    @torch.no_grad()
    def generate(self, n: int, y: torch.Tensor | None = None, generator: torch.Generator | None = None):
        """``n`` images from z ~ N(0, I) for classes ``y`` (random when None); returns ``(images, y)``."""
        z, y = sample_latents(n, self.config.latent_dim, self.config.num_classes, y, generator,
                              next(self.parameters()).device)
        return self.generator(z, y), y
