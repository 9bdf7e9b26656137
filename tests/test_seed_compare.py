"""The one rule for "is this configuration better than that one, given their seeds", checked against its
statement on fresh random seeds, alone and through every table that uses it."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from study.analysis import pareto, seed_compare, study_report

GIB = 2**30


def expected(a: list[float], b: list[float]) -> str:
    """The rule as docs/analysis.md states it, on raw seed values in float64."""
    sds = [float(np.std(side, ddof=1)) for side in (a, b) if len(side) >= 2]
    if not sds:
        return "unknown (one seed)"
    gap = float(np.mean(a)) - float(np.mean(b))
    if abs(gap) <= max(sds):
        return "same (within sd)"
    return "better" if gap > 0 else "worse"


def random_sides(rng: np.random.Generator) -> tuple[list[float], list[float]]:
    """Two configurations' seeds: 1-4 seeds each, means apart by about their spread, so that every verdict
    comes up."""
    spread = rng.uniform(0.0005, 0.01)
    centre = rng.uniform(0.05, 0.3)
    a = list(centre + rng.normal(0, spread, size=int(rng.integers(1, 5))))
    b = list(centre + rng.normal(rng.normal(0, 2 * spread), spread, size=int(rng.integers(1, 5))))
    return a, b


def side(values: list[float]) -> tuple[float, float, int]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else math.nan, len(values)


def test_compare_follows_the_rule_on_random_seeds() -> None:
    rng = np.random.default_rng()
    seen = set()
    for _ in range(400):
        a, b = random_sides(rng)
        verdict = seed_compare.compare(*side(a), *side(b))
        assert verdict == expected(a, b), (a, b)
        seen.add(verdict)
    assert seen == set(seed_compare.VERDICTS)


def test_the_boundary_counts_as_no_difference_and_a_single_seed_uses_the_other_spread() -> None:
    assert seed_compare.compare(0.375, 0.125, 3, 0.25, math.nan, 1) == "same (within sd)"  # gap == sd
    assert seed_compare.compare(0.30, math.nan, 1, 0.2899, 0.01, 2) == "better"
    assert seed_compare.compare(0.28, math.nan, 1, 0.30, 0.01, 2) == "worse"
    # One seed's sd is never read, even when a table holds a number there.
    assert seed_compare.compare(0.30, 0.5, 1, 0.20, 0.5, 1) == "unknown (one seed)"
    assert seed_compare.compare(0.30, 0.001, 2, 0.30, 0.5, 1) == "same (within sd)"
    with pytest.raises(ValueError, match="mean_b"):
        seed_compare.compare(0.3, 0.01, 3, math.nan, 0.01, 3)


def trials_of(sides: dict[int, list[float]]) -> pd.DataFrame:
    """One `ok` trial per seed; configurations differ in K, the first one using the least memory."""
    rows = []
    for k, values in sides.items():
        for seed, value in enumerate(values):
            rows.append({"trial_id": f"K{k}-s{seed}", "sweep": "grid" if seed == 0 else "seeds",
                         "status": "ok", "dataset": "ml-1m", "split": "loo", "loss": "ce-neg",
                         "num_negatives": k, "batch_size": 128, "max_len": 50, "seed": seed,
                         "loss_impl": "triton", "loss_impl_used": "triton", "val_ndcg_10": value,
                         "test_ndcg_10": value - 0.01, "peak_bytes": GIB * (1 + k / 1024),
                         "mean_epoch_seconds": 1.0, "stop_reason": "early_stopping"})
    return pd.DataFrame(rows)


def test_every_table_gives_the_rule_s_verdict_against_the_runner_up() -> None:
    rng = np.random.default_rng()
    for _ in range(25):
        a, b = random_sides(rng)
        trials = trials_of({64: a, 256: b})
        first, second = (a, b) if np.mean(a) >= np.mean(b) else (b, a)
        want = expected(first, second)
        table = pareto.best_per_budget(trials, [40 * GIB], aggregate_seeds=True)
        assert table.loc[0, "vs_runner_up"] == want
        assert table.loc[0, "runner_up_seeds"] == len(second)
        if len(second) > 1:
            assert table.loc[0, "runner_up_quality_sd"] == pytest.approx(np.std(second, ddof=1), rel=1e-9)
        best, runner_up = pareto.best_under_budget(trials, 40 * GIB, aggregate_seeds=True)
        assert pareto.versus_runner_up(best, runner_up) == want
        configs = study_report.configurations(trials)
        row = study_report.best_under_budgets(configs, [40 * GIB]).iloc[0]
        assert row["vs runner-up"].startswith(seed_compare.RUNNER_UP_PHRASES[want] + ": ")


def test_per_trial_tables_give_no_verdict() -> None:
    trials = trials_of({64: [0.2, 0.21], 256: [0.25]})
    table = pareto.best_per_budget(trials, [40 * GIB])
    assert not set(pareto.RUNNER_UP_COLUMNS) & set(table.columns)
