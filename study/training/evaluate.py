"""Full-catalogue evaluation of a sequence model (and of the popularity baseline) on an evaluation set.

Every item of the catalogue is scored for every user, never a sample. Users are scored in chunks so
that at most `max_scores` scores ([chunk, num_items]) exist at a time. With `exclude_seen`, the items
in a user's history are removed from the ranking (score -inf), except the user's target: a target
that was already consumed stays rankable. Padding (id 0) is never a candidate: column j of the score
matrix is item j + 1. Ordering, ties and the metric definitions are in `study.training.metrics`.

An evaluation set is laid out once (`prepare_evaluation`: input windows, target columns and the
seen-item lists in host memory, pinned on CUDA) and can be evaluated every epoch from that layout. A
chunk's inputs and seen items are copied to the device asynchronously and ranked there
(`RankingAccumulator`), so an evaluation waits for the device once, at the end.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from study.config import DEFAULT_EVAL_MAX_SCORES, METRIC_KS, eval_chunk_rows
from study.training.metrics import RankingAccumulator

# Scores alive at once by default: study.config.DEFAULT_EVAL_MAX_SCORES (TrainConfig.eval_max_scores), under
# its old name here for code that imports it. Ranking cleans them in place and takes a top-k of them, with no
# other temporary of their size (the int64 keys it made before took 9 more bytes a score);
# study/memory/model.py charges EVAL_SCORE_COPIES float32 copies of them, more than that.
DEFAULT_MAX_SCORES = DEFAULT_EVAL_MAX_SCORES


class SequenceScorer(Protocol):
    item_embedding: torch.nn.Embedding

    def last_hidden(self, inputs: torch.Tensor, *, check_lengths: bool = True) -> torch.Tensor: ...


# inputs [B, L] item ids (right-padded) -> a new float32 scores tensor [B, num_items]; column j = item j + 1
ScoreFunction = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PreparedEvalSet:
    """An evaluation set laid out for repeated full-catalogue evaluation (host memory, pinned on CUDA).

    Rows are the evaluation set's, in order. The seen items of rows [a, b) are the entries
    seen_offsets[a]:seen_offsets[b] of seen_rows / seen_columns."""

    inputs: torch.Tensor  # int64 [S, max_len]: the last max_len history items, right-padded with 0
    target_columns: torch.Tensor  # int64 [S]: target item - 1
    seen_rows: torch.Tensor | None  # int64 [nnz]: the row of each history entry (None: nothing excluded)
    seen_columns: torch.Tensor | None  # int64 [nnz]: its item - 1
    seen_offsets: list[int]  # [S + 1]
    num_items: int
    max_len: int
    device: torch.device

    def __len__(self) -> int:
        return len(self.target_columns)


def prepare_evaluation(
    evalset: Any,
    *,
    num_items: int,
    max_len: int,
    device: torch.device | str,
    exclude_seen: bool = True,
) -> PreparedEvalSet:
    """Lay out a `study.data` EvalSet once for `evaluate_model` / `evaluate_popularity` (the layout does
    not change between epochs). Targets are checked here: each must be an item id in [1, num_items]."""
    from study.data.batching import tail_windows

    device = torch.device(device)
    num_rows = len(evalset)
    targets = torch.as_tensor(evalset.targets, dtype=torch.long).cpu()
    if num_rows and (int(targets.min()) < 1 or int(targets.max()) > num_items):
        raise ValueError(f"targets: item ids must lie in [1, {num_items}]")
    if max_len < 1:
        raise ValueError(f"max_len: must be >= 1, got {max_len}")
    history = evalset.history
    offsets = torch.as_tensor(history.offsets, dtype=torch.long).cpu()
    empty = ((offsets[1:] - offsets[:-1]) == 0).nonzero().flatten()
    if len(empty):
        raise ValueError(f"evalset: row {int(empty[0])} has an empty history (nothing to predict from)")
    inputs = tail_windows(history, torch.arange(num_rows), max_len)
    seen_rows = seen_columns = None
    if exclude_seen:
        lengths = offsets[1:] - offsets[:-1]
        seen_rows = torch.repeat_interleave(torch.arange(num_rows), lengths)
        seen_columns = torch.as_tensor(history.items, dtype=torch.long).cpu()[offsets[0]:offsets[-1]] - 1
    pin = device.type == "cuda"  # pinned host memory: the per-chunk copies to the device do not wait

    def host(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.pin_memory() if pin else tensor

    return PreparedEvalSet(
        inputs=host(inputs), target_columns=host(targets - 1),
        seen_rows=None if seen_rows is None else host(seen_rows),
        seen_columns=None if seen_columns is None else host(seen_columns),
        seen_offsets=(offsets - offsets[0]).tolist(), num_items=num_items, max_len=max_len, device=device)


def evaluate_model(
    model: SequenceScorer,
    evalset: Any,
    *,
    num_items: int,
    max_len: int,
    batch_size: int,
    device: torch.device | str,
    exclude_seen: bool = True,
    ks: Sequence[int] = METRIC_KS,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    max_scores: int = DEFAULT_EVAL_MAX_SCORES,
) -> dict[str, float]:
    """Metrics of `model` on `evalset` (a `study.data` EvalSet, or a PreparedEvalSet laid out with the
    same num_items, max_len, device and exclude_seen). `autocast` wraps the encoder only; scores are
    computed in float32 so reduced precision does not create ties."""

    def score(inputs: torch.Tensor) -> torch.Tensor:
        with autocast():
            hidden = model.last_hidden(inputs, check_lengths=False)  # prepare_evaluation checked them
        items = model.item_embedding.weight[1:]
        return hidden.float() @ items.float().T

    prepared = _prepared(evalset, num_items=num_items, max_len=max_len, device=device,
                         exclude_seen=exclude_seen)
    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()
    try:
        with torch.no_grad():
            return _evaluate(score, prepared, batch_size=batch_size, ks=ks, max_scores=max_scores)
    finally:
        if isinstance(model, torch.nn.Module):
            model.train(was_training)


def evaluate_popularity(
    item_counts: torch.Tensor,
    evalset: Any,
    *,
    max_len: int,
    batch_size: int,
    device: torch.device | str = "cpu",
    exclude_seen: bool = True,
    ks: Sequence[int] = METRIC_KS,
    max_scores: int = DEFAULT_EVAL_MAX_SCORES,
) -> dict[str, float]:
    """The popularity baseline: every user gets the items ranked by training count (`item_counts`
    [num_items + 1], index 0 = padding), with the same exclusion and metrics as a model."""
    counts = torch.as_tensor(item_counts)
    if counts.dim() != 1 or counts.numel() < 2:
        raise ValueError(f"item_counts: expected [num_items + 1] counts, got shape {tuple(counts.shape)}")
    popularity = counts[1:].to(device=device, dtype=torch.float32)

    def score(inputs: torch.Tensor) -> torch.Tensor:
        return popularity.expand(inputs.shape[0], -1).clone()

    prepared = _prepared(evalset, num_items=popularity.numel(), max_len=max_len, device=device,
                         exclude_seen=exclude_seen)
    return _evaluate(score, prepared, batch_size=batch_size, ks=ks, max_scores=max_scores)


def _prepared(evalset: Any, *, num_items: int, max_len: int, device: torch.device | str,
              exclude_seen: bool) -> PreparedEvalSet:
    if not isinstance(evalset, PreparedEvalSet):
        return prepare_evaluation(evalset, num_items=num_items, max_len=max_len, device=device,
                                  exclude_seen=exclude_seen)
    laid_out = (evalset.num_items, evalset.max_len, evalset.device, evalset.seen_rows is not None)
    wanted = (num_items, max_len, torch.device(device), exclude_seen)
    if laid_out != wanted:
        raise ValueError(f"evalset: prepared for (num_items, max_len, device, exclude_seen) = {laid_out}, "
                         f"evaluated with {wanted}")
    return evalset


def _evaluate(
    score: ScoreFunction,
    prepared: PreparedEvalSet,
    *,
    batch_size: int,
    ks: Sequence[int],
    max_scores: int,
) -> dict[str, float]:
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    device = prepared.device
    accumulator = RankingAccumulator(prepared.num_items, ks)
    chunk = eval_chunk_rows(max_scores, prepared.num_items)
    # Batches of batch_size rows cut into chunks, as the encoder has always seen them: its float results
    # may depend on how many rows it runs at once, and near-ties on the last bit of a score.
    for batch_start in range(0, len(prepared), batch_size):
        batch_end = min(batch_start + batch_size, len(prepared))
        for start in range(batch_start, batch_end, chunk):
            end = min(start + chunk, batch_end)
            inputs = prepared.inputs[start:end].to(device, non_blocking=True)
            target_columns = prepared.target_columns[start:end].to(device, non_blocking=True)
            scores = score(inputs)  # a fresh tensor: exclusion and ranking write into it
            if prepared.seen_rows is not None and prepared.seen_columns is not None:
                first, last = prepared.seen_offsets[start], prepared.seen_offsets[end]
                rows = prepared.seen_rows[first:last].to(device, non_blocking=True) - start
                columns = prepared.seen_columns[first:last].to(device, non_blocking=True)
                exclude_seen_items(scores, rows, columns, target_columns)
            accumulator.add(scores, target_columns, consume=True, checked=True)
    return accumulator.result()


def exclude_seen_items(scores: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor,
                       target_columns: torch.Tensor) -> None:
    """Set scores[rows[i], columns[i]] to -inf for every history entry i, then restore each row's target
    score (a target the user already saw stays rankable)."""
    target_scores = scores.gather(1, target_columns[:, None])
    scores[rows, columns] = float("-inf")
    scores.scatter_(1, target_columns[:, None], target_scores)


__all__ = ["evaluate_model", "evaluate_popularity", "prepare_evaluation", "PreparedEvalSet",
           "exclude_seen_items", "DEFAULT_MAX_SCORES"]
