"""The `best`, `pareto` and `report` commands: read a results database and answer "best configuration
under a memory budget", draw the Pareto figures, or write the Markdown report."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from study.analysis import pareto, seed_compare
from study.analysis.card_sharing import mean_trials_on_card, sharing_text
from study.analysis.pareto import GIB, MEMORY_FIELDS
from study.cli import UserError
from study.units import parse_budget

DEFAULT_BUDGETS_TEXT = "8GiB,16GiB,40GiB"
# Where `pareto` and `report` write without --out: folders next to the database.
FIGURES_DIR = "figures"
REPORT_DIR = "report"


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, type=Path, action="append",
                        help="results database (SQLite) written by a sweep; repeat it to read several as one "
                             "(a grid and its seed repeats, sweeps of one study)")
    add_selection_options(parser, memory_help="measured memory to minimise (default peak_bytes: NVML process "
                                              "memory)")


def add_selection_options(parser: argparse.ArgumentParser, *, memory_help: str, prefix: str = "") -> None:
    """The options `load_selected` and the metric choice read: --sweep, --dataset, --split, --metric,
    --memory-field, --spec-version; `prefix` starts each help text (export: "with --budget: ")."""
    parser.add_argument("--sweep", help=f"{prefix}only the trials of this sweep")
    parser.add_argument("--dataset", help=f"{prefix}only the trials of this dataset")
    parser.add_argument("--split", choices=("loo", "temporal"), help=f"{prefix}only the trials of this split")
    parser.add_argument("--metric", default="ndcg@10",
                        help=f"{prefix}validation metric to maximise, NAME@K (default ndcg@10)")
    parser.add_argument("--memory-field", default="peak_bytes", choices=MEMORY_FIELDS,
                        help=f"{prefix}{memory_help}")
    parser.add_argument("--spec-version", default="latest", metavar="latest|all|N",
                        help=f"{prefix}which version of each sweep's specification: the trials of the latest "
                             "(default), of all, or of version N (see `sweep --new-spec-version`)")


def configure_best(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--budget",
                        help="memory budget: '40GiB', '8000MiB', '1.5GB' or a fraction of the card ('0.5')")
    parser.add_argument("--budgets", help="several budgets, comma-separated, for a table: '8GiB,16GiB,40GiB'")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def configure_pareto(parser: argparse.ArgumentParser) -> None:
    _add_outputs(parser, f"folder for the figures, PNG and SVG (default: {FIGURES_DIR}/ next to the "
                         "database)")


def configure_report(parser: argparse.ArgumentParser) -> None:
    _add_outputs(parser, f"folder for report.md and its figures (default: {REPORT_DIR}/ next to the "
                         "database)")


def _add_outputs(parser: argparse.ArgumentParser, out_help: str) -> None:
    _add_common(parser)
    parser.add_argument("--out", type=Path, default=None, help=out_help)
    parser.add_argument("--budgets", default=DEFAULT_BUDGETS_TEXT,
                        help=f"budget lines, comma-separated (default {DEFAULT_BUDGETS_TEXT})")


def output_folder(args: argparse.Namespace, default_name: str) -> Path:
    """--out, or a folder next to the database; created here so that a place that cannot be written is
    one line naming it."""
    out: Path = args.out if args.out is not None else database_paths(args)[0].parent / default_name
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        hint = "" if args.out is not None else " (next to the database; give --out)"
        raise UserError(f"--out {out}: cannot create it{hint}: {exc.strerror or exc}") from exc
    if not os.access(out, os.W_OK | os.X_OK):
        hint = "" if args.out is not None else " (next to the database; give --out)"
        raise UserError(f"--out {out}: cannot write there{hint}")
    return out


def spec_version_choice(text: str) -> Any:
    """--spec-version: 'latest', 'all' or a version number."""
    if text in ("latest", "all"):
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise UserError(f"--spec-version: {text!r} is not latest, all or a version number")


def database_paths(args: argparse.Namespace) -> list[Path]:
    """--db as a list: repeated in `best`, `pareto` and `report`, given once in `export`."""
    return list(args.db) if isinstance(args.db, list | tuple) else [args.db]


def load_selected(args: argparse.Namespace) -> pd.DataFrame:
    """The trials chosen by --db (one or several databases), --sweep, --dataset and --split; UserError when
    there are none, or when two databases hold the same trial (a database given twice, or a copy of one)."""
    from study.database.results_db import load_trials, name_dataset_copies, name_unweighted_draws

    paths = database_paths(args)
    frames = []
    seen: dict[str, Path] = {}
    for db_path in paths:
        if not db_path.is_file():
            raise UserError(f"--db {db_path}: no such results database")
        try:
            loaded = load_trials(db_path, sweep=args.sweep,
                                 spec_version=spec_version_choice(args.spec_version))
        except ValueError as exc:
            raise UserError(f"--db {db_path}: {exc}") from exc
        for trial_id in loaded["trial_id"]:
            if trial_id in seen:
                raise UserError(f"--db {db_path}: trial {trial_id} is also in {seen[trial_id]}; give each "
                                "database once")
            seen[trial_id] = db_path
        frames.append(loaded)
    trials = name_unweighted_draws(
        name_dataset_copies(pd.concat(frames, ignore_index=True)) if len(frames) > 1 else frames[0])
    where = " and ".join(str(path) for path in paths)
    selection = f" of sweep {args.sweep!r}" if args.sweep else ""
    if trials.empty:
        raise UserError(f"--db {where}: no trials{selection}")
    for column, value in (("dataset", args.dataset), ("split", args.split)):
        if value is not None:
            present = ", ".join(sorted(trials[column].dropna().astype(str).unique()))
            trials = trials[trials[column] == value]
            if trials.empty:
                raise UserError(f"--{column} {value}: no trials{selection} in {where} (present: {present})")
    if not (trials["status"] == "ok").any():
        counts = ", ".join(f"{status} {count}" for status, count in trials["status"].value_counts().items())
        raise UserError(f"--db {where}: no trial finished ok ({counts})")
    return trials


def parse_budget_list(text: str, trials: pd.DataFrame, *, option: str) -> list[int]:
    """Comma-separated budgets to bytes; fractions ('0.5') are of the trials' card (`gpu_total`)."""
    budgets = []
    for part in text.split(","):
        if not part.strip():
            raise UserError(f"{option}: empty budget in {text!r}")
        try:
            budgets.append(parse_budget(part.strip(), pareto.gpu_total_bytes(trials)))
        except ValueError as exc:
            raise UserError(f"{option}: {str(exc).removeprefix('memory_budget: ')}") from exc
    return budgets


