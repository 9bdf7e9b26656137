"""Figures of a sweep: the memory-quality Pareto frontier, heatmaps over (negatives, batch size), the
negatives scaling view under fixed budgets, and fused vs PyTorch loss.

Figures are built on `matplotlib.figure.Figure` directly (no pyplot state, no GUI backend), written as
PNG and SVG, one set per (dataset, split). A figure the data cannot support is skipped with a note.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, NullFormatter, NullLocator

from study.analysis import pareto
from study.analysis.labels import PointLabel, place_labels
from study.analysis.pareto import CANDIDATE, GIB, MEMORY, ON_FRONTIER, QUALITY, TIME_COLUMN, TIME_LABEL

DEFAULT_BUDGETS: tuple[int, ...] = (8 * GIB, 16 * GIB, 40 * GIB)
FORMATS: tuple[str, ...] = ("png", "svg")
Note = Callable[[str], None]

_INFEASIBLE_COLOR = "0.55"
_MEMORY_LABELS = {
    "peak_bytes": "peak memory",
    "torch_max_reserved": "torch reserved peak",
    "torch_max_allocated": "torch allocated peak",
    "nvml_process_peak": "process memory peak (NVML)",
}


def metric_label(metric: str) -> str:
    name, k = pareto.parse_metric(metric)
    pretty = {"ndcg": "NDCG", "hit": "HitRate", "mrr": "MRR", "coverage": "Coverage"}[name]
    return f"{pretty}@{k}"


def write_figures(
    trials: pd.DataFrame,
    out_dir: str | Path,
    *,
    metric: str = "ndcg@10",
    memory_field: str = "peak_bytes",
    budgets: Sequence[int] = DEFAULT_BUDGETS,
    note: Note = print,
) -> list[Path]:
    """Every figure for every (dataset, split) in `trials`; returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = pareto.pareto_table(trials, metric=metric, memory_field=memory_field)
    written: list[Path] = []
    for (dataset, split), group in table.groupby(list(pareto.GROUP_COLUMNS), dropna=False, sort=True):
        tag = _file_tag(f"{dataset}_{split}")
        where = f"{dataset} ({split})"
        figures: list[tuple[str, Figure | str]] = [
            ("pareto", pareto_figure(group, metric=metric, memory_field=memory_field, budgets=budgets,
                                     title=where)),
            ("heatmaps", heatmap_figure(group, metric=metric, memory_field=memory_field, title=where)),
            ("scaling", scaling_figure(group, metric=metric, memory_field=memory_field, budgets=budgets,
                                       title=where)),
            ("fused_vs_torch", fused_vs_torch_figure(group, memory_field=memory_field, title=where)),
        ]
        for name, figure in figures:
            if isinstance(figure, str):
                note(f"skipped {name} figure for {where}: {figure}")
                continue
            written += save(figure, out / f"{name}_{tag}")
    return written


def save(figure: Figure, stem: Path) -> list[Path]:
    paths = []
    for extension in FORMATS:
        path = stem.with_name(f"{stem.name}.{extension}")
        figure.savefig(path, dpi=150)  # constrained layout already fits the labels
        paths.append(path)
    return paths


