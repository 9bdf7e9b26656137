"""Trained models a user can take away: the model file, its loader, and `cce-study export`.

A model file (`torch.save` of a dict, loadable with `weights_only=True`) holds the best-validation
weights of one trial, its TrainConfig, what SASRec's constructor needs, and the item-id mapping:
`item_ids[i - 1]` is the raw id (as in the interaction file) of the model's item `i` (0 is padding).

    from study.training.export import load_model, recommend
    model, config, item_ids = load_model("model.pt")
    recommend(model, item_ids, ["1193", "661", "914"], k=10)   # [(raw item id, score), ...]

`cce-study export --db results.sqlite (--trial ID | --budget 16GiB) --out model.pt` copies the model a
sweep kept for a trial (or for the best trial under a budget, as `cce-study best` picks it).
"""

from __future__ import annotations

import argparse
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from models.sasrec import SASRec
from study.cli import UserError
from study.config import TrainConfig
from study.record import TrialRecord
from study.units import format_bytes

FORMAT = "cce-study-model"
FORMAT_VERSION = 1
MODEL_ARGS: tuple[str, ...] = ("max_len", "hidden", "blocks", "heads", "dropout")


# ----------------------------------------------------------------------------------------------------
# the model file


def model_payload(model: SASRec, config: TrainConfig, item_ids: Any, record: TrialRecord) -> dict[str, Any]:
    """Everything a model file holds (the model's current weights: the trainer loads the best first)."""
    labels = [_plain(value) for value in (item_ids.tolist() if hasattr(item_ids, "tolist") else item_ids)]
    if len(labels) != model.num_items:
        raise ValueError(f"item_ids: {len(labels)} ids for a model of {model.num_items} items")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_args": {"num_items": model.num_items, **{name: getattr(config, name) for name in MODEL_ARGS}},
        "state_dict": {name: value.detach().cpu() for name, value in model.state_dict().items()},
        "config": config.to_dict(),
        "item_ids": labels,
        "trial": {
            "best_epoch": record.best_epoch,
            "val_metrics": {name: float(value) for name, value in record.val_metrics.items()},
            "test_metrics": {name: float(value) for name, value in record.test_metrics.items()},
            "num_users": record.num_users,
            "num_items": record.num_items,
            "num_interactions": record.num_interactions,
            "git_commit": record.git_commit,
            # plain str: torch.__version__ is a str subclass that weights-only loading refuses
            "versions": {name: str(value) for name, value in record.versions.items()},
        },
    }


def read_payload(source: str | Path | bytes) -> dict[str, Any]:
    """A model file's dict, from a local path or its bytes; ValueError if it is not a model file."""
    where = "model file" if isinstance(source, bytes) else str(source)
    handle: Any = io.BytesIO(source) if isinstance(source, bytes) else Path(source)
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise FileNotFoundError(f"{source}: no such model file")
    try:
        payload = torch.load(handle, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{where}: not a cce-study model file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{where}: not a cce-study model file")
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{where}: model file version {payload.get('format_version')!r}, "
                         f"this code reads version {FORMAT_VERSION}")
    return dict(payload)


def load_model(path: str | Path, *,
               device: str | torch.device = "cpu") -> tuple[SASRec, TrainConfig, list[Any]]:
    """(SASRec in eval mode with the trial's best weights, its TrainConfig, item_ids) from a model file;
    `item_ids[i - 1]` is the raw id of the model's item i."""
    payload = read_payload(path)
    config = TrainConfig.from_dict(payload["config"])
    model = SASRec(**payload["model_args"])
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), config, list(payload["item_ids"])


def item_index(item_ids: Sequence[Any]) -> dict[Any, int]:
    """Raw item id -> the model's item index (1-based; 0 is padding)."""
    return {raw: index for index, raw in enumerate(item_ids, start=1)}


def score(model: SASRec, item_ids: Sequence[Any], histories: Sequence[Sequence[Any]], *,
          exclude_seen: bool = True, index: dict[Any, int] | None = None) -> torch.Tensor:
    """Scores [len(histories), num_items] (float32; column j is raw item item_ids[j]) of every catalogue
    item as the next item after each history of raw ids (oldest first; the last max_len are used).
    With `exclude_seen`, items of the history score -inf (as in the study's evaluation)."""
    index = index if index is not None else item_index(item_ids)
    if not histories:
        raise ValueError("histories: give at least one history")
    rows = []
    for number, history in enumerate(histories):
        if len(history) == 0:
            raise ValueError(f"histories[{number}]: empty; a history needs at least one item")
        unknown = [raw for raw in history if raw not in index]
        if unknown:
            raise ValueError(f"histories[{number}]: item id {unknown[0]!r} is not in the model's catalogue")
        rows.append([index[raw] for raw in history])
    device = model.item_embedding.weight.device
    width = min(model.max_len, max(len(row) for row in rows))
    inputs = torch.zeros(len(rows), width, dtype=torch.int64)
    for number, row in enumerate(rows):
        recent = row[-model.max_len:]
        inputs[number, :len(recent)] = torch.tensor(recent)  # right-padded, as the model was trained
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            hidden = model.last_hidden(inputs.to(device)).float()
            scores = hidden @ model.item_embedding.weight[1:].float().T
    finally:
        model.train(was_training)
    if exclude_seen:  # the whole history, not only its last max_len items
        seen_rows = torch.tensor([number for number, row in enumerate(rows) for _ in row], device=device)
        seen_columns = torch.tensor([item - 1 for row in rows for item in row], device=device)
        scores[seen_rows, seen_columns] = -math.inf
    return scores


