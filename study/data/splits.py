"""Leave-one-out and global temporal splits of `Interactions` into training sequences and evaluation sets."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from study.data.errors import DataError
from study.data.preprocess import Interactions
from study.data.sequences import EvalSet, Sequences

SPLIT_KINDS = ("loo", "temporal")


@dataclass
class Split:
    kind: str  # "loo" | "temporal"
    num_items: int
    train: Sequences
    validation: EvalSet
    test: EvalSet
    item_counts: torch.Tensor  # int64 [num_items + 1]: training popularity; index 0 (padding) is 0
    train_users: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))  # [S] user


def make_split(
    data: Interactions,
    kind: str,
    *,
    seed: int = 0,
    test_time_fraction: float = 0.1,
    validation_user_fraction: float = 0.05,
) -> Split:
    """Split a cleaned log.

    loo: per user with >= 3 interactions, the last item is the test target and the second to last the
    validation target; training gets the rest (shorter users train on everything).

    temporal (the paper's global split): users active in the last `test_time_fraction` of the time span
    are test users, their last interaction the target and only their interactions before the time
    threshold are trained on; the last item of a random `validation_user_fraction` of the other users
    is the validation target; training gets everything else. Val/test targets whose item never occurs
    in training are dropped. The two roles never share a user.
    """
    check_split(data, kind)
    log = _Log(data)
    if kind == "loo":
        return _leave_one_out(log, data.num_items)
    if not 0 < test_time_fraction < 1:
        raise DataError(f"test_time_fraction: must be in (0, 1), got {test_time_fraction}")
    if not 0 <= validation_user_fraction < 1:
        raise DataError(f"validation_user_fraction: must be in [0, 1), got {validation_user_fraction}")
    return _temporal(log, data.num_items, seed, test_time_fraction, validation_user_fraction)


def check_split(data: Interactions, kind: str) -> None:
    """Refuse a split the log cannot support (a DataError naming the dataset), before any work is done."""
    if kind not in SPLIT_KINDS:
        raise DataError(f"kind: {kind!r} is not one of {', '.join(SPLIT_KINDS)}")
    if kind == "temporal" and data.timestamps_are_positions:
        raise DataError(
            f"split: 'temporal' needs real time stamps, but those of {data.name} are each user's positions "
            f"(0..n-1), which order a user's items but not users against each other; use split 'loo'"
        )


class _Log:
    """Per-row arrays of a log sorted by (user, timestamp); `position` is the row's index in its user."""

    def __init__(self, data: Interactions) -> None:
        self.user = data.frame["user"].to_numpy(np.int64)
        self.item = data.frame["item"].to_numpy(np.int64)
        self.timestamp = data.frame["timestamp"].to_numpy()
        self.counts = np.bincount(self.user, minlength=data.num_users)
        self.starts = np.concatenate(([0], np.cumsum(self.counts)[:-1]))
        self.position = np.arange(len(self.user)) - self.starts[self.user]

    def eval_set(self, selected: np.ndarray, target_position: np.ndarray) -> EvalSet:
        """Selected users (bool [U], each with target_position >= 1): history before, and the target."""
        chosen = selected[self.user]
        history = chosen & (self.position < target_position[self.user])
        target = chosen & (self.position == target_position[self.user])
        return EvalSet(
            history=Sequences.from_groups(self.user[history], self.item[history]),
            targets=torch.from_numpy(self.item[target].copy()),
            users=torch.from_numpy(self.user[target].copy()),
        )

    def sequences(self, rows: np.ndarray) -> tuple[Sequences, torch.Tensor]:
        """The selected rows grouped per user, and the user of each (non-empty) sequence."""
        users = self.user[rows]
        return Sequences.from_groups(users, self.item[rows]), torch.from_numpy(np.unique(users))


def _item_counts(items: torch.Tensor, num_items: int) -> torch.Tensor:
    counts = torch.bincount(items, minlength=num_items + 1)
    counts[0] = 0
    return counts


def _leave_one_out(log: _Log, num_items: int) -> Split:
    eligible = log.counts >= 3
    last = log.counts - 1
    held_out = eligible[log.user] & (log.position >= last[log.user] - 1)
    train, train_users = log.sequences(~held_out)
    return Split(
        kind="loo",
        num_items=num_items,
        train=train,
        validation=log.eval_set(eligible, last - 1),
        test=log.eval_set(eligible, last),
        item_counts=_item_counts(train.items, num_items),
        train_users=train_users,
    )


def _temporal(log: _Log, num_items: int, seed: int, test_fraction: float,
              validation_fraction: float) -> Split:
    first, final = log.timestamp.min(), log.timestamp.max()
    threshold = first + (1.0 - test_fraction) * (final - first)
    last = log.counts - 1
    active_late = log.timestamp[log.starts + last] >= threshold
    test_users = active_late & (log.counts >= 2)
    remaining = np.flatnonzero(~active_late)
    candidates = remaining[log.counts[remaining] >= 2]
    wanted = max(1, round(validation_fraction * len(remaining))) if validation_fraction else 0
    wanted = min(wanted, len(candidates))
    validation_users = np.zeros(len(log.counts), dtype=bool)
    validation_users[np.random.default_rng(seed).choice(candidates, size=wanted, replace=False)] = True

    train_rows = np.where(active_late[log.user], log.timestamp < threshold,
                          ~(validation_users[log.user] & (log.position == last[log.user])))
    train, train_users = log.sequences(train_rows)
    item_counts = _item_counts(train.items, num_items)
    validation = log.eval_set(validation_users, last)
    test = log.eval_set(test_users, last)
    return Split(
        kind="temporal",
        num_items=num_items,
        train=train,
        validation=validation.subset(item_counts[validation.targets] > 0),
        test=test.subset(item_counts[test.targets] > 0),
        item_counts=item_counts,
        train_users=train_users,
    )
