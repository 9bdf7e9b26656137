"""Synthetic interaction logs at catalogue scale: Zipf-like popularity plus learnable sequential structure.

Every user walks a hidden cyclic ordering of the catalogue: with probability `follow` the next item
is 1..`window` steps ahead of the previous one in that ordering, otherwise it is a fresh draw from a
Zipf(`alpha`) popularity law. Memory is O(interactions + items); generation is vectorised numpy.

With Zipf popularity most of a large catalogue never occurs in the log (20,000 users x 50
interactions over 10^6 items at alpha 1 touch about a third of them). By default the loaded catalogue
is the items that occur, renumbered densely, as for any file; `catalogue=full` keeps all `items`
generated items (item k of the generator is id k + 1), so that a catalogue-scale study really ranks,
samples and stores that many items.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from study.data.errors import DataError

PREFIX = "synthetic"
CATALOGUES = ("occurring", "full")  # the items that occur in the log, or every generated item
INTEGER_FIELDS = ("users", "items", "window", "seed")
TEXT_FIELDS = ("catalogue",)
# Settings added after logs were recorded: spelled in the canonical name only off their default, so that
# the older names (and the SHA-256 their trials recorded) stay what they were.
LATER_FIELDS = ("catalogue",)


@dataclass(frozen=True)
class SyntheticSpec:
    users: int = 1000
    items: int = 10_000
    mean_len: float = 50.0  # mean interactions per user (lengths are 1 + geometric, so >= 2)
    alpha: float = 1.0  # Zipf exponent of item popularity
    follow: float = 0.8  # probability that the next item follows the hidden ordering
    window: int = 3  # a followed step moves 1..window positions ahead
    seed: int = 0
    catalogue: str = "occurring"  # "full": every generated item is in the catalogue, occurring or not

    def __post_init__(self) -> None:
        if self.users < 1:
            raise DataError(f"synthetic: users must be >= 1, got {self.users}")
        if self.items < 2:
            raise DataError(f"synthetic: items must be >= 2, got {self.items}")
        if not self.mean_len >= 2:
            raise DataError(f"synthetic: mean_len must be >= 2, got {self.mean_len}")
        if not self.alpha >= 0:
            raise DataError(f"synthetic: alpha must be >= 0, got {self.alpha}")
        if not 0 <= self.follow <= 1:
            raise DataError(f"synthetic: follow must be in [0, 1], got {self.follow}")
        if not 1 <= self.window < self.items:
            raise DataError(f"synthetic: window must be in [1, items), got {self.window}")
        if self.catalogue not in CATALOGUES:
            raise DataError(f"synthetic: catalogue must be one of {', '.join(CATALOGUES)}, "
                            f"got {self.catalogue!r}")


def is_synthetic(name: str) -> bool:
    return name == PREFIX or name.startswith(PREFIX + ":")


def parse_synthetic_spec(text: str) -> SyntheticSpec:
    """Parse `synthetic:users=U,items=C,mean_len=M,alpha=A,seed=S,catalogue=full` (every key optional)."""
    if not is_synthetic(text):
        raise DataError(f"synthetic: {text!r} does not start with '{PREFIX}:'")
    body = text[len(PREFIX) + 1:].strip()
    fields = {f.name: f.type for f in dataclasses.fields(SyntheticSpec)}
    values: dict[str, int | float | str] = {}
    for part in filter(None, (p.strip() for p in body.split(","))):
        key, sep, raw = part.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            raise DataError(f"synthetic: bad setting {part!r}; expected key=value, key one of "
                            f"{', '.join(fields)}")
        if key in TEXT_FIELDS:
            values[key] = raw.strip()
            continue
        try:
            number = float(raw)
            is_int_field = key in INTEGER_FIELDS
            if is_int_field and not number.is_integer():
                raise ValueError
            values[key] = int(number) if is_int_field else number
        except ValueError:
            raise DataError(f"synthetic: {key}={raw.strip()!r} is not a valid number") from None
    return SyntheticSpec(**values)  # type: ignore[arg-type]


def canonical_synthetic_name(spec: SyntheticSpec) -> str:
    """`synthetic:` with every setting spelled out in field order (LATER_FIELDS only off their default):
    one text per distinct log."""
    body = ",".join(f"{f.name}={getattr(spec, f.name)}" for f in dataclasses.fields(SyntheticSpec)
                    if f.name not in LATER_FIELDS or getattr(spec, f.name) != f.default)
    return f"{PREFIX}:{body}"


def synthetic_catalogue(spec: SyntheticSpec) -> np.ndarray | None:
    """The raw ids of every catalogue item, in id order, when `spec` keeps the whole generated catalogue
    (`catalogue=full`: 0..items-1); None when the catalogue is the items that occur in the log."""
    return np.arange(spec.items, dtype=np.int64) if spec.catalogue == "full" else None


def generate_synthetic(spec: SyntheticSpec) -> pd.DataFrame:
    """A raw log with columns user_id, item_id (0..items-1), timestamp (int64 seconds)."""
    rng = np.random.default_rng(spec.seed)
    lengths = 1 + rng.geometric(1.0 / (spec.mean_len - 1.0), size=spec.users) if spec.mean_len > 2 \
        else np.full(spec.users, 2)
    lengths = lengths.astype(np.int64)
    total = int(lengths.sum())
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    user = np.repeat(np.arange(spec.users, dtype=np.int64), lengths)

    # A new chain starts at each user's first item and wherever the walk does not follow.
    jump = rng.random(total) >= spec.follow
    jump[starts] = True
    # Popularity ranks by inverse-CDF of the Zipf weights, mapped to random positions of the hidden ordering.
    weights_cdf = np.cumsum(np.arange(1, spec.items + 1, dtype=np.float64) ** -spec.alpha)
    ranks = np.searchsorted(weights_cdf, rng.random(int(jump.sum())) * weights_cdf[-1], side="right")
    del weights_cdf
    position_of_rank = rng.permutation(spec.items)
    chain_start = position_of_rank[np.minimum(ranks, spec.items - 1)]

    steps = rng.integers(1, spec.window + 1, size=total)
    steps[jump] = 0
    walked = np.cumsum(steps)
    chain = np.cumsum(jump) - 1  # index of the chain each interaction belongs to
    jump_at = np.flatnonzero(jump)
    position = (chain_start[chain] + walked - walked[jump_at][chain]) % spec.items
    item_of_position = rng.permutation(spec.items)  # hide the ordering behind arbitrary ids

    # Users start uniformly over a ~3-year span and act with exponential gaps (mean one hour).
    span = 10**8
    gaps = np.maximum(1, rng.exponential(3600.0, size=total)).astype(np.int64)
    gaps[starts] = rng.integers(0, span, size=spec.users)
    group_total = np.cumsum(gaps)
    timestamp = group_total - np.repeat(group_total[starts] - gaps[starts], lengths)
    return pd.DataFrame({"user_id": user, "item_id": item_of_position[position].astype(np.int64),
                         "timestamp": timestamp})
