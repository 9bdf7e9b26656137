"""Pareto frontier and best configuration under a memory budget, from the trials table of a results database.

Input is the DataFrame of `study.database.results_db.load_trials` (one row per trial). Choices, all tested:

- Objectives: validation quality up (default ndcg@10), measured peak memory down (default `peak_bytes`),
  optionally time per epoch down as a third objective.
- Time per epoch, wherever it is compared (third objective, fused vs PyTorch, tables), is `epoch_time`:
  the steady state `steady_epoch_seconds` (median over the epochs after the first, which includes
  kernel compilation) where a row has it, else `mean_epoch_seconds`.
- Candidates are `ok` trials with every objective present. Other trials stay in the table with
  `candidate == False` so figures can show them as infeasible.
- The frontier is computed separately per (dataset, split): quality is not comparable across them.
- Dominance is strict Pareto dominance: a point is dominated only by one at least as good on every
  objective and strictly better on one. Points equal on all objectives therefore never dominate each
  other, and identical frontier points all stay on the frontier.
- Seeds are not aggregated by default (every trial is a point). With `aggregate_seeds=True`, `ok` trials
  of one configuration (`seed_key_columns`: the same training settings, implementation that ran and
  dataset contents, wherever and under whichever budget they ran) become one point: metrics and times are
  the mean over seeds, memory is the maximum over seeds (a configuration fits a budget only if every seed
  did); `num_seeds` counts them, `seed` lists them ("0,1,2"), `trial_ids` names every trial, and
  `quality_sd` / `test_quality_sd` are the sample standard deviations of the metric over seeds (NaN for
  one seed). `best_per_budget`, `best_under_budget` and `feasible_ranking` take the same switch:
  aggregated, the best is the configuration with the highest mean, not the luckiest seed (`cce-study best`
  ranks this way), and `best_per_budget` says whether it beats the runner-up beyond the seeds' spread
  (`study.analysis.seed_compare`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.typing import DataFrameGroupBy

from study.analysis import seed_compare
from study.config import METRIC_KS, TrainConfig
from study.database import results_db
from study.units import GiB as GIB  # analysis.GIB: the name the analysis modules use
from study.units import format_gib

MEMORY_FIELDS: tuple[str, ...] = ("peak_bytes", "torch_max_reserved", "nvml_process_peak",
                                  "torch_max_allocated")
METRIC_NAMES: tuple[str, ...] = results_db.METRIC_NAMES
GROUP_COLUMNS: tuple[str, ...] = ("dataset", "split")
STEADY_TIME_COLUMN = "steady_epoch_seconds"
MEAN_TIME_COLUMN = "mean_epoch_seconds"
TIME_COLUMN = "epoch_time_seconds"  # added by pareto_table and fused_vs_torch: see `epoch_time`
TIME_LABEL = "time per epoch (steady state, s)"
STOP_REASON = "stop_reason"
TIME_LIMIT_REASON = "time_limit"  # the trial's time limit (time_limit_s) ended its training
TIME_CAPPED = "time_capped_seeds"  # added by aggregate_over_seeds: seeds the time limit stopped

# Columns added by `pareto_table`.
QUALITY = "quality"
TEST_QUALITY = "test_quality"
QUALITY_SD = "quality_sd"  # over seeds, with aggregate_seeds
TEST_QUALITY_SD = "test_quality_sd"
MEMORY = "memory_bytes"
CANDIDATE = "candidate"
ON_FRONTIER = "on_frontier"

# Fields that do not change what a trial computes, so they do not tell configurations apart.
_NOT_CONFIG_IDENTITY = ("seed", "progress")
# Seed repeats run in sweeps of their own, on other cards or hosts, under another enforced budget: where
# and under which budget a trial ran does not make it another configuration (`seed_key_columns`).
_WHERE_IT_RAN_FIELDS = ("device", "memory_budget")
# Columns of an aggregated row that list the distinct values of its seeds instead of the first one.
_LISTED_COLUMNS = ("sweep", "gpu_name", "host", "device", "memory_budget")
_MEMORY_COLUMNS = ("peak_bytes", "torch_max_allocated", "torch_max_reserved", "nvml_process_peak",
                   "cpu_peak_rss", "predicted_peak_bytes")


def parse_metric(metric: str) -> tuple[str, int]:
    """'ndcg@10' -> ('ndcg', 10); ValueError naming the metric otherwise."""
    match = re.fullmatch(r"\s*([a-z]+)@(\d+)\s*", metric.lower())
    if match is None or match.group(1) not in METRIC_NAMES or int(match.group(2)) not in METRIC_KS:
        names = ", ".join(METRIC_NAMES)
        ks = ", ".join(map(str, METRIC_KS))
        raise ValueError(f"metric: {metric!r} is not NAME@K with NAME in {names} and K in {ks}")
    return match.group(1), int(match.group(2))


def metric_column(metric: str, split: str = "val") -> str:
    """The trials-table column of a metric, after checking that the database records it:
    ('ndcg@10', 'val') -> 'val_ndcg_10'."""
    name, k = parse_metric(metric)
    return results_db.metric_column(f"{name}@{k}", split)


def check_memory_field(memory_field: str) -> str:
    if memory_field not in MEMORY_FIELDS:
        raise ValueError(f"memory_field: {memory_field!r} is not one of {', '.join(MEMORY_FIELDS)}")
    return memory_field


def config_key_columns(trials: pd.DataFrame, *, exclude: Iterable[str] = ()) -> list[str]:
    """Columns that identify a configuration run on one kind of card, as `fused_vs_torch` pairs them: the
    TrainConfig fields present (but the seed), the implementation that actually ran and the GPU, minus
    `exclude`. Seeds of a configuration are grouped by `seed_key_columns` instead."""
    skipped = set(_NOT_CONFIG_IDENTITY) | set(exclude)
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in skipped]
    names += [c for c in ("loss_impl_used", "gpu_name") if c not in skipped]
    return [c for c in names if c in trials.columns]


def seed_key_columns(trials: pd.DataFrame) -> list[str]:
    """The columns on which two trials must agree to be the same configuration run with another seed, the
    one grouping of seeds every analysis uses (`seed_groups`): every TrainConfig field present but the
    seed, the progress bar, the device and the enforced budget; the implementation that ran
    (`loss_impl_used`; the requested `loss_impl` only where that is not recorded, since "auto" resolves to
    one); the dataset's contents (`dataset_sha256`) besides its name; and dataset and split. The sweep,
    trial id, card, host and budget never split a configuration: a seed repeat is a sweep of its own and
    may run elsewhere."""
    skipped = set(_NOT_CONFIG_IDENTITY) | set(_WHERE_IT_RAN_FIELDS)
    if "loss_impl_used" in trials.columns:
        skipped.add("loss_impl")
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in skipped]
    names += ["loss_impl_used", "dataset_sha256", *GROUP_COLUMNS]
    return list(dict.fromkeys(c for c in names if c in trials.columns))


def seed_groups(trials: pd.DataFrame, *, sort: bool = False) -> DataFrameGroupBy:
    """`trials` (give the `ok` ones) grouped by configuration (`seed_key_columns`), each group's trials in
    trial-id order; missing values are a value of the key like any other."""
    ordered = trials.sort_values("trial_id", kind="stable") if "trial_id" in trials.columns else trials
    return ordered.groupby(seed_key_columns(trials), dropna=False, sort=sort)


def samples_negatives(trials: pd.DataFrame) -> pd.Series:
    """True for trials whose loss uses sampled negatives; full-catalogue CE (`loss == "ce"`) has no
    meaningful `num_negatives`, so negatives-based views leave it out."""
    if "loss" not in trials.columns:
        return pd.Series(True, index=trials.index)
    return trials["loss"] != "ce"


def has_epoch_time(trials: pd.DataFrame) -> bool:
    """Whether `trials` has a column `epoch_time` can read."""
    return STEADY_TIME_COLUMN in trials.columns or MEAN_TIME_COLUMN in trials.columns


def epoch_time(trials: pd.DataFrame) -> pd.Series:
    """The time per epoch to compare, per row: `steady_epoch_seconds` where the column exists and the
    row has a value, else `mean_epoch_seconds` (the mean over all epochs, first included: what trials
    recorded before the steady time existed have); NaN where neither is known."""
    result = pd.Series(np.nan, index=trials.index, dtype="float64")
    for column in (STEADY_TIME_COLUMN, MEAN_TIME_COLUMN):
        if column in trials.columns:
            result = result.fillna(pd.to_numeric(trials[column], errors="coerce").astype("float64"))
    return result


def non_dominated(objectives: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Boolean mask of the rows of `objectives` [n, m] that no other row dominates.

    Rows with a NaN are never on the frontier and never dominate. Rows equal on every objective do not
    dominate each other, so duplicates of a frontier point are all on the frontier.
    """
    values = np.asarray(objectives, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != len(maximize):
        raise ValueError(f"objectives: expected shape [n, {len(maximize)}], got {values.shape}")
    complete = ~np.isnan(values).any(axis=1)
    # Minimise everything: flip the sign of objectives to maximise.
    signs = np.where(np.asarray(maximize, dtype=bool), -1.0, 1.0)
    points = values[complete] * signs
    dominated = np.zeros(len(points), dtype=bool)
    chunk = 512  # bounds the [chunk, n, m] comparison tensor
    for start in range(0, len(points), chunk):
        block = points[start:start + chunk, None, :]
        no_worse = np.all(points[None, :, :] <= block, axis=2)
        better = np.any(points[None, :, :] < block, axis=2)
        dominated[start:start + chunk] = np.any(no_worse & better, axis=1)
    mask = np.zeros(len(values), dtype=bool)
    mask[np.flatnonzero(complete)[~dominated]] = True
    return mask


def aggregate_over_seeds(trials: pd.DataFrame, *, spread: Sequence[str] = ()) -> pd.DataFrame:
    """One row per configuration for the `ok` trials (mean metrics and times, max memory over seeds);
    other trials are passed through unchanged with `num_seeds` = 1. `trial_ids` lists each row's trials
    (comma-separated); for each column in `spread`, `<column>_sd` is its sample standard deviation over
    seeds (NaN for one seed); `time_capped_seeds` counts the seeds the time limit stopped."""
    spread_columns = [f"{column}_sd" for column in spread]
    if trials.empty:
        return trials.assign(num_seeds=pd.Series(dtype="int64"), trial_ids=pd.Series(dtype=object),
                             **{column: pd.Series(dtype="float64") for column in spread_columns},
                             **{TIME_CAPPED: pd.Series(dtype="int64")})
    ok = trials[trials["status"] == "ok"]
    rest = trials[trials["status"] != "ok"].assign(num_seeds=1)
    if "trial_id" in rest.columns:
        rest = rest.assign(trial_ids=rest["trial_id"])
    if ok.empty:
        return rest.assign(**{TIME_CAPPED: time_capped_seeds(rest)}).reset_index(drop=True)
    keys = seed_key_columns(ok)
    numeric = [c for c in ok.columns if c not in keys and pd.api.types.is_numeric_dtype(ok[c])]
    how: dict[str, Any] = {}
    for column in ok.columns:
        if column in keys:
            continue
        if column in _MEMORY_COLUMNS or column in ("gpu_total", "budget_bytes"):
            how[column] = "max"
        elif column in numeric:
            how[column] = "mean"
        elif column in _LISTED_COLUMNS:
            how[column] = _distinct_values
        else:
            how[column] = "first"
    grouped = seed_groups(ok)
    merged = grouped.agg(how)
    extra = pd.DataFrame({"num_seeds": grouped.size()})
    if "trial_id" in ok.columns:
        extra["trial_ids"] = grouped["trial_id"].agg(lambda ids: ",".join(sorted(ids)))
    for column in spread:
        extra[f"{column}_sd"] = grouped[column].std() if column in ok.columns else math.nan
    extra[TIME_CAPPED] = grouped[STOP_REASON].agg(_count_time_capped) if STOP_REASON in ok.columns else 0
    if "seed" in ok.columns:
        # The aggregated row lists its seeds ("0,1,2") instead of one seed.
        merged = merged.drop(columns="seed")
        extra["seed"] = grouped["seed"].agg(lambda seeds: ",".join(str(s) for s in sorted(seeds)))
    merged = pd.concat([merged, extra], axis=1).copy().reset_index()  # copy(): one block per dtype
    added = ["num_seeds"] + (["trial_ids"] if "trial_id" in ok.columns else []) + spread_columns
    rest = rest.assign(**{TIME_CAPPED: time_capped_seeds(rest)})
    return pd.concat([merged, rest], ignore_index=True)[list(trials.columns) + added + [TIME_CAPPED]]


def time_capped_seeds(trials: pd.DataFrame) -> pd.Series:
    """Per row, how many of its seeds the per-trial time limit stopped (`stop_reason` = "time_limit"):
    the aggregated count of `aggregate_over_seeds`, or 0 / 1 for a row that is one trial."""
    if TIME_CAPPED in trials.columns:
        return trials[TIME_CAPPED].fillna(0).astype("int64")
    if STOP_REASON not in trials.columns:
        return pd.Series(0, index=trials.index, dtype="int64")
    return (trials[STOP_REASON] == TIME_LIMIT_REASON).astype("int64")


def _count_time_capped(reasons: pd.Series) -> int:
    return int((reasons == TIME_LIMIT_REASON).sum())


def _distinct_values(values: pd.Series) -> object:
    """The distinct values of a group in order, comma-separated ("study-games,study-games-seeds"); the
    value itself when there is one."""
    distinct = list(dict.fromkeys(values.dropna()))
    if len(distinct) <= 1:
        return distinct[0] if distinct else values.iloc[0]
    return ",".join(str(v) for v in distinct)


def pareto_table(
    trials: pd.DataFrame,
    *,
    metric: str = "ndcg@10",
    memory_field: str = "peak_bytes",
    with_time: bool = False,
    aggregate_seeds: bool = False,
) -> pd.DataFrame:
    """Every trial with the objectives and the frontier flag (per dataset and split) added as columns
    `quality` (validation metric), `test_quality`, `memory_bytes`, `epoch_time_seconds` (`epoch_time`),
    `candidate` and `on_frontier`."""
    val_column = metric_column(metric, "val")
    test_column = metric_column(metric, "test")
    check_memory_field(memory_field)
    _require_columns(trials, ["status", val_column, memory_field, *GROUP_COLUMNS])
    if with_time:
        _require_epoch_time(trials)
    # Before aggregating, so that a configuration's time is the mean of its seeds' times.
    table = trials.assign(**{TIME_COLUMN: epoch_time(trials)})
    spread = [c for c in (val_column, test_column) if c in table.columns]
    table = aggregate_over_seeds(table, spread=spread) if aggregate_seeds else table
    table = table.reset_index(drop=True).copy()  # a compact copy: wide frames warn when columns are added
    table[QUALITY] = pd.to_numeric(table[val_column], errors="coerce")
    table[TEST_QUALITY] = (pd.to_numeric(table[test_column], errors="coerce") if test_column in table.columns
                           else np.nan)
    for sd_column, column in ((QUALITY_SD, val_column), (TEST_QUALITY_SD, test_column)):
        table[sd_column] = (pd.to_numeric(table[f"{column}_sd"], errors="coerce")
                            if f"{column}_sd" in table.columns else np.nan)
    table[MEMORY] = pd.to_numeric(table[memory_field], errors="coerce")
    objective_columns = [QUALITY, MEMORY] + ([TIME_COLUMN] if with_time else [])
    maximize = [True, False] + ([False] if with_time else [])
    table[CANDIDATE] = (table["status"] == "ok") & table[objective_columns].notna().all(axis=1)
    table[ON_FRONTIER] = False
    for _, group in table[table[CANDIDATE]].groupby(list(GROUP_COLUMNS), dropna=False):
        mask = non_dominated(group[objective_columns].to_numpy(dtype=np.float64), maximize)
        table.loc[group.index[mask], ON_FRONTIER] = True
    return table


def pareto_frontier(
    trials: pd.DataFrame,
    *,
    metric: str = "ndcg@10",
    memory_field: str = "peak_bytes",
    with_time: bool = False,
    aggregate_seeds: bool = False,
) -> pd.DataFrame:
    """The frontier rows of `pareto_table`, ordered by dataset, split and memory."""
    table = pareto_table(trials, metric=metric, memory_field=memory_field, with_time=with_time,
                         aggregate_seeds=aggregate_seeds)
    frontier = table[table[ON_FRONTIER]]
    return frontier.sort_values([*GROUP_COLUMNS, MEMORY, QUALITY], ascending=[True, True, True, False])


def scope(trials: pd.DataFrame, *, dataset: str | None = None, split: str | None = None) -> pd.DataFrame:
    """Trials of one dataset and split; ValueError when the choice is ambiguous or matches nothing."""
    _require_columns(trials, GROUP_COLUMNS)
    chosen = trials
    for column, value in (("dataset", dataset), ("split", split)):
        present = sorted(chosen[column].dropna().astype(str).unique())
        if value is not None:
            if value not in present:
                listed = ", ".join(present) or "none"
                raise ValueError(f"{column}: {value!r} has no trials (present: {listed})")
            chosen = chosen[chosen[column] == value]
        elif len(present) > 1:
            raise ValueError(f"{column}: the trials cover several ({', '.join(present)}); choose one")
    return chosen


def feasible_ranking(
    trials: pd.DataFrame,
    budget_bytes: int,
    *,
    metric: str = "ndcg@10",
    memory_field: str = "peak_bytes",
    aggregate_seeds: bool = False,
) -> pd.DataFrame:
    """`ok` trials (configurations, with `aggregate_seeds`) whose measured memory fits the budget
    (inclusive), best first: higher validation metric, then less memory, then trial id (so the order is
    deterministic)."""
    if budget_bytes <= 0:
        raise ValueError(f"budget_bytes: must be positive, got {budget_bytes!r}")
    table = pareto_table(trials, metric=metric, memory_field=memory_field, aggregate_seeds=aggregate_seeds)
    fits = table[table[CANDIDATE] & (table[MEMORY] <= budget_bytes)]
    order = [QUALITY, MEMORY] + (["trial_id"] if "trial_id" in fits.columns else [])
    return fits.sort_values(order, ascending=[False, True] + [True] * (len(order) - 2), kind="stable")


def best_under_budget(
    trials: pd.DataFrame,
    budget_bytes: int,
    metric: str = "ndcg@10",
    memory_field: str = "peak_bytes",
    dataset: str | None = None,
    *,
    split: str | None = None,
    aggregate_seeds: bool = False,
) -> tuple[pd.Series | None, pd.Series | None]:
    """The best trial (configuration, with `aggregate_seeds`: mean over seeds) whose measured memory fits
    `budget_bytes` (inclusive) and the runner-up; None where there is no such trial. Ties on the metric go
    to less memory."""
    ranking = feasible_ranking(scope(trials, dataset=dataset, split=split), budget_bytes,
                               metric=metric, memory_field=memory_field, aggregate_seeds=aggregate_seeds)
    best = ranking.iloc[0] if len(ranking) > 0 else None
    runner_up = ranking.iloc[1] if len(ranking) > 1 else None
    return best, runner_up


SUMMARY_COLUMNS: tuple[str, ...] = ("trial_id", "loss", "num_negatives", "negative_scope", "sampling",
                                    "batch_size", "max_len", "hidden", "blocks", "heads",
                                    "loss_impl_used", "seed")


def best_per_budget(
    trials: pd.DataFrame,
    budgets: Sequence[int],
    *,
    metric: str = "ndcg@10",
    memory_field: str = "peak_bytes",
    aggregate_seeds: bool = False,
) -> pd.DataFrame:
    """One row per (dataset, split, budget): the best trial under the budget and the runner-up.
    Columns without a feasible trial are missing values. With `aggregate_seeds` the rows are
    configurations ranked by their mean over seeds; `seeds`, `trial_ids`, `quality_sd` and
    `test_quality_sd` say over what, and the `RUNNER_UP_COLUMNS` are added: the runner-up's K, B, L,
    spread and seeds, and `vs_runner_up`, whether the best beats it beyond the seeds' spread
    (`seed_compare`: "better", "same (within sd)" or "unknown (one seed)"; None without a runner-up)."""
    rows = []
    for (dataset, split), group in _groups(trials):
        for budget in budgets:
            ranking = feasible_ranking(group, budget, metric=metric, memory_field=memory_field,
                                       aggregate_seeds=aggregate_seeds)
            row: dict[str, object] = {"dataset": dataset, "split": split, "budget_bytes": int(budget),
                                      "budget_gib": budget / GIB, "feasible_trials": len(ranking)}
            best = ranking.iloc[0] if len(ranking) else None
            runner_up = ranking.iloc[1] if len(ranking) > 1 else None
            for column in SUMMARY_COLUMNS:
                row[column] = best[column] if best is not None and column in best.index else None
            row[QUALITY] = best[QUALITY] if best is not None else math.nan
            row[TEST_QUALITY] = best[TEST_QUALITY] if best is not None else math.nan
            for column in (QUALITY_SD, TEST_QUALITY_SD):
                row[column] = best[column] if best is not None else math.nan
            row["seeds"] = int(best.get("num_seeds", 1)) if best is not None else 0
            row[TIME_CAPPED] = (int(time_capped_seeds(best.to_frame().T).iloc[0]) if best is not None else 0)
            row["trial_ids"] = (best.get("trial_ids", best.get("trial_id")) if best is not None else None)
            row["memory_gib"] = best[MEMORY] / GIB if best is not None else math.nan
            row[TIME_COLUMN] = best.get(TIME_COLUMN, math.nan) if best is not None else math.nan
            row["runner_up_trial_id"] = runner_up.get("trial_id") if runner_up is not None else None
            row["runner_up_quality"] = runner_up[QUALITY] if runner_up is not None else math.nan
            row["runner_up_memory_gib"] = runner_up[MEMORY] / GIB if runner_up is not None else math.nan
            if aggregate_seeds:
                row.update(_runner_up_columns(best, runner_up))
            rows.append(row)
    return pd.DataFrame(rows)


RUNNER_UP_COLUMNS: tuple[str, ...] = ("runner_up_num_negatives", "runner_up_batch_size", "runner_up_max_len",
                                      "runner_up_quality_sd", "runner_up_seeds", "vs_runner_up")


def versus_runner_up(best: pd.Series | None, runner_up: pd.Series | None) -> str | None:
    """The best configuration (a row of `feasible_ranking` with `aggregate_seeds`) against the runner-up
    by `seed_compare.compare` on the validation metric; None where there is no runner-up."""
    if best is None or runner_up is None:
        return None
    return seed_compare.compare_rows(best, runner_up, mean=QUALITY, sd=QUALITY_SD, seeds="num_seeds")


def _runner_up_columns(best: pd.Series | None, runner_up: pd.Series | None) -> dict[str, object]:
    """What `best_per_budget` adds with `aggregate_seeds`: the runner-up's K, B, L, spread and seeds, and
    the verdict of the best against it (`versus_runner_up`)."""
    if runner_up is None:
        return {"runner_up_num_negatives": None, "runner_up_batch_size": None, "runner_up_max_len": None,
                "runner_up_quality_sd": math.nan, "runner_up_seeds": 0, "vs_runner_up": None}
    return {"runner_up_num_negatives": runner_up.get("num_negatives"),
            "runner_up_batch_size": runner_up.get("batch_size"),
            "runner_up_max_len": runner_up.get("max_len"),
            "runner_up_quality_sd": runner_up[QUALITY_SD],
            "runner_up_seeds": int(runner_up.get("num_seeds", 1)),
            "vs_runner_up": versus_runner_up(best, runner_up)}


def scaling_table(
    trials: pd.DataFrame,
    budgets: Sequence[int],
    *,
    metric: str = "ndcg@10",
    memory_field: str = "peak_bytes",
) -> pd.DataFrame:
    """For each (dataset, split, budget, number of negatives): the best quality reachable within the budget
    and the batch size (and max length) that reaches it. Only losses with sampled negatives count."""
    _require_columns(trials, ["num_negatives", "batch_size"])
    rows = []
    for (dataset, split), group in _groups(trials[samples_negatives(trials)]):
        for budget in budgets:
            ranking = feasible_ranking(group, budget, metric=metric, memory_field=memory_field)
            best_each = ranking.drop_duplicates("num_negatives", keep="first")
            for _, best in best_each.sort_values("num_negatives").iterrows():
                rows.append({"dataset": dataset, "split": split, "budget_bytes": int(budget),
                             "num_negatives": int(best["num_negatives"]),
                             "batch_size": int(best["batch_size"]),
                             "max_len": best.get("max_len"), QUALITY: best[QUALITY],
                             "memory_gib": best[MEMORY] / GIB, "trial_id": best.get("trial_id")})
    columns = ["dataset", "split", "budget_bytes", "num_negatives", "batch_size", "max_len", QUALITY,
               "memory_gib", "trial_id"]
    return pd.DataFrame(rows, columns=columns)


def fused_vs_torch(trials: pd.DataFrame, *, memory_field: str = "peak_bytes") -> pd.DataFrame:
    """Pairs of `ok` trials that differ only in the loss implementation that ran (triton vs torch), with
    time per epoch (`epoch_time`: steady state where recorded) and memory of each and the ratios
    torch / triton (> 1: the fused loss is better)."""
    check_memory_field(memory_field)
    _require_columns(trials, ["status", "loss_impl_used", memory_field])
    _require_epoch_time(trials)
    ok = trials[trials["status"] == "ok"]
    ok = ok.assign(**{TIME_COLUMN: epoch_time(ok)})
    keys = config_key_columns(ok, exclude=("loss_impl", "loss_impl_used"))
    if "seed" in ok.columns:
        keys.append("seed")
    measured = [TIME_COLUMN, memory_field] + [c for c in ("val_ndcg_10", "trial_id") if c in ok.columns]
    sides = {}
    for impl in ("triton", "torch"):
        side = ok[ok["loss_impl_used"] == impl].drop_duplicates(keys, keep="first")
        sides[impl] = side[keys + measured].rename(columns={c: f"{impl}_{c}" for c in measured})
    # pandas matches missing keys (None / NaN) with each other, as wanted for unset config fields.
    pairs = pd.merge(sides["triton"], sides["torch"], on=keys)
    pairs["speedup"] = pairs[f"torch_{TIME_COLUMN}"] / pairs[f"triton_{TIME_COLUMN}"]
    pairs["memory_ratio"] = pairs[f"torch_{memory_field}"] / pairs[f"triton_{memory_field}"]
    pairs["triton_memory_gib"] = pairs[f"triton_{memory_field}"] / GIB
    pairs["torch_memory_gib"] = pairs[f"torch_{memory_field}"] / GIB
    return pairs.sort_values([c for c in ("dataset", "num_negatives", "batch_size", "max_len") if c in keys])


def status_counts(trials: pd.DataFrame) -> pd.DataFrame:
    """Number of trials per (dataset, split) and status, with every known status as a column."""
    from study.record import TRIAL_STATUSES

    _require_columns(trials, ["status", *GROUP_COLUMNS])
    counts = pd.crosstab([trials["dataset"], trials["split"]], trials["status"])
    for status in TRIAL_STATUSES:
        if status not in counts.columns:
            counts[status] = 0
    extra = [c for c in counts.columns if c not in TRIAL_STATUSES]
    counts = counts[list(TRIAL_STATUSES) + extra]
    counts["total"] = counts.sum(axis=1)
    return counts.reset_index().rename_axis(columns=None)


def gpu_total_bytes(trials: pd.DataFrame) -> int | None:
    """The smallest card memory recorded by the trials (for fraction budgets such as '0.5'), or None."""
    if "gpu_total" not in trials.columns:
        return None
    totals = pd.to_numeric(trials["gpu_total"], errors="coerce").dropna()
    return int(totals.min()) if len(totals) else None


def _groups(trials: pd.DataFrame) -> list[tuple[tuple[str, str], pd.DataFrame]]:
    _require_columns(trials, GROUP_COLUMNS)
    return [((str(key[0]), str(key[1])), group)
            for key, group in trials.groupby(list(GROUP_COLUMNS), dropna=False, sort=True)]


def _require_epoch_time(trials: pd.DataFrame) -> None:
    if not has_epoch_time(trials):
        raise ValueError(f"trials: missing column(s) {STEADY_TIME_COLUMN} or {MEAN_TIME_COLUMN}")


def _require_columns(trials: pd.DataFrame, columns: Iterable[str]) -> None:
    missing = [c for c in columns if c not in trials.columns]
    if missing:
        raise ValueError(f"trials: missing column(s) {', '.join(missing)}")


__all__ = [
    "MEMORY_FIELDS", "METRIC_NAMES", "GROUP_COLUMNS", "TIME_COLUMN", "STEADY_TIME_COLUMN",
    "MEAN_TIME_COLUMN", "TIME_LABEL", "epoch_time", "has_epoch_time", "GIB", "QUALITY", "TEST_QUALITY",
    "QUALITY_SD", "TEST_QUALITY_SD",
    "MEMORY", "CANDIDATE", "ON_FRONTIER", "parse_metric", "metric_column", "check_memory_field",
    "config_key_columns", "seed_key_columns", "seed_groups", "samples_negatives", "non_dominated",
    "aggregate_over_seeds", "time_capped_seeds", "pareto_table",
    "pareto_frontier",
    "scope", "feasible_ranking", "best_under_budget", "best_per_budget", "scaling_table", "fused_vs_torch",
    "status_counts", "gpu_total_bytes", "format_gib", "SUMMARY_COLUMNS", "RUNNER_UP_COLUMNS",
    "versus_runner_up",
]
