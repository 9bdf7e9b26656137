"""From a raw interaction log to `Interactions`: drop duplicates, k-core filter, remap ids, sort."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from study.data.errors import DataError


@dataclass
class Interactions:
    """A cleaned log: users 0..num_users-1, items 1..num_items (0 is padding), sorted by (user, timestamp).

    Every user occurs in `frame`; every item does too unless the log was prepared with a `catalogue`,
    whose items are all kept (ids 1..num_items), occurring or not."""

    frame: pd.DataFrame  # columns user, item (int64), timestamp (int64 or float64)
    num_users: int
    num_items: int
    name: str
    # Original ids: user_labels[u] is the raw id of user u, item_labels[i - 1] the raw id of item i.
    user_labels: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    item_labels: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    # Identity of what was read (set by `study.data.load_dataset`): the file, or the canonical
    # `synthetic:...` spec, and the SHA-256 of the file's bytes (of the canonical spec for synthetic logs).
    source: str = ""
    sha256: str = ""
    # True when the raw log's time stamps are each user's positions (0..n-1 or 1..n), not times:
    # orders within a user but says nothing across users, so a global temporal split is meaningless.
    timestamps_are_positions: bool = False

    def __len__(self) -> int:
        return len(self.frame)


def prepare_interactions(raw: pd.DataFrame, *, name: str, kcore: int = 0,
                         catalogue: np.ndarray | None = None) -> Interactions:
    """Turn a validated raw log (columns user_id, item_id, timestamp) into `Interactions`.

    Exact duplicate rows (same user, item and timestamp) are dropped; repeated consumption at
    different times is kept. Ties in time keep the original row order.

    Without `catalogue` the items are those that occur (after k-core filtering), renumbered densely in
    sorted order of their raw ids. With it (the raw ids of every item, each once), the catalogue is
    exactly those items: raw id catalogue[k] becomes item k + 1 whether it occurs or not, and k-core
    filtering removes interactions only. Every raw item id of the log must be in the catalogue.
    """
    if kcore < 0:
        raise DataError(f"kcore: must be >= 0, got {kcore}")
    if len(raw) == 0:
        raise DataError(f"{name}: the dataset has no interactions")
    user_codes, user_labels = _factorize(raw["user_id"])
    if catalogue is None:
        item_codes, item_labels = _factorize(raw["item_id"])
    else:
        item_labels = np.asarray(catalogue)
        item_codes = _catalogue_codes(raw["item_id"], item_labels, name)
    timestamps = raw["timestamp"].to_numpy()
    positional = timestamps_are_positions(user_codes, timestamps)
    keep = ~pd.DataFrame({"u": user_codes, "i": item_codes, "t": timestamps}).duplicated().to_numpy()
    user_codes, item_codes, timestamps = user_codes[keep], item_codes[keep], timestamps[keep]
    if kcore > 0:
        keep = kcore_mask(user_codes, item_codes, kcore)
        user_codes, item_codes, timestamps = user_codes[keep], item_codes[keep], timestamps[keep]
    if len(user_codes) == 0:
        raise DataError(f"{name}: no interactions left after {kcore}-core filtering")
    # Re-number the surviving users (and, without a catalogue, items) densely, keeping the sorted order
    # of the original ids.
    used_users, user_codes = np.unique(user_codes, return_inverse=True)
    if catalogue is None:
        used_items, item_codes = np.unique(item_codes, return_inverse=True)
        item_labels = np.asarray(item_labels)[used_items]
    order = np.lexsort((timestamps, user_codes))  # lexsort is stable: ties keep file order
    frame = pd.DataFrame({
        "user": user_codes[order].astype(np.int64),
        "item": item_codes[order].astype(np.int64) + 1,
        "timestamp": timestamps[order],
    })
    return Interactions(
        frame=frame,
        num_users=len(used_users),
        num_items=len(item_labels),
        name=name,
        user_labels=np.asarray(user_labels)[used_users],
        item_labels=item_labels,
        timestamps_are_positions=positional,
    )


def timestamps_are_positions(user_codes: np.ndarray, timestamps: np.ndarray) -> bool:
    """Whether every user's time stamps, in order, are exactly 0, 1, ..., n-1 (or 1, ..., n)."""
    if len(timestamps) == 0 or not np.issubdtype(np.asarray(timestamps).dtype, np.number):
        return False
    order = np.lexsort((timestamps, user_codes))
    users, stamps = user_codes[order], np.asarray(timestamps)[order]
    first_of_user = np.concatenate(([True], users[1:] != users[:-1]))
    starts = np.maximum.accumulate(np.where(first_of_user, np.arange(len(users)), 0))
    position = np.arange(len(users)) - starts
    return bool(np.array_equal(stamps, position) or np.array_equal(stamps, position + 1))


def kcore_mask(user_codes: np.ndarray, item_codes: np.ndarray, k: int) -> np.ndarray:
    """Rows that survive iterated k-core filtering: every remaining user and item has >= k interactions."""
    keep = np.ones(len(user_codes), dtype=bool)
    num_users = int(user_codes.max()) + 1 if len(user_codes) else 0
    num_items = int(item_codes.max()) + 1 if len(item_codes) else 0
    while True:
        user_counts = np.bincount(user_codes[keep], minlength=num_users)
        item_counts = np.bincount(item_codes[keep], minlength=num_items)
        survives = keep & (user_counts[user_codes] >= k) & (item_counts[item_codes] >= k)
        if survives.sum() == keep.sum():
            return survives
        keep = survives


def _catalogue_codes(ids: pd.Series, catalogue: np.ndarray, name: str) -> np.ndarray:
    """Codes 0..len(catalogue)-1: each id's position in `catalogue`."""
    index = pd.Index(catalogue)
    if not index.is_unique:
        twice = index[index.duplicated()][:1].tolist()[0]  # tolist: a plain Python value, for the message
        raise DataError(f"{name}: the catalogue lists item {twice!r} more than once")
    codes = index.get_indexer(ids)
    missing = codes < 0
    if missing.any():
        row = int(np.argmax(missing))
        raise DataError(f"{name}: item {ids.iloc[row:row + 1].tolist()[0]!r} (row {row}) is not in the "
                        f"catalogue of {len(catalogue)} items")
    return np.asarray(codes, dtype=np.int64)


def _factorize(ids: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Codes 0..n-1 in sorted order of the ids (in order of appearance if mixed types don't sort)."""
    try:
        codes, labels = pd.factorize(ids, sort=True)
    except TypeError:
        codes, labels = pd.factorize(ids, sort=False)
    return np.asarray(codes, dtype=np.int64), np.asarray(labels)
