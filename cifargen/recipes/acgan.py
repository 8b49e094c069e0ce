"""How the AC-GAN trains: one discriminator update, then one generator update, per batch."""

from __future__ import annotations

import contextlib

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..augment import flip_and_translate
from ..data import ImageDataset
from ..errors import ConfigError
from ..evaluation import evaluate_acgan
from ..images import denormalize
from ..losses import adversarial_loss, auxiliary_loss, hinge_discriminator_loss, hinge_generator_loss
from ..models.acgan import ACGAN, ACGANConfig
from ..plotting import plot_curves, save_labelled_grid
from ..runtime import autocast
from .base import Recipe, TrainConfig

ADVERSARIAL_LOSSES = ("bce", "hinge")
NUM_FIXED_SAMPLES = 20
FIGURE_COLUMNS = 10  # samples per row of E<epoch>.png


@dataclass(kw_only=True)
class ACGANTrainConfig(TrainConfig):
    """Training configuration of the AC-GAN; the defaults reproduce the headline results (docs/DECISIONS.md says why)."""

    # What runs saved before a setting existed did, where its default has changed since.
    VALUES_BEFORE_FIELD: ClassVar[dict] = {"lr_decay_from": 1.0, "real_class_weight": 1.0, "mode_seeking": 0.0,
                                           "ema_decay": 0.0, "fake_class_weight": 1.0, "class_label_smoothing": 0.0}

    model: str = "acgan"
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-4               # the generator's (and the discriminator's unless d_lr is set)
    d_lr: float | None = None      # the discriminator's learning rate (None: lr)
    d_weight_decay: float = 0.0    # decoupled weight decay of D's weights, not its norms and biases (AdamW; 0: Adam)
    betas: tuple[float, float] = (0.5, 0.999)
    arch: ACGANConfig = field(default_factory=ACGANConfig)
    label_smoothing: float = 0.0   # one-sided: real target 1 - label_smoothing
    flip_augment: bool = True      # random horizontal flips of the discriminator's inputs
    translate_augment: int = 4     # random shifts of up to this many pixels (zero fill); 0 turns it off
    cutout: int = 0                # DiffAugment's cutout: a random square of this many pixels zeroed (0: off)
    lr_decay_from: float = 0.5     # both learning rates fall linearly to 0 from this fraction of the run (1: constant)
    # MSGAN's mode-seeking weight: two latents of one class must not render the same image (0: off).
    mode_seeking: float = 2.5
    real_class_weight: float = 10.0  # weight of D's class loss on real images
    fake_class_weight: float = 0.0  # weight of D's class loss on generated images (0: D learns classes from real ones only)
    generator_class_weight: float = 1.0  # weight of G's class loss (0: G is not asked to look like its class)
    # TAC-GAN's twin term (needs arch.twin_class_head): G's loss subtracts this times the twin
    # head's class loss on its samples, undoing part of the class loss's pull to the most typical image.
    twin_class_weight: float = 0.0
    # Label smoothing of D's class loss (0: hard labels); G's class loss keeps hard labels.
    class_label_smoothing: float = 0.1
    adversarial: str = "bce"       # the real/fake loss: bce (non-saturating) or hinge
    # Consistency regularisation (bCR, Zhao et al. 2021) on real images: weight of the squared
    # difference between D's outputs (both heads) on two augmentations of each image (0: off).
    consistency: float = 0.0
    # Exponential moving average of both networks' weights, updated every step (0: off). The
    # averages draw the figures and samples, are evaluated, and are what the model file holds.
    ema_decay: float = 0.999

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.lr_decay_from <= 1:
            raise ConfigError(f"lr_decay_from is a fraction of the run in [0, 1], got {self.lr_decay_from}")
        if self.mode_seeking < 0:
            raise ConfigError(f"mode_seeking must be >= 0, got {self.mode_seeking}")
        if self.real_class_weight <= 0:
            raise ConfigError(f"real_class_weight must be positive, got {self.real_class_weight}")
        if self.fake_class_weight < 0:
            raise ConfigError(f"fake_class_weight must be >= 0, got {self.fake_class_weight}")
        if self.generator_class_weight < 0:
            raise ConfigError(f"generator_class_weight must be >= 0, got {self.generator_class_weight}")
        if self.twin_class_weight < 0:
            raise ConfigError(f"twin_class_weight must be >= 0, got {self.twin_class_weight}")
        if self.twin_class_weight > 0 and not self.arch.twin_class_head:
            raise ConfigError(f"twin_class_weight {self.twin_class_weight} needs the discriminator's twin class "
                              "head: add --set arch.twin_class_head=true, or set --set twin_class_weight=0")
        if not 0 <= self.class_label_smoothing < 1:
            raise ConfigError(f"class_label_smoothing must be in [0, 1), got {self.class_label_smoothing}")
        if self.adversarial not in ADVERSARIAL_LOSSES:
            raise ConfigError(f"adversarial must be one of {', '.join(ADVERSARIAL_LOSSES)}, got {self.adversarial!r}")
        if not 0 <= self.cutout <= self.image_size:
            raise ConfigError(f"cutout is a square's side in pixels, from 0 (off) to the image size "
                              f"{self.image_size}, got {self.cutout}")
        if self.d_weight_decay < 0:
            raise ConfigError(f"d_weight_decay must be >= 0, got {self.d_weight_decay}")
        if self.consistency < 0:
            raise ConfigError(f"consistency must be >= 0, got {self.consistency}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1) (0: no moving average), got {self.ema_decay}")


