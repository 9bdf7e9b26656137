"""Leave-one-out and global temporal splits, checked row by row against the cleaned log."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from study.data import (
    DataError,
    Interactions,
    Sequences,
    Split,
    load_dataset,
    make_split,
    prepare_interactions,
)
from study.data.synthetic import SyntheticSpec, generate_synthetic


@pytest.fixture(scope="module")
def ml100k(shared_data: Path) -> Interactions:
    return load_dataset(str(shared_data / "ml-100k"))


@pytest.fixture(scope="module")
def synthetic() -> Interactions:
    return prepare_interactions(generate_synthetic(SyntheticSpec(users=400, items=3000, mean_len=12, seed=3)),
                                name="synthetic")


class _UserRows:
    """Per-user row ranges of a cleaned log (sorted by user, timestamp)."""

    def __init__(self, data: Interactions) -> None:
        self.item = data.frame["item"].to_numpy()
        self.timestamp = data.frame["timestamp"].to_numpy()
        self.count = np.bincount(data.frame["user"].to_numpy(), minlength=data.num_users)
        self.start = np.concatenate(([0], np.cumsum(self.count)[:-1]))

    def prefix_rows(self, sequences: Sequences, users: torch.Tensor) -> np.ndarray:
        """Assert sequence j is the first len_j items of user users[j]; return the log rows it covers."""
        lengths = sequences.lengths().numpy()
        offsets = sequences.offsets.numpy()
        rows = np.repeat(self.start[users.numpy()] - offsets[:-1], lengths) + np.arange(offsets[-1])
        assert np.all(lengths <= self.count[users.numpy()])
        assert np.array_equal(self.item[rows], sequences.items.numpy())
        return rows


def _check_common(split: Split, data: Interactions) -> None:
    for evalset in (split.validation, split.test):
        assert len(evalset.history) == len(evalset.targets) == len(evalset.users)
        assert torch.all(evalset.history.lengths() >= 1)
        assert torch.all(evalset.users[1:] > evalset.users[:-1])  # one row per user, in user order
        assert evalset.targets.min() >= 1 and evalset.targets.max() <= data.num_items
    assert len(split.train_users) == len(split.train)
    assert torch.all(split.train_users[1:] > split.train_users[:-1])
    expected_counts = torch.bincount(split.train.items, minlength=data.num_items + 1)
    assert split.item_counts[0] == 0 and torch.equal(split.item_counts, expected_counts)
    assert split.train.items.min() >= 1 and split.num_items == data.num_items


@pytest.mark.parametrize("dataset", ["ml100k", "synthetic"])
def test_leave_one_out(dataset: str, request: pytest.FixtureRequest) -> None:
    data: Interactions = request.getfixturevalue(dataset)
    split = make_split(data, "loo")
    _check_common(split, data)
    rows = _UserRows(data)
    eligible = np.flatnonzero(rows.count >= 3)
    assert torch.equal(split.test.users, torch.from_numpy(eligible))
    assert torch.equal(split.validation.users, torch.from_numpy(eligible))
    last = rows.start[eligible] + rows.count[eligible] - 1
    assert np.array_equal(split.test.targets.numpy(), rows.item[last])
    assert np.array_equal(split.validation.targets.numpy(), rows.item[last - 1])
    assert np.array_equal(split.test.history.lengths().numpy(), rows.count[eligible] - 1)
    assert np.array_equal(split.validation.history.lengths().numpy(), rows.count[eligible] - 2)
    rows.prefix_rows(split.test.history, split.test.users)
    rows.prefix_rows(split.validation.history, split.validation.users)
    train_rows = rows.prefix_rows(split.train, split.train_users)
    train_lengths = split.train.lengths().numpy()
    users = split.train_users.numpy()
    expected = np.where(rows.count[users] >= 3, rows.count[users] - 2, rows.count[users])
    assert np.array_equal(train_lengths, expected)
    assert len(train_rows) + len(split.validation) + len(split.test) == len(data.frame)


@pytest.mark.parametrize("dataset", ["ml100k", "synthetic"])
def test_temporal(dataset: str, request: pytest.FixtureRequest) -> None:
    data: Interactions = request.getfixturevalue(dataset)
    split = make_split(data, "temporal", seed=7)
    _check_common(split, data)
    rows = _UserRows(data)
    first, final = rows.timestamp.min(), rows.timestamp.max()
    threshold = first + 0.9 * (final - first)
    last_time = rows.timestamp[rows.start + rows.count - 1]
    late = last_time >= threshold

    # No future leakage: training is entirely before the threshold, test targets entirely at or after it.
    train_rows = rows.prefix_rows(split.train, split.train_users)
    assert rows.timestamp[train_rows].max() < threshold
    test_users = split.test.users.numpy()
    assert late[test_users].all()
    assert rows.timestamp[rows.start[test_users] + rows.count[test_users] - 1].min() >= threshold
    # Test users train on everything before the threshold.
    train_length = np.zeros(data.num_users, dtype=np.int64)
    train_length[split.train_users.numpy()] = split.train.lengths().numpy()
    before = pd.Series(rows.timestamp < threshold).groupby(data.frame["user"]).sum().to_numpy()
    assert np.array_equal(train_length[late], before[late])

    # Validation users: a random ~5% of the others, whose last item alone is held out of training.
    held_out = ~late & (train_length == rows.count - 1)
    assert np.array_equal(train_length[~late & ~held_out], rows.count[~late & ~held_out])
    assert held_out.sum() == max(1, round(0.05 * (~late).sum()))
    validation_users = split.validation.users.numpy()
    assert held_out[validation_users].all() and not late[validation_users].any()
    assert not set(validation_users) & set(test_users), "a user is in both validation and test"

    # Both evaluation sets: history is the user's whole prefix; targets unseen in training are dropped.
    for evalset, candidates in ((split.validation, held_out), (split.test, late & (rows.count >= 2))):
        users = evalset.users.numpy()
        rows.prefix_rows(evalset.history, evalset.users)
        assert np.array_equal(evalset.history.lengths().numpy(), rows.count[users] - 1)
        target_items = rows.item[rows.start + rows.count - 1]
        assert np.array_equal(evalset.targets.numpy(), target_items[users])
        kept = np.flatnonzero(candidates & (split.item_counts.numpy()[target_items] > 0))
        assert np.array_equal(users, kept)
    assert len(split.test) > 0 and len(split.validation) > 0


def test_temporal_validation_choice_depends_on_seed(synthetic: Interactions) -> None:
    a = make_split(synthetic, "temporal", seed=1).validation.users
    b = make_split(synthetic, "temporal", seed=1).validation.users
    c = make_split(synthetic, "temporal", seed=2).validation.users
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_temporal_drops_targets_unseen_in_training() -> None:
    # User 0 is active late and ends on item "new" that no one trained on; user 1 ends on a known item.
    raw = pd.DataFrame({
        "user_id": [0, 0, 1, 1, 1, 2, 2, 2],
        "item_id": ["a", "new", "a", "b", "a", "b", "a", "b"],
        "timestamp": [1, 100, 2, 3, 99, 4, 5, 6],
    })
    data = prepare_interactions(raw, name="tiny")
    split = make_split(data, "temporal", validation_user_fraction=0.0)
    assert split.test.users.tolist() == [1]
    assert split.item_counts[1:].sum() == len(split.train.items) == 6  # users 0, 1 before t=90.1; all of 2
    assert len(split.validation) == 0


def test_unknown_split_kind(synthetic: Interactions) -> None:
    with pytest.raises(DataError, match="kind: 'random' is not one of loo, temporal"):
        make_split(synthetic, "random")
