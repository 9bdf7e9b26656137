"""Whether one configuration is better than another, given their seeds: the one rule every table of the
analysis uses (`cce-study best` against the runner-up, the reports' budget tables, the study report's
scaling and scope comparisons).

Rule, on the ranking metric (validation): gap = mean of a - mean of b; spread = the largest sample standard
deviation over seeds among the sides that have at least two seeds. Neither side has two seeds: the spread is
unknown ("unknown (one seed)"). |gap| <= spread: no difference ("same (within sd)"). Otherwise "better" or
"worse" (a vs b). A side with one seed is compared against the other side's spread, which is all that is
known about how much a seed moves the metric.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

BETTER = "better"
WORSE = "worse"
SAME = "same (within sd)"
UNKNOWN = "unknown (one seed)"
VERDICTS: tuple[str, ...] = (BETTER, SAME, WORSE, UNKNOWN)

# The verdict of the best configuration against the runner-up, as the budget tables say it.
RUNNER_UP_PHRASES = {BETTER: "ahead of runner-up", SAME: "tied with runner-up (within sd)",
                     WORSE: "behind runner-up", UNKNOWN: "unknown (one seed)"}


def compare(mean_a: float, sd_a: float | None, seeds_a: int, mean_b: float, sd_b: float | None,
            seeds_b: int) -> str:
    """a against b: `BETTER`, `WORSE`, `SAME` or `UNKNOWN` by the rule of this module; a side's `sd` is
    read only when it has at least two seeds."""
    for name, mean in (("mean_a", mean_a), ("mean_b", mean_b)):
        if mean is None or math.isnan(mean):
            raise ValueError(f"{name}: no value to compare")
    spreads = [float(sd) for sd, seeds in ((sd_a, seeds_a), (sd_b, seeds_b))
               if seeds >= 2 and sd is not None and not math.isnan(sd)]
    if not spreads:
        return UNKNOWN
    gap = mean_a - mean_b
    if abs(gap) <= max(spreads):
        return SAME
    return BETTER if gap > 0 else WORSE


def compare_rows(a: pd.Series, b: pd.Series, *, mean: str, sd: str, seeds: str) -> str:
    """`compare` on two table rows, reading the columns `mean`, `sd` and `seeds` (a missing seeds column
    or value counts as one seed)."""
    return compare(_float(a[mean]), _float(a.get(sd)), _seeds(a.get(seeds)),
                   _float(b[mean]), _float(b.get(sd)), _seeds(b.get(seeds)))


def _float(value: Any) -> float:
    return math.nan if value is None or pd.isna(value) else float(value)


def _seeds(value: Any) -> int:
    return 1 if value is None or pd.isna(value) else int(value)


__all__ = ["BETTER", "WORSE", "SAME", "UNKNOWN", "VERDICTS", "RUNNER_UP_PHRASES", "compare", "compare_rows"]
