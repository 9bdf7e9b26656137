"""`cce-study plan`: which grid points fit a memory budget, predicted without running anything.

Each grid axis is a comma list over a TrainConfig field (`--negatives 256,1024,4096 --batch-size
128,256`); the grid is their product. Every point's peak GPU memory (the process's, as NVML reports
it) comes from `study.memory.model`; the points that fit the budget are listed largest first.
The catalogue size comes from the dataset (loaded once; `--num-items` skips loading). Points that
are not a valid trial (e.g. drawn negatives with BCE, more negatives than items) are reported as
skipped. Exit status: 0 when some point fits, 1 when none does, 2 for bad input.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import dataclass
from typing import Any

import pandas as pd

from study.config import (
    ConfigError,
    Option,
    TrainConfig,
    check_field,
    check_for_catalogue,
    field_type,
    option_for,
    value_from_text,
)
from study.memory.model import DatasetSize, MemoryPrediction, predict_trial_memory
from study.units import format_bytes, parse_budget

Axis = Option  # an axis is a TrainConfig field's command-line option (flag and help: study/config.py)
# The fields a plan can vary, in the order of its table's columns.
AXES: tuple[Option, ...] = tuple(option_for(field) for field in (
    "loss", "loss_impl", "negative_scope", "sampling", "num_negatives", "batch_size", "max_len", "hidden",
    "blocks", "heads", "eval_batch_size", "precision",
))
# Fields that do not change a full-catalogue CE trial: points differing only here are one point.
NEGATIVE_FIELDS = ("negative_scope", "sampling", "num_negatives")


@dataclass(frozen=True)
class PlannedPoint:
    config: TrainConfig
    prediction: MemoryPrediction
    fits: bool


@dataclass(frozen=True)
class Plan:
    budget_bytes: int
    gpu_total: int | None
    num_items: int
    num_users: int | None
    axes: tuple[str, ...]  # the fields given as axes, in AXES order
    points: list[PlannedPoint]  # every valid point, largest predicted peak first
    skipped: list[tuple[dict[str, Any], str]]  # (axis values, reason)

    @property
    def fitting(self) -> list[PlannedPoint]:
        return [point for point in self.points if point.fits]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--budget", required=True,
                        help="memory budget of the trial's process: 40GiB, 8000MiB, 1.5GB, or 0.5 of the "
                             "card")
    parser.add_argument("--dataset",
                        help="dataset name, path or synthetic:... spec (read for its catalogue size)")
    parser.add_argument("--num-items", type=_positive_int("--num-items"),
                        help="catalogue size; skips loading the dataset")
    parser.add_argument("--num-users", type=_positive_int("--num-users"),
                        help="number of users (caps batch sizes); read from the dataset when loaded")
    parser.add_argument("--kcore", type=_positive_int("--kcore", allow_zero=True), default=0,
                        help="k-core filter applied when loading the dataset (default: 0)")
    for axis in AXES:
        parser.add_argument(axis.flag, dest=axis.field, metavar="A,B,...",
                            help=f"{axis.help}; one or more, comma-separated (default: {axis.default})")
    parser.add_argument("--gpu-memory", "--gpu-total", dest="gpu_memory", metavar="SIZE",
                        help="memory of one card, e.g. 80GiB, as a sweep's resources.gpu_memory (default: "
                             "the visible GPU, if any); needed for fractional budgets")
    parser.add_argument("--all", dest="show_all", action="store_true",
                        help="also list the points that do not fit")
    parser.add_argument("--json", action="store_true", help="print the plan as one JSON object")


def run(args: argparse.Namespace) -> int:
    plan = make_plan(args)
    if args.json:
        print(json.dumps(plan_to_json(plan, show_all=args.show_all)))
    else:
        print(format_plan(plan, show_all=args.show_all))
    return 0 if plan.fitting else 1


def make_plan(args: argparse.Namespace) -> Plan:
    gpu_total = _gpu_total(args.gpu_memory)
    budget_bytes = parse_budget(args.budget, gpu_total)
    dataset = _catalogue(args)
    num_items, num_users = dataset.num_items, dataset.num_users
    grid = _grid(args)
    axes = tuple(field for field in (axis.field for axis in AXES) if field in grid)
    base = {"dataset": args.dataset or "ml-100k", "kcore": args.kcore}
    points: list[PlannedPoint] = []
    skipped: list[tuple[dict[str, Any], str]] = []
    seen: set[tuple[Any, ...]] = set()
    for values in itertools.product(*grid.values()):
        chosen = dict(zip(grid, values))
        try:
            config = TrainConfig(**base, **chosen)
            check_for_catalogue(config, num_items)
        except ConfigError as exc:
            skipped.append((chosen, str(exc)))
            continue
        key = _identity(config)
        if key in seen:
            continue
        seen.add(key)
        prediction = predict_trial_memory(config, dataset, gpu_total=gpu_total)
        points.append(PlannedPoint(config, prediction, prediction.fits(budget_bytes)))
    points.sort(key=lambda point: point.prediction.total_bytes, reverse=True)
    return Plan(budget_bytes, gpu_total, num_items, num_users, axes, points, skipped)


def format_plan(plan: Plan, *, show_all: bool) -> str:
    card = f" of a {format_bytes(plan.gpu_total)} card" if plan.gpu_total else ""
    users = f", {plan.num_users:,} users" if plan.num_users else ""
    header = (f"{len(plan.fitting)} of {len(plan.points)} grid points fit {format_bytes(plan.budget_bytes)}"
              f"{card} (catalogue {plan.num_items:,} items{users}; predicted peak process memory)")
    lines = [header]
    shown = plan.points if show_all else plan.fitting
    if shown:
        rows = [_row(point, plan.axes, show_all=show_all) for point in shown]
        lines += ["", pd.DataFrame(rows).to_string(index=False)]
    for chosen, reason in plan.skipped:
        settings = ", ".join(f"{field}={value}" for field, value in chosen.items())
        lines.append(f"skipped ({settings}): {reason}")
    return "\n".join(lines)


def plan_to_json(plan: Plan, *, show_all: bool) -> dict[str, Any]:
    shown = plan.points if show_all else plan.fitting
    return {
        "budget_bytes": plan.budget_bytes,
        "gpu_total": plan.gpu_total,
        "num_items": plan.num_items,
        "num_users": plan.num_users,
        "axes": list(plan.axes),
        "fitting": len(plan.fitting),
        "total": len(plan.points),
        "points": [
            {
                "config": point.config.to_dict(),
                "predicted_peak_bytes": point.prediction.total_bytes,
                "torch_max_reserved": point.prediction.torch_max_reserved,
                "torch_max_allocated": point.prediction.torch_max_allocated,
                "peak_phase": point.prediction.peak_phase,
                "parts": point.prediction.parts,
                "fits": point.fits,
            }
            for point in shown
        ],
        "skipped": [{"settings": chosen, "reason": reason} for chosen, reason in plan.skipped],
    }


def _row(point: PlannedPoint, axes: tuple[str, ...], *, show_all: bool) -> dict[str, Any]:
    config = point.config
    row: dict[str, Any] = {}
    for field in axes:
        irrelevant = config.loss == "ce" and field in NEGATIVE_FIELDS
        row[field] = "-" if irrelevant else getattr(config, field)
    row["peak"] = format_bytes(point.prediction.total_bytes)
    row["torch reserved"] = format_bytes(point.prediction.torch_max_reserved)
    row["peak phase"] = point.prediction.peak_phase
    if show_all:
        row["fits"] = "yes" if point.fits else "no"
    return row


def _grid(args: argparse.Namespace) -> dict[str, list[Any]]:
    from study.cli.train import convert_option

    grid: dict[str, list[Any]] = {}
    for axis in AXES:
        text = getattr(args, axis.field)
        if text is None:
            continue
        items = [item.strip() for item in text.split(",")]
        if not all(items):
            raise ValueError(f"{axis.flag}: empty entry in the comma list {text!r}")
        values = [convert_option(axis.flag, item, field_type(axis.field)) for item in items]
        for value in values:  # a value no grid point could use is bad input; combinations are per point
            try:
                check_field(axis.field, value)
            except ConfigError as exc:
                raise ValueError(f"{axis.flag}: {exc}") from None
        grid[axis.field] = list(dict.fromkeys(values))
    return grid


def _identity(config: TrainConfig) -> tuple[Any, ...]:
    values = config.to_dict()
    if config.loss == "ce":
        for field in (*NEGATIVE_FIELDS, "logq_correction"):
            values.pop(field)
    return tuple(sorted(values.items()))


def _catalogue(args: argparse.Namespace) -> DatasetSize:
    if args.num_items is not None:
        return DatasetSize(args.num_items, args.num_users)
    if not args.dataset:
        raise ValueError("--dataset: give a dataset (or --num-items) to know the catalogue size")
    from study.data import load_dataset

    print(f"loading {args.dataset} for its catalogue size...", file=sys.stderr)
    data = load_dataset(args.dataset, kcore=args.kcore, progress=False)
    loaded = DatasetSize.of(data)
    return loaded if args.num_users is None else DatasetSize(loaded.num_items, args.num_users)


def _gpu_total(text: str | None) -> int | None:
    if text is not None:
        try:
            return parse_budget(text, None)
        except ValueError as exc:
            raise ValueError(f"--gpu-memory: {exc}") from None
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
    return None


def _positive_int(flag: str, *, allow_zero: bool = False) -> Any:
    def convert(text: str) -> int:
        try:
            value: int = value_from_text(int, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{flag}: {exc}") from None
        if value < (0 if allow_zero else 1):
            bound = ">= 0" if allow_zero else ">= 1"
            raise argparse.ArgumentTypeError(f"{flag}: must be {bound}, got {value}")
        return value

    return convert


__all__ = ["configure", "run", "make_plan", "format_plan", "plan_to_json", "Plan", "PlannedPoint", "AXES"]
