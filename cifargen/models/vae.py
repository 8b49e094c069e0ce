"""VAE and conditional VAE: a U-Net-shaped encoder-decoder without skip connections.

    x (3x32x32) -> conv -> [strided conv, conv] x3 -> 4x4 features -> mu, log_var        (encoder)
    z (+ class embedding) -> linear -> 4x4 -> [transposed conv, conv] x3 -> conv -> sigmoid  (decoder)

(``convs_per_level`` sets how many convolutions each resolution has, the re-sampling one included.)

The decoder's only input is the latent code (and, for the CVAE, the class): no encoder
activation reaches it any other way. The AC-GAN generator reuses :class:`Decoder`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn as nn

from ..errors import ConfigError
from .layers import Flatten, Unflatten


@dataclass
class VAEConfig:
    """Architecture of the VAE/CVAE. The defaults are the ones behind the headline results (docs/DECISIONS.md)."""

    latent_dim: int = 512
    width: int = 32            # channels after the first convolution; doubled at every down-sampling
    num_downsamples: int | None = None  # None: follow image_size down to 4x4 (3 at 32x32, 4 at 64x64)
    convs_per_level: int = 1   # 3x3 convolutions per resolution, the re-sampling one included
    image_size: int = 32
    image_channels: int = 3
    num_classes: int = 10
    class_embed_dim: int = 32  # CVAE only
    conditional: bool = False

    def __post_init__(self):
        for name in ("latent_dim", "width", "image_size", "image_channels", "num_classes", "class_embed_dim"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.convs_per_level < 1:
            raise ConfigError(f"convs_per_level must be at least 1, got {self.convs_per_level}")
        check_levels(self.image_size, self.downsamples)

    @property
    def downsamples(self) -> int:
        """Down-sampling levels: ``num_downsamples``, or as many as take ``image_size`` down to about 4x4."""
        return self.num_downsamples if self.num_downsamples is not None else levels_for(self.image_size)

    @property
    def bottleneck_channels(self) -> int:
        return self.width * 2 ** self.downsamples

    @property
    def bottleneck_size(self) -> int:
        return self.image_size // 2 ** self.downsamples

    def to_dict(self) -> dict:
        return asdict(self)


def levels_for(image_size: int) -> int:
    """The most halvings that keep ``image_size`` whole and at least 4 pixels (32 -> 3, 64 -> 4, 48 -> 3)."""
    levels = 0
    while image_size % 2 ** (levels + 1) == 0 and image_size // 2 ** (levels + 1) >= 4:
        levels += 1
    return levels


def check_levels(image_size: int, levels: int) -> None:
    """The U-Net shape needs at least two down-sampling levels, each halving a whole number of pixels."""
    if levels < 2:
        raise ConfigError(f"image size {image_size} allows {levels} down-sampling level(s), the U-Net shape needs 2: "
                          "use an image size that is a multiple of 4 and at least 16 (32, 48, 64, ...)")
    if image_size % 2 ** levels:
        raise ConfigError(f"image size {image_size} is not divisible by 2**{levels} (num_downsamples {levels}); "
                          "use another image size or number of levels")


def conv_block(in_channels: int, out_channels: int, stride: int, activation: type[nn.Module]) -> nn.Sequential:
    """3x3 convolution (strided to down-sample), batch norm, activation."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        activation(),
    )


