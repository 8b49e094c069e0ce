"""The Python API behind the command line: train a model, evaluate a trained one.

    from cifargen import default_config, train, load
    metrics = train(default_config("cvae", epochs=5, out="runs/cvae-quick"))
    images, classes = load("runs/cvae-quick").generate(8)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed

from .configs import config_from_dict
from .data import ImageDataset, default_data_dir, load_dataset, steps_per_epoch
from .errors import ConfigError
from .modelfile import WEIGHTS, load, save_fitted_prior, save_model
from .priors import PriorConfig, fit_prior
from .recipes.vae import save_random_samples
from .quality import QUALITY_SAMPLES, load_reference_classifier, quality_report, reference_classifier_path
from .registry import model_kind
from .runtime import atomic_write_json, distributed_env, is_out_of_memory, resolve_precision
from .training import (BEST_CHECKPOINT, METRICS, RunFolderLock, check_run_dir, fit, load_checkpoint, make_run_dir,
                       setup_runtime)
from .training import check_model_fits, out_of_memory_error


def train(config, log=None) -> dict:
    """Train the model that ``config.model`` names; returns the final ``metrics.json`` content.

    ``config`` is not modified: the run's own copy (with its run folder and data folder filled
    in) is the one in the returned metrics.
    """
    kind = model_kind(config.model)
    log = log or (lambda line: print(line, file=sys.stderr))
    device, dtype = setup_runtime(config)
    check_model_fits(config, kind.model_class, device)
    out = Path(config.out) if config.out else kind.out_dir()
    # The data folder as an absolute path, so that `cifargen eval` finds it from anywhere.
    config = dataclasses.replace(config, out=str(out), data_dir=str(Path(config.data_dir).resolve()))
    make_run_dir(out)
    rank, world_size, _ = distributed_env()
    with RunFolderLock(out) if rank == 0 else contextlib.nullcontext():
        check_run_dir(out, config.resume, config.overwrite)
        if world_size > 1 and rank != 0:
            torch.distributed.barrier()  # let rank 0 download the data alone
        train_set = load_dataset(config.data_dir, train=True).head(config.limit_train)
        test_set = load_dataset(config.data_dir, train=False, class_names=train_set.class_names).head(config.limit_test)
        if world_size > 1 and rank == 0:
            torch.distributed.barrier()
        try:
            recipe = kind.recipe_class(config, train_set.class_names, device, dtype,
                                       steps_per_epoch(len(train_set), config.batch_size, world_size))
        except RuntimeError as exc:
            if not is_out_of_memory(exc):
                raise
            raise out_of_memory_error(exc, config, device, "building the networks, before any training") from None
        metrics = fit(recipe, train_set, test_set, out, log=log)
        if rank == 0 and config.quality and kind.generative:
            quality = measure_sample_quality(out, train_set, test_set, device, dtype, log, config.quality_samples)
            if quality is not None:
                metrics["quality"] = quality
                atomic_write_json(metrics, out / METRICS)
    return metrics


def evaluate_model(model, test_set: ImageDataset, device, autocast_dtype=None) -> dict:
    """The headline test figures of a loaded model (see :func:`cifargen.load`)."""
    return model_kind(model.kind).evaluate(model, test_set, device, autocast_dtype)


def measure_sample_quality(run_dir: Path, train_set: ImageDataset, test_set: ImageDataset, device, dtype,
                           log, n: int = QUALITY_SAMPLES) -> dict | None:
    """Sample-quality figures of the run's best model with the reference classifier, or None
    (and one line to ``log``) when no reference classifier has been trained; ``{"skipped": reason, ...}``
    (and that line) when it is too weak to measure anything."""
    classifier = load_reference_classifier(device=device)
    if classifier is None:
        log(f"sample-quality figures skipped: no reference classifier in {reference_classifier_path()} "
            "(train one with: cifargen classifier train)")
        return None
    report = quality_report(load(run_dir, device), classifier, test_set, device, dtype, n=n, train_set=train_set)
    if "skipped" in report:
        log(f"sample-quality figures skipped: {report['skipped']}")
    for name, figures in report.items():
        if isinstance(figures, dict) and name != "classifier":
            log(f"sample quality ({name}): " + _figures_line(figures))
    if "fd_cifargen" in report:
        log("sample quality: " + _figures_line(report))
    return report


def _figures_line(figures: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in figures.items() if isinstance(v, (int, float)))


def export_best_model(run_dir: str | os.PathLike, device="cpu") -> Path:
    """Write ``model.safetensors`` and ``config.json`` from ``best.pt`` of a run that stopped before
    its end (Ctrl-C, a crash), so that it can be evaluated, sampled and fitted; returns the folder."""
    run_dir = Path(run_dir)
    if (run_dir / WEIGHTS).is_file():
        return run_dir
    if not (run_dir / BEST_CHECKPOINT).is_file():
        raise ConfigError(f"{run_dir} holds neither {WEIGHTS} nor {BEST_CHECKPOINT}: pass the folder of a run that "
                          "completed at least one epoch")
    best = load_checkpoint(run_dir / BEST_CHECKPOINT, device)
    try:
        kind = model_kind(best["config"]["model"])
        config = config_from_dict(kind.config_class, best["config"])
    except (KeyError, TypeError):
        raise ConfigError(f"{run_dir / BEST_CHECKPOINT} holds no run configuration; it is not a cifargen checkpoint") from None
    class_names = load_dataset(config.data_dir, train=False).class_names
    recipe = kind.recipe_class(config, class_names, torch.device(device), None, steps_per_epoch=1)
    recipe.load_model_state(best["models"])
    precision = "float32"
    try:
        precision = json.loads((run_dir / METRICS).read_text()).get("precision", precision)
    except (OSError, ValueError):
        pass
    save_model(recipe.export_model(), run_dir, class_names, training=config.to_dict(),
               metrics={"epoch": best["epoch"], "best_epoch": best["epoch"], "test": best["test"], "best": best["test"],
                        "precision": precision, "device": str(device)})
    return run_dir


def fit_run_prior(run_dir: str | os.PathLike, prior_config: PriorConfig | None = None, device="cpu",
                  data_dir: str | None = None, quality: bool = True, log=None) -> dict:
    """Fit (or re-fit) the latent prior of a trained VAE/CVAE run and store it in its model file;
    redraw ``random.png`` and, with a reference classifier, the sample-quality figures in
    ``metrics.json``. Returns the report written under ``prior``."""
    log = log or (lambda line: print(line, file=sys.stderr))
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a run folder; pass the folder of a vae or cvae run")
    with RunFolderLock(run_dir):
        return _fit_run_prior(run_dir, prior_config, device, data_dir, quality, log)


def _fit_run_prior(run_dir: Path, prior_config, device, data_dir, quality, log) -> dict:
    run_dir = export_best_model(run_dir, device)
    model = load(run_dir, device)
    if not hasattr(model, "fitted_prior"):
        raise ConfigError(f"{run_dir} holds a {model.kind}; only vae and cvae models have a latent prior to fit")
    training = model.model_config.get("training", {})
    data_dir = data_dir or training.get("data_dir") or default_data_dir()
    dtype = resolve_precision("bf16" if model.model_config.get("metrics", {}).get("precision") == "bfloat16" else "fp32",
                              torch.device(device))
    train_set = load_dataset(data_dir, train=True).head(training.get("limit_train"))
    check_classes(model, train_set)
    test_set = load_dataset(data_dir, train=False, class_names=train_set.class_names).head(training.get("limit_test"))
    prior_config = prior_config or PriorConfig()
    log(f"fitting {prior_config} to the codes of {len(train_set)} training images")
    model.fitted_prior, report = fit_prior(model, train_set, device, dtype, prior_config, test_set)
    save_fitted_prior(model, run_dir)
    log(f"fitted in {report['fit_seconds']} s (encoding {report['encode_seconds']} s); mean log-likelihood of the "
        f"test codes {report['test_log_likelihood']:.1f} nats")
    if (run_dir / METRICS).is_file():
        metrics = json.loads((run_dir / METRICS).read_text())
        metrics["prior"] = report
        if quality:
            figures = measure_sample_quality(run_dir, train_set, test_set, device, dtype, log)
            if figures is not None:
                metrics["quality"] = figures
        save_random_samples(model, model.class_names, run_dir / "random.png", training.get("seed", 0),
                            f"{model.kind.upper()}: samples of the best checkpoint (epoch "
                            f"{model.model_config.get('metrics', {}).get('best_epoch')})")
        atomic_write_json(metrics, run_dir / METRICS)
    return report


def check_classes(model, dataset: ImageDataset) -> None:
    """Refuse a data set whose classes are not the model's."""
    names = tuple(getattr(model, "class_names", ()) or ())
    if names and names != tuple(dataset.class_names):
        raise ConfigError(f"the model was trained on the classes {', '.join(names[:5])}{'...' if len(names) > 5 else ''} "
                          f"but the data set has {', '.join(dataset.class_names[:5])}"
                          f"{'...' if len(dataset.class_names) > 5 else ''}; pass the model's own data with --data-dir")