def _check_metric(metric: str) -> None:
    """A bad --metric fails before the database is read."""
    try:
        pareto.metric_column(metric)
    except ValueError as exc:
        raise UserError(f"--{exc}") from exc


def run_best(args: argparse.Namespace) -> int:
    if (args.budget is None) == (args.budgets is None):
        raise UserError("give exactly one of --budget or --budgets")
    _check_metric(args.metric)
    trials = load_selected(args)
    try:
        scoped = pareto.scope(trials, dataset=args.dataset, split=args.split)
    except ValueError as exc:
        raise UserError(f"{exc} with --dataset / --split") from exc
    sharing = _trials_on_card(args)
    if args.budgets is not None:
        return _print_budget_table(scoped, parse_budget_list(args.budgets, scoped, option="--budgets"), args,
                                   sharing)
    (budget,) = parse_budget_list(args.budget, scoped, option="--budget")
    best, runner_up = pareto.best_under_budget(scoped, budget, metric=args.metric,
                                                 memory_field=args.memory_field, aggregate_seeds=True)
    if best is None:
        raise UserError(_nothing_fits(scoped, budget, args))
    best = _with_sharing(best.to_frame().T, sharing).iloc[0]
    if runner_up is not None:
        runner_up = _with_sharing(runner_up.to_frame().T, sharing).iloc[0]
    verdict = pareto.versus_runner_up(best, runner_up)
    if args.json:
        print(json.dumps({"budget": args.budget, "budget_bytes": budget, "metric": args.metric,
                          "memory_field": args.memory_field, "best": _trial_json(best, args),
                          "runner_up": None if runner_up is None else _trial_json(runner_up, args),
                          "vs_runner_up": verdict},
                         indent=2))
        return 0
    print(f"Best under {args.budget} ({budget / GIB:.3g} GiB of {args.memory_field}), "
          f"by validation {args.metric} (mean over seeds):")
    print(_trial_text(best, args))
    print("Runner-up:" if runner_up is not None else "Runner-up: none (only one trial fits)")
    if runner_up is not None:
        print(_trial_text(runner_up, args))
        gap = float(best[pareto.QUALITY] - runner_up[pareto.QUALITY])
        print(f"Best vs runner-up: {seed_compare.RUNNER_UP_PHRASES[str(verdict)]} "
              f"(gap {gap:.2g} in validation {args.metric}; {_spread_text(best, runner_up)})")
    return 0


