"""Sample grids and latent interpolations from a trained model (``cifargen sample``)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .images import denormalize, make_grid, save_png
from .plotting import save_labelled_grid

UPSCALE = 4          # nearest-neighbour, so that a 32x32 sample is visible in the plain grid
DECODE_BATCH = 500   # images decoded at once: memory stays bounded whatever --n asks for
LABELLED_UP_TO = 200  # grids of at most this many samples get class names above each image
INTERPOLATION_STEPS = 10
MAX_CLASS_ROWS = 10  # interpolation rows of a conditional model: evenly spaced classes when it has more


def shown_classes(num_classes: int, most: int = MAX_CLASS_ROWS) -> list[int]:
    """Up to ``most`` classes, evenly spaced over ``num_classes`` (all of them when there are few)."""
    if num_classes <= most:
        return list(range(num_classes))
    return sorted({round(i * (num_classes - 1) / (most - 1)) for i in range(most)})


def default_prior(model) -> str:
    """The fitted prior when the model has one, else the standard one."""
    return "fitted" if getattr(model, "fitted_prior", None) is not None else "standard"


@torch.inference_mode()
def draw_samples(model, n: int, seed: int, prior: str = "standard") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Exactly ``n`` samples (images on the CPU) and their classes: conditional models cycle through
    the classes and return them sorted by class, so that a grid shows the classes in order."""
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    labels = torch.sort(torch.arange(n) % model.config.num_classes).values if model.conditional else None
    images = []
    for start in range(0, n, DECODE_BATCH):
        y = labels[start:start + DECODE_BATCH].to(device) if labels is not None else None
        batch, _ = model.generate(min(DECODE_BATCH, n - start), y, generator=generator, prior=prior)
        images.append(batch.float().cpu())
    return torch.cat(images), labels


@torch.inference_mode()
def interpolation(model, seed: int, prior: str = "standard", steps: int = INTERPOLATION_STEPS) -> tuple[torch.Tensor, list[int]]:
    """Decode codes on the straight line between the code drawn with ``seed`` and with ``seed + 1``:
    one row (for conditional models one row per class, up to ``MAX_CLASS_ROWS`` classes, each
    class's own codes)."""
    device = next(model.parameters()).device
    rows = shown_classes(model.config.num_classes) if model.conditional else [None]
    t = torch.linspace(0, 1, steps).view(-1, 1)
    images = []
    for c in rows:
        y = torch.tensor([c]) if c is not None else None
        ends = [model.latents(1, y, torch.Generator().manual_seed(s), prior).cpu() for s in (seed, seed + 1)]
        path = ((1 - t) * ends[0] + t * ends[1]).to(device)
        images.append(model.decode(path, None if c is None else torch.full((steps,), c, device=device)).float().cpu())
    return torch.cat(images), [c for c in rows for _ in range(steps)]


def write_samples(model, out: Path, n: int, seed: int, interpolate: bool, prior: str) -> list[Path]:
    """Write ``samples.png`` (and ``interpolation.png``) into ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    names = list(getattr(model, "class_names", ()) or [])
    images, labels = draw_samples(model, n, seed, prior)
    ncols = math.ceil(n / model.config.num_classes) if model.conditional else min(n, 10)
    ncols = max(1, min(ncols, 20))
    path = out / "samples.png"
    if n <= LABELLED_UP_TO:
        titles = [names[int(c)] if int(c) < len(names) else str(int(c)) for c in labels] if labels is not None else None
        save_labelled_grid(denormalize(images), path, labels=titles, ncols=ncols,
                           title=f"{model.kind.upper()}: {n} samples, {prior} prior, seed {seed}")
    else:  # too many to label: a plain grid, upscaled
        save_png(make_grid(denormalize(images), ncols=ncols, scale=UPSCALE), path)
    written = [path]
    if interpolate:
        images, classes = interpolation(model, seed, prior)
        row_labels = [names[c] if c is not None and c < len(names) else "" for c in classes[::INTERPOLATION_STEPS]]
        path = out / "interpolation.png"
        save_labelled_grid(denormalize(images), path, ncols=INTERPOLATION_STEPS, row_labels=row_labels,
                           title=f"{model.kind.upper()}: from the code of seed {seed} to that of seed {seed + 1}")
        written.append(path)
    return written
