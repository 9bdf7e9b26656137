"""How crowded each trial's card was while it ran, from the results rows alone.

Trials of a sweep share cards (fractional GPUs), and a trial that the time cap stops trains for as many
epochs as its share of the card allows: its quality depends on how many other trials ran beside it, so
seeds of one configuration run under different sharing differ by more than the seed. For each trial with a
card (`gpu_uuid`) and both time stamps, `mean_trials_on_card` is the mean number of trials on that card over
the trial's run, itself included: 1 + the time each other trial of the card overlapped it, summed, divided by
its own run time. Only the trials given count: a trial of a database that was not read is invisible.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

CARD, STARTED, FINISHED = "gpu_uuid", "started_at", "finished_at"


def mean_trials_on_card(trials: pd.DataFrame) -> pd.Series:
    """Per row of `trials` (every status: a trial that failed still held its share while it ran), the mean
    number of trials on its card while it ran; NaN where the card or a time stamp is unknown."""
    result = pd.Series(np.nan, index=trials.index, dtype="float64")
    if not {CARD, STARTED, FINISHED} <= set(trials.columns) or trials.empty:
        return result
    start = _seconds(trials[STARTED])
    end = _seconds(trials[FINISHED])
    known = trials[CARD].notna() & start.notna() & end.notna() & (end > start)
    for rows in trials[known].groupby(CARD, sort=False).groups.values():
        begins, ends = start[rows].to_numpy(), end[rows].to_numpy()
        overlap = np.minimum(ends[:, None], ends[None, :]) - np.maximum(begins[:, None], begins[None, :])
        result[rows] = np.clip(overlap, 0.0, None).sum(axis=1) / (ends - begins)
    return result


def _seconds(stamps: pd.Series) -> pd.Series:
    times = pd.to_datetime(stamps, utc=True, errors="coerce", format="ISO8601")
    return (times - pd.Timestamp(0, tz="UTC")).dt.total_seconds()


def sharing_text(low: float | None, high: float | None) -> str:
    """A configuration's range over its seeds, as the tables print it: "8.0", "8.0-13.9" or "-"."""
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return "-"
    return f"{low:.1f}" if round(low, 1) == round(high, 1) else f"{low:.1f}-{high:.1f}"


__all__ = ["mean_trials_on_card", "sharing_text"]
