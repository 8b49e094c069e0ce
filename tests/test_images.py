"""denormalize and make_grid."""

import numpy as np
import torch

from cifargen.images import denormalize, make_grid


def test_denormalize():
    x = torch.tensor([-0.5, 0.0, 0.5, 0.998, 1.0, 2.0]).view(1, 1, 2, 3).expand(2, 3, 2, 3)
    out = denormalize(x)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3, 3)
    assert out[0, :, :, 0].ravel().tolist() == [0, 0, 128, 254, 255, 255]


def test_make_grid():
    images = np.zeros((5, 4, 4, 3), np.uint8)
    grid = make_grid(images, ncols=3, padding=1, scale=2)
    assert grid.shape == (2 * 9 + 1, 3 * 9 + 1, 3)
