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
import pickle
import sys
from pathlib import Path

import torch
import torch.distributed

from .configs import config_from_dict
from .data import ImageDataset, default_data_dir, load_splits, steps_per_epoch
from .errors import ConfigError
from .modelfile import CONFIG, WEIGHTS, load, save_fitted_prior, save_model
from .priors import PriorConfig, fit_prior
from .recipes.vae import save_random_samples
from .quality import QUALITY_SAMPLES, find_reference_classifier, quality_report
from .registry import model_kind
from .runtime import atomic_write_json, distributed_env, is_out_of_memory, resolve_precision
from .tensorboard import require_tensorboard
from .training import (BEST_CHECKPOINT, METRICS, RunFolderLock, check_model_fits, check_run_dir, fit, load_checkpoint,
                       make_run_dir, out_of_memory_error, read_metrics, setup_runtime)


def train(config, log=None) -> dict:
    """Train the model that ``config.model`` names; returns the final ``metrics.json`` content.

    ``config`` is not modified: the run's own copy (with its run folder and data folder filled
    in) is the one in the returned metrics.
    """
    kind = model_kind(config.model)
    log = log or (lambda line: print(line, file=sys.stderr))
    if config.tensorboard is not None:
        require_tensorboard()  # a missing extra fails before any work
    device, dtype = setup_runtime(config)
    check_model_fits(config, kind.model_class, device)
    out = Path(config.out) if config.out else kind.out_dir(config)
    # The data folder as an absolute path, so that `cifargen eval` finds it from anywhere.
    config = dataclasses.replace(config, out=str(out), data_dir=str(Path(config.data_dir).resolve()))
    if config.tensorboard == "":
        config = dataclasses.replace(config, tensorboard=str(out / "tensorboard"))
    created = [folder for folder in (out, *out.absolute().parents) if not folder.exists()]  # deepest first
    make_run_dir(out)
    try:
        return _train_in(out, config, kind, device, dtype, log)
    except BaseException:
        with contextlib.suppress(OSError):  # a run that failed before writing anything leaves no empty folders
            for folder in created:
                folder.rmdir()  # stops at the first folder that is not empty
        raise


def _train_in(out: Path, config, kind, device, dtype, log) -> dict:
    rank, world_size, _ = distributed_env()
    with RunFolderLock(out) if rank == 0 else contextlib.nullcontext():
        check_run_dir(out, config.resume, config.overwrite)
        if world_size > 1 and rank != 0:
            torch.distributed.barrier()  # let rank 0 download the data alone
        train_set, test_set = load_run_data(dataclasses.asdict(config), progress=config.progress and rank == 0,
                                            log=log if rank == 0 else None, download=True)
        if world_size > 1 and rank == 0:
            torch.distributed.barrier()
        try:
            recipe = kind.recipe_class(config, train_set.class_names, device, dtype,
                                       steps_per_epoch(len(train_set), config.batch_size, world_size))
        except RuntimeError as exc:
            if not is_out_of_memory(exc):
                raise
            raise out_of_memory_error(exc, config, device, "building the networks, before any training") from None
        recipe.check_training_data(train_set)
        metrics = fit(recipe, train_set, test_set, out, log=log)
        if rank == 0 and config.quality and kind.generative:
            quality = measure_sample_quality(out, train_set, test_set, device, dtype, log, config.quality_samples)
            if quality is not None:
                metrics["quality"] = quality
                atomic_write_json(metrics, out / METRICS)
    return metrics


def load_run_data(training: dict, data_dir: str | None = None, limit_test: int | None = None,
                  progress: bool = True, log=None, download: bool = False) -> tuple[ImageDataset, ImageDataset]:
    """The (train, test) splits a run trains and is measured on, from its training settings (a run's
    ``config.json`` "training" part, or a configuration as a dict): the same data set, image size,
    held-out split and limits. ``data_dir`` and ``limit_test`` override the run's. Only training
    downloads CIFAR-10 (``download``): a trained model's data is already there, so a mistyped
    ``--data-dir`` is an error, not a new folder and a download."""
    return load_splits(data_dir or training.get("data_dir") or default_data_dir(),
                       dataset=training.get("dataset", "auto"), image_size=training.get("image_size", 32),
                       test_fraction=training.get("test_fraction", 0.1), limit_train=training.get("limit_train"),
                       limit_test=limit_test or training.get("limit_test"), download=download, progress=progress,
                       log=log)


