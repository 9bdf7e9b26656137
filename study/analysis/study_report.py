"""`cce-study study-report`: the generated part of STUDY.md, from several results databases read together.

The study runs one sweep per dataset (plus seed repeats and side questions, each a sweep of its own), so
this report reads every database given, aggregates the seeds of each configuration (mean and sample
standard deviation of the metrics; the largest memory of any seed, since a configuration fits a budget
only if every seed did), and writes the comparisons the study asks for:

- per dataset, the best configuration under each budget for the fused and the PyTorch loss side by side,
  with how many of its seeds the time cap cut and how many trials shared their card (`card_sharing`);
- the paper's claim: under a budget, is the best configuration one that scales negatives and batch together,
  or one that maximises either (best at the smallest batch swept / at the fewest negatives swept)?
- negative scopes (per position, per sequence, shared by the batch, drawn in the kernel) at equal K, B, L;
- time per epoch and memory, fused against PyTorch at equal configurations;
- how training stopped (early stopping, the time cap, the epoch limit), and which configurations still need
  seeds (with a spec to run them).

A difference between two configurations counts only when it exceeds the seeds' spread, by the one rule of
`study.analysis.seed_compare` (the larger sd of a side with two or more seeds; with one seed on both sides
the spread is unknown and the table says so).
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from study.analysis import pareto, seed_compare
from study.analysis.card_sharing import mean_trials_on_card, sharing_text
from study.analysis.labels import PointLabel, place_labels
from study.analysis.pareto import GIB
from study.analysis.report import markdown_table
from study.database.results_db import load_trials, name_dataset_copies, name_unweighted_draws
from study.units import parse_budget

IMPL_LABELS = {"triton": "fused (Triton)", "torch": "PyTorch"}
IMPL_STYLE = {"triton": ("o", "tab:green"), "torch": ("^", "tab:gray")}
SCOPE_ORDER = ("position", "drawn", "drawn-unweighted", "sequence", "batch")
DEFAULT_BUDGETS_TEXT = "8GiB,16GiB,40GiB"
WANTED_SEEDS = 3
# Settings every table and figure names by themselves (K, B, L, the implementation, the scope), or that name
# the data; any other setting that varies within a dataset is spelled out (`other_settings`).
NAMED_SETTINGS = ("dataset", "split", "num_negatives", "batch_size", "max_len", "loss_impl", "loss_impl_used",
                  "negative_scope", "dataset_sha256")


# ----------------------------------------------------------------------------------------------------
# tables


def load_study(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Every trial of every database, with the file it came from in `database`."""
    frames = [load_trials(path).assign(database=str(path)) for path in paths]
    if not frames:
        raise ValueError("db: give at least one results database")
    return name_unweighted_draws(name_dataset_copies(pd.concat(frames, ignore_index=True)))


def configurations(trials: pd.DataFrame, *, metric: str = "ndcg@10") -> pd.DataFrame:
    """One row per configuration run `ok`, its seeds grouped as everywhere in the analysis
    (`pareto.seed_groups`): `val_mean`, `val_sd`, `test_mean`, `test_sd` of `metric`, `seeds`,
    `memory_bytes` (the largest peak of its seeds), `epoch_seconds` (mean steady-state time per epoch),
    `time_capped` (seeds cut by the time limit), `on_card_min` / `on_card_max` (the fewest and most trials
    that shared a seed's card while it ran, `card_sharing`: a capped seed's quality depends on it),
    `trial_ids`."""
    val_column, test_column = pareto.metric_column(metric, "val"), pareto.metric_column(metric, "test")
    on_card = mean_trials_on_card(trials)
    ok = trials[trials["status"] == "ok"].copy()
    ok["on_card"] = on_card[ok.index]
    ok["epoch_seconds"] = pareto.epoch_time(ok)
    ok["time_capped"] = pareto.time_capped_seeds(ok)
    if ok.empty:
        return pd.DataFrame(columns=[*pareto.seed_key_columns(ok), "val_mean", "val_sd", "test_mean",
                                     "test_sd", "seeds", "memory_bytes", "epoch_seconds", "time_capped",
                                     "on_card_min", "on_card_max", "trial_ids", "other_settings"])
    grouped = pareto.seed_groups(ok, sort=True)
    table = grouped.agg(
        val_mean=(val_column, "mean"), val_sd=(val_column, "std"), test_mean=(test_column, "mean"),
        test_sd=(test_column, "std"), seeds=(val_column, "size"), memory_bytes=("peak_bytes", "max"),
        epoch_seconds=("epoch_seconds", "mean"), time_capped=("time_capped", "sum"),
        on_card_min=("on_card", "min"), on_card_max=("on_card", "max"),
        trial_ids=("trial_id", lambda ids: ",".join(sorted(ids))),
    ).reset_index()
    table["other_settings"] = other_settings(table)
    return table


