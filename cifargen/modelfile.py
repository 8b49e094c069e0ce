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

from .configs import config_from_dict
from .errors import ConfigError
from .runtime import atomic_write_json

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT_VERSION = 1


def build_model(kind: str, arch: dict) -> nn.Module:
    """A fresh network of ``kind`` (vae, cvae, acgan, classifier) with architecture arguments ``arch``."""
    from .models import ACGAN, CVAE, VAE, ACGANConfig, Classifier, ClassifierConfig, VAEConfig

    if kind in ("vae", "cvae"):
        # The class, not the file, says whether the decoder is conditional.
        config = config_from_dict(VAEConfig, {k: v for k, v in arch.items() if k != "conditional"})
        return CVAE(config) if kind == "cvae" else VAE(config)
    if kind == "acgan":
        return ACGAN(config_from_dict(ACGANConfig, arch))
    if kind == "classifier":
        return Classifier(config_from_dict(ClassifierConfig, arch))
    raise ConfigError(f"unknown model kind {kind!r} in {CONFIG}")


def save_model(model: nn.Module, folder: str | os.PathLike, class_names, training: dict | None = None,
               metrics: dict | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``folder``; returns the weights path."""
    from safetensors.torch import save_file

    folder = Path(folder)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = folder / (WEIGHTS + ".tmp")
    save_file(state, str(tmp), metadata={"kind": model.kind})
    os.replace(tmp, folder / WEIGHTS)
    atomic_write_json({"format_version": FORMAT_VERSION, "kind": model.kind, "arch": model.config.to_dict(),
                       "class_names": list(class_names), "training": training or {}, "metrics": metrics or {}},
                      folder / CONFIG)
    return folder / WEIGHTS


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
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, config_path = _model_paths(path)
    try:
        config = json.loads(config_path.read_text())
        model = build_model(config["kind"], config["arch"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{config_path} is not a cifargen model configuration ({exc})") from None
    except ConfigError as exc:
        raise ConfigError(f"{config_path}: {exc}") from None
    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {weights} ({exc}); the file is damaged or not a safetensors file") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(f"{weights} does not match the architecture in {config_path}: {str(exc)[:300]}") from None
    model.to(device).eval()
    model.class_names = tuple(config.get("class_names", ()))
    model.model_config = config
    return model
