"""Fitted latent priors: Gaussian mixtures over a trained VAE's codes (ex-post density estimation).

A VAE whose best checkpoint was taken at a small KL weight is nearly an autoencoder: its codes
do not fill N(0, I), so decoding z ~ N(0, I) gives textures. Fitting a density to the codes of
the training images and sampling it instead gives images that look like the data (Ghosh et
al., 2020, "From Variational to Deterministic Autoencoders"). For the VAE one mixture covers all
codes; for the CVAE one mixture per class, so that sampling class c samples class c's codes.

scikit-learn's ``GaussianMixture`` fits; the fitted parameters are kept as plain tensors
(``prior.safetensors`` beside ``model.safetensors``), and sampling runs in torch, drawn on the
CPU from a seeded generator like every other sampler in cifargen.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from sklearn.mixture import GaussianMixture

from .data import BatchLoader, ImageDataset
from .errors import ConfigError
from .runtime import atomic_write_bytes, autocast

PRIOR_WEIGHTS = "prior.safetensors"
COVARIANCE_TYPES = ("full", "tied", "diag")


@dataclass
class PriorConfig:
    """How the mixture is fitted; the defaults are the measured choice (docs/DECISIONS.md)."""

    n_components: int = 1          # per mixture (per class for conditional models)
    covariance_type: str = "full"  # full, tied (one covariance shared by a mixture's components) or diag
    reg_covar: float = 1e-4        # added to every covariance's diagonal: the codes span fewer than 512 directions
    max_iter: int = 100
    seed: int = 0
    # Sampling only: codes are drawn from N(mean, temperature^2 * covariance). 1 samples the fitted
    # density itself; below 1 trades diversity for typical samples (truncation).
    temperature: float = 1.0

    def __post_init__(self):
        if self.n_components < 1:
            raise ConfigError(f"n_components must be at least 1, got {self.n_components}")
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ConfigError(f"covariance_type must be one of {', '.join(COVARIANCE_TYPES)}, got {self.covariance_type!r}")
        if not self.reg_covar >= 0:
            raise ConfigError(f"reg_covar must be >= 0, got {self.reg_covar}")
        if not 0 < self.temperature <= 1:
            raise ConfigError(f"temperature must be in (0, 1], got {self.temperature}")


# What to do when a class has too few training images for the prior, by where the fit happens:
# (with several components per class, with one).
FIXES_WHEN_TRAINING = ("use fewer components (--set prior.n_components=N) or more training images",
                       "train on images of every class (a larger --limit-train) or pass --set fit_prior=false")
FIXES_WHEN_REFITTING = ("use fewer components (--components N)",
                        "the run was trained without enough images of it, so retrain it on images of every class")


def check_prior_fits(counts, n_components: int, conditional: bool, class_names=None,
                     fixes: tuple[str, str] = ("use fewer components", "use more training images")) -> None:
    """Refuse a fit of ``n_components`` per group when a group (a class, or the whole data) has
    fewer training images than that: ``counts`` holds the images per group; ``fixes`` says what
    to do (with several components, with one)."""
    for index, count in enumerate(counts):
        if count >= n_components:
            continue
        where = "the training data"
        if conditional:
            where = f"class {class_names[index]!r}" if class_names is not None else f"class {index}"
        raise ConfigError(f"the fitted prior needs at least {n_components} training image(s)"
                          f"{' per class' if conditional else ''}, but {where} has {count}; "
                          f"{fixes[0] if n_components > 1 else fixes[1]}")


def check_prior_data(conditional: bool, num_classes: int | None, train_set: ImageDataset, config: PriorConfig,
                     fixes: tuple[str, str] = FIXES_WHEN_REFITTING) -> None:
    """Refuse, before any work, training data on which ``config``'s prior cannot be fitted."""
    if conditional:
        counts = np.bincount(train_set.labels.numpy(), minlength=num_classes or len(train_set.class_names))
    else:
        counts = [len(train_set)]
    check_prior_fits(counts, config.n_components, conditional, train_set.class_names, fixes)


