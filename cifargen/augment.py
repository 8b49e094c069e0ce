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


def flip_and_translate(x: torch.Tensor, flip: bool = True, max_shift: int = 0) -> torch.Tensor:
    """Random horizontal flips (when ``flip``) then random shifts of up to ``max_shift`` pixels."""
    if flip:
        x = random_flip(x)
    if max_shift:
        x = random_translate(x, max_shift)
    return x