def recommend(model: SASRec, item_ids: Sequence[Any], history: Sequence[Any], *, k: int = 10,
              exclude_seen: bool = True) -> list[tuple[Any, float]]:
    """The k best next items after one history of raw ids: [(raw item id, score)], best first."""
    scores = score(model, item_ids, [history], exclude_seen=exclude_seen)[0]
    top = torch.topk(scores, min(k, scores.numel()))
    return [(item_ids[int(j)], float(v)) for v, j in zip(top.values, top.indices) if math.isfinite(float(v))]


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


# ----------------------------------------------------------------------------------------------------
# `cce-study export`


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, type=Path, help="results database (SQLite) written by a sweep")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", help="the trial whose model to export (its trial_id)")
    which.add_argument("--budget", help="export the best trial under this memory budget ('16GiB', '0.5')")
    parser.add_argument("--out", required=True, type=Path, help="the model file to write, e.g. model.pt")
    from study.cli.analysis import add_selection_options

    add_selection_options(parser, prefix="with --budget: ",
                          memory_help="measured memory that must fit (default peak_bytes)")
    parser.add_argument("--storage", default=None,
                        help="look for the model under this storage root instead of where the database "
                             "says it is (the storage moved); a folder or a URI")


def run(args: argparse.Namespace) -> int:
    row = _chosen_trial(args)
    trial_id, sweep = str(row["trial_id"]), str(row["sweep"])
    location = _model_location(row, args)
    from study.sweep.checkpoint_store import read_bytes

    try:
        payload = read_payload(read_bytes(location))
    except FileNotFoundError as exc:
        raise UserError(f"trial {trial_id}: its model is gone from {location} ({exc})") from exc
    payload["trial"] = {**payload.get("trial", {}), "trial_id": trial_id, "sweep": sweep}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, args.out)
    metrics = payload["trial"]
    print(f"wrote {args.out}: trial {trial_id} (best epoch {metrics.get('best_epoch')}, "
          f"val ndcg@10 {metrics['val_metrics'].get('ndcg@10', math.nan):.4f}, "
          f"test ndcg@10 {metrics['test_metrics'].get('ndcg@10', math.nan):.4f}), "
          f"{len(payload['item_ids']):,} items, {format_bytes(args.out.stat().st_size)}")
    return 0


def _chosen_trial(args: argparse.Namespace) -> Any:
    from study.analysis import pareto
    from study.cli.analysis import load_selected, parse_budget_list
    from study.database.results_db import load_trials

    if args.trial is not None:
        if not args.db.is_file():
            raise UserError(f"--db {args.db}: no such results database")
        trials = load_trials(args.db)
        found = trials[trials["trial_id"] == args.trial]
        if found.empty:
            raise UserError(f"--trial {args.trial}: no such trial in {args.db}")
        return found.iloc[0]
    try:
        pareto.metric_column(args.metric)
    except ValueError as exc:
        raise UserError(f"--{exc}") from exc
    trials = load_selected(args)
    (budget,) = parse_budget_list(args.budget, trials, option="--budget")
    best, _ = pareto.best_under_budget(trials, budget, metric=args.metric, memory_field=args.memory_field)
    if best is None:
        raise UserError(f"--budget {args.budget}: no ok trial in {args.db} fits it")
    return best


def _model_location(row: Any, args: argparse.Namespace) -> str:
    trial_id = str(row["trial_id"])
    if row["status"] != "ok":
        raise UserError(f"trial {trial_id}: status {row['status']}, only ok trials keep a model")
    if args.storage is not None:
        from study.sweep.checkpoint_store import CheckpointStore

        return CheckpointStore(args.storage, str(row["sweep"])).model_location(trial_id)
    location = row.get("model_path")
    if location is None or (isinstance(location, float) and math.isnan(location)):
        raise UserError(f"trial {trial_id}: no model was kept for it (the sweep ran with "
                        "[checkpoint] keep_best_model = false, or before models were kept)")
    return str(location)


__all__ = ["model_payload", "read_payload", "load_model", "item_index", "score", "recommend",
           "configure", "run", "FORMAT", "FORMAT_VERSION"]
