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
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from study.config import TrainConfig, config_fields
from study.record import TrialRecord


@dataclass(frozen=True)
class Option:
    flag: str
    field: str
    help: str


# Every TrainConfig field a user sets, in the order `--help` lists them. Boolean fields have their own flags.
OPTIONS: tuple[Option, ...] = (
    Option("--dataset", "dataset", "dataset name, folder or interaction file (CSV / CSV.gz / Parquet)"),
    Option("--split", "split", "evaluation split"),
    Option("--kcore", "kcore", "k-core filter (0: none)"),
    Option("--loss", "loss", "training loss"),
    Option("--negatives", "num_negatives", "negatives per row for ce-neg, bce and gbce"),
    Option("--sampling", "sampling", "how negatives are sampled"),
    Option("--negative-scope", "negative_scope", "who shares a set of negatives (drawn: inside the kernel)"),
    Option("--gbce-t", "gbce_t", "gBCE calibration parameter t"),
    Option("--impl", "loss_impl", "loss implementation for ce and ce-neg (auto: triton on CUDA)"),
    Option("--max-len", "max_len", "sequence length (most recent items)"),
    Option("--hidden", "hidden", "embedding and hidden size"),
    Option("--blocks", "blocks", "transformer blocks"),
    Option("--heads", "heads", "attention heads"),
    Option("--dropout", "dropout", "dropout rate"),
    Option("--batch-size", "batch_size", "training sequences per step"),
    Option("--lr", "lr", "Adam learning rate"),
    Option("--weight-decay", "weight_decay", "Adam weight decay"),
    Option("--epochs", "epochs", "maximum number of epochs"),
    Option("--patience", "patience", "epochs without a better validation NDCG@10 before stopping"),
    Option("--time-limit", "time_limit_s", "wall-clock limit of the trial in seconds"),
    Option("--max-steps-per-epoch", "max_steps_per_epoch", "cap on training steps per epoch"),
    Option("--eval-batch-size", "eval_batch_size", "users per evaluation batch"),
    Option("--eval-every", "eval_every", "validate every N epochs (and at the last epoch trained)"),
    Option("--device", "device", "where to train"),
    Option("--precision", "precision", "auto: bf16 autocast on CUDA, fp32 on CPU"),
    Option("--seed", "seed", "random seed: on CPU the same seed, data, versions and thread count "
           "(torch.get_num_threads(), e.g. OMP_NUM_THREADS) give the same losses and metrics; CUDA runs "
           "are not bit-reproducible"),
    Option("--memory-budget", "memory_budget", "GPU memory budget, e.g. 40GiB, 8000MiB or 0.5 of the card"),
)


def configure(parser: argparse.ArgumentParser) -> None:
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    hints = config_fields()
    for option in OPTIONS:
        choices = _choices(hints[option.field])
        metavar = "{" + ",".join(map(str, choices)) + "}" if choices else _metavar(hints[option.field])
        parser.add_argument(option.flag, dest=option.field, default=None, metavar=metavar,
                            help=f"{option.help} (default: {defaults[option.field]})")
    parser.add_argument("--logq", dest="logq_correction", action="store_true",
                        help="apply the logQ correction to sampled negatives")
    parser.add_argument("--include-seen", dest="include_seen", action="store_true",
                        help="keep items of a user's history in the ranking (default: excluded)")
    parser.add_argument("--no-progress", dest="no_progress", action="store_true",
                        help="no progress bar on stderr")
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
    from study.train import run_trial

    record = run_trial(config, checkpointer=checkpointer)
    if args.json:
        print(json.dumps(_finite_or_none(record.to_dict())), flush=True)
    else:
        print(summary(record))
    return 0 if record.status == "ok" else 1


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from the parsed options; ValueError naming the option for a bad value."""
    hints = config_fields()
    values: dict[str, Any] = {}
    for option in OPTIONS:
        text = getattr(args, option.field)
        if text is not None:
            values[option.field] = convert_option(option.flag, text, hints[option.field])
    values["logq_correction"] = bool(args.logq_correction)
    values["exclude_seen"] = not args.include_seen
    values["progress"] = not args.no_progress
    return TrainConfig(**values)


def checkpointer_from_args(args: argparse.Namespace) -> Any:
    """A FolderCheckpointer for --checkpoint-dir, or None; ValueError naming the option for a bad value."""
    folder = getattr(args, "checkpoint_dir", None)
    if folder is None:
        return None
    from study.checkpoint import CheckpointPolicy, FolderCheckpointer

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
    """Convert option text to the field's type (int, float, str, a Literal, or one of them | None)."""
    if _is_optional(hint):
        if text.strip().lower() == "none":
            return None
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    choices = _choices(hint)
    if choices is not None:
        if text not in choices:
            raise ValueError(f"{flag}: {text!r} is not one of {', '.join(map(str, choices))}")
        return text
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{flag}: expected a whole number, got {text!r}") from None
    if hint is float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{flag}: expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"{flag}: expected a finite number, got {text!r}")
        return value
    if hint is str:
        return text
    raise TypeError(f"{flag}: no conversion for type {hint!r}")


def summary(record: TrialRecord) -> str:
    """A few lines for people: status, data, validation/test quality against popularity, memory, time."""
    from study.memory import format_bytes

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


def _metavar(hint: Any) -> str:
    if _is_optional(hint):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return {int: "N", float: "X"}.get(hint, "TEXT")


def _is_optional(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def _choices(hint: Any) -> tuple[Any, ...] | None:
    if _is_optional(hint):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else None


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