class GaussianMixturePrior:
    """One Gaussian mixture per group of codes: a single group, or one per class.

    ``weights`` (G, K), ``means`` (G, K, D) and ``scale_tril`` (G, K, D, D): the Cholesky factors
    of the covariances (diagonal ones for ``covariance_type="diag"``; (G, 1, D, D) for ``"tied"``,
    one factor shared by a group's components).
    """

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, scale_tril: torch.Tensor, config: PriorConfig,
                 per_class: bool, report: dict | None = None):
        self.weights, self.means, self.scale_tril = weights.float(), means.float(), scale_tril.float()
        self.config, self.per_class = config, per_class
        self.report = report or {}  # how the fit went: images, seconds, log-likelihoods

    @property
    def latent_dim(self) -> int:
        return self.means.shape[-1]

    @property
    def groups(self) -> int:
        return self.means.shape[0]

    @classmethod
    def fit(cls, codes: np.ndarray, labels: np.ndarray | None, config: PriorConfig,
            num_classes: int | None = None) -> "GaussianMixturePrior":
        """Fit one mixture to ``codes`` (N, D), or one per class when ``labels`` are given."""
        codes = np.asarray(codes, dtype=np.float64)
        if labels is None:
            groups = [codes]
        else:
            labels = np.asarray(labels)
            groups = [codes[labels == c] for c in range(num_classes or int(labels.max()) + 1)]
        check_prior_fits([len(group) for group in groups], config.n_components, conditional=labels is not None)
        mixtures = []
        for group in groups:
            mixture = GaussianMixture(config.n_components, covariance_type=config.covariance_type,
                                      reg_covar=config.reg_covar, max_iter=config.max_iter, random_state=config.seed)
            mixtures.append(mixture.fit(group))
        weights = torch.tensor(np.stack([m.weights_ for m in mixtures]))
        means = torch.tensor(np.stack([m.means_ for m in mixtures]))
        if config.covariance_type == "full":
            scale = torch.linalg.cholesky(torch.tensor(np.stack([m.covariances_ for m in mixtures])))
        elif config.covariance_type == "tied":
            scale = torch.linalg.cholesky(torch.tensor(np.stack([m.covariances_[None] for m in mixtures])))
        else:
            scale = torch.diag_embed(torch.tensor(np.stack([m.covariances_ for m in mixtures])).sqrt())
        return cls(weights, means, scale, config, per_class=labels is not None)

    def _group(self, labels: torch.Tensor | None, n: int) -> torch.Tensor:
        if not self.per_class:
            return torch.zeros(n, dtype=torch.long)
        if labels is None:
            raise ValueError("a per-class prior needs the classes to sample")
        return labels.cpu().long()

    def sample(self, n: int, labels: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` codes (on the CPU): a component by its weight, then mean + temperature * scale_tril @ eps."""
        group = self._group(labels, n)
        component = torch.multinomial(self.weights[group], 1, generator=generator).squeeze(1)
        eps = torch.randn(n, self.latent_dim, 1, generator=generator)
        shared = self.scale_tril.shape[1] == 1  # tied: one factor per group
        spread = (self.scale_tril[group, 0 if shared else component] @ eps).squeeze(-1)
        return self.means[group, component] + (spread if self.config.temperature == 1 else self.config.temperature * spread)

    def log_likelihood(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Log-density of each code under its group's mixture (nats)."""
        codes = codes.double().cpu()
        group = self._group(labels, len(codes))
        out = torch.empty(len(codes), dtype=torch.float64)
        for g in group.unique().tolist():
            rows = group == g
            mixture = torch.distributions.MixtureSameFamily(
                torch.distributions.Categorical(probs=self.weights[g].double()),
                torch.distributions.MultivariateNormal(self.means[g].double(), scale_tril=self.scale_tril[g].double()))
            out[rows] = mixture.log_prob(codes[rows])
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"weights": self.weights.contiguous(), "means": self.means.contiguous(),
                "scale_tril": self.scale_tril.contiguous()}

    def settings(self) -> dict:
        """What ``config.json`` records of the prior: its kind, settings and fit report."""
        return {"kind": "gaussian_mixture", "per_class": self.per_class, **asdict(self.config), "fit": self.report}


@torch.inference_mode()
def encode(model, dataset: ImageDataset, device, autocast_dtype=None, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means (N, latent_dim, float32 on the CPU) and labels of every image in ``dataset``."""
    codes, labels = [], []
    for x, y in BatchLoader(dataset, batch_size, device, shuffle=False):
        with autocast(x.device, autocast_dtype):
            mu, _ = model.encoder(x, y if model.conditional else None)
        codes.append(mu.float().cpu())
        labels.append(y.cpu())
    return torch.cat(codes), torch.cat(labels)


def fit_prior(model, train_set: ImageDataset, device, autocast_dtype=None, config: PriorConfig | None = None,
              test_set: ImageDataset | None = None) -> tuple[GaussianMixturePrior, dict]:
    """Fit ``model``'s prior to its codes of ``train_set``; returns it and a report (seconds, test log-likelihood)."""
    config = config or PriorConfig()
    check_prior_data(model.conditional, model.config.num_classes, train_set, config)  # before the encoding's minutes
    started = time.perf_counter()
    codes, labels = encode(model, train_set, device, autocast_dtype)
    encoded = time.perf_counter()
    prior = GaussianMixturePrior.fit(codes.numpy(), labels.numpy() if model.conditional else None, config,
                                     num_classes=model.config.num_classes)
    report = {"images": len(train_set), "encode_seconds": round(encoded - started, 2),
              "fit_seconds": round(time.perf_counter() - encoded, 2),
              "train_log_likelihood": float(prior.log_likelihood(codes, labels).mean())}
    if test_set is not None:
        test_codes, test_labels = encode(model, test_set, device, autocast_dtype)
        report["test_log_likelihood"] = float(prior.log_likelihood(test_codes, test_labels).mean())
    prior.report = report
    return prior, report


def save_prior(prior: GaussianMixturePrior, folder: str | os.PathLike) -> dict:
    """Write ``prior.safetensors`` into ``folder``; returns the settings for ``config.json``."""
    folder = Path(folder)
    atomic_write_bytes(save(prior.tensors(), metadata={"kind": "gaussian_mixture"}), folder / PRIOR_WEIGHTS)
    return prior.settings()


def load_prior(folder: Path, settings: dict) -> GaussianMixturePrior:
    """The prior that ``config.json``'s ``prior`` settings describe, from ``prior.safetensors`` in ``folder``."""
    path = folder / PRIOR_WEIGHTS
    try:
        tensors = load_file(str(path))
        known = {k: settings[k] for k in ("n_components", "covariance_type", "reg_covar", "max_iter", "seed", "temperature") if k in settings}
        return GaussianMixturePrior(tensors["weights"], tensors["means"], tensors["scale_tril"], PriorConfig(**known),
                                    per_class=bool(settings["per_class"]), report=settings.get("fit"))
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read the fitted prior {path} ({exc}); fit it again with: cifargen fit-prior "
                          f"{folder}") from None


def nearest_distances(images: torch.Tensor, train: torch.Tensor, chunk: int = 250) -> torch.Tensor:
    """Euclidean distance in pixel space from each image to its nearest training image
    (``images`` (N, C, H, W) or flat, ``train`` likewise; float in [0, 1])."""
    flat, train_flat = images.flatten(1).float(), train.flatten(1).float()
    return torch.cat([torch.cdist(flat[i:i + chunk], train_flat).min(1).values for i in range(0, len(flat), chunk)])


def distance_ratio(sample_distances: torch.Tensor, test_distances: torch.Tensor) -> float:
    """Median nearest-training distance of the samples over that of the test images."""
    ratio = float(sample_distances.median() / test_distances.median())
    return ratio if math.isfinite(ratio) else float("nan")


def nearest_neighbour_ratio(samples: torch.Tensor, train: torch.Tensor, test: torch.Tensor) -> float:
    """Median distance from each sample to its nearest training image, over the same for test
    images: about 1 for a sampler that generates, well below 1 for one that copies training images.

    All three are float image tensors (N, C, H, W) in [0, 1]; distances are Euclidean in pixel space.
    """
    return distance_ratio(nearest_distances(samples, train), nearest_distances(test, train))
