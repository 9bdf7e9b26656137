"""`cce-study train`: train and evaluate SASRec for one configuration.

Options mirror the fields of `TrainConfig` (defaults come from it). Option values are read as text and
converted here, so a bad value gives one line naming the option instead of a usage dump. With `--json`
the final TrialRecord is printed as one JSON object on stdout and everything else goes to stderr;
otherwise a short summary is printed. Exit status: 0 when the trial finished with status "ok", 1 when it
ended with another status (oom, over_budget, failed), 2 for bad input (reported by `study.cli`).
With `--checkpoint-dir DIR` the trial saves its state there between epochs, continues from a state it
finds there (the same command after an interruption), and keeps its best model in DIR/model.pt.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from study.config import OPTIONS, TrainConfig, field_type, value_from_text
from study.record import TrialRecord
from study.units import format_bytes


def configure(parser: argparse.ArgumentParser) -> None:
    for option in OPTIONS:  # every TrainConfig field, with its flag and help (study/config.py)
        if option.sets is not None:
            parser.add_argument(option.flag, dest=option.field, action="store_const", const=option.sets,
                                default=None, help=option.help)
        else:
            parser.add_argument(option.flag, dest=option.field, default=None,
                                metavar=field_type(option.field).metavar,
                                help=f"{option.help} (default: {option.default})")
    parser.add_argument("--json", dest="json", action="store_true",
                        help="print the trial record as one JSON object on stdout (all else on stderr)")
    parser.add_argument("--checkpoint-dir", type=Path, default=None, metavar="DIR",
                        help="save the training state here between epochs and continue from it; keep the "
                             "best model in DIR/model.pt")
    parser.add_argument("--checkpoint-every-epochs", default="1", metavar="N",
                        help="with --checkpoint-dir: save at most every N epochs (default: 1)")
    parser.add_argument("--checkpoint-every-minutes", default="5", metavar="X",
                        help="with --checkpoint-dir: ... and at most every X minutes (default: 5)")


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    checkpointer = checkpointer_from_args(args)
    from study.training.trainer import run_trial

    record = run_trial(config, checkpointer=checkpointer)
    if args.json:
        print(json.dumps(_finite_or_none(record.to_dict())), flush=True)
    else:
        print(summary(record))
    return 0 if record.status == "ok" else 1


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from the parsed options; ValueError naming the option for a bad value."""
    values: dict[str, Any] = {}
    for option in OPTIONS:
        given = getattr(args, option.field)
        if given is None:
            continue
        values[option.field] = given if option.sets is not None else convert_option(
            option.flag, given, field_type(option.field))
    return TrainConfig(**values)


def checkpointer_from_args(args: argparse.Namespace) -> Any:
    """A FolderCheckpointer for --checkpoint-dir, or None; ValueError naming the option for a bad value."""
    folder = getattr(args, "checkpoint_dir", None)
    if folder is None:
        return None
    from study.training.checkpoint import CheckpointPolicy, FolderCheckpointer

    every_epochs = convert_option("--checkpoint-every-epochs", args.checkpoint_every_epochs, int)
    every_minutes = convert_option("--checkpoint-every-minutes", args.checkpoint_every_minutes, float)
    try:
        policy = CheckpointPolicy(every_epochs=every_epochs, every_minutes=every_minutes)
    except ValueError as exc:
        field, message = str(exc).split(": ", 1)
        raise ValueError(f"--checkpoint-{field.replace('_', '-')}: {message}") from None
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--checkpoint-dir: {folder} is not a folder")
    return FolderCheckpointer(folder, policy)


def convert_option(flag: str, text: str, hint: Any) -> Any:
    """Option text converted to `hint` (int, float, str, a Literal, one of them | None, or a FieldType);
    ValueError naming the option."""
    try:
        return value_from_text(hint, text)
    except ValueError as exc:
        raise ValueError(f"{flag}: {exc}") from None


def summary(record: TrialRecord) -> str:
    """A few lines for people: status, data, validation/test quality against popularity, memory, time."""
    config = record.config
    lines = [
        f"status {record.status}" + (f": {record.error}" if record.error else ""),
        f"data {config['dataset']} ({config['split']}): {record.num_users} users, {record.num_items} items, "
        f"{record.num_interactions} interactions",
        f"model SASRec d={config['hidden']} blocks={config['blocks']} L={config['max_len']}; "
        f"loss {config['loss']} ({record.loss_impl}) on {record.device}",
    ]
    if record.epochs:
        resumed = (f" (continued after epoch {record.resumed_from_epoch} from its checkpoint)"
                   if record.resumed_from_epoch is not None else "")
        lines.append(f"best epoch {record.best_epoch} of {len(record.epochs)}{resumed}")
    for name, metrics, popularity in (("validation", record.val_metrics, record.popularity_val_metrics),
                                      ("test", record.test_metrics, record.popularity_test_metrics)):
        if metrics or popularity:
            lines.append(f"{name:<10} NDCG@10 {_metric(metrics, 'ndcg@10')}  "
                         f"HR@10 {_metric(metrics, 'hit@10')}   "
                         f"popularity NDCG@10 {_metric(popularity, 'ndcg@10')}  "
                         f"HR@10 {_metric(popularity, 'hit@10')}")
    peak = record.memory.peak_bytes
    memory_line = f"peak memory {format_bytes(peak) if peak is not None else 'unknown'}"
    gpu_measured = record.memory.nvml_process_peak is not None or record.memory.torch_max_reserved is not None
    if peak is not None and not gpu_measured:
        memory_line += " (host RSS)"
    if record.predicted_peak_bytes is not None:
        memory_line += f", predicted {format_bytes(record.predicted_peak_bytes)}"
    if record.memory.budget_bytes is not None:
        memory_line += f", budget {format_bytes(record.memory.budget_bytes)}"
    lines.append(memory_line)
    time_line = f"time {record.total_seconds or 0.0:.1f} s"
    if record.mean_epoch_seconds is not None:
        time_line += f", {record.mean_epoch_seconds:.1f} s per epoch"
    if record.sequences_per_second is not None:
        time_line += f", {record.sequences_per_second:.0f} sequences/s"
    lines.append(time_line)
    if record.model_path is not None:
        lines.append(f"best model kept in {record.model_path}")
    return "\n".join(lines)


def _metric(metrics: dict[str, float], name: str) -> str:
    return f"{metrics[name]:.4f}" if name in metrics else "-"


def _finite_or_none(value: Any) -> Any:
    """NaN and infinities become null, so the output is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(item) for item in value]
    return value


__all__ = ["configure", "run", "config_from_args", "checkpointer_from_args", "convert_option", "summary",
           "OPTIONS"]
