"""How the reference classifier trains: SGD with Nesterov momentum, a one-cycle learning rate
(linear warm-up, then linear decay to zero, per step), label smoothing, flips and shifts.

The classifier is a measuring instrument for the generators' samples (``cifargen.quality``),
so it lives in the user's cache folder rather than in a run folder of ``visualize/``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..augment import flip_and_translate
from ..data import CIFAR10_CLASSES, ImageDataset, peek_identity
from ..evaluation import classifier_accuracy
from ..models.classifier import Classifier, ClassifierConfig
from ..plotting import plot_curves
from ..runtime import autocast, cache_root
from .base import Recipe, TrainConfig


def classifier_dir_for(identity: dict) -> Path:
    """The cache folder of the reference classifier of one data set (name, classes, image size):
    ``$CIFARGEN_CACHE/classifier/<name>-<N>classes-<S>px-<digest of the class names>``."""
    names = identity["class_names"]
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:8]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", identity["name"]).strip("._") or "data"
    return cache_root() / "classifier" / f"{slug}-{len(names)}classes-{identity['image_size']}px-{digest}"


def default_classifier_dir(config: TrainConfig | None = None) -> Path:
    """Where ``cifargen classifier train`` writes and the quality figures look: the cache folder of
    the data set that ``config`` trains on (CIFAR-10 at 32x32 without one)."""
    if config is None:
        return classifier_dir_for({"name": "cifar10", "class_names": list(CIFAR10_CLASSES), "image_size": 32})
    return classifier_dir_for(peek_identity(config.data_dir, config.dataset, config.image_size))


@dataclass(kw_only=True)
class ClassifierTrainConfig(TrainConfig):
    """Training configuration of the reference classifier; defaults reproduce the headline accuracy."""

    model: str = "classifier"
    epochs: int = 15
    batch_size: int = 256
    lr: float = 0.2                # peak of the one-cycle schedule
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    warmup_fraction: float = 0.2   # of all steps, rising linearly from lr / 10 to lr
    translate_augment: int = 4
    arch: ClassifierConfig = field(default_factory=ClassifierConfig)


def one_cycle(step: int, total: int, warmup_fraction: float) -> float:
    """Learning-rate factor at ``step`` of ``total``: 0.1 -> 1 over the warm-up, then 1 -> 0."""
    warmup = max(1, round(warmup_fraction * total))
    if step < warmup:
        return 0.1 + 0.9 * step / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


class ClassifierRecipe(Recipe):
    best_metric = "accuracy"
    best_mode = "max"
    output_files = (r"accuracy\.png",)

    def __init__(self, config: ClassifierTrainConfig, class_names, device, autocast_dtype, steps_per_epoch):
        super().__init__(config, class_names, device, autocast_dtype, steps_per_epoch)
        arch = config.arch_for(len(class_names))
        self.model = Classifier(arch).to(device, memory_format=torch.channels_last)
        self.modules = {"model": self.model}
        self.step_model = self.wrap(self.model)
        # No weight decay on batch-norm scales and biases, as usual for ResNets.
        decay = [p for p in self.model.parameters() if p.ndim > 1]
        no_decay = [p for p in self.model.parameters() if p.ndim <= 1]
        self.optimizer = torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay},
                                          {"params": no_decay, "weight_decay": 0.0}],
                                         lr=config.lr, momentum=config.momentum, nesterov=True)
        self.optimizers = {"model": self.optimizer}
        total = config.epochs * steps_per_epoch
        self.step_schedulers = {"one_cycle": torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: one_cycle(step, total, config.warmup_fraction))}

    def export_model(self):
        return self.model

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        x = flip_and_translate(x, flip=True, max_shift=self.config.translate_augment)
        with autocast(self.device, self.autocast_dtype):
            logits = self.step_model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.config.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.detach(), "accuracy": (logits.argmax(1) == y).float().mean()}

    def evaluate(self, test_set: ImageDataset) -> dict[str, float]:
        return {"accuracy": classifier_accuracy(self.model, test_set, self.device, self.autocast_dtype)}

    def final_outputs(self, metrics: dict, train_set: ImageDataset, test_set: ImageDataset, out_dir: Path) -> dict:
        history = metrics["history"]
        plot_curves([h["epoch"] for h in history],
                    {"train accuracy (augmented batches)": [h["train"]["accuracy"] for h in history],
                     "test accuracy": [h["test"]["accuracy"] for h in history]},
                    out_dir / "accuracy.png", title="Reference classifier accuracy")
        return {}