@contextlib.contextmanager
def frozen_running_stats(module: torch.nn.Module):
    """Batch norm normalises with the batch's statistics but leaves its running statistics alone.

    The generator's step shows the discriminator generated images only; those batches would skew
    the running statistics away from the real images that evaluation normalises.
    """
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum


def mode_seeking_loss(images: torch.Tensor, z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """MSGAN's term: 1 / (mean |G(z1) - G(z2)| / mean |z1 - z2|) over the pairs (first half, last half)."""
    half = images.shape[0] // 2
    if half == 0:  # a batch of one image has no pair
        return images.new_zeros((), dtype=torch.float32)
    first, last = slice(0, half), slice(images.shape[0] - half, None)
    ratio = (images[first].float() - images[last].float()).abs().mean() / (z[first] - z[last]).abs().mean()
    return 1.0 / (ratio + eps)


def consistency_loss(adv_a: torch.Tensor, cls_a: torch.Tensor, adv_b: torch.Tensor, cls_b: torch.Tensor) -> torch.Tensor:
    """bCR's term: mean squared difference of the real/fake logits plus that of the class logits
    (summed over classes) between two augmentations of the same images."""
    adv_term = (adv_a.float() - adv_b.float()).pow(2).mean()
    return adv_term + (cls_a.float() - cls_b.float()).pow(2).sum(1).mean()


@torch.no_grad()
def update_average(average: AveragedModel, module: torch.nn.Module) -> None:
    """``average.update_parameters(module)`` (buffers included) without its per-step copy of the
    step count to the device, a host sync on GPUs: the count stays on the CPU, the first update
    copies the weights, later ones apply the average's ``multi_avg_fn`` to each dtype's tensors."""
    targets = [*average.module.parameters(), *average.module.buffers()]
    sources = [t.detach() for t in (*module.parameters(), *module.buffers())]
    if int(average.n_averaged) == 0:
        for target, source in zip(targets, sources):
            target.copy_(source)
    else:
        for dtype in dict.fromkeys(t.dtype for t in targets):
            pairs = [(t, s) for t, s in zip(targets, sources) if t.dtype == dtype]
            average.multi_avg_fn([t for t, _ in pairs], [s for _, s in pairs], average.n_averaged)
    average.n_averaged += 1


class ACGANRecipe(Recipe):
    best_metric = "accuracy"
    best_mode = "max"
    output_files = (r"E\d+\.png", r"loss\.png", r"accuracy\.png", r"confusion\.png")

    def __init__(self, config: ACGANTrainConfig, class_names, device, autocast_dtype, steps_per_epoch):
        super().__init__(config, class_names, device, autocast_dtype, steps_per_epoch)
        arch = config.arch_for(len(class_names))
        self.gan = ACGAN(arch).to(device, memory_format=torch.channels_last)
        self.generator, self.discriminator = self.gan.generator, self.gan.discriminator
        self.modules = {"generator": self.generator, "discriminator": self.discriminator}
        self.step_generator = self.wrap(self.generator)
        # D runs forward twice per step (its own update, then the generator's): no buffer broadcasts.
        self.step_discriminator = self.wrap(self.discriminator, broadcast_buffers=False)
        fused = device.type in ("cuda", "cpu")
        self.optimizers = {
            "generator": torch.optim.Adam(self.generator.parameters(), lr=config.lr, betas=config.betas, fused=fused),
            "discriminator": self._discriminator_optimizer(config, fused),
        }
        # Per step, so the decay is smooth.
        if config.lr_decay_from < 1:
            total = config.epochs * steps_per_epoch
            start = int(config.lr_decay_from * total)
            decay = lambda step: min(1.0, (total - step) / max(1, total - start))
            self.step_schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, decay)
                                    for name, opt in self.optimizers.items()}
        # Moving averages of the weights (buffers too: the generator's batch-norm statistics).
        self.averages = {}
        if config.ema_decay > 0:
            self.averages = {name: AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay),
                                                 use_buffers=True).eval()
                             for name, module in self.modules.items()}
        # Drawn once from the seed, so every epoch's figure renders the same z and classes.
        fixed = torch.Generator().manual_seed(config.seed + 1)
        self.fixed_z = torch.randn(NUM_FIXED_SAMPLES, arch.latent_dim, generator=fixed)
        self.fixed_classes = torch.randint(arch.num_classes, (NUM_FIXED_SAMPLES,), generator=fixed)

    def _discriminator_optimizer(self, config: ACGANTrainConfig, fused: bool) -> torch.optim.Optimizer:
        """Adam, or AdamW with ``d_weight_decay`` on the weights (norm scales and biases keep none)."""
        lr = config.d_lr or config.lr
        if not config.d_weight_decay:
            return torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=config.betas, fused=fused)
        parameters = list(self.discriminator.parameters())
        groups = [{"params": [p for p in parameters if p.ndim > 1], "weight_decay": config.d_weight_decay},
                  {"params": [p for p in parameters if p.ndim <= 1], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, betas=config.betas, fused=fused)

    def export_model(self):
        """The GAN whose weights are the moving averages when they are kept, else the trained ones."""
        if not self.averages:
            return self.gan
        gan = ACGAN(self.gan.config).to(self.device, memory_format=torch.channels_last)
        for name, average in self.averages.items():
            getattr(gan, name).load_state_dict(average.module.state_dict())
        return gan.eval()

    def sampling_generator(self) -> torch.nn.Module:
        """The generator that draws figures: the moving average when one is kept."""
        return self.averages["generator"].module if self.averages else self.generator

    def after_step(self) -> None:
        super().after_step()
        for name, average in self.averages.items():
            update_average(average, self.modules[name])

    def model_state(self) -> dict:
        state = super().model_state()
        state.update({f"{name}_average": average.state_dict() for name, average in self.averages.items()})
        return state

    def load_model_state(self, state: dict) -> None:
        super().load_model_state(state)
        for name, average in self.averages.items():
            average.load_state_dict(state[f"{name}_average"])

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        return flip_and_translate(x, self.config.flip_augment, self.config.translate_augment, self.config.cutout)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        b = x.shape[0]
        opt_g, opt_d = self.optimizers["generator"], self.optimizers["discriminator"]
        z = torch.randn(b, self.gan.config.latent_dim, device=self.device)
        y_fake = torch.randint(self.gan.config.num_classes, (b,), device=self.device)
        if self.config.mode_seeking > 0:
            y_fake[b - b // 2:] = y_fake[:b // 2]  # pairs (i, i + b - b//2) share a class
        with autocast(self.device, self.autocast_dtype):
            fake = self.step_generator(z, y_fake)

        # Discriminator: real -> real and its class, generated -> fake (and its class when
        # fake_class_weight > 0); one pass over both (and over a second augmentation of the real
        # images, for the consistency term).
        views = [x, fake.detach(), x] if self.config.consistency > 0 else [x, fake.detach()]
        twin = self.gan.config.twin_class_head
        with autocast(self.device, self.autocast_dtype):
            adv, cls, *twin_cls = self.step_discriminator(self._augment(torch.cat(views)),
                                                          twin="detached" if twin else None, segments=len(views))
        if self.config.adversarial == "hinge":
            d_adv = hinge_discriminator_loss(adv[:b], adv[b:2 * b])
        else:
            d_adv = adversarial_loss(adv[:b], True, self.config.label_smoothing) + adversarial_loss(adv[b:2 * b], False)
        smoothing = self.config.class_label_smoothing
        d_aux = self.config.real_class_weight * auxiliary_loss(cls[:b], y, smoothing)
        if self.config.fake_class_weight > 0:
            d_aux = d_aux + self.config.fake_class_weight * auxiliary_loss(cls[b:2 * b], y_fake, smoothing)
        d_loss = d_adv + d_aux
        if twin:  # the twin head learns the classes of generated images; the trunk is not taught them
            d_loss = d_loss + auxiliary_loss(twin_cls[0][b:2 * b], y_fake)
        if self.config.consistency > 0:
            d_loss = d_loss + self.config.consistency * consistency_loss(adv[:b], cls[:b], adv[2 * b:], cls[2 * b:])
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()

        # Generator: fool the real/fake head and be classified as the sampled class. The
        # discriminator's weights get no gradient here (saves a third of its backward pass), and
        # it is called unwrapped: under DDP only the generator's gradients are synchronised.
        self.discriminator.requires_grad_(False)
        with autocast(self.device, self.autocast_dtype), frozen_running_stats(self.discriminator):
            adv_g, cls_g, *twin_g = self.discriminator(self._augment(fake), twin="attached" if twin else None)
        g_adv = hinge_generator_loss(adv_g) if self.config.adversarial == "hinge" else adversarial_loss(adv_g, True)
        g_loss = g_adv + self.config.generator_class_weight * auxiliary_loss(cls_g, y_fake)
        if self.config.twin_class_weight > 0:
            g_loss = g_loss - self.config.twin_class_weight * auxiliary_loss(twin_g[0], y_fake)
        if self.config.mode_seeking > 0:
            g_loss = g_loss + self.config.mode_seeking * mode_seeking_loss(fake, z)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        self.discriminator.requires_grad_(True)

        accuracy = (cls[:b].argmax(1) == y).float().mean()
        return {"g_loss": g_loss.detach(), "d_loss": d_loss.detach(), "accuracy": accuracy}

    def evaluate(self, test_set: ImageDataset) -> dict[str, float]:
        """Auxiliary test accuracy; with moving averages, the averaged discriminator's (the one the
        model file keeps) and the trained one's as ``accuracy_raw``."""
        raw = evaluate_acgan(self.discriminator, test_set, self.device, self.autocast_dtype)
        if not self.averages:
            return raw
        averaged = evaluate_acgan(self.averages["discriminator"].module, test_set, self.device, self.autocast_dtype)
        return {"accuracy": averaged["accuracy"], "accuracy_raw": raw["accuracy"]}

    def render_fixed(self) -> torch.Tensor:
        with torch.inference_mode(), autocast(self.device, self.autocast_dtype):
            return self.sampling_generator()(self.fixed_z.to(self.device), self.fixed_classes.to(self.device)).float()

    def epoch_images(self, epoch: int, test_set: ImageDataset) -> dict[str, torch.Tensor]:
        """The fixed z and classes rendered, ten to a row as in E<epoch>.png."""
        return {"fixed_samples": self.render_fixed().cpu().unflatten(0, (-1, FIGURE_COLUMNS))}

    def epoch_figures(self, epoch: int, test_set: ImageDataset, out_dir: Path,
                      images: dict[str, torch.Tensor] | None = None) -> None:
        samples = (images or self.epoch_images(epoch, test_set))["fixed_samples"].flatten(0, 1)
        labels = [self.class_names[int(c)] for c in self.fixed_classes]
        save_labelled_grid(denormalize(samples), out_dir / f"E{epoch + 1}.png", labels=labels, ncols=FIGURE_COLUMNS,
                           title=f"AC-GAN epoch {epoch + 1}: fixed z and classes")

    def final_outputs(self, metrics: dict, train_set: ImageDataset, test_set: ImageDataset, out_dir: Path) -> dict:
        history = metrics["history"]
        epochs = [h["epoch"] for h in history]
        plot_curves(epochs, {"generator loss": [h["train"]["g_loss"] for h in history],
                             "discriminator loss": [h["train"]["d_loss"] for h in history]},
                    out_dir / "loss.png", title="AC-GAN training losses per epoch")
        curves = {"train accuracy (real batches)": [h["train"]["accuracy"] for h in history]}
        if "accuracy_raw" in history[-1]["test"]:
            curves["test accuracy, trained weights"] = [h["test"].get("accuracy_raw", float("nan")) for h in history]
            curves["test accuracy, moving average"] = [h["test"]["accuracy"] for h in history]
        else:
            curves["test accuracy"] = [h["test"]["accuracy"] for h in history]
        plot_curves(epochs, curves, out_dir / "accuracy.png", title="AC-GAN auxiliary classifier accuracy")
        return {}
