"""The models cifargen trains, each a (configuration class, recipe class) pair, and ``train``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed

from ..data import load_dataset
from ..runtime import distributed_env
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
    config.data_dir = str(Path(config.data_dir).resolve())  # so that `cifargen eval` finds it from anywhere
    prepare_run_dir(out, config.resume, config.overwrite)
    rank, world_size, _ = distributed_env()
    if world_size > 1 and rank != 0:
        torch.distributed.barrier()  # let rank 0 download the data alone
    train_set = load_dataset(config.data_dir, train=True).head(config.limit_train)
    test_set = load_dataset(config.data_dir, train=False, class_names=train_set.class_names).head(config.limit_test)
    if world_size > 1 and rank == 0:
        torch.distributed.barrier()
    recipe = entry.recipe_class(config, train_set.class_names, device, dtype)
    return fit(recipe, train_set, test_set, out, log=log)
