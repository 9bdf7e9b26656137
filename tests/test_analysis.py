"""Pareto frontier and best-under-budget semantics, checked against brute force on random data."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from analysis_fixtures import GIB, synthetic_sweep, to_frame

from study import analysis


def brute_force_non_dominated(values: np.ndarray, maximize: list[bool]) -> np.ndarray:
    """Pure Python O(n^2) reference: i is kept iff it is complete and no complete j is at least as good
    on every objective and strictly better on one."""
    n = len(values)
    complete = [not any(np.isnan(v) for v in row) for row in values]
    keep = np.zeros(n, dtype=bool)
    for i in range(n):
        if not complete[i]:
            continue
        dominated = False
        for j in range(n):
            if j == i or not complete[j]:
                continue
            no_worse = all((values[j][m] >= values[i][m]) if up else (values[j][m] <= values[i][m])
                           for m, up in enumerate(maximize))
            better = any((values[j][m] > values[i][m]) if up else (values[j][m] < values[i][m])
                         for m, up in enumerate(maximize))
            if no_worse and better:
                dominated = True
                break
        keep[i] = not dominated
    return keep


def random_objectives(rng: np.random.Generator, n: int, m: int, *, levels: int | None) -> np.ndarray:
    """Random points; with `levels`, values come from a few levels so that ties and equal memory abound;
    about 10% of rows get a missing value."""
    if levels is None:
        values = rng.normal(size=(n, m))
    else:
        values = rng.integers(0, levels, size=(n, m)).astype(float)
    holes = rng.random(n) < 0.1
    values[holes, rng.integers(0, m, size=holes.sum())] = np.nan
    return values


@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("levels", [None, 3, 6])
@pytest.mark.parametrize("seed", range(4))
def test_non_dominated_matches_brute_force(m: int, levels: int | None, seed: int) -> None:
    rng = np.random.default_rng(1000 * m + 10 * (levels or 0) + seed)
    values = random_objectives(rng, int(rng.integers(1, 120)), m, levels=levels)
    maximize = [bool(b) for b in rng.integers(0, 2, size=m)]
    got = analysis.non_dominated(values, maximize)
    assert got.dtype == bool
    np.testing.assert_array_equal(got, brute_force_non_dominated(values, maximize))


def test_non_dominated_beyond_one_chunk_matches_brute_force() -> None:
    rng = np.random.default_rng(7)
    values = random_objectives(rng, 1100, 2, levels=40)  # > 2 chunks of 512 rows
    np.testing.assert_array_equal(analysis.non_dominated(values, [True, False]),
                                  brute_force_non_dominated(values, [True, False]))


def test_identical_frontier_points_both_stay_and_equal_memory_keeps_the_better() -> None:
    # (quality, memory): the two (0.3, 2) points are identical; (0.2, 2) has equal memory but less quality.
    values = np.array([[0.3, 2.0], [0.3, 2.0], [0.2, 2.0], [0.1, 1.0], [0.1, 1.5], [np.nan, 0.5]])
    got = analysis.non_dominated(values, [True, False])
    np.testing.assert_array_equal(got, [True, True, False, True, False, False])


def test_non_dominated_rejects_a_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="objectives"):
        analysis.non_dominated(np.ones((4, 3)), [True, False])


def trials_frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    """Minimal trials table: the columns analysis reads, filled with defaults."""
    defaults: dict[str, object] = {"dataset": "ml-100k", "split": "loo", "status": "ok", "loss": "ce-neg",
                                   "num_negatives": 256, "batch_size": 128, "max_len": 200, "seed": 0,
                                   "loss_impl_used": "triton", "val_ndcg_10": 0.1, "test_ndcg_10": 0.09,
                                   "peak_bytes": GIB, "torch_max_reserved": GIB, "mean_epoch_seconds": 1.0}
    frame = pd.DataFrame([{**defaults, **row} for row in rows])
    frame.insert(0, "trial_id", [f"t{i}" for i in range(len(frame))])
    return frame


@pytest.mark.parametrize("with_time", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_pareto_table_matches_brute_force_per_dataset(with_time: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 80
    frame = trials_frame([{
        "dataset": str(rng.choice(["ml-100k", "ml-1m"])),
        "split": str(rng.choice(["loo", "temporal"])),
        "status": str(rng.choice(["ok", "ok", "ok", "oom", "failed"])),
        "val_ndcg_10": float(rng.integers(0, 5)) / 10 if rng.random() > 0.1 else None,
        "peak_bytes": int(rng.integers(1, 6)) * GIB if rng.random() > 0.1 else None,
        "mean_epoch_seconds": float(rng.integers(1, 4)),
    } for _ in range(n)])
    table = analysis.pareto_table(frame, with_time=with_time)
    columns = ["val_ndcg_10", "peak_bytes"] + (["mean_epoch_seconds"] if with_time else [])
    maximize = [True, False] + ([False] if with_time else [])
    expected = np.zeros(n, dtype=bool)
    for _, group in frame.groupby(["dataset", "split"]):
        ok = group[group["status"] == "ok"]
        keep = brute_force_non_dominated(ok[columns].to_numpy(dtype=float), maximize)
        expected[ok.index[keep]] = True
    np.testing.assert_array_equal(table["on_frontier"].to_numpy(), expected)
    assert not table.loc[frame["status"] != "ok", "candidate"].any()
    assert len(table) == n  # infeasible trials are kept, flagged


def test_non_ok_trials_with_better_numbers_do_not_displace_the_frontier() -> None:
    frame = trials_frame([
        {"val_ndcg_10": 0.2, "peak_bytes": 4 * GIB},
        {"status": "over_budget", "val_ndcg_10": 0.5, "peak_bytes": 1 * GIB},
        {"val_ndcg_10": None, "peak_bytes": 1 * GIB},
    ])
    table = analysis.pareto_table(frame)
    assert table["on_frontier"].tolist() == [True, False, False]
    assert table["candidate"].tolist() == [True, False, False]


def test_memory_field_and_metric_are_selectable() -> None:
    frame = trials_frame([
        {"val_ndcg_10": 0.3, "val_hit_10": 0.1, "peak_bytes": 2 * GIB, "torch_max_reserved": 1 * GIB},
        {"val_ndcg_10": 0.2, "val_hit_10": 0.4, "peak_bytes": 1 * GIB, "torch_max_reserved": 1 * GIB},
    ])
    assert analysis.pareto_table(frame)["on_frontier"].tolist() == [True, True]
    by_reserved = analysis.pareto_table(frame, memory_field="torch_max_reserved")
    assert by_reserved["on_frontier"].tolist() == [True, False]
    by_hit = analysis.pareto_table(frame, metric="hit@10")
    assert by_hit["on_frontier"].tolist() == [False, True]


@pytest.mark.parametrize("metric", ["ndcg@7", "ndcg", "recall@10", "@10"])
def test_bad_metric_is_named(metric: str) -> None:
    with pytest.raises(ValueError, match="metric"):
        analysis.metric_column(metric)


def test_bad_memory_field_is_named() -> None:
    with pytest.raises(ValueError, match="memory_field"):
        analysis.pareto_table(trials_frame([{}]), memory_field="gpu_total")


def test_aggregate_seeds_means_metrics_and_takes_the_largest_memory() -> None:
    frame = trials_frame([
        {"seed": 0, "val_ndcg_10": 0.20, "peak_bytes": 2 * GIB, "mean_epoch_seconds": 1.0},
        {"seed": 1, "val_ndcg_10": 0.30, "peak_bytes": 3 * GIB, "mean_epoch_seconds": 3.0},
        {"seed": 2, "status": "oom", "val_ndcg_10": None, "peak_bytes": 9 * GIB},
        {"seed": 0, "batch_size": 64, "val_ndcg_10": 0.22, "peak_bytes": 1 * GIB},
    ])
    table = analysis.pareto_table(frame, aggregate_seeds=True)
    assert len(table) == 3
    pair = table[(table["batch_size"] == 128) & (table["status"] == "ok")].iloc[0]
    assert pair["num_seeds"] == 2
    assert pair["seed"] == "0,1"
    assert pair["quality"] == pytest.approx(0.25)
    assert pair["memory_bytes"] == 3 * GIB
    assert pair["mean_epoch_seconds"] == pytest.approx(2.0)
    assert (table["status"] == "oom").sum() == 1  # a failed seed stays as its own infeasible row
    assert table["on_frontier"].sum() == 2
    # Without aggregation every seed is its own point.
    assert len(analysis.pareto_table(frame)) == 4


def test_best_under_budget_boundary_is_inclusive_and_ties_go_to_less_memory() -> None:
    frame = trials_frame([
        {"val_ndcg_10": 0.30, "peak_bytes": 8 * GIB},       # t0: exactly at the budget
        {"val_ndcg_10": 0.30, "peak_bytes": 6 * GIB},       # t1: same quality, less memory
        {"val_ndcg_10": 0.25, "peak_bytes": 2 * GIB},       # t2
        {"val_ndcg_10": 0.40, "peak_bytes": 8 * GIB + 1},   # t3: one byte over
        {"status": "oom", "val_ndcg_10": 0.90, "peak_bytes": 1 * GIB},  # t4: not ok
        {"val_ndcg_10": None, "peak_bytes": 1 * GIB},       # t5: no metric
    ])
    best, runner_up = analysis.best_under_budget(frame, 8 * GIB)
    assert best is not None and runner_up is not None
    assert (best["trial_id"], runner_up["trial_id"]) == ("t1", "t0")
    best, runner_up = analysis.best_under_budget(frame, 8 * GIB + 1)
    assert best is not None and runner_up is not None
    assert (best["trial_id"], runner_up["trial_id"]) == ("t3", "t1")
    best, runner_up = analysis.best_under_budget(frame, 5 * GIB)
    assert best is not None and best["trial_id"] == "t2" and runner_up is None
    assert analysis.best_under_budget(frame, GIB) == (None, None)


def test_best_under_budget_with_another_memory_field() -> None:
    frame = trials_frame([
        {"val_ndcg_10": 0.3, "peak_bytes": 9 * GIB, "torch_max_reserved": 7 * GIB},
        {"val_ndcg_10": 0.2, "peak_bytes": 3 * GIB, "torch_max_reserved": 2 * GIB},
    ])
    best, _ = analysis.best_under_budget(frame, 8 * GIB)
    assert best is not None and best["trial_id"] == "t1"
    best, _ = analysis.best_under_budget(frame, 8 * GIB, memory_field="torch_max_reserved")
    assert best is not None and best["trial_id"] == "t0"


def test_best_under_budget_needs_one_dataset() -> None:
    frame = trials_frame([{"dataset": "ml-100k", "val_ndcg_10": 0.3},
                          {"dataset": "ml-1m", "val_ndcg_10": 0.1}])
    with pytest.raises(ValueError, match="dataset"):
        analysis.best_under_budget(frame, 8 * GIB)
    best, runner_up = analysis.best_under_budget(frame, 8 * GIB, dataset="ml-1m")
    assert best is not None and best["trial_id"] == "t1" and runner_up is None
    with pytest.raises(ValueError, match="beauty"):
        analysis.best_under_budget(frame, 8 * GIB, dataset="beauty")


def test_best_under_budget_matches_brute_force_on_random_trials() -> None:
    rng = np.random.default_rng(3)
    frame = trials_frame([{
        "status": str(rng.choice(["ok", "ok", "oom"])),
        "val_ndcg_10": float(rng.integers(0, 6)) / 10,
        "peak_bytes": int(rng.integers(1, 10)) * GIB,
    } for _ in range(60)])
    for budget_gib in range(1, 11):
        best, _ = analysis.best_under_budget(frame, budget_gib * GIB)
        fits = [r for r in frame.to_dict("records")
                if r["status"] == "ok" and r["peak_bytes"] <= budget_gib * GIB]
        if not fits:
            assert best is None
            continue
        top = max(r["val_ndcg_10"] for r in fits)
        least = min(r["peak_bytes"] for r in fits if r["val_ndcg_10"] == top)
        assert best is not None
        assert (best["val_ndcg_10"], best["peak_bytes"]) == (top, least)


def test_best_per_budget_has_one_row_per_budget_and_never_worsens_with_more_memory() -> None:
    frame = to_frame(synthetic_sweep(np.random.default_rng(0), negatives=(64, 1024, 4096),
                                     batch_sizes=(64, 1024), max_lens=(200,)))
    budgets = [int(g * GIB) for g in (1.0, 1.5, 3, 8, 40)]
    table = analysis.best_per_budget(frame, budgets)
    assert table["budget_bytes"].tolist() == budgets
    assert pd.isna(table.loc[0, "trial_id"])  # nothing fits 1 GiB: base memory is 1.2 GiB
    found = table.dropna(subset=["trial_id"])
    assert found["quality"].is_monotonic_increasing
    assert (found["memory_gib"] <= found["budget_gib"]).all()
    for row in found.itertuples():
        best, runner_up = analysis.best_under_budget(frame, row.budget_bytes)
        assert best is not None and best["trial_id"] == row.trial_id
        assert (runner_up["trial_id"] if runner_up is not None else None) == row.runner_up_trial_id


def test_scaling_table_gives_the_best_per_negatives_within_each_budget() -> None:
    frame = to_frame(synthetic_sweep(np.random.default_rng(1), negatives=(64, 4096), batch_sizes=(64, 2048),
                                     max_lens=(200,), impls=("torch",)))
    budget = 8 * GIB
    table = analysis.scaling_table(frame, [budget])
    assert sorted(table["num_negatives"]) == [64, 4096]
    for row in table.itertuples():
        fits = frame[(frame["status"] == "ok") & (frame["num_negatives"] == row.num_negatives)
                     & (frame["peak_bytes"] <= budget)]
        top = fits.loc[fits["val_ndcg_10"].idxmax()]
        assert (row.batch_size, row.quality) == (top["batch_size"], top["val_ndcg_10"])


def test_scaling_table_leaves_out_full_catalogue_ce() -> None:
    frame = trials_frame([
        {"loss": "ce", "num_negatives": 256, "val_ndcg_10": 0.9},  # K is meaningless for full CE
        {"loss": "ce-neg", "num_negatives": 256, "val_ndcg_10": 0.2},
        {"loss": "bce", "num_negatives": 1, "val_ndcg_10": 0.1},
    ])
    table = analysis.scaling_table(frame, [8 * GIB])
    assert table[["num_negatives", "quality"]].values.tolist() == [[1, 0.1], [256, 0.2]]
    assert analysis.pareto_table(frame)["on_frontier"].tolist() == [True, False, False]


def test_fused_vs_torch_pairs_equal_configurations_only() -> None:
    frame = trials_frame([
        {"loss_impl_used": "triton", "mean_epoch_seconds": 2.0, "peak_bytes": 2 * GIB},
        {"loss_impl_used": "torch", "mean_epoch_seconds": 5.0, "peak_bytes": 8 * GIB},
        {"loss_impl_used": "torch", "batch_size": 64, "mean_epoch_seconds": 3.0},  # no fused partner
        {"loss_impl_used": "triton", "seed": 1, "mean_epoch_seconds": 1.0},  # no PyTorch partner
    ])
    pairs = analysis.fused_vs_torch(frame)
    assert len(pairs) == 1
    pair = pairs.iloc[0]
    assert (pair["triton_trial_id"], pair["torch_trial_id"]) == ("t0", "t1")
    assert pair["speedup"] == pytest.approx(2.5)
    assert pair["memory_ratio"] == pytest.approx(4.0)


def test_epoch_time_prefers_the_steady_state_and_falls_back_to_the_mean() -> None:
    frame = pd.DataFrame({"steady_epoch_seconds": [1.0, None, np.nan, None],
                          "mean_epoch_seconds": [3.0, 4.0, 5.0, None]})
    got = analysis.epoch_time(frame)
    assert str(got.dtype) == "float64"
    np.testing.assert_array_equal(got.to_numpy(), [1.0, 4.0, 5.0, np.nan])
    # a table from before the steady time: the mean throughout
    assert analysis.epoch_time(frame[["mean_epoch_seconds"]]).tolist()[:3] == [3.0, 4.0, 5.0]
    assert analysis.epoch_time(frame[["steady_epoch_seconds"]]).tolist()[0] == 1.0
    assert analysis.epoch_time(pd.DataFrame({"x": [1]})).isna().all()


def test_time_objective_uses_the_steady_state_where_recorded() -> None:
    # By the mean over all epochs t0 is faster; after its first (compiling) epoch t1 is. t2 has no steady
    # time and competes with its mean; t3 has no time at all and is no candidate with time.
    frame = trials_frame([
        {"val_ndcg_10": 0.3, "mean_epoch_seconds": 2.0, "steady_epoch_seconds": 1.9},
        {"val_ndcg_10": 0.2, "mean_epoch_seconds": 3.0, "steady_epoch_seconds": 0.5},
        {"val_ndcg_10": 0.1, "mean_epoch_seconds": 0.4, "steady_epoch_seconds": None},
        {"val_ndcg_10": 0.05, "mean_epoch_seconds": None, "steady_epoch_seconds": None},
    ])
    table = analysis.pareto_table(frame, with_time=True)
    assert table[analysis.TIME_COLUMN].tolist()[:3] == [1.9, 0.5, 0.4]
    assert table["on_frontier"].tolist() == [True, True, True, False]
    assert table["candidate"].tolist() == [True, True, True, False]
    # with the mean, t1 (0.2 at 3.0 s) is dominated by t0 (0.3 at 2.0 s)
    by_mean = analysis.pareto_table(frame.drop(columns="steady_epoch_seconds"), with_time=True)
    assert by_mean["on_frontier"].tolist() == [True, False, True, False]
    assert analysis.pareto_table(frame)["candidate"].tolist() == [True] * 4  # time only matters with_time
    with pytest.raises(ValueError, match="steady_epoch_seconds or mean_epoch_seconds"):
        analysis.pareto_table(frame.drop(columns=["steady_epoch_seconds", "mean_epoch_seconds"]),
                              with_time=True)


def test_aggregated_seeds_average_the_steady_times() -> None:
    frame = trials_frame([
        {"seed": 0, "mean_epoch_seconds": 5.0, "steady_epoch_seconds": 1.0},
        {"seed": 1, "mean_epoch_seconds": 7.0, "steady_epoch_seconds": None},  # falls back to its mean
    ])
    table = analysis.pareto_table(frame, aggregate_seeds=True, with_time=True)
    assert len(table) == 1 and table[analysis.TIME_COLUMN].iloc[0] == pytest.approx(4.0)


def test_fused_vs_torch_compares_steady_times_and_falls_back_to_the_mean() -> None:
    frame = trials_frame([
        # the fused loss compiles in its first epoch: slower on the mean, faster in the steady state
        {"loss_impl_used": "triton", "mean_epoch_seconds": 3.64, "steady_epoch_seconds": 0.98},
        {"loss_impl_used": "torch", "mean_epoch_seconds": 2.60, "steady_epoch_seconds": 1.83},
        # an older pair without steady times on the fused side: its mean is used
        {"loss_impl_used": "triton", "batch_size": 256, "mean_epoch_seconds": 2.0,
         "steady_epoch_seconds": None},
        {"loss_impl_used": "torch", "batch_size": 256, "mean_epoch_seconds": 5.0,
         "steady_epoch_seconds": 4.0},
    ])
    pairs = analysis.fused_vs_torch(frame).set_index("batch_size")
    assert pairs.loc[128, "speedup"] == pytest.approx(1.83 / 0.98)
    assert pairs.loc[128, f"triton_{analysis.TIME_COLUMN}"] == pytest.approx(0.98)
    assert pairs.loc[256, "speedup"] == pytest.approx(4.0 / 2.0)
    without_steady = analysis.fused_vs_torch(frame.drop(columns="steady_epoch_seconds"))
    without_steady = without_steady.set_index("batch_size")
    assert without_steady.loc[128, "speedup"] == pytest.approx(2.60 / 3.64)
    with pytest.raises(ValueError, match="steady_epoch_seconds or mean_epoch_seconds"):
        analysis.fused_vs_torch(frame.drop(columns=["steady_epoch_seconds", "mean_epoch_seconds"]))


def test_status_counts_lists_every_status() -> None:
    frame = trials_frame([{"status": s} for s in ("ok", "ok", "oom", "failed")])
    counts = analysis.status_counts(frame).iloc[0]
    got = (counts["ok"], counts["oom"], counts["failed"], counts["over_budget"], counts["total"])
    assert got == (2, 1, 1, 0, 4)


def test_frontier_from_the_database_equals_the_frontier_of_the_records(tmp_path) -> None:
    from analysis_fixtures import build_database

    from study.database.results_db import load_trials

    trials = synthetic_sweep(np.random.default_rng(5), negatives=(64, 4096), batch_sizes=(64, 1024),
                             max_lens=(50, 200), seeds=(0, 1))
    db_trials = load_trials(build_database(tmp_path / "r.sqlite", trials))
    direct = to_frame(trials)
    for options in itertools.product([False, True], [False, True]):
        with_time, aggregate = options
        from_db = analysis.pareto_frontier(db_trials, with_time=with_time, aggregate_seeds=aggregate)
        from_frame = analysis.pareto_frontier(direct, with_time=with_time, aggregate_seeds=aggregate)
        assert sorted(from_db["trial_id"]) == sorted(from_frame["trial_id"])
        assert len(from_db) >= 2