def other_settings(configs: pd.DataFrame) -> pd.Series:
    """Per configuration, the settings besides K, B, L, implementation and scope in which it departs from
    most configurations of its dataset and split, as "patience=40, time_limit_s=390" ("" where none).
    Tables and figures name a configuration by (K, B, L); without this, a side sweep that changed only the
    patience or the time cap would read as the same configuration as the grid's."""
    result = pd.Series("", index=configs.index, dtype=object)
    candidates = [c for c in pareto.seed_key_columns(configs) if c not in NAMED_SETTINGS]
    if configs.empty or not candidates:
        return result
    for _, group in configs.groupby(["dataset", "split"], sort=False, dropna=False):
        varying = [c for c in candidates if group[c].nunique(dropna=False) > 1]
        for column in varying:
            usual = group[column].value_counts(dropna=False).index[0]
            departs = group[column].map(lambda value, usual=usual: not _same_value(value, usual))
            for index in group.index[departs]:
                text = f"{column}={_setting_text(group.at[index, column])}"
                result.at[index] = f"{result.at[index]}, {text}" if result.at[index] else text
    return result


def _same_value(a: Any, b: Any) -> bool:
    return bool((pd.isna(a) and pd.isna(b)) if (pd.isna(a) or pd.isna(b)) else a == b)


def _setting_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "-" if pd.isna(value) else str(value)


def mean_sd(mean: float, sd: float, seeds: int) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if seeds < 2 or sd is None or math.isnan(sd):
        return f"{mean:.4f} (1 seed)"
    return f"{mean:.4f} ± {sd:.4f} ({seeds})"


def versus(a: pd.Series, b: pd.Series) -> str:
    """Configuration a against b (rows of `configurations`) on the validation metric, by
    `seed_compare.compare`: "better", "worse", "same (within sd)" or "unknown (one seed)"."""
    return seed_compare.compare_rows(a, b, mean="val_mean", sd="val_sd", seeds="seeds")


def best_under_budgets(configs: pd.DataFrame, budgets: Sequence[int]) -> pd.DataFrame:
    """Per dataset, budget and implementation: the configuration with the best mean validation metric whose
    memory (largest over its seeds) fits the budget; ties go to less memory. "vs runner-up" says whether it
    beats the next configuration beyond the seeds' spread, and which that is (K, B, L and mean ± sd)."""
    rows = []
    for (dataset, split), group in configs.groupby(["dataset", "split"], sort=True):
        for budget in budgets:
            for impl in ("triton", "torch"):
                fits = group[(group["loss_impl_used"] == impl) & (group["memory_bytes"] <= budget)]
                row: dict[str, Any] = {"dataset": dataset, "split": split, "budget GiB": budget / GIB,
                                       "impl": IMPL_LABELS[impl], "feasible configs": len(fits)}
                if not fits.empty:
                    ranked = _ranked(fits)
                    row.update(_describe(ranked.iloc[0]))
                    row["vs runner-up"] = (_versus_runner_up(ranked.iloc[0], ranked.iloc[1])
                                           if len(ranked) > 1 else "no runner-up")
                rows.append(row)
    return pd.DataFrame(rows)


def _versus_runner_up(best: pd.Series, runner_up: pd.Series) -> str:
    phrase = seed_compare.RUNNER_UP_PHRASES[versus(best, runner_up)]
    return (f"{phrase}: {_point(runner_up)} "
            f"{mean_sd(runner_up['val_mean'], runner_up['val_sd'], int(runner_up['seeds']))}")


