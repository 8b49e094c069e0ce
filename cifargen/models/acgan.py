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
from .vae import (Decoder, Samples, VAEConfig, check_levels, leaky_relu, levels_for, sample_classes,
                  standard_normal_latents)


TRUNKS = ("plain", "residual")


@dataclass
class ACGANConfig:
    """Architecture of the AC-GAN. The defaults are the ones behind the headline results (docs/DECISIONS.md)."""

    # What models saved before a setting existed had, where its default has changed since.
    VALUES_BEFORE_FIELD: ClassVar[dict] = {"class_hidden": 0}

    latent_dim: int = 128
    width: int = 32            # generator: channels before the image, as the VAE decoder
    d_width: int = 32          # discriminator: channels after its first convolution
    num_downsamples: int | None = None  # None: follow image_size down to 4x4 (3 at 32x32)
    convs_per_level: int = 1   # generator, as the VAE decoder's
    image_size: int = 32
    image_channels: int = 3
    num_classes: int = 10
    class_embed_dim: int = 32
    dropout: float = 0.0       # discriminator, after each resolution (0: none)
    spectral_norm: bool = False
    norm: str = "group"        # discriminator, after every convolution but the first: group, batch or none
    norm_group_size: int | None = 16  # channels per GroupNorm group (None: 8 groups per layer)
    trunk: str = "plain"       # discriminator: plain (two convolutions per level) or residual (a residual block, then the strided one)
    class_pool: bool = False   # discriminator: the class head reads the trunk's features averaged over positions (else all of them)
    class_hidden: int = 512    # discriminator: hidden units of a two-layer class head (0: one linear layer)
    class_norm: bool = False   # generator: batch norms scale and shift by class (ClassBatchNorm)
    twin_class_head: bool = False  # discriminator: a second class head, for generated images (TAC-GAN)
    minibatch_std: int = 0     # discriminator: group size of the real/fake head's minibatch standard deviation (0: off)

    def __post_init__(self):
        for name in ("latent_dim", "width", "d_width", "num_classes", "class_embed_dim"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.norm not in ("batch", "group", "none"):
            raise ConfigError(f"norm must be 'batch', 'group' or 'none', got {self.norm!r}")
        if self.trunk not in TRUNKS:
            raise ConfigError(f"trunk must be one of {', '.join(TRUNKS)}, got {self.trunk!r}")
        if self.norm_group_size is not None and self.norm_group_size <= 0:
            raise ConfigError(f"norm_group_size must be positive (or None), got {self.norm_group_size}")
        if self.class_hidden < 0:
            raise ConfigError(f"class_hidden must be >= 0 (0: a linear class head), got {self.class_hidden}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.minibatch_std == 1 or self.minibatch_std < 0:
            raise ConfigError(f"minibatch_std is a group size of at least 2 images (0: off), got {self.minibatch_std}")
        check_levels(self.image_size, self.downsamples)

    @property
    def downsamples(self) -> int:
        """Down-sampling levels: ``num_downsamples``, or as many as take ``image_size`` down to about 4x4."""
        return self.num_downsamples if self.num_downsamples is not None else levels_for(self.image_size)

    def decoder_config(self) -> VAEConfig:
        return VAEConfig(latent_dim=self.latent_dim, width=self.width, num_downsamples=self.num_downsamples,
                         convs_per_level=self.convs_per_level,
                         image_size=self.image_size, image_channels=self.image_channels,
                         num_classes=self.num_classes, class_embed_dim=self.class_embed_dim, conditional=True)

    def to_dict(self) -> dict:
        return asdict(self)


class ClassBatchNorm(nn.Module):
    """Conditional batch norm (de Vries et al. 2017; BigGAN's generator): the statistics are the
    batch's, shared by all classes; the scale and shift that follow are looked up by class.

    Starts as ``nn.BatchNorm2d`` starts (scale 1, shift 0 for every class), so it first computes
    what the layer it replaces computes.
    """

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.scale = nn.Embedding(num_classes, channels)
        self.shift = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.scale.weight)
        nn.init.zeros_(self.shift.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        # In h's dtype: a float32 scale would promote a bfloat16 activation and every layer after it.
        return h * self.scale(y).to(h.dtype)[:, :, None, None] + self.shift(y).to(h.dtype)[:, :, None, None]


class Generator(Decoder):
    """The VAE decoder with LeakyReLU, conditioned on the class: ``generator(z, y)`` -> images in [0, 1].

    The class embedding joins z at the input; with ``class_norm`` every up-sampling block's batch
    norm also takes its scale and shift from the class (:class:`ClassBatchNorm`).
    """

    def __init__(self, config: ACGANConfig):
        super().__init__(config.decoder_config(), activation=leaky_relu)
        self.latent_dim = config.latent_dim
        self.num_classes = config.num_classes
        if config.class_norm:
            for block in self.upsample:  # each a Sequential: convolution, batch norm, activation
                for index, layer in enumerate(block):
                    if isinstance(layer, nn.BatchNorm2d):
                        block[index] = ClassBatchNorm(layer.num_features, config.num_classes)

    def expand(self, h: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        for block in self.upsample:
            for layer in block:
                h = layer(h, y) if isinstance(layer, ClassBatchNorm) else layer(h)
        return h


class ResidualBlock(nn.Module):
    """LeakyReLU(x + norm(conv(LeakyReLU(norm(conv(x)))))): the reference classifier's block, with the
    discriminator's normalisation and activation."""

    def __init__(self, channels: int, norm, wrap):
        super().__init__()
        self.body = nn.Sequential(wrap(nn.Conv2d(channels, channels, 3, padding=1)), norm(channels), nn.LeakyReLU(0.2),
                                  wrap(nn.Conv2d(channels, channels, 3, padding=1)), norm(channels))
        self.activation = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(x + self.body(x))


class MinibatchStd(nn.Module):
    """ProGAN's minibatch standard deviation (Karras et al. 2018), one figure per image.

    The batch is cut into ``segments`` equal parts (the real and the generated images of one
    discriminator pass), each part into groups of consecutive images: ``group_size`` of them, or
    the largest smaller number that divides the part (1 for a prime-sized part: a figure of 0).
    An image's figure is the standard deviation of each feature over its group, averaged over
    the features: low for a group of near-identical samples, which the real/fake head can learn
    to call fake. Groups never cross parts, so real and generated images never share one.
    """

    def __init__(self, group_size: int):
        super().__init__()
        self.group_size = group_size

    def groups_for(self, part: int) -> int:
        """Images per group in a part of ``part`` images."""
        return max(g for g in range(1, min(self.group_size, part) + 1) if part % g == 0)

    def forward(self, features: torch.Tensor, segments: int = 1) -> torch.Tensor:
        """``(N, 1)`` figures of ``features`` ``(N, ...)``, in float32."""
        n = features.shape[0]
        if n % segments:
            raise ValueError(f"a batch of {n} images does not split into {segments} equal parts")
        g = self.groups_for(n // segments)
        grouped = features.float().reshape(n // g, g, -1)
        std = (grouped.var(dim=1, unbiased=False) + 1e-8).sqrt().mean(1)  # (groups,)
        return std.repeat_interleave(g).unsqueeze(1)


class Discriminator(nn.Module):
    """Shared trunk, then ``(adv_logit (N,), class_logits (N, num_classes))``.

    Per resolution, ``trunk="plain"``: a 3x3 convolution, then a strided one that halves the size
    and doubles the channels; ``trunk="residual"``: a residual block (:class:`ResidualBlock`) in
    place of the first. Every convolution but the first is followed by the normalisation
    (``norm``) and LeakyReLU, every resolution by dropout (``layers.Dropout``: nn.Dropout's
    distribution, a faster mask; the identity at the default ``dropout=0``). The class head is one
    linear layer, or two with a LeakyReLU between them when ``class_hidden`` > 0. With
    ``twin_class_head``, a second head of the same shape (TAC-GAN's twin classifier, Gong et al.
    2019) reads the same features and learns the classes of generated images. With
    ``minibatch_std``, the real/fake head also reads each image's :class:`MinibatchStd` figure
    (the class head does not, so an image's class does not depend on its batch).
    """

    def __init__(self, config: ACGANConfig):
        super().__init__()
        wrap = nn.utils.spectral_norm if config.spectral_norm else (lambda m: m)
        c = config.d_width
        layers = [wrap(nn.Conv2d(config.image_channels, c, 3, padding=1)), nn.LeakyReLU(0.2)]
        norm = {"batch": nn.BatchNorm2d, "group": lambda channels: group_norm(channels, config.norm_group_size),
                "none": lambda channels: nn.Identity()}[config.norm]
        for _ in range(config.downsamples):
            if config.trunk == "residual":
                layers.append(ResidualBlock(c, norm, wrap))
            else:
                layers += [wrap(nn.Conv2d(c, c, 3, padding=1)), norm(c), nn.LeakyReLU(0.2)]
            layers += [wrap(nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)), norm(2 * c), nn.LeakyReLU(0.2),
                       Dropout(config.dropout)]
            c *= 2
        self.trunk = nn.Sequential(*layers)
        self.flatten = Flatten()
        features = c * (config.image_size // 2 ** config.downsamples) ** 2
        self.class_pool = config.class_pool
        self.minibatch_std = MinibatchStd(config.minibatch_std) if config.minibatch_std else None
        self.adv_head = wrap(nn.Linear(features + (self.minibatch_std is not None), 1))
        class_inputs = c if config.class_pool else features
        self.class_head = class_head(class_inputs, config.class_hidden, config.num_classes)
        self.twin_head = (class_head(class_inputs, config.class_hidden, config.num_classes)
                          if config.twin_class_head else None)

    def forward(self, x: torch.Tensor, twin: str | None = None, segments: int = 1) -> tuple[torch.Tensor, ...]:
        """``(adv_logit, class_logits)``; with ``twin``, also the twin head's class logits, from the
        trunk's features cut from the graph (``"detached"``: its loss trains the twin head alone) or
        not (``"attached"``: the generator's step, whose gradient must reach the images).
        ``segments``: how many equal parts of unlike images (real, generated) ``x`` joins, which
        the minibatch standard deviation keeps apart."""
        h = self.trunk(x)
        flat = self.flatten(h)
        class_features = h.mean((2, 3)) if self.class_pool else flat
        adv_features = flat
        if self.minibatch_std is not None:
            adv_features = torch.cat([flat, self.minibatch_std(flat, segments).to(flat.dtype)], 1)
        adv, classes = self.adv_head(adv_features).squeeze(1), self.class_head(class_features)
        if twin is None:
            return adv, classes
        if self.twin_head is None:
            raise ConfigError("this discriminator has no twin class head: build it with twin_class_head=True")
        if twin not in ("detached", "attached"):
            raise ValueError(f"twin must be 'detached' or 'attached', got {twin!r}")
        return adv, classes, self.twin_head(class_features.detach() if twin == "detached" else class_features)


def class_head(inputs: int, hidden: int, num_classes: int) -> nn.Module:
    """One linear layer, or two with a LeakyReLU between them when ``hidden`` > 0."""
    if hidden:  # capacity for the classes alone, at the cost of one small matrix product
        return nn.Sequential(nn.Linear(inputs, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, num_classes))
    return nn.Linear(inputs, num_classes)


class ACGAN(nn.Module):
    """Generator and discriminator together, for saving, loading and sampling."""

    kind = "acgan"
    conditional = True

    def __init__(self, config: ACGANConfig | None = None, **overrides):
        super().__init__()
        config = config or ACGANConfig()
        if overrides:
            config = ACGANConfig(**{**config.to_dict(), **overrides})
        self.config = config
        self.generator = Generator(config)
        self.discriminator = Discriminator(config)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [0, 1] from latent codes ``z`` and classes ``y``."""
        return self.generator(z, y)

    def latents(self, n: int, labels: torch.Tensor | None, generator: torch.Generator | None,
                prior: str = "standard") -> torch.Tensor:
        """``n`` codes z ~ N(0, I), the generator's only prior (it was trained on it)."""
        if prior != "standard":
            raise ConfigError(f"an AC-GAN samples only its standard prior z ~ N(0, I), not {prior!r}")
        return standard_normal_latents(n, self.config.latent_dim, generator, next(self.parameters()).device)

    @torch.no_grad()
    def generate(self, n: int, y: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 prior: str = "standard") -> Samples:
        """``n`` images from z ~ N(0, I) for classes ``y`` (uniform at random when None)."""
        z = self.latents(n, None, generator, prior)
        labels = sample_classes(n, self.config.num_classes, y, generator, z.device)
        return Samples(self.decode(z, labels), labels)

    @torch.no_grad()
    def discriminate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The discriminator's verdict on images ``x`` in [0, 1]: P(real) (N,) and class probabilities (N, classes)."""
        adv, classes = self.discriminator(x)
        return torch.sigmoid(adv.float()), torch.softmax(classes.float(), dim=1)
