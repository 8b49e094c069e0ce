"""Sample grids and latent interpolations from a trained model (``cifargen sample``)."""

from __future__ import annotations

from pathlib import Path

import torch

from .images import denormalize, make_grid, save_png

UPSCALE = 4  # nearest-neighbour, so that a 32x32 sample is visible


def _decode(model, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    with torch.inference_mode():
        return model.decode(z, y)


def sample_grid(model, n: int, seed: int, device) -> tuple[torch.Tensor, int]:
    """``n`` samples (one row per class for conditional models, ``n // classes`` per row)."""
    generator = torch.Generator().manual_seed(seed)
    latent = model.config.latent_dim
    if model.conditional:
        classes = model.config.num_classes
        per_class = max(1, n // classes)
        z = torch.randn(classes * per_class, latent, generator=generator).to(device)
        y = torch.arange(classes).repeat_interleave(per_class).to(device)
        return _decode(model, z, y), per_class
    z = torch.randn(n, latent, generator=generator).to(device)
    return _decode(model, z, None), min(n, 10)


def interpolation(model, seed: int, steps: int, device) -> tuple[torch.Tensor, int]:
    """Decode z on the straight line between the z of ``seed`` and of ``seed + 1`` (a row per class)."""
    latent = model.config.latent_dim
    z0 = torch.randn(1, latent, generator=torch.Generator().manual_seed(seed))
    z1 = torch.randn(1, latent, generator=torch.Generator().manual_seed(seed + 1))
    t = torch.linspace(0, 1, steps).view(-1, 1)
    path = (1 - t) * z0 + t * z1
    if model.conditional:
        classes = model.config.num_classes
        z = path.repeat(classes, 1).to(device)
        y = torch.arange(classes).repeat_interleave(steps).to(device)
        return _decode(model, z, y), steps
    return _decode(model, path.to(device), None), steps


def write_samples(model, out: Path, n: int, seed: int, interpolate: bool, device) -> list[Path]:
    """Write ``samples.png`` (and ``interpolation.png``) into ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    images, ncols = sample_grid(model, n, seed, device)
    save_png(make_grid(denormalize(images), ncols=ncols, scale=UPSCALE), out / "samples.png")
    written.append(out / "samples.png")
    if interpolate:
        images, ncols = interpolation(model, seed, 10, device)
        save_png(make_grid(denormalize(images), ncols=ncols, scale=UPSCALE), out / "interpolation.png")
        written.append(out / "interpolation.png")
    return written