def _describe(config: pd.Series) -> dict[str, Any]:
    return {
        "scope": config.get("negative_scope"), "other settings": config.get("other_settings") or "-",
        "K": int(config["num_negatives"]),
        "batch": int(config["batch_size"]), "max len": int(config["max_len"]),
        "val NDCG@10": mean_sd(config["val_mean"], config["val_sd"], int(config["seeds"])),
        "test NDCG@10": mean_sd(config["test_mean"], config["test_sd"], int(config["seeds"])),
        "peak GiB": config["memory_bytes"] / GIB, "s / epoch": config["epoch_seconds"],
        "cut by cap": f"{int(config['time_capped'])}/{int(config['seeds'])}",
        "trials on card": sharing_text(config.get("on_card_min"), config.get("on_card_max")),
        "trials": config["trial_ids"],
    }


def scaling_claim(configs: pd.DataFrame, budgets: Sequence[int]) -> pd.DataFrame:
    """The paper's claim under each budget and implementation: the best configuration overall against the
    best that maximises negatives alone (the smallest batch swept) and the best that maximises the batch
    alone (the fewest negatives swept), with whether the overall best wins beyond the seeds' spread."""
    rows = []
    for (dataset, _, impl), group in configs.groupby(["dataset", "split", "loss_impl_used"], sort=True):
        group = _per_position(group)
        if group.empty:
            continue
        smallest_batch, fewest_negatives = int(group["batch_size"].min()), int(group["num_negatives"].min())
        for budget in budgets:
            fits = _ranked(group[group["memory_bytes"] <= budget])
            if fits.empty:
                continue
            best = fits.iloc[0]
            negatives_only = fits[fits["batch_size"] == smallest_batch]
            batch_only = fits[fits["num_negatives"] == fewest_negatives]
            row: dict[str, Any] = {
                "dataset": dataset, "budget GiB": budget / GIB, "impl": IMPL_LABELS.get(str(impl), str(impl)),
                "best (K, B, L)": _point(best), "best val": mean_sd(best["val_mean"], best["val_sd"],
                                                                   int(best["seeds"])),
            }
            for label, subset in ((f"negatives only (B={smallest_batch})", negatives_only),
                                  (f"batch only (K={fewest_negatives})", batch_only)):
                if subset.empty:
                    row[label] = "-"
                    continue
                alternative = subset.iloc[0]
                verdict = "is it" if alternative.name == best.name else versus(best, alternative)
                row[label] = (f"{_point(alternative)} {alternative['val_mean']:.4f}: best {verdict}")
            row["both scaled"] = bool(best["batch_size"] > smallest_batch
                                      and best["num_negatives"] > fewest_negatives)
            rows.append(row)
    return pd.DataFrame(rows)


def fixed_product_lines(configs: pd.DataFrame) -> pd.DataFrame:
    """The paper's claim read along lines of fixed K x B (per implementation and length, per-position
    negatives): one row per product that at least two batch sizes reached, one column per batch size with
    that batch's K and quality, the batch ahead on the line and its verdict against the next best
    (`seed_compare`). Where a (K, B, L) ran under more than one setting (a side sweep's patience or cap),
    the cell shows the best of them and names its setting, so the line compares what each batch size
    reached at its best."""
    positions = _per_position(configs)
    if positions.empty:
        return pd.DataFrame()
    positions = positions.assign(product=positions["num_negatives"] * positions["batch_size"])
    batches = sorted(int(b) for b in positions["batch_size"].unique())
    rows = []
    keys = ["dataset", "loss_impl_used", "max_len", "product"]
    for (dataset, impl, _, _), line in positions.groupby(keys, sort=True):
        ranked = _ranked(line)
        best_per_batch: dict[int, pd.Series] = {}
        for _, config in ranked.iterrows():
            best_per_batch.setdefault(int(config["batch_size"]), config)
        if len(best_per_batch) < 2:
            continue
        first_config = next(iter(best_per_batch.values()))
        row: dict[str, Any] = {"dataset": dataset, "impl": IMPL_LABELS.get(str(impl), str(impl)),
                               "max len": int(first_config["max_len"]), "K x B": int(first_config["product"])}
        for batch in batches:
            cell = best_per_batch.get(batch)
            if cell is None:
                row[f"B={batch}"] = "-"
                continue
            quality = mean_sd(cell["val_mean"], cell["val_sd"], int(cell["seeds"]))
            row[f"B={batch}"] = _with_setting(f"K={int(cell['num_negatives'])}: {quality}", cell)
        (first, ahead), (second, runner_up) = list(best_per_batch.items())[:2]
        row["ahead on the line"] = f"B={first}"
        row["vs next"] = f"{versus(ahead, runner_up)} vs B={second}"
        rows.append(row)
    return pd.DataFrame(rows)


