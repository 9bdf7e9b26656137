"""What a finished sweep prints: trials recorded by status, the storage it used, the best trial under the
budget on each dataset, and the command that draws its figures."""

from __future__ import annotations

import shlex
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from study.database.results_db import ResultsDB, load_trials, metric_column
from study.sweep.checkpoint_store import CheckpointStore
from study.sweep.planning import PlannedTrial, axis_names
from study.sweep.spec import SweepSpec
from study.sweep.trial import QUALITY_METRIC
from study.units import format_bytes


def print_summary(spec: SweepSpec, db: ResultsDB, db_path: Path, budget_bytes: int | None,
                  plan: Sequence[PlannedTrial], *, file: Any, store: CheckpointStore | None = None) -> None:
    planned = {t.trial_id for t in plan}
    statuses = db.trial_statuses(spec.name)
    counts = Counter(status for key, status in statuses.items() if key in planned)
    total = sum(counts.values())
    by_status = ", ".join(f"{status} {count}" for status, count in sorted(counts.items()))
    print(f"sweep {spec.name}: {total} trial(s) recorded in {db_path} ({by_status})", file=file)
    if spec.search.kind == "grid" and total < len(plan):
        print(f"  {len(plan) - total} trial(s) have no row yet: run again with --resume", file=file)
    if store is not None:
        usage = store.disk_usage()
        print(f"  storage {store.location}: {format_bytes(usage.total_bytes)} (best models of "
              f"{usage.models} trial(s) {format_bytes(usage.model_bytes)}, checkpoints of "
              f"{usage.trials_with_checkpoints} unfinished trial(s) {format_bytes(usage.checkpoint_bytes)})",
              file=file)
    if budget_bytes is None:
        return
    from study.analysis.pareto import best_under_budget

    trials = load_trials(db_path, sweep=spec.name)
    for dataset in spec.datasets:
        best, _ = best_under_budget(trials, budget_bytes, QUALITY_METRIC, dataset=dataset, split=spec.split)
        if best is None:
            print(f"  {dataset}: no ok trial under {format_bytes(budget_bytes)}", file=file)
            continue
        names = [n for n in axis_names(spec) if n != "dataset"]
        setting = ", ".join(f"{n}={_setting_text(best, n)}" for n in names if n in best.index)
        print(f"  best under {format_bytes(budget_bytes)} on {dataset}: {best['trial_id']} ({setting}): "
              f"val {QUALITY_METRIC} {best[metric_column(QUALITY_METRIC)]:.4f}, "
              f"peak {format_bytes(best['peak_bytes'])}", file=file)
    command = ["cce-study", "pareto", "--db", str(db_path), "--out", str(db_path.parent / "figures")]
    if spec.memory_budget is not None:
        command += ["--budgets", spec.memory_budget]
    print(f"  figures: {shlex.join(command)}", file=file)


def _setting_text(row: Any, name: str) -> str:
    value = _python_value(row[name])
    if name == "num_negatives" and row.get("loss") == "ce":
        return "full"  # full-catalogue CE has no number of negatives
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # an integer column with NULLs (full CE's negatives) reads as floats
    return str(value)


def _python_value(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


__all__ = ["print_summary"]
