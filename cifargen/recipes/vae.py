"""How a VAE or CVAE trains: joint reconstruction loss + annealed KL, step LR decay, figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data import ImageDataset, to_float
from ..errors import ConfigError
from ..evaluation import evaluate_vae, reconstruct
from ..images import denormalize
from ..losses import kl_per_sample, reconstruction_terms
from ..models.vae import CVAE, VAE, VAEConfig
from ..priors import FIXES_WHEN_TRAINING, PriorConfig, check_prior_data, fit_prior
from ..plotting import plot_curves, save_image_rows, save_labelled_grid
from ..runtime import autocast
from ..schedules import KLSchedule, lr_milestones
from .base import Recipe, TrainConfig

# Test images shown in every epoch's E<epoch>.png (indices into the official test split).
FIXED_TEST_INDICES = (0, 380, 500, 728, 1000, 2300, 3400, 4300, 4800, 5000)
NUM_RANDOM_SAMPLES = 20


@dataclass(kw_only=True)
class VAETrainConfig(TrainConfig):
    """Training configuration of the VAE and CVAE; the defaults reproduce the headline results (docs/DECISIONS.md says why)."""

    model: str = "vae"
    epochs: int = 30               # lambda 0 in epoch 1, 1e-4 to epoch 20, then rising to 1.0 at epoch 30
    batch_size: int = 64
    lr: float = 5e-4
    arch: VAEConfig = field(default_factory=VAEConfig)
    kl: KLSchedule = field(default_factory=KLSchedule)
    lr_decay_at: tuple[float, ...] = (0.5,)  # fractions of the run: after epoch 15 of 30
    lr_decay_factor: float = 0.1
    # Linear learning-rate warm-up: Adam's first, sign-like steps otherwise throw log_var far up.
    warmup_steps: int = 500
    warmup_fraction: float = 0.05  # ...but at most this fraction of the run, so that short runs leave it
    fit_prior: bool = True         # fit a Gaussian mixture to the training codes after training (cifargen.priors)
    prior: PriorConfig = field(default_factory=PriorConfig)

    def validate(self) -> None:
        super().validate()
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 < self.warmup_fraction <= 1:
            raise ConfigError(f"warmup_fraction is a fraction of the run in (0, 1], got {self.warmup_fraction}")


class VAERecipe(Recipe):
    """Step: L = MSE + (1 - SSIM) + BCE + lambda * KL, lambda from the per-epoch KL schedule."""

    model_class: type[VAE] = VAE
    best_metric = "rec"
    best_mode = "min"
    output_files = (r"E\d+\.png", r"losses\.png", r"total_loss\.png", r"random\.png")

    def __init__(self, config: VAETrainConfig, class_names, device, autocast_dtype, steps_per_epoch):
        super().__init__(config, class_names, device, autocast_dtype, steps_per_epoch)
        arch = config.arch_for(len(class_names))
        self.model = self.model_class(arch).to(device, memory_format=torch.channels_last)
        self.modules = {"model": self.model}
        self.step_model = self.wrap(self.model)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, fused=device.type in ("cuda", "cpu"))
        self.optimizers = {"model": self.optimizer}
        self.schedulers = {"model": torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, lr_milestones(config.epochs, config.lr_decay_at), config.lr_decay_factor)}
        warmup = min(config.warmup_steps, max(1, round(config.warmup_fraction * config.epochs * steps_per_epoch)))
        if config.warmup_steps > 0:
            self.step_schedulers = {"warmup": torch.optim.lr_scheduler.LinearLR(
                self.optimizer, start_factor=1.0 / warmup, total_iters=warmup)}
        self.kl_weight = 0.0

    def export_model(self):
        return self.model

    def start_epoch(self, epoch: int) -> dict[str, float]:
        self.kl_weight = self.config.kl.weight(epoch, self.config.epochs)
        return {"kl_weight": self.kl_weight}

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        with autocast(self.device, self.autocast_dtype):
            out, logits = self.step_model(x, y, return_logits=True)
        terms = {k: v.mean() for k, v in reconstruction_terms(x, logits).items()}
        kl = kl_per_sample(out.mu, out.log_var).mean()
        # Leave KL out entirely at lambda = 0, so an overflowing KL cannot turn the loss into 0 * inf.
        loss = terms["rec"] + self.kl_weight * kl if self.kl_weight else terms["rec"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}, "kl": kl.detach()}

    def evaluate(self, test_set: ImageDataset, autocast_dtype="training") -> dict[str, float]:
        dtype = self.autocast_dtype if autocast_dtype == "training" else autocast_dtype
        return evaluate_vae(self.model, test_set, self.device, dtype)

    def _figure_indices(self, test_set: ImageDataset) -> torch.Tensor:
        return torch.tensor([i for i in FIXED_TEST_INDICES if i < len(test_set)] or list(range(min(10, len(test_set)))))

    def epoch_images(self, epoch: int, test_set: ImageDataset) -> dict[str, torch.Tensor]:
        """The fixed test images (first row) and their reconstructions (second row)."""
        index = self._figure_indices(test_set)
        x = to_float(test_set.images[index]).to(self.device).contiguous(memory_format=torch.channels_last)
        recon = reconstruct(self.model, x, test_set.labels[index].to(self.device), self.autocast_dtype)
        return {"reconstructions": torch.stack([x.float(), recon.float()]).cpu()}

    def epoch_figures(self, epoch: int, test_set: ImageDataset, out_dir: Path,
                      images: dict[str, torch.Tensor] | None = None) -> None:
        x, recon = (images or self.epoch_images(epoch, test_set))["reconstructions"]
        names = [self.class_names[int(c)] for c in test_set.labels[self._figure_indices(test_set)]]
        save_image_rows([denormalize(x), denormalize(recon)], out_dir / f"E{epoch + 1}.png", titles=names,
                        row_labels=["original", "reconstruction"], title=f"{self.config.model.upper()} epoch {epoch + 1}")

    def check_training_data(self, train_set: ImageDataset) -> None:
        if self.config.fit_prior:  # the prior is fitted after the last epoch: fail now, not then
            check_prior_data(self.model.conditional, self.model.config.num_classes, train_set, self.config.prior,
                             FIXES_WHEN_TRAINING)

    def final_outputs(self, metrics: dict, train_set: ImageDataset, test_set: ImageDataset, out_dir: Path) -> dict:
        history = metrics["history"]
        epochs = [h["epoch"] for h in history]
        test = {k: [h["test"][k] for h in history] for k in ("mse", "bce", "ssim_loss", "kl")}
        plot_curves(epochs, {"test MSE": test["mse"], "test BCE": test["bce"], "test SSIM loss (1 - SSIM)": test["ssim_loss"],
                             "test KL": test["kl"]}, out_dir / "losses.png",
                    title=f"{self.config.model.upper()} test losses per epoch", separate=True, log_y=("test KL",))
        plot_curves(epochs, {"train total reconstruction loss": [h["train"]["rec"] for h in history],
                             "test total reconstruction loss": [h["test"]["rec"] for h in history]},
                    out_dir / "total_loss.png", title=f"{self.config.model.upper()} total reconstruction loss per sample")
        extra = {}
        if self.config.fit_prior:
            prior, extra["prior"] = fit_prior(self.model, train_set, self.device, self.autocast_dtype, self.config.prior,
                                              test_set)
            self.model.fitted_prior = prior
        save_random_samples(self.model, self.class_names, out_dir / "random.png", self.config.seed,
                            f"{self.config.model.upper()}: samples of the best checkpoint (epoch {metrics['best_epoch']})")
        extra.update({"kl_weights": [h["kl_weight"] for h in history],
                      "kl_weight_at_best": history[metrics["best_epoch"] - 1]["kl_weight"]})
        if self.autocast_dtype is not None:
            # The headline figures come from mixed-precision inference; report full precision beside them.
            extra["best_fp32"] = self.evaluate(test_set, autocast_dtype=None)
        return extra


def save_random_samples(model, class_names, path: Path, seed: int, title: str) -> None:
    """``random.png``: 20 samples of z ~ N(0, I), then (with a fitted prior) 20 of the fitted prior
    for the same classes, each row named by its prior and each sample by its class."""
    images, classes = model.generate(NUM_RANDOM_SAMPLES, generator=torch.Generator().manual_seed(seed))
    blocks, row_labels = [images], ["N(0, I)"] * 2
    if model.fitted_prior is not None:
        fitted, _ = model.generate(NUM_RANDOM_SAMPLES, classes, torch.Generator().manual_seed(seed), prior="fitted")
        blocks.append(fitted)
        row_labels += ["fitted prior"] * 2
    names = None if classes is None else [class_names[int(c)] for c in classes] * len(blocks)
    save_labelled_grid(denormalize(torch.cat(blocks)), path, labels=names, row_labels=row_labels, title=title)


class CVAERecipe(VAERecipe):
    """The VAE's recipe with the conditional model."""

    model_class = CVAE
