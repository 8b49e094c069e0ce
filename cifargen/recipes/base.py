"""What every model's training shares: :class:`TrainConfig` (the settings) and :class:`Recipe`
(what a model brings to the one training loop in :mod:`cifargen.training`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from ..data import ImageDataset, default_data_dir
from ..errors import ConfigError


@dataclass(kw_only=True)
class TrainConfig:
    """Settings every model shares. Each model's configuration class extends it and sets the
    defaults of ``model``, ``epochs``, ``batch_size`` and ``lr``."""

    model: str
    epochs: int
    batch_size: int                # per process: under torchrun the global batch is this times the world size
    lr: float
    seed: int = 0
    device: str = "auto"
    data_dir: str = field(default_factory=default_data_dir)
    out: str | None = None         # run folder; default: the model's folder under visualize/
    dataset: str = "auto"          # auto (detected from data_dir), cifar10, cifar100 or folder
    image_size: int = 32           # pixels; images are resized (folders: shorter side, then center crop)
    test_fraction: float = 0.1     # image folders without test/: the held-out share (seeded, stratified)
    limit_train: int | None = None
    limit_test: int | None = None
    precision: str = "auto"        # auto: bf16 autocast where the hardware has it, else fp32
    compile: bool = False
    threads: int | None = None     # CPU threads; default: the physical cores
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    quality: bool = True           # generators: sample-quality figures in metrics.json when a reference classifier exists
    quality_samples: int = 10_000  # samples behind each set of sample-quality figures
    tensorboard: str | None = None  # TensorBoard log folder; "" for tensorboard/ in the run folder

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first invalid setting."""
        if self.epochs <= 0:
            raise ConfigError(f"--epochs must be positive, got {self.epochs}")
        if self.batch_size <= 0:
            raise ConfigError(f"--batch-size must be positive, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"--lr must be a positive number, got {self.lr}")
        for name in ("limit_train", "limit_test", "threads"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if not 0 <= self.seed < 2 ** 63:
            raise ConfigError(f"--seed must be between 0 and 2**63 - 1, got {self.seed}")
        if self.image_size < 16 or self.image_size % 4:
            raise ConfigError(f"--image-size must be a multiple of 4 and at least 16, got {self.image_size}")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"--test-fraction must be between 0 and 1, got {self.test_fraction}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"--precision must be auto, bf16 or fp32, got {self.precision!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def arch_for(self, num_classes: int | None = None):
        """The architecture a run builds: the model's ``arch`` at the run's image size and, once the
        data is known, its class count."""
        settings = {"image_size": self.image_size, **({"num_classes": num_classes} if num_classes else {})}
        return type(self.arch)(**{**self.arch.to_dict(), **settings})


class Recipe:
    """What a model brings to the loop: its networks, optimizers and schedules, one
    ``train_step``, an ``evaluate``, its figures and the files it writes.

    Subclasses set ``best_metric``/``best_mode`` and ``output_files`` and implement
    ``train_step``, ``evaluate`` and ``export_model``; the rest has sensible defaults.
    """

    best_metric: str = "loss"
    best_mode: str = "min"  # or "max"
    # Regular expressions of the file names the recipe writes into a run folder (besides the
    # loop's own), so that --overwrite removes exactly what an earlier run wrote.
    output_files: tuple[str, ...] = ()

    def __init__(self, config: TrainConfig, class_names: tuple[str, ...], device: torch.device,
                 autocast_dtype: torch.dtype | None, steps_per_epoch: int):
        self.config = config
        self.steps_per_epoch = steps_per_epoch  # per process; per-step schedules need the run's length
        self.class_names = class_names
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.modules: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}       # stepped after every epoch
        self.step_schedulers: dict[str, Any] = {}  # stepped after every training step (warm-ups, decays)

    def wrap(self, module: nn.Module, broadcast_buffers: bool = True) -> nn.Module:
        """The module the step should call: DDP-wrapped under torchrun, compiled with ``--compile``.

        Checkpoints and evaluation use the plain module, which shares its parameters.
        """
        if dist.is_available() and dist.is_initialized():
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            module = DistributedDataParallel(module, device_ids=device_ids, broadcast_buffers=broadcast_buffers)
        return torch.compile(module) if self.config.compile else module

    # --- called by the loop -------------------------------------------------------------
    def start_epoch(self, epoch: int) -> dict[str, float]:
        """Prepare epoch ``epoch`` (0-based); return values to log for it (the KL weight...)."""
        return {}

    def learning_rate(self) -> float:
        """The learning rate now (of the first optimizer); the loop logs it after an epoch's last step,
        so an epoch that starts in a warm-up logs the rate it reached."""
        return next(iter(self.optimizers.values())).param_groups[0]["lr"]

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimisation step; returns batch means as detached device tensors (never ``.item()``)."""
        raise NotImplementedError

    def after_step(self) -> None:
        for scheduler in self.step_schedulers.values():
            scheduler.step()

    def end_epoch(self, epoch: int) -> None:
        for scheduler in self.schedulers.values():
            scheduler.step()

    def evaluate(self, test_set: ImageDataset) -> dict[str, float]:
        """Test figures after an epoch; ``best_metric`` must be among them."""
        raise NotImplementedError

    def epoch_images(self, epoch: int, test_set: ImageDataset) -> dict[str, torch.Tensor]:
        """The image grids behind the figures after epoch ``epoch``: name -> (rows, cols, C, H, W) in [0, 1]."""
        return {}

    def epoch_figures(self, epoch: int, test_set: ImageDataset, out_dir: Path,
                      images: dict[str, torch.Tensor] | None = None) -> None:
        """Figures after epoch ``epoch`` (0-based), of ``images`` when given (else :meth:`epoch_images`);
        runs between epochs, never per step."""

    def check_training_data(self, train_set: ImageDataset) -> None:
        """Refuse, before the first step, training data that :meth:`final_outputs` could not use."""

    def final_outputs(self, metrics: dict, train_set: ImageDataset, test_set: ImageDataset, out_dir: Path) -> dict:
        """Figures and extra figures after training, with the best weights loaded."""
        return {}

    def export_model(self) -> nn.Module:
        """The trained network to write as ``model.safetensors`` (it has ``kind`` and ``config``)."""
        raise NotImplementedError

    # --- state --------------------------------------------------------------------------
    def model_state(self) -> dict:
        return {name: module.state_dict() for name, module in self.modules.items()}

    def load_model_state(self, state: dict) -> None:
        for name, module in self.modules.items():
            module.load_state_dict(state[name])

    def state_dict(self) -> dict:
        return {
            "models": self.model_state(),
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
            "schedulers": {k: v.state_dict() for k, v in self.schedulers.items()},
            "step_schedulers": {k: v.state_dict() for k, v in self.step_schedulers.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.load_model_state(state["models"])
        for k, v in self.optimizers.items():
            v.load_state_dict(state["optimizers"][k])
        for k, v in self.schedulers.items():
            v.load_state_dict(state["schedulers"][k])
        for k, v in self.step_schedulers.items():
            v.load_state_dict(state["step_schedulers"][k])

    def train(self) -> None:
        for module in self.modules.values():
            module.train()

    def eval(self) -> None:
        for module in self.modules.values():
            module.eval()

    def is_better(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        return value < best if self.best_mode == "min" else value > best
