"""Full-catalogue evaluation of a sequence model (and of the popularity baseline) on an evaluation set.

Every item of the catalogue is scored for every user, never a sample. Users are scored in chunks so
that at most `max_scores` scores ([chunk, num_items]) exist at a time. With `exclude_seen`, the items
in a user's history are removed from the ranking (score -inf), except the user's target: a target
that was already consumed stays rankable. Padding (id 0) is never a candidate: column j of the score
matrix is item j + 1. Ordering, ties and the metric definitions are in `study.metrics`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from study.config import METRIC_KS
from study.metrics import RankingAccumulator

# Scores alive at once (64 MiB in float32); ranking adds about 3 bytes of masks and a 4-byte cumulative
# count per score, plus a cleaned copy only when a score is NaN.
DEFAULT_MAX_SCORES = 1 << 24


class SequenceScorer(Protocol):
    item_embedding: torch.nn.Embedding

    def last_hidden(self, inputs: torch.Tensor) -> torch.Tensor: ...


# inputs [B, L] item ids (right-padded) -> a new float32 scores tensor [B, num_items]; column j = item j + 1
ScoreFunction = Callable[[torch.Tensor], torch.Tensor]


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
    max_scores: int = DEFAULT_MAX_SCORES,
) -> dict[str, float]:
    """Metrics of `model` on `evalset` (a `study.data` EvalSet). `autocast` wraps the encoder only;
    scores are computed in float32 so reduced precision does not create ties."""

    def score(inputs: torch.Tensor) -> torch.Tensor:
        with autocast():
            hidden = model.last_hidden(inputs)
        items = model.item_embedding.weight[1:]
        return hidden.float() @ items.float().T

    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()
    try:
        with torch.no_grad():
            return _evaluate(score, evalset, num_items=num_items, max_len=max_len, batch_size=batch_size,
                             device=device, exclude_seen=exclude_seen, ks=ks, max_scores=max_scores)
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
    max_scores: int = DEFAULT_MAX_SCORES,
) -> dict[str, float]:
    """The popularity baseline: every user gets the items ranked by training count (`item_counts`
    [num_items + 1], index 0 = padding), with the same exclusion and metrics as a model."""
    counts = torch.as_tensor(item_counts)
    if counts.dim() != 1 or counts.numel() < 2:
        raise ValueError(f"item_counts: expected [num_items + 1] counts, got shape {tuple(counts.shape)}")
    popularity = counts[1:].to(device=device, dtype=torch.float32)

    def score(inputs: torch.Tensor) -> torch.Tensor:
        return popularity.expand(inputs.shape[0], -1).clone()

    return _evaluate(score, evalset, num_items=popularity.numel(), max_len=max_len, batch_size=batch_size,
                     device=device, exclude_seen=exclude_seen, ks=ks, max_scores=max_scores)


def _evaluate(
    score: ScoreFunction,
    evalset: Any,
    *,
    num_items: int,
    max_len: int,
    batch_size: int,
    device: torch.device | str,
    exclude_seen: bool,
    ks: Sequence[int],
    max_scores: int,
) -> dict[str, float]:
    from study.data import eval_batches

    history = _History(evalset.history) if exclude_seen else None
    accumulator = RankingAccumulator(num_items, ks)
    chunk = max(1, max_scores // num_items)
    for inputs, targets, rows in eval_batches(evalset, max_len, batch_size, device=device):
        for start in range(0, inputs.shape[0], chunk):
            part = slice(start, start + chunk)
            scores = score(inputs[part])  # a fresh tensor: exclusion writes into it
            target_columns = targets[part].to(device=scores.device, dtype=torch.long) - 1
            if history is not None:
                history.exclude(scores, torch.as_tensor(rows[part]).cpu(), target_columns)
            accumulator.add(scores, target_columns)
    return accumulator.result()


class _History:
    """The evaluation histories (CSR) on the host, to mask each user's seen items."""

    def __init__(self, sequences: Any) -> None:
        self.offsets = torch.as_tensor(sequences.offsets, dtype=torch.long).cpu()
        self.items = torch.as_tensor(sequences.items, dtype=torch.long).cpu()

    def exclude(self, scores: torch.Tensor, rows: torch.Tensor, target_columns: torch.Tensor) -> None:
        """Set the scores of every item in each row's history to -inf, then restore the targets'."""
        rows = rows.to(torch.long)
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        lengths = ends - starts
        row_of_entry = torch.repeat_interleave(torch.arange(len(rows)), lengths)
        first_entry = torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
        entries = torch.arange(int(lengths.sum())) - first_entry + torch.repeat_interleave(starts, lengths)
        seen_columns = self.items[entries] - 1
        target_scores = scores.gather(1, target_columns[:, None])
        scores[row_of_entry.to(scores.device), seen_columns.to(scores.device)] = float("-inf")
        scores.scatter_(1, target_columns[:, None], target_scores)


__all__ = ["evaluate_model", "evaluate_popularity", "DEFAULT_MAX_SCORES"]
