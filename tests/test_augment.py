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


def _expected_cutout_rate(length, size):
    """By hand: the share of centres c in [0, length + 1 - size % 2) whose square
    [c - size // 2, c - size // 2 + size) covers each pixel."""
    centres = np.arange(length + 1 - size % 2)
    tops = centres - size // 2
    return np.array([np.mean((tops <= i) & (i < tops + size)) for i in range(length)])


def test_random_cutout_zeroes_one_square_per_image_where_a_by_hand_count_says():
    from cifargen.augment import random_cutout
    torch.manual_seed(0)
    h, w, size = 8, 6, 3
    x = torch.ones(4000, 2, h, w, requires_grad=True)
    out = random_cutout(x, size)
    masks = out.detach().numpy()
    assert np.array_equal(masks[:, 0], masks[:, 1])  # one square for all channels of an image
    for mask in masks[:200, 0]:
        rows, cols = np.nonzero(mask == 0)
        assert set(np.unique(mask)) <= {0.0, 1.0} and len(rows) > 0
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        assert (mask[r0:r1, c0:c1] == 0).all() and len(rows) == (r1 - r0) * (c1 - c0)  # one rectangle
        # The full square, or one cut off by the border it touches.
        assert (r1 - r0 == size or r0 == 0 or r1 == h) and (c1 - c0 == size or c0 == 0 or c1 == w)
    # Each pixel is zeroed at the rate the by-hand count of centres gives (rows and columns independent).
    expected = np.outer(_expected_cutout_rate(h, size), _expected_cutout_rate(w, size))
    assert np.abs((masks[:, 0] == 0).mean(0) - expected).max() < 0.03
    out.sum().backward()  # differentiable: the gradient is the mask
    assert torch.equal(x.grad, out.detach())


def test_an_even_cutout_square_can_cross_every_border():
    from cifargen.augment import random_cutout
    torch.manual_seed(1)
    masks = random_cutout(torch.ones(3000, 1, 8, 8), 4)[:, 0].numpy()
    assert np.allclose((masks == 0).mean(0), np.outer(*[_expected_cutout_rate(8, 4)] * 2), atol=0.03)
    assert (masks[:, 0, :] == 0).any() and (masks[:, -1, :] == 0).any()


def test_flip_and_translate_without_cutout_draws_what_it_drew_before():
    from cifargen.augment import flip_and_translate, random_flip, random_translate
    x = torch.rand(5, 3, 8, 8)
    torch.manual_seed(2)
    plain = random_translate(random_flip(x), 2)
    torch.manual_seed(2)
    assert torch.equal(flip_and_translate(x, True, 2, cutout=0), plain)