ON_CARD_MIN, ON_CARD_MAX = "trials_on_card_min", "trials_on_card_max"


def _trials_on_card(args: argparse.Namespace) -> pd.Series:
    """Per trial id, the mean number of trials on its card while it ran (`card_sharing`), counted over every
    trial of the databases given: a trial's neighbours need not be in the --sweep / --dataset / --spec-version
    selection (a row of an edited-away configuration still held its share of the card), hence a read of its
    own."""
    from study.database.results_db import load_trials

    everything = pd.concat([load_trials(path, spec_version="all") for path in database_paths(args)],
                           ignore_index=True)
    return pd.Series(mean_trials_on_card(everything).to_numpy(), index=everything["trial_id"].to_numpy())


def _with_sharing(rows: pd.DataFrame, sharing: pd.Series) -> pd.DataFrame:
    """`rows` (configurations; `trial_ids` lists their seeds' trials) with the fewest and most trials that
    shared a seed's card while it ran: a time-capped seed's quality depends on it."""
    ids = rows["trial_ids"] if "trial_ids" in rows.columns else rows["trial_id"]
    ranges = [sharing.reindex(text.split(",")).agg(["min", "max"]).tolist() if isinstance(text, str)
              else [math.nan, math.nan] for text in ids]
    low, high = zip(*ranges) if ranges else ((), ())
    return rows.assign(**{ON_CARD_MIN: list(low), ON_CARD_MAX: list(high)})


def _spread_text(best: pd.Series, runner_up: pd.Series) -> str:
    """The sds the verdict read, or why there is none."""
    parts = [f"{name} sd {_plain(row[pareto.QUALITY_SD]):.2g} over {int(row['num_seeds'])} seeds"
             for name, row in (("best", best), ("runner-up", runner_up))
             if int(row.get("num_seeds", 1)) >= 2 and _plain(row[pareto.QUALITY_SD]) is not None]
    return "; ".join(parts) if parts else "one seed each: no spread known"


def run_pareto(args: argparse.Namespace) -> int:
    from study.analysis import plots

    _check_metric(args.metric)
    trials = load_selected(args)
    budgets = parse_budget_list(args.budgets, trials, option="--budgets")
    out = output_folder(args, FIGURES_DIR)
    written = plots.write_figures(trials, out, metric=args.metric, memory_field=args.memory_field,
                                  budgets=budgets, note=_note)
    if not written:
        raise UserError(f"--db {' and '.join(map(str, database_paths(args)))}: the trials support no figure")
    for path in written:
        print(path)
    return 0


def run_report(args: argparse.Namespace) -> int:
    from study.analysis import report

    _check_metric(args.metric)
    trials = load_selected(args)
    budgets = parse_budget_list(args.budgets, trials, option="--budgets")
    out = output_folder(args, REPORT_DIR)
    path = report.write_report(trials, out, metric=args.metric, memory_field=args.memory_field,
                               budgets=budgets,
                               source=", ".join(map(str, database_paths(args))), note=_note)
    print(path)
    return 0


