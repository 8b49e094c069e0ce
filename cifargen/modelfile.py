"""Model files: ``model.safetensors`` (weights only, no code) plus ``config.json`` beside it.

``load(path)`` rebuilds the network from ``config.json`` and fills it from the safetensors file,
so loading a model from anywhere never runs pickled code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from . import registry
from .errors import ConfigError
from .priors import load_prior, save_prior
from .runtime import atomic_write_bytes, atomic_write_json, is_out_of_memory

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT_VERSION = 1


def build_model(kind: str, arch: dict) -> nn.Module:
    """A fresh network of ``kind`` (a name in :data:`cifargen.registry.MODELS`) from saved architecture settings."""
    try:
        return registry.model_kind(kind).build(arch)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (in {CONFIG})") from None


def save_model(model: nn.Module, folder: str | os.PathLike, class_names, training: dict | None = None,
               metrics: dict | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``folder``; returns the weights path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(save(state, metadata={"kind": model.kind}), folder / WEIGHTS)
    config = {"format_version": FORMAT_VERSION, "kind": model.kind, "arch": model.config.to_dict(),
              "class_names": list(class_names), "training": training or {}, "metrics": metrics or {}}
    if getattr(model, "fitted_prior", None) is not None:
        config["prior"] = save_prior(model.fitted_prior, folder)
    atomic_write_json(config, folder / CONFIG)
    return folder / WEIGHTS


def save_fitted_prior(model: nn.Module, folder: str | os.PathLike) -> None:
    """Add (or replace) ``model.fitted_prior`` in the model file in ``folder``, leaving the weights as they are."""
    folder = Path(folder)
    _, config_path = _model_paths(folder)
    config = json.loads(config_path.read_text())
    config["prior"] = save_prior(model.fitted_prior, folder)
    atomic_write_json(config, config_path)


def _model_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    path = Path(path)
    weights = path / WEIGHTS if path.is_dir() else path
    config = weights.with_name(CONFIG)
    if not weights.is_file():
        raise ConfigError(f"no model file at {weights}: pass a run folder holding {WEIGHTS} or the file itself")
    if not config.is_file():
        raise ConfigError(f"{config} is missing: a cifargen model needs its {CONFIG} beside {weights.name}")
    return weights, config


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Load a trained model from a run folder or a ``model.safetensors`` file, in eval mode.

    The returned module has ``class_names`` and ``model_config`` (the parsed config.json) set.
    """
    weights, config_path = _model_paths(path)
    try:
        config = json.loads(config_path.read_text())
        model = build_model(config["kind"], config["arch"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{config_path} is not a cifargen model configuration ({exc})") from None
    except ConfigError as exc:
        raise ConfigError(f"{config_path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {config_path} ({exc.strerror or exc}); pass a run folder or model file") from None
    except RuntimeError as exc:
        if not is_out_of_memory(exc):
            raise
        raise ConfigError(f"{config_path} describes a network too large for this machine's memory "
                          f"({str(exc).splitlines()[0][:160]}); the file is damaged or from another model") from None
    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {weights} ({exc}); the file is damaged or not a safetensors file") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        # torch lists every mismatched tensor on its own line: the first one says enough.
        detail = "; ".join(line.strip() for line in str(exc).splitlines()[:2])[:300]
        raise ConfigError(f"{weights} does not match the architecture in {config_path}: {detail}") from None
    model.to(device).eval()
    if "prior" in config:
        model.fitted_prior = load_prior(weights.parent, config["prior"])
    model.class_names = tuple(config.get("class_names", ()))
    model.model_config = config
    model.weights_path = weights
    return model