def up_block(in_channels: int, out_channels: int, activation: type[nn.Module]) -> nn.Sequential:
    """4x4 stride-2 transposed convolution (doubles the size), batch norm, activation."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        activation(),
    )


def leaky_relu() -> nn.Module:
    return nn.LeakyReLU(0.2)


class Encoder(nn.Module):
    """Contracting path: image (and class, for the CVAE) to the Gaussian posterior's mu and log_var."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        c = config.width
        layers = [conv_block(config.image_channels, c, stride=1, activation=nn.ReLU)]
        for _ in range(config.downsamples):
            layers.append(conv_block(c, 2 * c, stride=2, activation=nn.ReLU))
            c *= 2
            layers += [conv_block(c, c, stride=1, activation=nn.ReLU) for _ in range(config.convs_per_level - 1)]
        self.features = nn.Sequential(*layers, Flatten())
        flat = c * config.bottleneck_size ** 2
        self.class_embedding = nn.Embedding(config.num_classes, config.class_embed_dim) if config.conditional else None
        head_in = flat + (config.class_embed_dim if config.conditional else 0)
        self.mu = nn.Linear(head_in, config.latent_dim)
        self.log_var = nn.Linear(head_in, config.latent_dim)
        # Start with a small posterior variance (exp(-6)): with unit variance at initialisation the
        # decoder cannot use z, and during the KL-free first epoch log_var then drifts up unchecked.
        nn.init.zeros_(self.log_var.weight)
        nn.init.constant_(self.log_var.bias, -6.0)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        if self.class_embedding is not None:
            h = torch.cat([h, self.class_embedding(y).to(h.dtype)], dim=1)
        return self.mu(h), bound_log_var(self.log_var(h))