def evaluate_model(model, test_set: ImageDataset, device, autocast_dtype=None) -> dict:
    """The headline test figures of a loaded model (see :func:`cifargen.load`)."""
    return model_kind(model.kind).evaluate(model, test_set, device, autocast_dtype)


def measure_sample_quality(run_dir: Path, train_set: ImageDataset, test_set: ImageDataset, device, dtype,
                           log, n: int = QUALITY_SAMPLES) -> dict | None:
    """Sample-quality figures of the run's best model with the reference classifier, or None
    (and one line to ``log``) when no reference classifier has been trained; ``{"skipped": reason, ...}``
    (and that line) when it is too weak to measure anything."""
    classifier, reason = find_reference_classifier(test_set, device=device)
    if classifier is None:
        log(f"sample-quality figures skipped: {reason}")
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


def export_best_model(run_dir: str | os.PathLike, device="cpu", data_dir: str | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` from ``best.pt`` of a run that stopped before
    its end (Ctrl-C, a crash), so that it can be evaluated, sampled and fitted; returns the folder.

    A model file written this way is written again once a resumed run has a later best epoch. The
    data set's identity (its class names) comes from the checkpoint or ``metrics.json``; only a run
    that recorded neither reads its data (from ``data_dir`` when given)."""
    run_dir = Path(run_dir)
    if (run_dir / WEIGHTS).is_file() and not _model_file_is_stale(run_dir):
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
    metrics = read_metrics(run_dir / METRICS) or {}
    identity = best.get("data") or metrics.get("data")
    if not (isinstance(identity, dict) and isinstance(identity.get("class_names"), list)):
        identity = load_run_data(config.to_dict(), data_dir, progress=False)[0].identity()
    identity = {k: identity.get(k) for k in ("name", "class_names", "image_size")}
    class_names = tuple(identity["class_names"])
    recipe = kind.recipe_class(config, class_names, torch.device(device), None, steps_per_epoch=1)
    recipe.load_model_state(best["models"])
    save_model(recipe.export_model(), run_dir, class_names, training=config.to_dict(),
               metrics={"epoch": best["epoch"], "best_epoch": best["epoch"], "test": best["test"], "best": best["test"],
                        "precision": metrics.get("precision", "float32"), "device": str(device), "data": identity})
    return run_dir


def _model_file_is_stale(run_dir: Path) -> bool:
    """Whether the run's ``best.pt`` holds a later best epoch than its model file: a model exported
    from a stopped run whose training was then resumed (or is still going) and improved."""
    if not (run_dir / BEST_CHECKPOINT).is_file():
        return False
    try:
        exported = json.loads((run_dir / CONFIG).read_text())["metrics"]["best_epoch"]
    except (OSError, ValueError, KeyError, TypeError):
        return False  # nothing to compare: keep the model file
    try:
        current = torch.load(run_dir / BEST_CHECKPOINT, map_location="cpu", weights_only=True, mmap=True)["epoch"]
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, KeyError, TypeError):
        return False  # unreadable: keep the model file
    return exported != current


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
    metrics = read_metrics(run_dir / METRICS)
    if metrics is None and (run_dir / METRICS).exists():  # refuse before anything in the folder changes
        raise ConfigError(f"{run_dir / METRICS} is damaged (not a JSON object); restore it, or move it aside to fit "
                          "the prior without recording it there")
    run_dir = export_best_model(run_dir, device, data_dir)
    model = load(run_dir, device)
    if not hasattr(model, "fitted_prior"):
        raise ConfigError(f"{run_dir} holds a model of kind {model.kind}; only vae and cvae models have a latent "
                          "prior to fit")
    training = model.model_config.get("training", {})
    dtype = resolve_precision("bf16" if model.model_config.get("metrics", {}).get("precision") == "bfloat16" else "fp32",
                              torch.device(device))
    train_set, test_set = load_run_data(training, data_dir, progress=False, log=log)
    check_classes(model, train_set)
    prior_config = prior_config or PriorConfig()
    log(f"fitting {prior_config} to the codes of {len(train_set)} training images")
    model.fitted_prior, report = fit_prior(model, train_set, device, dtype, prior_config, test_set)
    save_fitted_prior(model, run_dir)
    log(f"fitted in {report['fit_seconds']} s (encoding {report['encode_seconds']} s); mean log-likelihood of the "
        f"test codes {report['test_log_likelihood']:.1f} nats")
    if metrics is not None:
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