def _point_name(config: pd.Series) -> str:
    return f"K={int(config['num_negatives'])} B={int(config['batch_size'])} L={int(config['max_len'])}"


def _point(config: pd.Series) -> str:
    """(K, B, L), with the configuration's `other_settings` in brackets where it has any."""
    return _with_setting(f"({int(config['num_negatives'])}, {int(config['batch_size'])}, "
                         f"{int(config['max_len'])})", config)


def _with_setting(text: str, config: pd.Series) -> str:
    """`text`, followed by the configuration's `other_settings` in brackets where it has any."""
    other = config.get("other_settings")
    return f"{text} [{other}]" if isinstance(other, str) and other else text


def _ranked(configs: pd.DataFrame) -> pd.DataFrame:
    """Best mean validation metric first; ties to less memory."""
    return configs.sort_values(["val_mean", "memory_bytes"], ascending=[False, True])


def _per_position(configs: pd.DataFrame) -> pd.DataFrame:
    """The configurations with per-position negatives (all of them in tables without scopes)."""
    if "negative_scope" not in configs.columns:
        return configs
    return configs[configs["negative_scope"] == "position"]


def scope_comparison(configs: pd.DataFrame) -> pd.DataFrame:
    """The fused loss's negative scopes at equal K, batch and length (configurations differing only in
    `negative_scope`: every other setting equal, the time cap and validation interval included), each
    against per position."""
    fused = configs[configs["loss_impl_used"] == "triton"]
    keys = [c for c in pareto.seed_key_columns(fused) if c != "negative_scope"]
    rows = []
    for _, group in fused.groupby(keys, sort=True, dropna=False):
        if group["negative_scope"].nunique() < 2:
            continue
        by_scope = {row["negative_scope"]: row for _, row in group.iterrows()}
        reference = by_scope.get("position")
        for scope in [s for s in SCOPE_ORDER if s in by_scope]:
            config = by_scope[scope]
            rows.append({
                "dataset": config["dataset"], "K": config["num_negatives"], "batch": config["batch_size"],
                "max len": config["max_len"], "scope": scope,
                "val NDCG@10": mean_sd(config["val_mean"], config["val_sd"], int(config["seeds"])),
                "test NDCG@10": mean_sd(config["test_mean"], config["test_sd"], int(config["seeds"])),
                "vs per position": "-" if reference is None or scope == "position"
                else versus(config, reference),
                "s / epoch": config["epoch_seconds"], "peak GiB": config["memory_bytes"] / GIB,
            })
    return pd.DataFrame(rows)


def speed_summary(trials: pd.DataFrame) -> pd.DataFrame:
    """Per dataset: fused vs PyTorch at equal configurations. Trials pair by configuration and seed; each
    configuration counts once (the median ratio over its paired seeds), so the medians do not lean towards
    the configurations that happen to have more seeds. Columns: configurations and pairs, median and range
    over configurations of the time-per-epoch ratio and of the memory ratio (PyTorch / fused)."""
    ok = trials[trials["status"] == "ok"]
    if ok.empty:
        return pd.DataFrame()
    pairs = pareto.fused_vs_torch(ok)
    keys = pareto.config_key_columns(ok, exclude=("loss_impl", "loss_impl_used"))
    rows = []
    for dataset, group in pairs.groupby("dataset", sort=True):
        ratios = group.groupby(keys, dropna=False)[["speedup", "memory_ratio"]].median()
        rows.append({"dataset": dataset, "configurations": len(ratios), "pairs": len(group),
                     "speed-up median": ratios["speedup"].median(),
                     "speed-up range": f"{ratios['speedup'].min():.2f}-{ratios['speedup'].max():.2f}",
                     "memory ratio median": ratios["memory_ratio"].median(),
                     "memory ratio range":
                         f"{ratios['memory_ratio'].min():.2f}-{ratios['memory_ratio'].max():.2f}"})
    return pd.DataFrame(rows)


