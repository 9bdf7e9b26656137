"""How crowded a trial's card was while it ran: the mean number of trials on it, from the rows' card and
time stamps, and the range over a configuration's seeds in the study report."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from study.analysis.card_sharing import mean_trials_on_card, sharing_text
from study.analysis.study_report import best_under_budgets, configurations, load_study
from study.config import TrainConfig
from study.database.results_db import ResultsDB
from study.record import MemoryReport, TrialRecord

GIB = 2**30


def stamp(seconds: float) -> str:
    return (pd.Timestamp("2026-11-29T12:00:00Z") + pd.Timedelta(seconds=seconds)).isoformat()


def rows(*trials: tuple[str | None, float | None, float | None]) -> pd.DataFrame:
    return pd.DataFrame({"gpu_uuid": [card for card, _, _ in trials],
                         "started_at": [None if s is None else stamp(s) for _, s, _ in trials],
                         "finished_at": [None if e is None else stamp(e) for _, _, e in trials]},
                        index=[10 + i for i in range(len(trials))])


def test_the_mean_counts_each_other_trial_by_the_time_it_overlapped() -> None:
    table = rows(("A", 0, 100), ("A", 50, 150), ("A", 0, 25), ("B", 0, 100), ("A", 200, 300))
    shared = mean_trials_on_card(table)
    # Trial 10: itself, half of its run beside 11, a quarter beside 12; 13 is on another card, 14 later.
    assert shared[10] == pytest.approx(1 + 0.5 + 0.25)
    assert shared[11] == pytest.approx(1 + 0.5)
    assert shared[12] == pytest.approx(2.0)
    assert shared[13] == pytest.approx(1.0) and shared[14] == pytest.approx(1.0)
    assert list(shared.index) == list(table.index)


def test_unknown_card_or_time_is_unknown_not_alone() -> None:
    table = rows(("A", 0, 100), (None, 0, 100), ("A", None, 100), ("A", 0, None), ("A", 50, 50))
    shared = mean_trials_on_card(table)
    assert shared[10] == pytest.approx(1.0)
    assert shared[11:].isna().all()
    assert mean_trials_on_card(pd.DataFrame({"trial_id": ["x"]})).isna().all()


def test_the_range_prints_one_value_when_the_seeds_agree() -> None:
    assert sharing_text(8.0, 8.04) == "8.0"
    assert sharing_text(8.0, 13.94) == "8.0-13.9"
    assert sharing_text(math.nan, math.nan) == "-"


def seed(seed: int, ndcg: float, card: str, start: float, end: float, *, stop: str = "time_limit",
         status: str = "ok") -> TrialRecord:
    config = TrainConfig(dataset="ml-1m", loss="ce-neg", num_negatives=256, batch_size=256, max_len=50,
                         loss_impl="triton", seed=seed)
    ok = status == "ok"
    return TrialRecord(status=status, config=config.to_dict(), loss_impl="triton",  # type: ignore[arg-type]
                       val_metrics={"ndcg@10": ndcg} if ok else {},
                       test_metrics={"ndcg@10": ndcg - 0.01} if ok else {},
                       memory=MemoryReport(nvml_process_peak=GIB, gpu_uuid=card), steady_epoch_seconds=1.0,
                       mean_epoch_seconds=1.0, stop_reason=stop if ok else None,  # type: ignore[arg-type]
                       started_at=stamp(start), finished_at=stamp(end))


def test_the_report_gives_each_configuration_the_range_over_its_seeds(tmp_path: Path) -> None:
    """Seed 0 ran alone on its card; seeds 1 and 2 beside each other and beside a trial that failed, in
    another database: the failed trial held its share too."""
    grid = tmp_path / "grid.sqlite"
    with ResultsDB(grid) as db:
        db.record_trial("grid-0", "grid", seed(0, 0.30, "GPU-a", 0, 300))
    seeds = tmp_path / "seeds.sqlite"
    with ResultsDB(seeds) as db:
        db.record_trial("seeds-1", "seeds", seed(1, 0.25, "GPU-b", 0, 300))
        db.record_trial("seeds-2", "seeds", seed(2, 0.26, "GPU-b", 0, 300, stop="early_stopping"))
        db.record_trial("seeds-3", "seeds", seed(3, 0.0, "GPU-b", 0, 150, status="failed"))
    configs = configurations(load_study([grid, seeds]))
    assert len(configs) == 1
    config = configs.iloc[0]
    assert config["seeds"] == 3 and config["time_capped"] == 2
    assert config["on_card_min"] == pytest.approx(1.0) and config["on_card_max"] == pytest.approx(2.5)
    row = best_under_budgets(configs, [8 * GIB]).iloc[0]
    assert row["trials on card"] == "1.0-2.5" and row["cut by cap"] == "2/3"
