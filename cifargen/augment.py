"""Batch augmentations on the device: one tensor operation per batch, no per-image Python."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_flip(x: torch.Tensor) -> torch.Tensor:
    """Mirror a random half of the batch left-right (on the device, no per-sample Python)."""
    mask = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5
    return torch.where(mask, x.flip(3), x)


def random_translate(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Shift each image by its own random offset of up to ``max_shift`` pixels in each direction,
    filling with zeros. One gather for the batch, and differentiable: applied to real and
    generated images alike, the discriminator cannot tell them apart by the augmentation
    (DiffAugment, Zhao et al. 2020), and its classifier sees more varied real images."""
    n, _, h, w = x.shape
    shifts = torch.randint(-max_shift, max_shift + 1, (2, n, 1), device=x.device)
    rows = torch.arange(h, device=x.device) + max_shift + shifts[0]   # (n, h) rows of the padded image
    cols = torch.arange(w, device=x.device) + max_shift + shifts[1]   # (n, w)
    padded = F.pad(x, [max_shift] * 4)
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (n, h, w, c) -> NCHW


def random_cutout(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero a ``size`` x ``size`` square in each image, centred on a uniformly drawn pixel (cut off
    where it crosses the border), as DiffAugment's cutout (Zhao et al. 2020). A product with a
    mask, so differentiable like the shifts."""
    n, _, h, w = x.shape
    # Centres over h + (1 - size % 2) rows: an even square's centre may sit just past the last row.
    tops = torch.randint(0, h + 1 - size % 2, (n, 1), device=x.device) - size // 2
    lefts = torch.randint(0, w + 1 - size % 2, (n, 1), device=x.device) - size // 2
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_rows = (rows >= tops) & (rows < tops + size)                     # (n, h)
    in_cols = (cols >= lefts) & (cols < lefts + size)                   # (n, w)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])                 # (n, h, w)
    return x * keep[:, None].to(x.dtype)


def flip_and_translate(x: torch.Tensor, flip: bool = True, max_shift: int = 0, cutout: int = 0) -> torch.Tensor:
    """Random horizontal flips (when ``flip``), random shifts of up to ``max_shift`` pixels, then
    (when ``cutout``) a random square of ``cutout`` pixels zeroed."""
    if flip:
        x = random_flip(x)
    if max_shift:
        x = random_translate(x, max_shift)
    if cutout:
        x = random_cutout(x, cutout)
    return x