def pareto_figure(
    table: pd.DataFrame,
    *,
    metric: str,
    memory_field: str,
    budgets: Sequence[int] = DEFAULT_BUDGETS,
    title: str = "",
) -> Figure | str:
    """Memory (GiB) vs validation quality of one (dataset, split) from `pareto.pareto_table`: the
    frontier as a step line, points coloured by negatives and sized by batch size, infeasible trials as
    grey crosses along the bottom, and budget lines. Returns a reason instead when nothing can be drawn."""
    candidates = table[table[CANDIDATE]]
    if candidates.empty:
        return "no ok trial with both quality and memory"
    figure = Figure(figsize=(8.5, 5.5), layout="constrained")
    axes = figure.add_subplot()
    sampled = candidates[pareto.samples_negatives(candidates)]
    full_catalogue = candidates[~pareto.samples_negatives(candidates)]
    if not sampled.empty:
        negatives = sampled["num_negatives"].astype(float)
        norm = LogNorm(vmin=negatives.min(), vmax=max(negatives.max(), negatives.min() * 2))
        points = axes.scatter(sampled[MEMORY] / GIB, sampled[QUALITY], c=negatives, norm=norm, cmap="viridis",
                              s=_marker_sizes(sampled["batch_size"], candidates["batch_size"]), alpha=0.85,
                              edgecolors="black", linewidths=0.4, zorder=3)
        colorbar = figure.colorbar(points, ax=axes)
        colorbar.set_label("negatives K (log scale)")
        distinct = sorted(int(k) for k in negatives.unique())
        if len(distinct) <= 10:  # label the values swept rather than powers of ten
            colorbar.ax.yaxis.set_minor_locator(NullLocator())
            colorbar.set_ticks(distinct, labels=[str(k) for k in distinct])
    if not full_catalogue.empty:
        axes.scatter(full_catalogue[MEMORY] / GIB, full_catalogue[QUALITY], marker="s", color="white",
                     s=_marker_sizes(full_catalogue["batch_size"], candidates["batch_size"]),
                     edgecolors="black", linewidths=0.8, zorder=3)

    frontier = candidates[candidates[ON_FRONTIER]].sort_values([MEMORY, QUALITY])
    low, high = _memory_range(table)
    step_x = np.append(frontier[MEMORY].to_numpy() / GIB, high)
    step_y = np.append(frontier[QUALITY].to_numpy(), frontier[QUALITY].iloc[-1])
    axes.step(step_x, step_y, where="post", color="crimson", linewidth=1.6, zorder=2)
    log_x = low > 0 and high / low > 20
    labels = [PointLabel(row[MEMORY] / GIB, row[QUALITY], _frontier_label(row), "crimson")
              for _, row in frontier.iterrows()]

    quality_low = candidates[QUALITY].min()
    quality_high = candidates[QUALITY].max()
    pad = 0.08 * max(quality_high - quality_low, abs(quality_high) * 0.05, 1e-6)
    floor = quality_low - pad
    # Trials that ran but did not finish ok, and trials never run because the memory model predicted
    # them over the budget (placed at their predicted memory): two different stories.
    not_run_mask = _not_run(table)
    infeasible = table[~table[CANDIDATE] & ~not_run_mask]
    infeasible_x = _memory_reached(infeasible) / GIB
    shown = infeasible_x.notna()
    infeasible_y = infeasible[QUALITY].where(infeasible[QUALITY].notna(), floor)
    axes.scatter(infeasible_x[shown], infeasible_y[shown], marker="x", color=_INFEASIBLE_COLOR, s=40,
                 zorder=2)
    not_run = table[not_run_mask]
    not_run_x = _memory_reached(not_run) / GIB
    not_run_shown = not_run_x.notna()
    if not not_run.empty:
        axes.scatter(not_run_x[not_run_shown], np.full(int(not_run_shown.sum()), floor), marker="^",
                     facecolors="none", edgecolors=_INFEASIBLE_COLOR, s=40, zorder=2)

    for budget in budgets:
        if low <= budget / GIB <= high:
            axes.axvline(budget / GIB, color="0.3", linestyle="--", linewidth=1)
            axes.text(budget / GIB, quality_high + pad * 0.5, f" {budget / GIB:g} GiB budget", fontsize=8,
                      color="0.3", va="bottom")
    if log_x:
        axes.set_xscale("log", base=2)
        axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xlim(low, high)
    axes.set_ylim(floor - pad, quality_high + 2 * pad)
    axes.set_xlabel(f"{_MEMORY_LABELS[memory_field]} (GiB)")
    axes.set_ylabel(f"validation {metric_label(metric)}")
    axes.set_title(f"{title}: validation {metric_label(metric)} vs {_MEMORY_LABELS[memory_field]}")
    axes.grid(True, alpha=0.3)

    not_placed = int((~shown).sum())
    handles = [Line2D([], [], color="crimson", label=f"Pareto frontier ({len(frontier)} trials)")]
    if len(infeasible):
        present = set(infeasible["status"])
        kinds = " / ".join(word for status, word in _STATUS_WORDS.items() if status in present)
        handles.append(Line2D([], [], marker="x", linestyle="", color=_INFEASIBLE_COLOR,
                              label=f"ran, not ok ({len(infeasible)}: {kinds or 'failed'})"
                                    + (f", {not_placed} without memory not shown" if not_placed else "")))
    if len(not_run):
        handles.append(Line2D([], [], marker="^", linestyle="", markerfacecolor="none",
                              markeredgecolor=_INFEASIBLE_COLOR,
                              label=f"not run: predicted over budget ({len(not_run)}), at predicted memory"))
    if not full_catalogue.empty:
        handles.append(Line2D([], [], marker="s", linestyle="", markerfacecolor="white",
                              markeredgecolor="black", label=f"full-catalogue CE ({len(full_catalogue)})"))
    for batch_size in _legend_batch_sizes(candidates["batch_size"]):
        size = _marker_sizes(pd.Series([batch_size]), candidates["batch_size"])[0]
        handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="white",
                              markeredgecolor="black", markersize=math.sqrt(size),
                              label=f"batch {batch_size}"))
    # Below the axes, so that it never hides points.
    axes.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, fontsize=8)
    place_labels(axes, labels, fontsize=7)
    return figure


