"""The reference CIFAR-10 classifier behind the offline sample-quality figures.

A small ResNet: a 3x3 stem, then one residual block per resolution (32, 16, 8, 4), each level
after the first opened by a strided convolution that doubles the channels, global average
pooling to the feature vector, and a linear layer to the class logits::

    x -> stem -> block(w) -> down, block(2w) -> down, block(4w) -> down, block(8w) -> pool -> features -> logits

``features(x)`` (the penultimate layer) feeds the Frechet distance ("FD-cifargen"); the
softmax of ``forward(x)`` feeds class consistency and the Inception-Score analogue.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from ..errors import ConfigError
from .vae import levels_for


@dataclass
class ClassifierConfig:
    """Architecture of the reference classifier. The defaults are the ones behind the headline accuracy."""

    width: int = 32
    num_levels: int | None = None  # resolutions; None: follow image_size down to 4x4 (32, 16, 8, 4)
    image_size: int = 32
    image_channels: int = 3
    num_classes: int = 10

    def __post_init__(self):
        for name in ("width", "image_size", "image_channels", "num_classes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.levels <= 0:
            raise ConfigError(f"num_levels must be positive, got {self.num_levels}")

    @property
    def levels(self) -> int:
        """Resolutions: ``num_levels``, or one per halving of ``image_size`` down to about 4x4, plus the first."""
        return self.num_levels if self.num_levels is not None else levels_for(self.image_size) + 1

    @property
    def feature_dim(self) -> int:
        return self.width * 2 ** (self.levels - 1)

    def to_dict(self) -> dict:
        return asdict(self)


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    """x + BN(conv(ReLU(BN(conv(x))))), then ReLU."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(channels, channels),
                                  nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(x + self.body(x))


class Classifier(nn.Module):
    """``forward(x)`` -> class logits (N, classes); ``features(x)`` -> penultimate features (N, feature_dim)."""

    kind = "classifier"

    def __init__(self, config: ClassifierConfig | None = None, **overrides):
        super().__init__()
        config = config or ClassifierConfig()
        if overrides:
            config = ClassifierConfig(**{**config.to_dict(), **overrides})
        self.config = config
        c = config.width
        layers = [conv_bn_relu(config.image_channels, c), ResidualBlock(c)]
        for _ in range(config.levels - 1):
            layers += [conv_bn_relu(c, 2 * c, stride=2), ResidualBlock(2 * c)]
            c *= 2
        self.trunk = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c, config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))