def convergence_summary(trials: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and implementation: trials by status, and ok trials by why training stopped."""
    table = trials.assign(stop=trials.get("stop_reason", pd.Series(index=trials.index, dtype=object)))
    table["other_settings"] = other_settings(table)
    rows = []
    for (dataset, impl), group in table.groupby(["dataset", "loss_impl"], sort=True):
        ok = group[group["status"] == "ok"]
        capped = ok[ok["stop"] == "time_limit"]
        rows.append({
            "dataset": dataset, "impl": IMPL_LABELS.get(str(impl), str(impl)), "trials": len(group),
            "ok": len(ok),
            "early stopping": int((ok["stop"] == "early_stopping").sum()),
            "epoch limit": int((ok["stop"] == "max_epochs").sum()), "time cap": len(capped),
            "time-capped (K, B, L)": _counted(_point(row) for _, row in capped.iterrows()) or "-",
            "predicted over budget (not run)": int((group["status"] == "predicted_over_budget").sum()),
            "over budget / oom / failed": int(group["status"].isin(["over_budget", "oom", "failed"]).sum()),
        })
    return pd.DataFrame(rows)


def _counted(points: Iterable[str]) -> str:
    """Distinct points in order of first appearance, each with how many times it came: "(64, 1024, 20) x3"."""
    counts = Counter(points)
    return ", ".join(point if n == 1 else f"{point} x{n}" for point, n in counts.items())


def seed_candidates(configs: pd.DataFrame, budgets: Sequence[int]) -> pd.DataFrame:
    """Configurations that answer a budget or sit on an implementation's frontier and have fewer than
    three seeds: what the seed repeats must run next."""
    wanted = []
    for (_, _, _), group in configs.groupby(["dataset", "split", "loss_impl_used"], sort=True):
        objectives = group[["val_mean", "memory_bytes"]].to_numpy(dtype=float)
        wanted += list(group.index[pareto.non_dominated(objectives, [True, False])])
        for budget in budgets:
            fits = group[group["memory_bytes"] <= budget]
            if not fits.empty:
                wanted.append(_ranked(fits).index[0])
    chosen = configs.loc[sorted(set(wanted))]
    return chosen[chosen["seeds"] < WANTED_SEEDS]


# ----------------------------------------------------------------------------------------------------
# figures


def frontier_by_impl_figure(configs: pd.DataFrame, budgets: Sequence[int], title: str) -> Figure:
    """Validation NDCG@10 (mean over seeds, bars: sd) vs peak memory, fused and PyTorch marked, each
    implementation's frontier as a step line, the budgets as vertical lines."""
    figure = Figure(figsize=(8.5, 5.2), layout="constrained")
    axes = figure.add_subplot()
    labels = []
    for impl, (marker, color) in IMPL_STYLE.items():
        rows = configs[configs["loss_impl_used"] == impl]
        if rows.empty:
            continue
        memory = rows["memory_bytes"] / GIB
        axes.errorbar(memory, rows["val_mean"], yerr=rows["val_sd"].fillna(0), fmt=marker, color=color,
                      markersize=6, alpha=0.8, capsize=2, linestyle="none",
                      label=f"{IMPL_LABELS[impl]} ({len(rows)} configurations)")
        mask = pareto.non_dominated(rows[["val_mean", "memory_bytes"]].to_numpy(dtype=float), [True, False])
        frontier = rows[mask].sort_values("memory_bytes")
        axes.step(np.append(frontier["memory_bytes"] / GIB, memory.max() * 1.5),
                  np.append(frontier["val_mean"], frontier["val_mean"].iloc[-1]), where="post", color=color,
                  linewidth=1.4)
        labels += [PointLabel(row["memory_bytes"] / GIB, row["val_mean"], _point_name(row), color)
                   for _, row in frontier.iterrows()]
    for budget in budgets:
        axes.axvline(budget / GIB, color="0.4", linestyle="--", linewidth=0.9)
        axes.text(budget / GIB, axes.get_ylim()[1], f" {budget / GIB:g} GiB", fontsize=7, va="top",
                  color="0.3")
    axes.set_xscale("log", base=2)
    axes.set_xlabel("peak process memory (GiB, largest over seeds)")
    axes.set_ylabel("validation NDCG@10 (mean over seeds)")
    axes.set_title(f"{title}\nmemory-quality frontier, fused vs PyTorch", fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    place_labels(axes, labels)
    return figure


# Line styles of configurations with other settings; the grid's own lines are solid.
_SIDE_STYLES = ("--", ":", "-.")


def negatives_batch_figure(configs: pd.DataFrame, title: str) -> Figure:
    """Validation NDCG@10 against negatives K, one line per batch size, one panel per implementation and
    sequence length: where quality grows with K, with B, or with both. Configurations with other settings
    (`other_settings`: a side sweep's patience or time cap) get lines of their own, labelled, in a line
    style per setting (dashed, dotted, ...), so two side sweeps at one batch size stay apart."""
    positions = _per_position(configs)
    if "other_settings" not in positions.columns:
        positions = positions.assign(other_settings="")
    lengths = sorted(positions["max_len"].unique())
    impls = [i for i in ("triton", "torch") if (positions["loss_impl_used"] == i).any()]
    figure = Figure(figsize=(4.2 * max(1, len(lengths)), 3.4 * max(1, len(impls))), layout="constrained")
    # One K axis for every panel, so a panel with few (or no) trials still reads against the others.
    grid = figure.subplots(max(1, len(impls)), max(1, len(lengths)), squeeze=False, sharex=True, sharey=True)
    batches = sorted(positions["batch_size"].unique())
    colors = {b: f"C{i}" for i, b in enumerate(batches)}
    series = sorted(set(zip(positions["batch_size"], positions["other_settings"])),
                    key=lambda line: (line[1], line[0]))
    others = sorted(set(positions["other_settings"]) - {""})
    styles = {"": "-"} | {other: _SIDE_STYLES[i % len(_SIDE_STYLES)] for i, other in enumerate(others)}
    for r, impl in enumerate(impls):
        for c, length in enumerate(lengths):
            axes = grid[r][c]
            rows = positions[(positions["loss_impl_used"] == impl) & (positions["max_len"] == length)]
            if rows.empty:
                axes.text(0.5, 0.5, "no trial finished yet", transform=axes.transAxes, ha="center",
                          va="center", fontsize=9, color="0.4")
            for batch, other in series:
                line = rows[(rows["batch_size"] == batch) & (rows["other_settings"] == other)]
                if line.empty:
                    continue
                line = line.sort_values("num_negatives")
                axes.errorbar(line["num_negatives"], line["val_mean"], yerr=line["val_sd"].fillna(0),
                              marker="o", markersize=4, color=colors[batch], capsize=2,
                              linestyle=styles[other])
            axes.set_xscale("log", base=2)
            axes.set_title(f"{IMPL_LABELS[impl]}, L={length}", fontsize=9)
            axes.set_xlabel("negatives K")
            axes.xaxis.set_tick_params(labelbottom=True)
            axes.grid(True, alpha=0.3)
            if c == 0:
                axes.set_ylabel("validation NDCG@10")
    handles = [Line2D([], [], color=colors[b], marker="o", linestyle=styles[other],
                      label=f"batch {b}" + (f", {other}" if other else "")) for b, other in series]
    figure.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), fontsize=8)
    figure.suptitle(f"{title}\nquality over negatives x batch size (trials over the budget are absent)",
                    fontsize=10)
    return figure


