"""Seeded, class-stratified subsets: the held-out test split of a folder without ``test/``, and
``--limit-train``/``--limit-test`` on data whose files are ordered by class.

Stratified means every class keeps its share: class ``c`` with ``n_c`` of ``N`` images gives
``n * n_c / N`` of a subset of ``n``, rounded by largest remainder so that the counts add up to ``n``.
"""

from __future__ import annotations

import numpy as np
import torch

SPLIT_SEED = 0  # fixed, so that the held-out split (and so every test figure) does not change with --seed


def stratified_counts(class_sizes: np.ndarray, n: int) -> np.ndarray:
    """How many of ``n`` to take from each class, proportional to ``class_sizes`` (largest remainder)."""
    class_sizes = np.asarray(class_sizes, dtype=np.int64)
    total = int(class_sizes.sum())
    if not 0 <= n <= total:
        raise ValueError(f"cannot take {n} of {total}")
    exact = class_sizes * n / total if total else np.zeros(len(class_sizes))
    counts = np.floor(exact).astype(np.int64)
    # The remaining ones go to the largest fractional parts (ties: the lower class index).
    order = np.lexsort((np.arange(len(exact)), -(exact - counts)))
    counts[order[:n - int(counts.sum())]] += 1
    return counts


def stratified_indices(labels: torch.Tensor, n: int, seed: int = SPLIT_SEED,
                       keep_one: bool = False) -> np.ndarray:
    """Sorted indices of a seeded class-stratified subset of ``n`` of ``labels``.

    ``keep_one``: leave at least one image of every class with two or more out of the subset
    (a held-out split must not take a class's only training images).
    """
    labels = np.asarray(labels)
    classes, sizes = np.unique(labels, return_counts=True)
    counts = stratified_counts(sizes, n)
    if keep_one:
        counts = np.minimum(counts, np.where(sizes >= 2, sizes - 1, 0))
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, counts)]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def held_out_split(labels: torch.Tensor, fraction: float, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices): a seeded, stratified ``fraction`` of the images held out for testing."""
    test = stratified_indices(labels, round(fraction * len(labels)), seed, keep_one=True)
    train = np.setdiff1d(np.arange(len(labels)), test)
    return train, test
