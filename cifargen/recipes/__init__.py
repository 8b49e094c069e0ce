"""The models cifargen trains, each a (configuration class, recipe class) pair, and ``train``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data import load_dataset
from ..errors import ConfigError
from ..training import TrainConfig, fit, prepare_run_dir, setup_runtime
from .acgan import ACGANRecipe, ACGANTrainConfig
from .vae import VAERecipe, VAETrainConfig


@dataclass(frozen=True)
class ModelEntry:
    config_class: type
    recipe_class: type
    default_out: str


MODELS: dict[str, ModelEntry] = {
    "vae": ModelEntry(VAETrainConfig, VAERecipe, "visualize/vae"),
    "cvae": ModelEntry(VAETrainConfig, VAERecipe, "visualize/cvae"),
    "acgan": ModelEntry(ACGANTrainConfig, ACGANRecipe, "visualize/gan"),
}


def model_entry(name: str) -> ModelEntry:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}") from None


def default_config(model: str, **overrides) -> TrainConfig:
    """The default training configuration of ``model`` with ``overrides`` applied."""
    return model_entry(model).config_class(model=model, **overrides)


def train(config: TrainConfig, log=None) -> dict:
    """Train the model that ``config.model`` names; returns the final ``metrics.json`` content.

    Example (a notebook)::

        from cifargen import default_config, train
        metrics = train(default_config("vae", epochs=5, out="runs/vae-quick"))
    """
    entry = model_entry(config.model)
    device, dtype = setup_runtime(config)
    out = Path(config.out or entry.default_out)
    config.out = str(out)
    prepare_run_dir(out, config.resume, config.overwrite)
    train_set = load_dataset(config.data_dir, train=True).head(config.limit_train)
    test_set = load_dataset(config.data_dir, train=False).head(config.limit_test)
    recipe = entry.recipe_class(config, train_set.class_names, device, dtype)
    return fit(recipe, train_set, test_set, out, log=log)