def _frontier_label(row: pd.Series) -> str:
    negatives = "full CE" if row.get("loss") == "ce" else f"K={int(row['num_negatives'])}"
    return f"{negatives} B={int(row['batch_size'])}"


def heatmap_figure(table: pd.DataFrame, *, metric: str, memory_field: str, title: str = "") -> Figure | str:
    """Best quality and the least memory over (negatives x batch size), one row of panels per max length.
    Cells without an ok trial say why (failed, oom, over budget, or "not run" when the memory model
    predicted every trial there over the budget); cells never tried stay blank."""
    tried = table.dropna(subset=["num_negatives", "batch_size", "max_len"])
    tried = tried[pareto.samples_negatives(tried)]
    if not tried[CANDIDATE].any():
        return "no ok trial with sampled negatives and both quality and memory"
    if tried["num_negatives"].nunique() * tried["batch_size"].nunique() < 2:
        return "fewer than two (negatives, batch size) cells"
    negatives = sorted(int(v) for v in tried["num_negatives"].unique())
    batch_sizes = sorted(int(v) for v in tried["batch_size"].unique())
    max_lens = sorted(int(v) for v in tried["max_len"].unique())
    figure = Figure(figsize=(11, 0.6 + 3.6 * len(max_lens)), layout="constrained")
    grid = figure.subplots(len(max_lens), 2, squeeze=False)
    candidates = tried[tried[CANDIDATE]]
    panels = ((QUALITY, "max", f"best validation {metric_label(metric)}", "viridis", "{:.3g}"),
              (MEMORY, "min", f"least {_MEMORY_LABELS[memory_field]} (GiB)", "magma_r", "{:.3g}"))
    for row, max_len in enumerate(max_lens):
        at_len = tried[tried["max_len"] == max_len]
        ok_at_len = candidates[candidates["max_len"] == max_len]
        for column, (value, how, label, cmap, fmt) in enumerate(panels):
            axes = grid[row][column]
            cells = ok_at_len.groupby(["num_negatives", "batch_size"])[value]
            best = cells.max() if how == "max" else cells.min()
            values = best.unstack("batch_size").reindex(index=negatives, columns=batch_sizes)
            shown = values.to_numpy(dtype=float) / (GIB if value == MEMORY else 1.0)
            image = axes.imshow(shown, cmap=cmap, aspect="auto", origin="lower")
            colorbar = figure.colorbar(image, ax=axes)
            colorbar.set_label(label, fontsize=8)
            tried_cells = set(zip(at_len["num_negatives"].astype(int), at_len["batch_size"].astype(int)))
            finite = shown[np.isfinite(shown)]
            middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
            for i, k in enumerate(negatives):
                for j, b in enumerate(batch_sizes):
                    if np.isfinite(shown[i, j]):
                        dark = shown[i, j] < middle if cmap == "viridis" else shown[i, j] > middle
                        axes.text(j, i, fmt.format(shown[i, j]), ha="center", va="center", fontsize=7,
                                  color="white" if dark else "black")
                    elif (k, b) in tried_cells:
                        cell_text, cell_color = _cell_label(at_len, k, b)
                        axes.text(j, i, cell_text, ha="center", va="center", fontsize=7, color=cell_color)
            axes.set_xticks(range(len(batch_sizes)), [str(b) for b in batch_sizes])
            axes.set_yticks(range(len(negatives)), [str(k) for k in negatives])
            axes.set_xlabel("batch size")
            axes.set_ylabel("negatives K")
            axes.set_title(f"max length {max_len}: {label}", fontsize=10)
    figure.suptitle(f"{title}: quality and memory over negatives x batch size")
    return figure


