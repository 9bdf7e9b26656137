"""Markdown report of a results database: status counts, frontier, best per budget, fused vs PyTorch
ratios, and the figures of `study.analysis.plots` embedded by relative path."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from study.analysis import pareto, plots, seed_compare
from study.analysis.pareto import GIB, MEMORY, QUALITY, TEST_QUALITY, TIME_COLUMN, TIME_LABEL

FIGURES_DIR = "figures"
REPORT_NAME = "report.md"

_FIGURE_TITLES = {
    "pareto": "Memory vs quality, with the Pareto frontier",
    "heatmaps": "Quality and memory over negatives x batch size",
    "scaling": "Best quality at each number of negatives under fixed budgets",
    "fused_vs_torch": "Fused vs PyTorch loss at equal configurations",
}


def markdown_table(frame: pd.DataFrame, *, digits: int = 4) -> str:
    """A GitHub-flavoured Markdown table; floats with `digits` significant digits, missing values as '-'."""
    if frame.empty:
        return "_(none)_"

    def cell(value: object) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
            return "-"
        if isinstance(value, float):
            return f"{value:.{digits}g}"
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def negatives_column(negatives: pd.Series, loss: pd.Series) -> pd.Series:
    """K for tables: whole numbers, "full" for full-catalogue CE (no sampled negatives)."""
    shown = negatives.map(lambda k: "-" if pd.isna(k) else str(int(k)))
    return shown.where(loss != "ce", "full")


def frontier_summary(trials: pd.DataFrame, *, metric: str, memory_field: str) -> pd.DataFrame:
    """The frontier in columns people read: configuration, metrics, memory in GiB, time per epoch
    (steady state where recorded, see `pareto.epoch_time`)."""
    frontier = pareto.pareto_frontier(trials, metric=metric, memory_field=memory_field)
    columns = {"dataset": "dataset", "split": "split", "trial_id": "trial", "loss": "loss",
               "num_negatives": "K", "negative_scope": "scope", "batch_size": "batch", "max_len": "max len",
               "loss_impl_used": "impl", QUALITY: f"val {metric}", TEST_QUALITY: f"test {metric}"}
    summary = frontier[[c for c in columns if c in frontier.columns]].rename(columns=columns)
    if "K" in summary.columns and "loss" in frontier.columns:
        summary["K"] = negatives_column(frontier["num_negatives"], frontier["loss"])
    summary[f"{memory_field} GiB"] = frontier[MEMORY] / GIB
    summary[TIME_LABEL] = frontier[TIME_COLUMN]
    return summary


def time_note(trials: pd.DataFrame) -> str:
    """One sentence saying what time per epoch means here, and how many `ok` trials lack the steady
    state and show the mean over all epochs instead (`pareto.epoch_time`)."""
    text = ("Time per epoch is the steady state: the median training time of the epochs after the first "
            "(which includes kernel compilation), or the only epoch's time.")
    if "status" not in trials.columns or not pareto.has_epoch_time(trials):
        return text
    ok = trials[trials["status"] == "ok"]
    steady = (pd.to_numeric(ok[pareto.STEADY_TIME_COLUMN], errors="coerce")
              if pareto.STEADY_TIME_COLUMN in ok.columns else pd.Series(math.nan, index=ok.index))
    fallback = int((steady.isna() & pareto.epoch_time(ok).notna()).sum())
    if fallback:
        text += (f" {fallback} of {len(ok)} ok trials have no steady-state time recorded and show the mean "
                 "over all epochs, first included.")
    return text


def budget_summary(trials: pd.DataFrame, budgets: Sequence[int], *, metric: str,
                   memory_field: str) -> pd.DataFrame:
    # Configurations ranked by their mean over seeds, as `cce-study best` answers.
    table = pareto.best_per_budget(trials, budgets, metric=metric, memory_field=memory_field,
                                   aggregate_seeds=True)
    if table.empty:
        return table
    return pd.DataFrame({
        "dataset": table["dataset"], "split": table["split"], "budget GiB": table["budget_gib"],
        "feasible": table["feasible_trials"], "best trial": table["trial_id"],
        "K": negatives_column(table["num_negatives"], table["loss"]),
        "scope": table["negative_scope"], "batch": table["batch_size"], "max len": table["max_len"],
        "impl": table["loss_impl_used"], f"val {metric}": table[QUALITY],
        f"test {metric}": table[TEST_QUALITY], f"val {metric} sd": table[pareto.QUALITY_SD],
        "seeds": table["seeds"], f"{memory_field} GiB": table["memory_gib"],
        "runner-up": table["runner_up_trial_id"], f"runner-up val {metric}": table["runner_up_quality"],
        f"runner-up val {metric} sd": table["runner_up_quality_sd"],
        "runner-up seeds": table["runner_up_seeds"].where(table["runner_up_trial_id"].notna()),
        "vs runner-up": table["vs_runner_up"].map(seed_compare.RUNNER_UP_PHRASES.get),
    })


def fused_summary(trials: pd.DataFrame, *, memory_field: str) -> pd.DataFrame:
    pairs = pareto.fused_vs_torch(trials, memory_field=memory_field)
    columns = {"dataset": "dataset", "num_negatives": "K", "negative_scope": "scope", "batch_size": "batch",
               "max_len": "max len", f"triton_{TIME_COLUMN}": f"fused {TIME_LABEL}",
               f"torch_{TIME_COLUMN}": f"PyTorch {TIME_LABEL}", "speedup": "speedup (PyTorch / fused)",
               "triton_memory_gib": "fused GiB", "torch_memory_gib": "PyTorch GiB",
               "memory_ratio": "memory ratio (PyTorch / fused)"}
    return pairs[[c for c in columns if c in pairs.columns]].rename(columns=columns)


def write_report(
    trials: pd.DataFrame,
    out_dir: str | Path,
    *,
    metric: str = "ndcg@10",
    memory_field: str = "peak_bytes",
    budgets: Sequence[int] = plots.DEFAULT_BUDGETS,
    source: str = "",
    note: plots.Note = print,
) -> Path:
    """Write `report.md` and its figures (under `figures/`) into `out_dir`; returns the report's path."""
    if trials.empty:
        raise ValueError("trials: no trials to report on")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = plots.write_figures(trials, out / FIGURES_DIR, metric=metric, memory_field=memory_field,
                                  budgets=budgets, note=note)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# cce-study results report",
        "",
        f"Source: `{source}`. Generated {now}. {len(trials)} trials; quality is validation {metric} "
        f"(test beside it); memory is `{memory_field}`. {time_note(trials)}",
        "",
        "## Trial status",
        "",
        markdown_table(pareto.status_counts(trials)),
        "",
        "## Pareto frontier (validation quality up, memory down)",
        "",
        "Only `ok` trials with both values are candidates; points equal on both objectives all stay.",
        "",
        markdown_table(frontier_summary(trials, metric=metric, memory_field=memory_field)),
        "",
        "## Best configuration under each budget",
        "",
        "The configuration with the best mean validation metric over its seeds whose measured memory (the "
        "largest of its seeds) fits the budget; ties on the metric go to less memory. \"vs runner-up\" says "
        "whether it beats the next one beyond the seeds' spread: the gap in means against the larger sd of "
        "a side with two or more seeds; with one seed on both sides the spread is unknown "
        "(docs/analysis.md).",
        "",
        markdown_table(budget_summary(trials, budgets, metric=metric, memory_field=memory_field)),
        "",
        "## Fused (Triton) vs PyTorch loss at equal configurations",
        "",
    ]
    fused = fused_summary(trials, memory_field=memory_field)
    if fused.empty:
        lines.append("No configuration ran with both implementations.")
    else:
        speedup = fused["speedup (PyTorch / fused)"].median()
        memory_ratio = fused["memory ratio (PyTorch / fused)"].median()
        lines.append(f"{len(fused)} pairs; median speedup {speedup:.2f}x, "
                     f"median memory ratio {memory_ratio:.2f}x.")
        lines += ["", markdown_table(fused)]
    lines += ["", "## Figures", ""]
    for path in figures:
        if path.suffix != ".png":
            continue
        kind = next((k for k in _FIGURE_TITLES if path.stem.startswith(k + "_")), path.stem)
        where = path.stem[len(kind) + 1:]
        lines += [f"### {_FIGURE_TITLES.get(kind, kind)} ({where})", "",
                  f"![{path.stem}]({FIGURES_DIR}/{path.name}) ([SVG]({FIGURES_DIR}/{path.stem}.svg))", ""]
    report = out / REPORT_NAME
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


__all__ = ["write_report", "markdown_table", "frontier_summary", "budget_summary", "fused_summary",
           "time_note", "REPORT_NAME", "FIGURES_DIR"]