def _print_budget_table(trials: pd.DataFrame, budgets: list[int], args: argparse.Namespace,
                        sharing: pd.Series) -> int:
    table = pareto.best_per_budget(trials, budgets, metric=args.metric, memory_field=args.memory_field,
                                   aggregate_seeds=True)
    if table.empty or table["trial_id"].isna().all():
        raise UserError(_nothing_fits(trials, max(budgets), args))
    table = _with_sharing(table, sharing)
    if args.json:
        rows = [{key: _plain(value) for key, value in row.items()} for row in table.to_dict("records")]
        document = {"metric": args.metric, "memory_field": args.memory_field, "budgets": rows}
        print(json.dumps(document, indent=2))
        return 0
    shown = pd.DataFrame({
        "budget": [f"{b / GIB:g} GiB" for b in table["budget_bytes"]],
        "best trial": table["trial_id"].fillna("(none fits)"),
        "K": [_negatives_text(k, loss) for k, loss in zip(table["num_negatives"], table["loss"])],
        # An answer may be drawn or shared negatives where a database holds the scopes side by side.
        "scope": [scope if loss != "ce" else None for scope, loss
                  in zip(table.get("negative_scope", pd.Series(None, index=table.index)), table["loss"])],
        "batch": table["batch_size"].map(_count),
        "max len": table["max_len"].map(_count),
        "impl": table["loss_impl_used"],
        f"val {args.metric}": [_mean_sd(m, sd) for m, sd
                               in zip(table[pareto.QUALITY], table[pareto.QUALITY_SD])],
        f"test {args.metric}": [_mean_sd(m, sd) for m, sd
                                in zip(table[pareto.TEST_QUALITY], table[pareto.TEST_QUALITY_SD])],
        "seeds": table["seeds"].map(_count),
        "cut by time limit": [_capped_text(capped, seeds, trial) for capped, seeds, trial
                              in zip(table[pareto.TIME_CAPPED], table["seeds"], table["trial_id"])],
        "trials on card": [sharing_text(low, high)
                           for low, high in zip(table[ON_CARD_MIN], table[ON_CARD_MAX])],
        "memory GiB": table["memory_gib"].map(_number),
        "runner-up": table["runner_up_trial_id"],
        f"runner-up val {args.metric}": [
            None if pd.isna(trial) else f"{_mean_sd(m, sd)} ({_count(n)})" for trial, m, sd, n
            in zip(table["runner_up_trial_id"], table["runner_up_quality"], table["runner_up_quality_sd"],
                   table["runner_up_seeds"])],
        "vs runner-up": table["vs_runner_up"].map(seed_compare.RUNNER_UP_PHRASES.get),
    })
    print(shown.fillna("-").to_string(index=False))
    return 0


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def _nothing_fits(trials: pd.DataFrame, budget: int, args: argparse.Namespace) -> str:
    table = pareto.pareto_table(trials, metric=args.metric, memory_field=args.memory_field)
    candidates = table[table[pareto.CANDIDATE]]
    if candidates.empty:
        return f"no ok trial has both validation {args.metric} and {args.memory_field} recorded"
    smallest = candidates[pareto.MEMORY].min()
    return (f"no ok trial fits {budget / GIB:.3g} GiB of {args.memory_field} "
            f"({len(candidates)} ok trials; the smallest needed {smallest / GIB:.3g} GiB)")


_TRIAL_FIELDS = ("trial_id", "sweep", "dataset", "split", "loss", "num_negatives", "negative_scope",
                 "sampling", "logq_correction", "batch_size", "max_len", "hidden", "blocks", "heads", "lr",
                 "seed", "loss_impl_used", "best_epoch", "epochs_run", "mean_epoch_seconds",
                 "steady_epoch_seconds", "stop_reason", "time_limit_s", "gpu_name",
                 "gpu_total", "peak_bytes", "torch_max_allocated", "torch_max_reserved", "nvml_process_peak")


_INTEGER_FIELDS = frozenset({"num_negatives", "batch_size", "max_len", "hidden", "blocks", "heads", "seed",
                             "best_epoch", "epochs_run", "gpu_total", "peak_bytes", "torch_max_allocated",
                             "torch_max_reserved", "nvml_process_peak"})


def _trial_json(row: pd.Series, args: argparse.Namespace) -> dict[str, Any]:
    out = {name: _plain(row.get(name)) for name in _TRIAL_FIELDS if name in row.index}
    for name, value in out.items():
        # SQLite integers with a missing value in the column come back as floats.
        if name in _INTEGER_FIELDS and isinstance(value, float) and value.is_integer():
            out[name] = int(value)
    for split in ("val", "test"):
        out[f"{split}_{args.metric}"] = _plain(row.get(pareto.metric_column(args.metric, split)))
    for split, column in (("val", pareto.QUALITY_SD), ("test", pareto.TEST_QUALITY_SD)):
        if column in row.index:
            out[f"{split}_{args.metric}_sd"] = _plain(row.get(column))
    out[pareto.TIME_CAPPED] = int(pareto.time_capped_seeds(row.to_frame().T).iloc[0])
    for name in (ON_CARD_MIN, ON_CARD_MAX):
        if name in row.index:
            out[name] = _plain(row[name])
    if "num_seeds" in row.index:
        out["seeds"] = int(row["num_seeds"])
        out["trial_ids"] = str(row.get("trial_ids", row.get("trial_id"))).split(",")
    if isinstance(row.get("config_json"), str):
        out["config"] = json.loads(row["config_json"])
    return out