def time_memory_figure(configs: pd.DataFrame, title: str) -> Figure:
    """Time per epoch against peak memory for every configuration, fused and PyTorch marked."""
    figure = Figure(figsize=(7.5, 4.8), layout="constrained")
    axes = figure.add_subplot()
    for impl, (marker, color) in IMPL_STYLE.items():
        rows = configs[configs["loss_impl_used"] == impl]
        if not rows.empty:
            axes.scatter(rows["memory_bytes"] / GIB, rows["epoch_seconds"], marker=marker, color=color,
                         s=14 + 10 * np.log2(rows["batch_size"] / rows["batch_size"].min() + 1), alpha=0.8,
                         label=IMPL_LABELS[impl])
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xlabel("peak process memory (GiB)")
    axes.set_ylabel("training time per epoch (s, steady state)")
    axes.set_title(f"{title}\ntime per epoch vs memory (marker size: batch)", fontsize=10)
    axes.grid(True, alpha=0.3, which="both")
    axes.legend(fontsize=8)
    return figure


# ----------------------------------------------------------------------------------------------------
# the report


def write_study_report(trials: pd.DataFrame, out_dir: str | Path, *, budgets: Sequence[int],
                       sources: Sequence[str]) -> Path:
    out = Path(out_dir)
    figures_dir = out / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    configs = configurations(trials)
    lines = [
        "# Study report (generated)",
        "",
        f"Generated by `cce-study study-report` from {', '.join(f'`{s}`' for s in sources)}: "
        f"{len(trials)} trials, {int((trials['status'] == 'ok').sum())} ok, {len(configs)} configurations "
        "run ok. Quality is NDCG@10 on full-catalogue ranking, mean ± sample sd over seeds (count in "
        "brackets); memory is the trial process's peak (NVML), the largest over seeds; time per epoch is the "
        "steady-state training time (evaluation excluded). Trials shared cards, so times compare roughly.",
        "",
        "## How training stopped",
        "",
        markdown_table(convergence_summary(trials)),
        "",
    ]
    for (dataset, split), group in configs.groupby(["dataset", "split"], sort=True):
        tag = analysis_tag(f"{dataset}_{split}")
        title = f"{dataset} ({split})"
        written = []
        for name, figure in (("frontier", frontier_by_impl_figure(group, budgets, title)),
                             ("negatives_batch", negatives_batch_figure(group, title)),
                             ("time_memory", time_memory_figure(group, title))):
            path = figures_dir / f"{name}_{tag}.png"
            figure.savefig(path, dpi=130)
            written.append(path)
        lines += [f"## {title}", "", "### Best configuration under each budget", "",
                  markdown_table(best_under_budgets(group, budgets)), "",
                  "### Scaling negatives and batch together (the paper's claim)", "",
                  markdown_table(scaling_claim(group, budgets)), ""]
        lines_of_product = fixed_product_lines(group)
        if not lines_of_product.empty:
            lines += ["Along lines of fixed K x B (validation NDCG@10; the best setting of each (K, B, L), "
                      "named where it is not the grid's):", "", markdown_table(lines_of_product), ""]
        scopes = scope_comparison(group)
        if not scopes.empty:
            lines += ["### Negative scopes at equal K, batch and length (fused loss)", "",
                      markdown_table(scopes), ""]
        lines += [f"![{p.stem}](figures/{p.name})" for p in written] + [""]
    speed = speed_summary(trials)
    lines += ["## Fused vs PyTorch at equal configurations", "",
              markdown_table(speed) if not speed.empty else "_(no pairs)_", "",
              "## Configurations that still need seeds", "",
              markdown_table(seed_candidates(configs, budgets)[
                  ["dataset", "loss_impl_used", "negative_scope", "num_negatives", "batch_size", "max_len",
                   "other_settings", "seeds", "val_mean", "trial_ids"]]), ""]
    report = out / "study-report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


def analysis_tag(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", action="append", required=True, type=Path,
                        help="a results database of the study (repeat for each)")
    parser.add_argument("--out", required=True, type=Path, help="folder for study-report.md and figures/")
    parser.add_argument("--budgets", default=DEFAULT_BUDGETS_TEXT,
                        help=f"budgets for the tables, comma-separated (default {DEFAULT_BUDGETS_TEXT})")


def run(args: argparse.Namespace) -> int:
    for path in args.db:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no results database there")
    budgets = [parse_budget(text.strip(), None) for text in args.budgets.split(",") if text.strip()]
    trials = load_study(args.db)
    report = write_study_report(trials, args.out, budgets=budgets, sources=[str(p) for p in args.db])
    print(report)
    return 0


__all__ = ["load_study", "configurations", "other_settings", "versus", "best_under_budgets", "scaling_claim",
           "fixed_product_lines", "scope_comparison", "speed_summary", "convergence_summary",
           "seed_candidates", "write_study_report"]
