"""The model kinds cifargen knows, and every fact about each in one place.

Adding a model means writing its network (``models/``), its training recipe (``recipes/``) and
one :class:`ModelKind` entry here; nothing else branches on a model's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

from .configs import config_from_dict
from .errors import ConfigError
from .evaluation import evaluate_classifier, evaluate_discriminator, evaluate_vae
from .models import ACGAN, CVAE, VAE, ACGANConfig, Classifier, ClassifierConfig, VAEConfig
from .recipes.acgan import ACGANRecipe, ACGANTrainConfig
from .recipes.base import Recipe, TrainConfig
from .recipes.classifier import ClassifierRecipe, ClassifierTrainConfig, default_classifier_dir
from .recipes.vae import CVAERecipe, VAERecipe, VAETrainConfig


@dataclass(frozen=True)
class ModelKind:
    """One kind of model: how to configure, build, train and evaluate it."""

    name: str
    summary: str                            # one line for --help
    model_class: type[nn.Module]            # the network saved as model.safetensors
    arch_class: type                        # its architecture dataclass
    config_class: type[TrainConfig]         # its training configuration dataclass
    recipe_class: type[Recipe]              # how it trains
    evaluate: Callable                      # (model, test_set, device, autocast_dtype) -> test figures
    default_out: str | Callable[..., Path]  # run folder; a callable (of the training configuration) is resolved when used
    generative: bool = True                 # has generate(n, y, generator) and decode(z, y)
    train_command: str = ""                 # the command that trains it ("": cifargen train NAME)
    classifies: bool = False                # its evaluation has a confusion matrix (eval --confusion)

    def out_dir(self, config: TrainConfig | None = None) -> Path:
        """The default run folder (of a run with ``config``, for kinds whose folder depends on the data)."""
        return Path(self.default_out(config) if callable(self.default_out) else self.default_out)

    def command(self) -> str:
        """The command line that trains this kind (and, with ``--resume DIR``, continues a run)."""
        return self.train_command or f"cifargen train {self.name}"

    def default_config(self, **overrides) -> TrainConfig:
        """The default training configuration, with ``overrides`` applied."""
        return self.config_class(model=self.name, **overrides)

    def build(self, arch: dict) -> nn.Module:
        """A fresh network from saved architecture settings."""
        return self.model_class(config_from_dict(self.arch_class, arch))

    @property
    def conditional(self) -> bool:
        return bool(getattr(self.model_class, "conditional", False))


MODELS: dict[str, ModelKind] = {kind.name: kind for kind in (
    ModelKind("vae", "variational autoencoder", VAE, VAEConfig, VAETrainConfig, VAERecipe, evaluate_vae,
              "visualize/vae"),
    ModelKind("cvae", "conditional VAE (class-embedded)", CVAE, VAEConfig, VAETrainConfig, CVAERecipe, evaluate_vae,
              "visualize/cvae"),
    ModelKind("acgan", "auxiliary-classifier GAN", ACGAN, ACGANConfig, ACGANTrainConfig, ACGANRecipe,
              evaluate_discriminator, "visualize/gan", classifies=True),
    # The reference classifier of the sample-quality figures lives in the user's cache folder.
    ModelKind("classifier", "reference classifier for the sample-quality figures", Classifier, ClassifierConfig,
              ClassifierTrainConfig, ClassifierRecipe, evaluate_classifier, default_classifier_dir, generative=False,
              train_command="cifargen classifier train"),
)}

GENERATORS = tuple(name for name, kind in MODELS.items() if kind.generative)
# The figures every kind's recipe writes into a run folder: --overwrite clears them all, whatever
# kind the old run was.
OUTPUT_FILES = tuple(dict.fromkeys(pattern for kind in MODELS.values() for pattern in kind.recipe_class.output_files))


def model_kind(name: str) -> ModelKind:
    """The registry entry of ``name``, or a ``ConfigError`` listing the known ones."""
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown model kind {name!r}: cifargen knows {', '.join(MODELS)}") from None


def default_config(model: str, **overrides) -> TrainConfig:
    """The default training configuration of ``model`` with ``overrides`` applied."""
    return model_kind(model).default_config(**overrides)
