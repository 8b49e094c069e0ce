"""Figures: labelled image grids and per-epoch loss curves (matplotlib, no display needed).

Called between epochs or after training, never inside the step loop.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np


def _pyplot():
    """pyplot on the file-only Agg backend, chosen before pyplot's first import (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_image_rows(rows: Sequence[np.ndarray], path: str | os.PathLike, titles: Sequence[str] | None = None,
                    row_labels: Sequence[str] | None = None, title: str | None = None) -> None:
    """Save rows of uint8 images (each (N, H, W, C)) as one figure.

    ``titles`` label the columns of the first row (class names above the originals),
    ``row_labels`` name each row ("original", "reconstruction").
    """
    plt = _pyplot()
    nrows, ncols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.2 * ncols, 1.35 * nrows + (0.4 if title else 0)), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(row):
                ax.imshow(row[c], interpolation="nearest")
            if r == 0 and titles is not None and c < len(titles):
                ax.set_title(titles[c], fontsize=8)
        if row_labels is not None:
            axes[r][0].set_ylabel(row_labels[r], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_labelled_grid(images: np.ndarray, path: str | os.PathLike, labels: Sequence[str] | None = None,
                       ncols: int = 10, title: str | None = None, row_labels: Sequence[str] | None = None) -> None:
    """Save uint8 images (N, H, W, C) in a grid, each titled with its label if given and each row
    named by ``row_labels`` if given."""
    rows = [images[i:i + ncols] for i in range(0, len(images), ncols)]
    plt = _pyplot()
    nrows = len(rows)
    width = 1.2 * ncols + (0.6 if row_labels else 0)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, 1.35 * nrows + (0.4 if title else 0)), squeeze=False)
    for i in range(nrows * ncols):
        ax = axes[i // ncols][i % ncols]
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        if row_labels is not None and i % ncols == 0 and i // ncols < len(row_labels):
            ax.set_ylabel(row_labels[i // ncols], fontsize=8)
        if i < len(images):
            ax.imshow(images[i], interpolation="nearest")
            if labels is not None:
                ax.set_title(labels[i], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(epochs: Sequence[int], curves: dict[str, Sequence[float]], path: str | os.PathLike,
                title: str, separate: bool = False, log_y: Sequence[str] = ()) -> None:
    """Plot named per-epoch curves, together in one panel or each in its own (``separate``)."""
    plt = _pyplot()
    names = list(curves)
    if separate:
        ncols = min(2, len(names))
        nrows = -(-len(names) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 3.2 * nrows), squeeze=False)
        flat = [ax for row in axes for ax in row]
        for ax, name in zip(flat, names):
            ax.plot(epochs, curves[name], marker="o", markersize=3)
            ax.set_title(name, fontsize=10)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            if name in log_y and all(v > 0 for v in curves[name]):
                ax.set_yscale("log")
        for ax in flat[len(names):]:
            ax.axis("off")
        fig.suptitle(title)
    else:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for name in names:
            ax.plot(epochs, curves[name], marker="o", markersize=3, label=name)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(confusion, class_names: Sequence[str], path: str | os.PathLike, title: str) -> None:
    """Confusion matrix (rows: true class, columns: predicted); counts in the cells and class names on
    the axes while they stay readable (up to 20 classes), a colour bar and sparser ticks beyond."""
    plt = _pyplot()
    matrix = np.asarray(confusion)
    n = len(class_names)
    side = min(20.0, max(7.0, 0.16 * n))
    fig, ax = plt.subplots(figsize=(side, side * 6 / 7))
    shown = ax.imshow(matrix, cmap="Blues")
    ticks = range(n) if n <= 50 else range(0, n, max(1, n // 25))
    fontsize = 8 if n <= 20 else 6
    ax.set_xticks(list(ticks), [class_names[i] for i in ticks], rotation=90 if n > 20 else 45,
                  ha="center" if n > 20 else "right", fontsize=fontsize)
    ax.set_yticks(list(ticks), [class_names[i] for i in ticks], fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, str(value), ha="center", va="center", fontsize=6,
                    color="white" if value > matrix.max() / 2 else "black")
    else:
        fig.colorbar(shown, ax=ax, fraction=0.04)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