def scaling_figure(
    table: pd.DataFrame,
    *,
    metric: str,
    memory_field: str,
    budgets: Sequence[int] = DEFAULT_BUDGETS,
    title: str = "",
) -> Figure | str:
    """For each budget, the best validation quality reachable at each number of negatives, with the batch
    size that reaches it written beside the point."""
    sampled = table[table[CANDIDATE] & pareto.samples_negatives(table)]
    if sampled["num_negatives"].nunique() < 2:
        return "fewer than two numbers of negatives among ok trials with sampled negatives"
    scaling = pareto.scaling_table(table, budgets, metric=metric, memory_field=memory_field)
    if scaling.empty:
        return "no ok trial fits any of the budgets"
    figure = Figure(figsize=(8, 5), layout="constrained")
    axes = figure.add_subplot()
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    markers = ["o", "s", "^", "D", "v", "P"]
    budgets_present = sorted(scaling["budget_bytes"].unique(), reverse=True)
    for index, budget in enumerate(budgets_present):
        rows = scaling[scaling["budget_bytes"] == budget]
        color = colors[index % len(colors)]
        # Larger budgets first and wider, so that a smaller budget reaching the same points stays visible.
        axes.plot(rows["num_negatives"], rows[QUALITY], marker=markers[index % len(markers)], color=color,
                  linewidth=1.2 + 1.5 * (len(budgets_present) - 1 - index), markersize=5 + 2 * index,
                  alpha=0.8, label=f"budget {float(budget) / GIB:g} GiB")
        for _, row in rows.iterrows():
            axes.annotate(f"B={int(row['batch_size'])}", (row["num_negatives"], row[QUALITY]),
                          textcoords="offset points", xytext=(5, -12 - 9 * index), fontsize=7, color=color)
    axes.set_xscale("log", base=2)
    negatives = sorted(int(k) for k in scaling["num_negatives"].unique())
    axes.set_xticks(negatives, [str(k) for k in negatives])
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xlabel("negatives K (log scale)")
    axes.set_ylabel(f"best validation {metric_label(metric)} within the budget")
    axes.set_title(f"{title}: scaling negatives under a fixed {_MEMORY_LABELS[memory_field]} budget")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    return figure


