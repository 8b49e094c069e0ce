"""Image helpers that replace the few pieces of torchvision a project like this uses."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image
import torch


def denormalize(x: torch.Tensor) -> np.ndarray:
    """Float images in [0, 1], shape (N, C, H, W), to a ``numpy.uint8`` array (N, H, W, C).

    Values are clamped to [0, 1], scaled to [0, 255] and rounded to the nearest integer.
    """
    if x.dim() != 4:
        raise ValueError(f"denormalize expects a batch of shape (N, C, H, W), got {tuple(x.shape)}")
    x = x.detach().float().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def make_grid(images: np.ndarray, ncols: int, padding: int = 2, pad_value: int = 255, scale: int = 1) -> np.ndarray:
    """Tile uint8 images (N, H, W, C) into one (rows*H', cols*W', C) array, row by row.

    ``scale`` up-samples each image with nearest-neighbour so that 32x32 images stay visible.
    """
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w, c = images.shape
    nrows = -(-n // ncols)
    grid = np.full((nrows * (h + padding) + padding, ncols * (w + padding) + padding, c), pad_value, dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, ncols)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top:top + h, left:left + w] = img
    return grid


def save_png(array: np.ndarray, path: str | os.PathLike) -> None:
    """Write a uint8 (H, W, 3) array as a PNG file."""
    Image.fromarray(array).save(path)
