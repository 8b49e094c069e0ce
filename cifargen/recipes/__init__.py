"""The models cifargen trains, each a (configuration class, recipe class) pair, and ``train``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed

from ..data import load_dataset, steps_per_epoch
from ..runtime import atomic_write_json, distributed_env
from ..errors import ConfigError
from ..training import METRICS, TrainConfig, fit, prepare_run_dir, setup_runtime
from .acgan import ACGANRecipe, ACGANTrainConfig
from .classifier import ClassifierRecipe, ClassifierTrainConfig, default_classifier_dir
from .vae import VAERecipe, VAETrainConfig


@dataclass(frozen=True)
class ModelEntry:
    config_class: type
    recipe_class: type
    default_out: str | Callable[[], Path]  # a callable is resolved when used (it reads the environment)

    def out_dir(self) -> Path:
        return Path(self.default_out() if callable(self.default_out) else self.default_out)


MODELS: dict[str, ModelEntry] = {
    "vae": ModelEntry(VAETrainConfig, VAERecipe, "visualize/vae"),
    "cvae": ModelEntry(VAETrainConfig, VAERecipe, "visualize/cvae"),
    "acgan": ModelEntry(ACGANTrainConfig, ACGANRecipe, "visualize/gan"),
    # The reference classifier for the sample-quality figures lives in the user's cache folder.
    "classifier": ModelEntry(ClassifierTrainConfig, ClassifierRecipe, default_classifier_dir),
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
    out = Path(config.out) if config.out else entry.out_dir()
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
    recipe = entry.recipe_class(config, train_set.class_names, device, dtype,
                                steps_per_epoch(len(train_set), config.batch_size, world_size))
    metrics = fit(recipe, train_set, test_set, out, log=log)
    if rank == 0 and config.quality and config.model in GENERATORS:
        quality = measure_sample_quality(out, test_set, device, dtype, log or (lambda line: print(line, file=sys.stderr)))
        if quality is not None:
            metrics["quality"] = quality
            atomic_write_json(metrics, out / METRICS)
    return metrics


GENERATORS = ("vae", "cvae", "acgan")


def measure_sample_quality(run_dir: Path, test_set, device, dtype, log) -> dict | None:
    """Sample-quality figures of the run's best model with the reference classifier, or None
    (and one line to ``log``) when no reference classifier has been trained."""
    from ..modelfile import load
    from ..quality import load_reference_classifier, reference_classifier_path, sample_quality

    classifier = load_reference_classifier(device=device)
    if classifier is None:
        log(f"sample-quality figures skipped: no reference classifier in {reference_classifier_path()} "
            "(train one with: cifargen classifier train)")
        return None
    figures = sample_quality(load(run_dir, device), classifier, test_set, device, dtype)
    log("sample quality: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()))
    return figures