class Decoder(nn.Module):
    """Expanding path: latent code (and class) to an image in [0, 1].

    ``forward(z, y, logits=True)`` stops before the sigmoid, so that losses can use the
    numerically stable logit form of BCE.
    """

    def __init__(self, config: VAEConfig, activation: type[nn.Module] = nn.ReLU):
        super().__init__()
        c = config.bottleneck_channels
        s = config.bottleneck_size
        self.class_embedding = nn.Embedding(config.num_classes, config.class_embed_dim) if config.conditional else None
        in_features = config.latent_dim + (config.class_embed_dim if config.conditional else 0)
        self.project = nn.Sequential(
            # No batch norm here: it would make the decoder blind to the scale of z, which the KL term sets.
            nn.Linear(in_features, c * s * s),
            Unflatten((c, s, s)),
            activation(),
        )
        ups = []
        for _ in range(config.downsamples):
            ups.append(up_block(c, c // 2, activation))
            c //= 2
            ups += [conv_block(c, c, stride=1, activation=activation) for _ in range(config.convs_per_level - 1)]
        self.upsample = nn.Sequential(*ups)
        self.to_logits = nn.Conv2d(c, config.image_channels, 3, padding=1)
        self.output_activation = nn.Sigmoid()

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None, logits: bool = False) -> torch.Tensor:
        if self.class_embedding is not None:
            if y is None:
                raise ValueError("a conditional decoder needs the class labels y")
            z = torch.cat([z, self.class_embedding(y).to(z.dtype)], dim=1)
        out = self.to_logits(self.expand(self.project(z), y))  # in the layout Unflatten chose
        return out if logits else self.output_activation(out)

    def expand(self, h: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The up-sampling path from the projected code; ``y`` is for subclasses whose layers
        are conditioned on the class."""
        return self.upsample(h)


class VAEOutput(NamedTuple):
    recon: torch.Tensor
    mu: torch.Tensor
    log_var: torch.Tensor
    z: torch.Tensor


# No posterior is wider than about 2.7x the prior's N(0, I): log-variances above LOG_VAR_MAX are
# cut in the forward pass (the gradient passes unchanged, so they can come back).
LOG_VAR_MAX = 2.0


def bound_log_var(log_var: torch.Tensor) -> torch.Tensor:
    """``log_var`` with values above ``LOG_VAR_MAX`` cut to it, and the gradient of the identity.

    Adam's first, sign-like steps move every weight of the wide log-variance head by about the
    learning rate at once, which can throw log_var to 50-100 in a few steps while the KL weight is 0
    (seen at 64x64); the noise exp(0.5 * log_var) then drowns the code and the KL overflows.
    Below the bound the value is bit for bit the input, so runs that stay below it are unchanged.
    """
    return log_var - (log_var - log_var.clamp(max=LOG_VAR_MAX)).detach()


def reparameterize(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """z = mu + exp(0.5 log_var) * eps, eps ~ N(0, I)."""
    return mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)


class Samples(NamedTuple):
    """What every generative model's ``generate`` returns: images in [0, 1] and the classes they
    were drawn for (``None`` for an unconditional model)."""

    images: torch.Tensor
    labels: torch.Tensor | None


def standard_normal_latents(n: int, latent_dim: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """z ~ N(0, I) of shape (n, latent_dim) on ``device``, drawn on the CPU so that a seeded
    ``generator`` gives the same samples on every device."""
    return torch.randn(n, latent_dim, generator=generator).to(device)


def sample_classes(n: int, num_classes: int, y, generator: torch.Generator | None, device) -> torch.Tensor:
    """The classes ``y`` as a long tensor on ``device``, or ``n`` uniform draws when ``y`` is None."""
    if y is None:
        y = torch.randint(num_classes, (n,), generator=generator)
    y = torch.as_tensor(y, dtype=torch.long)
    if y.shape != (n,):
        raise ValueError(f"y must hold one class per sample ({n}), got shape {tuple(y.shape)}")
    return y.to(device)


class VAE(nn.Module):
    """Variational autoencoder. ``forward(x, y)`` ignores ``y``; :class:`CVAE` uses it."""

    kind = "vae"
    conditional = False

    def __init__(self, config: VAEConfig | None = None, **overrides):
        super().__init__()
        config = config or VAEConfig()
        # The class, not the configuration, says whether the networks see the class.
        config = VAEConfig(**{**config.to_dict(), **overrides, "conditional": self.conditional})
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.fitted_prior = None  # a GaussianMixturePrior once fitted (cifargen.priors); not a module: saved apart

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, return_logits: bool = False):
        """Reconstruct ``x``: returns ``VAEOutput(recon, mu, log_var, z)``.

        With ``return_logits=True`` returns ``(VAEOutput, logits)`` where ``recon`` is
        ``sigmoid(logits)``; training uses the logits for a stable BCE.
        """
        mu, log_var = self.encoder(x, y)
        z = reparameterize(mu, log_var)
        logits = self.decoder(z, y, logits=True)
        out = VAEOutput(torch.sigmoid(logits), mu, log_var, z)
        return (out, logits) if return_logits else out

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [0, 1] from latent codes ``z`` (and classes ``y``, conditional models only)."""
        return self.decoder(z, y if self.conditional else None)

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def latents(self, n: int, labels: torch.Tensor | None, generator: torch.Generator | None,
                prior: str = "standard") -> torch.Tensor:
        """``n`` codes from the standard prior N(0, I) or the fitted one (see :mod:`cifargen.priors`)."""
        if prior == "standard":
            return standard_normal_latents(n, self.config.latent_dim, generator, self._device())
        if prior != "fitted":
            raise ConfigError(f"unknown prior {prior!r}: choose standard (z ~ N(0, I)) or fitted")
        if self.fitted_prior is None:
            raise ConfigError("this model has no fitted prior: fit one with `cifargen fit-prior RUN` "
                              "(or sample the standard prior)")
        return self.fitted_prior.sample(n, labels, generator).to(self._device())

    @torch.no_grad()
    def generate(self, n: int, y: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 prior: str = "standard") -> Samples:
        """Decode ``n`` codes drawn on the CPU (from ``generator`` if given) from ``prior``:
        ``"standard"``, z ~ N(0, I), or ``"fitted"``, the mixture fitted to the training codes.

        Conditional models draw for classes ``y`` (uniform at random when None); returns
        ``Samples(images, labels)``, ``labels`` None for the unconditional VAE.
        """
        device = self._device()
        if prior == "fitted":  # the fitted prior of a CVAE depends on the class: draw it first
            labels = sample_classes(n, self.config.num_classes, y, generator, device) if self.conditional else None
            z = self.latents(n, labels, generator, prior)
        else:
            z = self.latents(n, None, generator, prior)
            labels = sample_classes(n, self.config.num_classes, y, generator, device) if self.conditional else None
        return Samples(self.decode(z, labels), labels)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [0, 1] decoded from the posterior mean of ``x`` (in [0, 1]; classes ``y`` for the CVAE)."""
        mu, _ = self.encoder(x, y if self.conditional else None)
        return self.decode(mu, y)


class CVAE(VAE):
    """Conditional VAE: the class embedding conditions the decoder (and the encoder's heads)."""

    kind = "cvae"
    conditional = True