def fused_vs_torch_figure(table: pd.DataFrame, *, memory_field: str, title: str = "") -> Figure | str:
    """Paired horizontal bars, fused (Triton) vs PyTorch loss, for time per epoch (steady state: the
    first epoch's compilation left out, see `pareto.epoch_time`) and memory at equal configurations,
    each pair labelled with the ratio PyTorch / fused."""
    if not {"num_negatives", "batch_size", "max_len"} <= set(table.columns):
        return "the trials lack num_negatives, batch_size or max_len"
    pairs = pareto.fused_vs_torch(table, memory_field=memory_field)
    pairs = pairs.dropna(subset=[f"triton_{TIME_COLUMN}", f"torch_{TIME_COLUMN}"], how="all")
    if pairs.empty:
        return "no configuration ran with both the fused (triton) and the PyTorch loss"
    labels = [f"K={k} B={b} L={length}" for k, b, length
              in zip(pairs["num_negatives"], pairs["batch_size"], pairs["max_len"])]
    figure = Figure(figsize=(11, 1.2 + 0.32 * len(pairs)), layout="constrained")
    time_axes, memory_axes = figure.subplots(1, 2, sharey=True)
    positions = np.arange(len(pairs))
    height = 0.4
    panels = ((time_axes, TIME_COLUMN, 1.0, TIME_LABEL, "speedup"),
              (memory_axes, memory_field, GIB, f"{_MEMORY_LABELS[memory_field]} (GiB)", "memory_ratio"))
    for axes, column, scale, label, ratio_column in panels:
        fused = pairs[f"triton_{column}"].to_numpy(dtype=float) / scale
        plain = pairs[f"torch_{column}"].to_numpy(dtype=float) / scale
        axes.barh(positions - height / 2, fused, height, color="tab:green", label="fused (Triton)")
        axes.barh(positions + height / 2, plain, height, color="tab:gray", label="PyTorch")
        for y, end, ratio in zip(positions, np.fmax(fused, plain), pairs[ratio_column]):
            if np.isfinite(end) and np.isfinite(ratio):
                axes.text(end, y, f" {ratio:.2f}x", va="center", fontsize=7)
        axes.set_xlabel(label)
        axes.set_xlim(0, np.nanmax(np.fmax(fused, plain)) * 1.18)
        axes.grid(True, axis="x", alpha=0.3)
    time_axes.set_yticks(positions, labels, fontsize=8)
    time_axes.invert_yaxis()
    # Below the panels: inside, it would cover the bars and ratios of the last row.
    figure.legend(*time_axes.get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=8)
    figure.suptitle(f"{title}: fused vs PyTorch loss at equal configurations (labels: PyTorch / fused)")
    return figure


_STATUS_WORDS = {"oom": "oom", "over_budget": "over budget", "failed": "failed"}
NOT_RUN_STATUS = "predicted_over_budget"


def _not_run(table: pd.DataFrame) -> pd.Series:
    """Trials never run: the memory model predicted them over the budget."""
    return table["status"] == NOT_RUN_STATUS


def _cell_label(rows: pd.DataFrame, negatives: int, batch_size: int) -> tuple[str, str]:
    """Text and colour of a heatmap cell whose trials include no ok one."""
    in_cell = ((rows["num_negatives"].astype(int) == negatives)
               & (rows["batch_size"].astype(int) == batch_size))
    statuses = set(rows.loc[in_cell, "status"])
    if statuses == {NOT_RUN_STATUS}:
        return "not run\n(predicted\nover budget)", _INFEASIBLE_COLOR
    ran = statuses - {NOT_RUN_STATUS}
    words = [_STATUS_WORDS[status] for status in _STATUS_WORDS if status in ran] or sorted(ran)
    return " / ".join(words), "crimson"


def _memory_reached(rows: pd.DataFrame) -> pd.Series:
    """Memory of a trial for placing it on the memory axis: measured, else predicted."""
    reached = rows[MEMORY].astype(float)
    if "predicted_peak_bytes" in rows.columns:
        reached = reached.fillna(pd.to_numeric(rows["predicted_peak_bytes"], errors="coerce"))
    return reached


def _memory_range(table: pd.DataFrame) -> tuple[float, float]:
    reached = _memory_reached(table).dropna() / GIB
    low, high = float(reached.min()), float(reached.max())
    return low / 1.15, high * 1.15


def _marker_sizes(batch_sizes: pd.Series, all_batch_sizes: pd.Series) -> np.ndarray:
    """Marker area grows with log batch size, from 25 to 220 points^2 over the range present."""
    logs = np.log2(batch_sizes.astype(float).to_numpy())
    low = math.log2(float(all_batch_sizes.min()))
    high = math.log2(float(all_batch_sizes.max()))
    spread = (logs - low) / (high - low) if high > low else np.full_like(logs, 0.5)
    return 25 + 195 * spread


def _legend_batch_sizes(batch_sizes: pd.Series) -> list[int]:
    distinct = sorted(int(b) for b in batch_sizes.unique())
    if len(distinct) <= 3:
        return distinct
    return [distinct[0], distinct[len(distinct) // 2], distinct[-1]]


def _file_tag(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


__all__ = ["DEFAULT_BUDGETS", "FORMATS", "write_figures", "save", "pareto_figure", "heatmap_figure",
           "scaling_figure", "fused_vs_torch_figure", "metric_label"]
