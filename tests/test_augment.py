"""Flips and shifts on the device."""

import numpy as np
import torch


def test_random_translate_shifts_each_image_within_bounds():
    from cifargen.augment import random_translate
    torch.manual_seed(0)
    x = torch.rand(6, 3, 8, 8, requires_grad=True)
    out = random_translate(x, 2)
    assert out.shape == x.shape
    for image, shifted in zip(x.detach().numpy(), out.detach().numpy()):
        padded = np.pad(image, ((0, 0), (2, 2), (2, 2)))
        windows = [padded[:, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(np.array_equal(w, shifted) for w in windows)
    out.sum().backward()  # differentiable, as DiffAugment needs for the generator's step
    assert x.grad is not None and x.grad.abs().sum() > 0