def _trial_text(row: pd.Series, args: argparse.Namespace) -> str:
    def get(name: str) -> Any:
        return row.get(name, "-")

    val = row.get(pareto.metric_column(args.metric, "val"))
    test = row.get(pareto.metric_column(args.metric, "test"))
    memory = ", ".join(f"{name} {pareto.format_gib(_plain(row.get(name)))}" for name in MEMORY_FIELDS
                       if name in row.index)
    return "\n".join([
        f"  trial    {get('trial_id')}  (sweep {get('sweep')})",
        f"  config   {get('dataset')}/{get('split')} loss={get('loss')} "
        f"negatives={_negatives_text(row.get('num_negatives'), row.get('loss'))} "
        f"scope={get('negative_scope')} batch={get('batch_size')} max_len={get('max_len')} "
        f"hidden={get('hidden')} blocks={get('blocks')} heads={get('heads')} seed={get('seed')} "
        f"impl={get('loss_impl_used')}",
        f"  quality  val {args.metric} {_mean_sd(val, row.get(pareto.QUALITY_SD))}  "
        f"test {args.metric} {_mean_sd(test, row.get(pareto.TEST_QUALITY_SD))}{_seeds_text(row)}",
        f"  memory   {memory}",
        f"  stopped  {_stop_text(row)}",
        f"  card     {_sharing_line(row)}",
        f"  time     {_number(_steady_or_mean_time(row))} s/epoch (steady state; mean over all epochs "
        f"{_number(row.get('mean_epoch_seconds'))})",
    ])


def _stop_text(row: pd.Series) -> str:
    """Whether early stopping ended training or the time limit cut it (its quality is then that of an
    unfinished run)."""
    capped = int(pareto.time_capped_seeds(row.to_frame().T).iloc[0])
    seeds = int(_plain(row.get("num_seeds")) or 1)
    if capped == 0:
        return "-" if _plain(row.get(pareto.STOP_REASON)) is None else "before the time limit"
    limit = f"the time limit ({_number(row.get('time_limit_s'))} s)"
    if seeds == 1:
        return f"{limit} cut training: an unfinished run"
    return f"{limit} cut {capped} of {seeds} seeds: unfinished runs"


def _sharing_line(row: pd.Series) -> str:
    """How many trials shared the card while the trial (each seed) ran: a capped run depends on it."""
    text = sharing_text(_plain(row.get(ON_CARD_MIN)), _plain(row.get(ON_CARD_MAX)))
    if text == "-":
        return "-"
    seeds = int(_plain(row.get("num_seeds")) or 1)
    over = "mean over each seed's run, fewest-most" if seeds > 1 else "mean over its run"
    return f"{text} trials of these databases on it ({over}, itself included)"


def _mean_sd(mean: Any, sd: Any) -> str:
    """"0.1898 ± 0.0031" over several seeds, the plain number over one."""
    if _plain(sd) is None or _plain(mean) is None:
        return _number(mean)
    return f"{_number(mean)} ± {_plain(sd):.2g}"


def _capped_text(capped: Any, seeds: Any, trial: Any) -> str:
    """"2/3": seeds of the answer that the per-trial time limit stopped before early stopping did."""
    if pd.isna(trial):
        return "-"
    return f"{int(capped)}/{int(seeds)}"


def _seeds_text(row: pd.Series) -> str:
    seeds = _plain(row.get("num_seeds"))
    if seeds is None or seeds < 2:
        return ""
    return f"  (mean ± sd over {int(seeds)} seeds: {row.get('seed')}; trials {row.get('trial_ids')})"


def _steady_or_mean_time(row: pd.Series) -> Any:
    return pareto.epoch_time(row.to_frame().T).iloc[0]


def _negatives_text(value: Any, loss: Any) -> str:
    """K as people read it: "full" for full-catalogue CE (no sampled negatives)."""
    return "full" if loss == "ce" else _count(value)


def _count(value: Any) -> str:
    plain = _plain(value)
    return "-" if plain is None else str(int(plain))


def _number(value: Any) -> str:
    plain = _plain(value)
    return "-" if plain is None else f"{plain:.4g}" if isinstance(plain, float) else str(plain)


def _plain(value: Any) -> Any:
    """A JSON-ready Python value: numpy scalars unwrapped, NaN / NA as None."""
    if value is None or value is pd.NA:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


__all__ = ["configure_best", "run_best", "configure_pareto", "run_pareto", "configure_report", "run_report",
           "load_selected", "parse_budget_list"]
