import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cifargen.splits import held_out_split, stratified_counts, stratified_indices


def test_counts_by_hand():
    # 50/30/20 of 10: exactly 5/3/2; of 7: 3.5/2.1/1.4 -> floors 3/2/1, the one left goes to 0.5.
    assert stratified_counts(np.array([50, 30, 20]), 10).tolist() == [5, 3, 2]
    assert stratified_counts(np.array([50, 30, 20]), 7).tolist() == [4, 2, 1]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=8), st.floats(0, 1))
def test_counts_add_up_and_stay_within_one_of_the_exact_share(sizes, share):
    sizes = np.array(sizes)
    n = int(share * sizes.sum())
    counts = stratified_counts(sizes, n)
    assert counts.sum() == n and (counts <= sizes).all()
    exact = sizes * n / max(1, sizes.sum())
    assert (np.abs(counts - exact) < 1).all()


def test_subset_is_seeded_sorted_and_unique():
    labels = torch.arange(100) % 4
    a, b = stratified_indices(labels, 20, seed=3), stratified_indices(labels, 20, seed=3)
    assert (a == b).all() and (np.diff(a) > 0).all()
    assert np.bincount(labels.numpy()[a]).tolist() == [5, 5, 5, 5]
    assert not (stratified_indices(labels, 20, seed=4) == a).all()


def test_held_out_split_is_disjoint_and_keeps_a_training_image_per_class():
    labels = torch.tensor([0] * 9 + [1] * 1 + [2] * 2)
    train, test = held_out_split(labels, 0.5)
    assert set(train).isdisjoint(test) and len(train) + len(test) == 12
    assert set(labels.numpy()[train]) == {0, 1, 2}  # the one-image class stays in training


def test_bad_request():
    with pytest.raises(ValueError):
        stratified_counts(np.array([3, 3]), 7)
