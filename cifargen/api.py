"""The Python API behind the command line: train a model, evaluate a trained one.

    from cifargen import default_config, train, load
    metrics = train(default_config("cvae", epochs=5, out="runs/cvae-quick"))
    images, classes = load("runs/cvae-quick").generate(8)
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
import torch.distributed

from .data import ImageDataset, load_dataset, steps_per_epoch
from .modelfile import load
from .quality import load_reference_classifier, reference_classifier_path, sample_quality
from .registry import model_kind
from .runtime import atomic_write_json, distributed_env
from .training import METRICS, check_run_dir, fit, setup_runtime


def train(config, log=None) -> dict:
    """Train the model that ``config.model`` names; returns the final ``metrics.json`` content.

    ``config`` is not modified: the run's own copy (with its run folder and data folder filled
    in) is the one in the returned metrics.
    """
    kind = model_kind(config.model)
    log = log or (lambda line: print(line, file=sys.stderr))
    device, dtype = setup_runtime(config)
    out = Path(config.out) if config.out else kind.out_dir()
    # The data folder as an absolute path, so that `cifargen eval` finds it from anywhere.
    config = dataclasses.replace(config, out=str(out), data_dir=str(Path(config.data_dir).resolve()))
    check_run_dir(out, config.resume, config.overwrite)
    rank, world_size, _ = distributed_env()
    if world_size > 1 and rank != 0:
        torch.distributed.barrier()  # let rank 0 download the data alone
    train_set = load_dataset(config.data_dir, train=True).head(config.limit_train)
    test_set = load_dataset(config.data_dir, train=False, class_names=train_set.class_names).head(config.limit_test)
    if world_size > 1 and rank == 0:
        torch.distributed.barrier()
    recipe = kind.recipe_class(config, train_set.class_names, device, dtype,
                               steps_per_epoch(len(train_set), config.batch_size, world_size))
    metrics = fit(recipe, train_set, test_set, out, log=log)
    if rank == 0 and config.quality and kind.generative:
        quality = measure_sample_quality(out, test_set, device, dtype, log)
        if quality is not None:
            metrics["quality"] = quality
            atomic_write_json(metrics, out / METRICS)
    return metrics


def evaluate_model(model, test_set: ImageDataset, device, autocast_dtype=None) -> dict:
    """The headline test figures of a loaded model (see :func:`cifargen.load`)."""
    return model_kind(model.kind).evaluate(model, test_set, device, autocast_dtype)


def measure_sample_quality(run_dir: Path, test_set: ImageDataset, device, dtype, log) -> dict | None:
    """Sample-quality figures of the run's best model with the reference classifier, or None
    (and one line to ``log``) when no reference classifier has been trained."""
    classifier = load_reference_classifier(device=device)
    if classifier is None:
        log(f"sample-quality figures skipped: no reference classifier in {reference_classifier_path()} "
            "(train one with: cifargen classifier train)")
        return None
    figures = sample_quality(load(run_dir, device), classifier, test_set, device, dtype)
    log("sample quality: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()))
    return figures
