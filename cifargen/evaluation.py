"""Test-set figures: reconstruction losses (VAE, CVAE) and auxiliary accuracy (AC-GAN).

Evaluation is deterministic: the VAE's posterior samples use a fixed-seed generator, so the
same weights on the same device always give the same figures.
"""

from __future__ import annotations

import torch

from .data import BatchLoader, ImageDataset
from .losses import kl_per_sample, reconstruction_terms
from .runtime import autocast

EVAL_SEED = 0
# Images per forward pass when classifying a test set: on a CPU a batch of 250 keeps its
# activations in cache and runs about twice as fast as 1,000 (docs/DECISIONS.md).
CLASSIFY_BATCH = 250


def _vae_pass(model, x, y, generator, autocast_dtype):
    """Encode, draw z = mu + sigma * eps with eps from ``generator``, decode to logits."""
    with autocast(x.device, autocast_dtype):
        mu, log_var = model.encoder(x, y if model.conditional else None)
    mu, log_var = mu.float(), log_var.float()
    eps = torch.randn(mu.shape, generator=generator).to(mu.device)
    z = mu + torch.exp(0.5 * log_var) * eps
    with autocast(x.device, autocast_dtype):
        logits = model.decoder(z, y if model.conditional else None, logits=True)
    return logits.float(), mu, log_var


@torch.inference_mode()
def reconstruct(model, x: torch.Tensor, y: torch.Tensor, autocast_dtype=None, seed: int = EVAL_SEED) -> torch.Tensor:
    """Reconstructions in [0, 1] of ``x`` as evaluation computes them."""
    generator = torch.Generator().manual_seed(seed)
    logits, _, _ = _vae_pass(model, x, y, generator, autocast_dtype)
    return torch.sigmoid(logits)


@torch.inference_mode()
def evaluate_vae(model, dataset: ImageDataset, device, autocast_dtype=None, batch_size: int = 500,
                 seed: int = EVAL_SEED) -> dict[str, float]:
    """Mean per-sample test figures: ``rec`` (MSE + SSIM loss + BCE) and its parts, and ``kl``."""
    generator = torch.Generator().manual_seed(seed)
    sums, count = None, 0
    for x, y in BatchLoader(dataset, batch_size, device, shuffle=False):
        logits, mu, log_var = _vae_pass(model, x, y, generator, autocast_dtype)
        terms = reconstruction_terms(x, logits)
        terms["kl"] = kl_per_sample(mu, log_var)
        batch = torch.stack([t.sum() for t in terms.values()])
        sums = batch if sums is None else sums + batch
        count += x.shape[0]
    return dict(zip(terms, (sums.double() / count).tolist()))


@torch.inference_mode()
def predicted_classes(class_logits_fn, dataset: ImageDataset, device, autocast_dtype=None,
                      batch_size: int = CLASSIFY_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted, true) classes on ``dataset``; ``class_logits_fn(x)`` gives the class logits."""
    predicted, true = [], []
    for x, y in BatchLoader(dataset, batch_size, device, shuffle=False):
        with autocast(x.device, autocast_dtype):
            predicted.append(class_logits_fn(x).argmax(1))
        true.append(y)
    return torch.cat(predicted).cpu(), torch.cat(true).cpu()


def classifier_predictions(discriminator, dataset: ImageDataset, device, autocast_dtype=None,
                           batch_size: int = CLASSIFY_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted, true) classes of the discriminator's auxiliary head on ``dataset``."""
    return predicted_classes(lambda x: discriminator(x)[1], dataset, device, autocast_dtype, batch_size)


def classifier_accuracy(class_logits_fn, dataset: ImageDataset, device, autocast_dtype=None) -> float:
    """Accuracy on ``dataset`` of a classifier (``class_logits_fn(x)`` -> class logits)."""
    return _accuracy(*predicted_classes(class_logits_fn, dataset, device, autocast_dtype))


def _accuracy(predicted: torch.Tensor, true: torch.Tensor) -> float:
    return float((predicted == true).double().mean())


def evaluate_acgan(discriminator, dataset: ImageDataset, device, autocast_dtype=None) -> dict[str, float]:
    """Auxiliary classification accuracy of the discriminator on real test images."""
    return {"accuracy": _accuracy(*classifier_predictions(discriminator, dataset, device, autocast_dtype))}


def evaluate_classifier(model, dataset: ImageDataset, device, autocast_dtype=None) -> dict:
    """Test accuracy of the reference classifier (a loaded model)."""
    return {"accuracy": classifier_accuracy(model, dataset, device, autocast_dtype)}


def evaluate_discriminator(model, dataset: ImageDataset, device, autocast_dtype=None) -> dict:
    """A loaded AC-GAN's auxiliary classifier: ``accuracy``, ``per_class_accuracy`` and
    ``confusion`` (rows: true class, columns: predicted)."""
    predicted, true = classifier_predictions(model.discriminator, dataset, device, autocast_dtype)
    classes = len(dataset.class_names)
    confusion = torch.bincount(true * classes + predicted, minlength=classes * classes).view(classes, classes)
    per_class = (confusion.diag().double() / confusion.sum(1).clamp(min=1).double()).tolist()
    return {"accuracy": _accuracy(predicted, true),
            "per_class_accuracy": dict(zip(dataset.class_names, per_class)), "confusion": confusion.tolist()}
