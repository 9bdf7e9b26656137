"""Synthetic trials for the analysis tests: plain DataFrames in the trials-table schema, and real
results databases written through `study.database.results_db.ResultsDB` from `TrialRecord`s."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kernels.draw import WEIGHTING
from study.config import METRIC_KS, TrainConfig
from study.record import DRAWN_NEGATIVES_KEY, EpochRecord, MemoryReport, TrialRecord

GIB = 2**30
METRIC_NAMES = ("ndcg", "hit", "mrr", "coverage")
CARD_BYTES = 80 * GIB
CARD_NAME = "NVIDIA H100 80GB HBM3"


@dataclass
class SyntheticTrial:
    """What the tests decide about one trial; turned into a DataFrame row or a TrialRecord."""

    trial_id: str
    config: TrainConfig
    status: str
    loss_impl_used: str
    quality: float | None  # validation ndcg@10; other metrics derive from it
    peak_bytes: int | None
    epoch_seconds: float | None
    stop_reason: str | None = None  # of an ok trial; None: "early_stopping"
    card: str | None = None  # the GPU's UUID; None: not recorded
    ran: tuple[float, float] = (0.0, 300.0)  # seconds after 2026-11-26T06:00Z when it started and finished


def metric_values(quality: float) -> dict[str, float]:
    """All metrics of one split, monotone in `quality` so that orderings agree across metrics."""
    values = {}
    for name in METRIC_NAMES:
        for k in METRIC_KS:
            scale = {"ndcg": 1.0, "hit": 1.8, "mrr": 0.8, "coverage": 3.0}[name]
            values[f"{name}@{k}"] = min(1.0, quality * scale * math.sqrt(k / 10))
    return values


def synthetic_sweep(
    rng: np.random.Generator,
    *,
    dataset: str = "ml-100k",
    negatives: tuple[int, ...] = (64, 256, 1024, 4096),
    batch_sizes: tuple[int, ...] = (32, 128, 512),
    max_lens: tuple[int, ...] = (50, 200),
    impls: tuple[str, ...] = ("triton", "torch"),
    seeds: tuple[int, ...] = (0,),
    budget_bytes: int = 40 * GIB,
) -> list[SyntheticTrial]:
    """A grid over negatives x batch size x max length x implementation with a plausible memory model
    (PyTorch CE- materialises B*L*K logits, the fused loss does not) and quality growing with both
    negatives and batch size; trials over the budget are recorded as `over_budget`."""
    trials = []
    for max_len in max_lens:
        for num_negatives in negatives:
            for batch_size in batch_sizes:
                for impl in impls:
                    for seed in seeds:
                        positions = batch_size * max_len
                        base = 1.2 * GIB + positions * 64 * 2 * 48
                        extra = positions * num_negatives * 64 if impl == "torch" else positions * 64 * 8
                        peak = int((base + extra) * rng.uniform(0.97, 1.03))
                        quality = (0.04 + 0.012 * math.log2(num_negatives) + 0.006 * math.log2(batch_size)
                                   + 0.004 * math.log2(max_len) + rng.normal(0, 0.002))
                        seconds = 1.0 + positions * num_negatives * (4e-9 if impl == "torch" else 1.5e-9)
                        config = TrainConfig(dataset=dataset, loss="ce-neg", num_negatives=num_negatives,
                                             negative_scope="position", batch_size=batch_size,
                                             max_len=max_len, loss_impl=impl, seed=seed,  # type: ignore[arg-type]
                                             epochs=3, memory_budget="40GiB")
                        trial_id = f"{dataset}-K{num_negatives}-B{batch_size}-L{max_len}-{impl}-s{seed}"
                        if peak > budget_bytes:
                            trials.append(SyntheticTrial(trial_id, config, "over_budget", impl, None,
                                                         budget_bytes, None))
                        else:
                            trials.append(SyntheticTrial(trial_id, config, "ok", impl, quality, peak,
                                                         seconds * rng.uniform(0.95, 1.05)))
    return trials


def to_record(trial: SyntheticTrial) -> TrialRecord:
    ok = trial.status == "ok"
    quality = trial.quality if trial.quality is not None else 0.0
    val = metric_values(quality) if ok else {}
    test = metric_values(quality * 0.95) if ok else {}
    epochs = []
    if ok:
        for epoch in (1, 2, 3):
            epochs.append(EpochRecord(epoch=epoch, train_loss=5.0 / epoch,
                                      val_metrics=metric_values(quality * (0.7 + 0.1 * epoch)),
                                      epoch_seconds=trial.epoch_seconds or 1.0, eval_seconds=0.5,
                                      sequences_per_second=1000.0, steps=10))
    # peak_bytes is NVML's process memory when present; reserved sits about 0.7 GiB below it.
    reserved = None if trial.peak_bytes is None else int(trial.peak_bytes - 0.7 * GIB)
    memory = MemoryReport(torch_max_allocated=None if reserved is None else int(reserved * 0.9),
                          torch_max_reserved=reserved, nvml_process_peak=trial.peak_bytes,
                          cpu_peak_rss=None if trial.peak_bytes is None else 3 * GIB,
                          gpu_name=CARD_NAME, gpu_total=CARD_BYTES, budget_bytes=40 * GIB,
                          gpu_uuid=trial.card)
    start = pd.Timestamp("2026-11-26T06:00:00+00:00")
    return TrialRecord(
        status=trial.status,  # type: ignore[arg-type]
        config=trial.config.to_dict(),
        error=None if ok else "CUDA out of memory (over the 40 GiB budget)",
        val_metrics=val, test_metrics=test,
        popularity_val_metrics=metric_values(0.02), popularity_test_metrics=metric_values(0.019),
        best_epoch=3 if ok else None, epochs=epochs, memory=memory,
        predicted_peak_bytes=trial.peak_bytes,
        mean_epoch_seconds=trial.epoch_seconds, sequences_per_second=1000.0 if ok else None,
        total_seconds=(trial.epoch_seconds or 0.0) * 3 + 2.0, num_users=943, num_items=1682,
        num_interactions=100_000, device="cuda:0", loss_impl=trial.loss_impl_used,
        versions={"python": "3.12", "torch": "2.11", DRAWN_NEGATIVES_KEY: WEIGHTING}, git_commit="0" * 40,
        started_at=(start + pd.Timedelta(seconds=trial.ran[0])).isoformat(),
        finished_at=(start + pd.Timedelta(seconds=trial.ran[1])).isoformat(),
        stop_reason=(trial.stop_reason or "early_stopping") if ok else None,  # type: ignore[arg-type]
    )


def to_frame(trials: list[SyntheticTrial], *, sweep: str = "test") -> pd.DataFrame:
    """The trials as rows of the trials table, without going through SQLite."""
    from study.database.results_db import trial_row

    return pd.DataFrame([trial_row(t.trial_id, sweep, to_record(t)) for t in trials])


def build_database(path: Path, trials: list[SyntheticTrial], *, sweep: str = "test") -> Path:
    """Write the trials through the real database API; returns the path."""
    from study.database.results_db import ResultsDB

    with ResultsDB(path) as db:
        for trial in trials:
            db.record_trial(trial.trial_id, sweep, to_record(trial))
    return path


def small_database(path: Path, *, seed: int = 0) -> Path:
    """A small but complete sweep (ok, over-budget, failed trials; paired implementations)."""
    rng = np.random.default_rng(seed)
    trials = synthetic_sweep(rng, negatives=(64, 512, 4096), batch_sizes=(64, 256, 1024),
                             max_lens=(50, 200))
    base = trials[0].config
    failed = SyntheticTrial("ml-100k-failed", base.replace(lr=0.5), "failed", "triton", None, None, None)
    trials.append(failed)
    return build_database(path, trials)


def tiny_database(path: Path, *, seed: int = 4) -> Path:
    """The smallest sweep that still supports every figure: two negatives, two batch sizes, both
    implementations, one max length."""
    trials = synthetic_sweep(np.random.default_rng(seed), negatives=(64, 4096), batch_sizes=(64, 256),
                             max_lens=(50,))
    return build_database(path, trials)
