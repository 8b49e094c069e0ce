"""Layers that compute what a ``torch.nn`` layer computes, faster where it is slow on the CPU
(the measurements behind each are in docs/DECISIONS.md).

- :class:`Dropout`: ``nn.Dropout`` draws one Bernoulli sample per element, which is slow on a
  CPU; cutting 64-bit random words into four 16-bit integers and comparing them with a threshold
  gives the same keep/drop distribution far faster.
- :func:`group_norm`: the CPU's bfloat16 channels-last GroupNorm kernel is slow when a group has
  fewer than 16 channels, so the discriminator's groups are sized in channels, 16 by default.
- :class:`Flatten` and :class:`Unflatten`: the seam between convolutions (channels-last) and
  linear layers. ``nn.Flatten`` hands its gradient back in the standard layout and
  ``nn.Unflatten`` returns one, so the activation beside the seam would see two layouts at once
  and fall back to a slow strided kernel. These keep one layout on both sides of the seam.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

INT16_LEVELS = 2 ** 16


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` is a 4-D tensor laid out channels-last (and not also standard-contiguous)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def random_int16_like(x: torch.Tensor) -> torch.Tensor:
    """Uniform random int16 values with ``x``'s shape and memory layout (contiguous or channels-last).

    Four values per 64-bit draw of the global generator, so seeding and checkpointed RNG state
    cover it like any other torch random call.
    """
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-2 ** 63, 2 ** 63 - 1)
    values = words.view(torch.int16)[:n]
    if is_channels_last(x):
        n_, c, h, w = x.shape
        return values.view(n_, h, w, c).permute(0, 3, 1, 2)  # channels-last strides, without as_strided
    return values.view(x.shape)


class Dropout(nn.Module):
    """``nn.Dropout(p)``: zero each element with probability ``p``, scale the rest by 1 / (1 - p).

    On the CPU, in eager mode, the mask comes from 16-bit random integers (see the module
    docstring), so the drop probability is ``p`` rounded to a multiple of 1/65536 (exact for 0.25
    or 0.5), and the kept elements are scaled by the inverse of that rounded keep rate, so the
    expectation stays exact; on GPUs and under ``torch.compile`` this is ``F.dropout``.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.dropped_levels = round(p * INT16_LEVELS)  # how many of the 65536 int16 values drop
        if self.dropped_levels == INT16_LEVELS:
            raise ValueError(f"dropout probability {p} rounds to 1 in steps of 1/65536; use at most {1 - 1 / INT16_LEVELS}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu" or torch.compiler.is_compiling():
            # GPUs draw the mask fast already, and under torch.compile the generated kernel draws
            # it in place (besides, compiling the int16 view of the random words fails in torch 2.13).
            return F.dropout(x, self.p, training=True)
        keep = random_int16_like(x) >= -INT16_LEVELS // 2 + self.dropped_levels
        scale = INT16_LEVELS / (INT16_LEVELS - self.dropped_levels)
        # x * mask keeps x's layout and autograd saves only the mask for the backward pass.
        return x * keep.to(x.dtype).mul_(scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def group_norm(channels: int, group_size: int | None) -> nn.GroupNorm:
    """GroupNorm whose groups hold ``group_size`` channels, or the largest divisor of ``channels``
    below it when ``group_size`` does not divide ``channels`` (one group when it exceeds them).

    ``group_size=None`` is the earlier layout, 8 groups per layer (``gcd(8, channels)``), kept so
    that models saved with it load unchanged.
    """
    if group_size is None:
        return nn.GroupNorm(math.gcd(8, channels), channels)
    size = max(d for d in range(1, min(group_size, channels) + 1) if channels % d == 0)
    return nn.GroupNorm(channels // size, channels)


class _FlattenKeepingLayout(torch.autograd.Function):
    """``x.flatten(1)`` whose gradient comes back in ``x``'s memory layout."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.shape = x.shape
        ctx.channels_last = is_channels_last(x)
        return x.flatten(1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.reshape(ctx.shape)
        return grad.contiguous(memory_format=torch.channels_last) if ctx.channels_last else grad


class Flatten(nn.Flatten):
    """``nn.Flatten()`` (features in (C, H, W) order, so weights of the linear layer after it are
    interchangeable), whose gradient comes back channels-last when its input was channels-last."""

    def __init__(self):
        super().__init__(1, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _FlattenKeepingLayout.apply(x) if x.dim() == 4 else super().forward(x)


class Unflatten(nn.Unflatten):
    """``nn.Unflatten(1, (C, H, W))`` with its result in ``memory_format``: channels-last, the layout
    of the convolutions after it (``Module.to(memory_format=...)`` does not reach this attribute: a
    model run in the standard layout sets it to ``torch.contiguous_format``)."""

    def __init__(self, shape: tuple[int, int, int], memory_format: torch.memory_format = torch.channels_last):
        super().__init__(1, shape)
        self.memory_format = memory_format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).contiguous(memory_format=self.memory_format)
