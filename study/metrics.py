"""Full-catalogue ranking metrics from score matrices.

Ordering: items are ranked by score, highest first; equal scores are ordered by item index, lowest
first. This one total order defines both a target's rank and the top-k lists, so the two always
agree (the target is in the top-k list exactly when its rank < k), results are deterministic, and a
model that scores everything the same gains nothing from ties. NaN scores count as -inf. Items a
caller excluded carry the score -inf; they never count towards coverage.

rank (0-based) = #items scoring strictly higher than the target + #items tied with it at a lower index.
NDCG@k = 1 / log2(rank + 2), HitRate@k = 1, MRR@k = 1 / (rank + 1) when rank < k, else 0 (one relevant
item per user, so the ideal DCG is 1). Coverage@k = distinct items in all top-k lists / catalogue size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from study.config import METRIC_KS


def _clean(scores: torch.Tensor) -> torch.Tensor:
    if scores.dim() != 2:
        raise ValueError(f"scores: expected [rows, items], got shape {tuple(scores.shape)}")
    if bool(torch.isnan(scores).any()):  # copy only when needed: score chunks are the memory peak
        return torch.nan_to_num(scores, nan=float("-inf"))
    return scores


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each row's target column under the score-then-index order: [rows] int64."""
    return _target_ranks(_clean(scores), targets)


def _target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if targets.shape != (scores.shape[0],):
        raise ValueError(f"targets: expected shape ({scores.shape[0]},), got {tuple(targets.shape)}")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= scores.shape[1]):
        raise ValueError(f"targets: column indices must lie in [0, {scores.shape[1]})")
    targets = targets.to(device=scores.device, dtype=torch.long)
    target_scores = scores.gather(1, targets[:, None])
    columns = torch.arange(scores.shape[1], device=scores.device)
    higher = scores > target_scores
    tied_before = (scores == target_scores) & (columns[None, :] < targets[:, None])
    return (higher | tied_before).sum(dim=1)


def top_k_items(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Column indices of each row's k best items, best first, under the score-then-index order: [rows, k]."""
    return _top_k_items(_clean(scores), k)


def _top_k_items(scores: torch.Tensor, k: int) -> torch.Tensor:
    rows, num_items = scores.shape
    if not 1 <= k <= num_items:
        raise ValueError(f"k: must be in [1, {num_items}], got {k}")
    threshold = scores.topk(k, dim=1).values[:, -1:]
    above = scores > threshold
    at_threshold = scores == threshold
    still_needed = k - above.sum(dim=1, keepdim=True)
    # among the items tied at the threshold, the lowest indices win
    chosen = above | (at_threshold & (at_threshold.cumsum(dim=1, dtype=torch.int32) <= still_needed))
    columns = chosen.nonzero()[:, 1].view(rows, k)  # ascending index within each row
    order = torch.sort(scores.gather(1, columns), dim=1, descending=True, stable=True).indices
    return columns.gather(1, order)


def metrics_from_ranks(ranks: torch.Tensor, ks: Sequence[int] = METRIC_KS) -> dict[str, float]:
    """Mean NDCG@k, HitRate@k and MRR@k over users from 0-based target ranks (no coverage)."""
    ranks = ranks.to(torch.float64)
    out: dict[str, float] = {}
    for k in ks:
        inside = ranks < k
        out[f"ndcg@{k}"] = float(torch.where(inside, 1.0 / torch.log2(ranks + 2.0), 0.0).mean())
        out[f"hit@{k}"] = float(inside.to(torch.float64).mean())
        out[f"mrr@{k}"] = float(torch.where(inside, 1.0 / (ranks + 1.0), 0.0).mean())
    return out


class RankingAccumulator:
    """Collects ranks and top-k lists chunk by chunk; `result()` gives the metric dict for all rows seen."""

    def __init__(self, num_items: int, ks: Sequence[int] = METRIC_KS) -> None:
        if num_items < 1:
            raise ValueError(f"num_items: must be positive, got {num_items}")
        if not ks or min(ks) < 1:
            raise ValueError(f"ks: need positive cut-offs, got {list(ks)}")
        self.num_items = num_items
        self.ks = tuple(sorted(set(ks)))
        self._ranks: list[torch.Tensor] = []
        self._recommended = {k: torch.zeros(num_items, dtype=torch.bool) for k in self.ks}

    def add(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        """scores [rows, num_items] (excluded items at -inf), targets [rows] column indices."""
        if scores.dim() != 2 or scores.shape[1] != self.num_items:
            raise ValueError(f"scores: expected [rows, {self.num_items}], got shape {tuple(scores.shape)}")
        if scores.shape[0] == 0:
            return
        scores = _clean(scores)
        self._ranks.append(_target_ranks(scores, targets).cpu())
        deepest = min(self.ks[-1], self.num_items)
        top = _top_k_items(scores, deepest)
        rankable = scores.gather(1, top) > float("-inf")
        for k in self.ks:
            depth = min(k, deepest)
            items = top[:, :depth][rankable[:, :depth]].cpu()
            self._recommended[k][items] = True

    @property
    def count(self) -> int:
        return sum(len(r) for r in self._ranks)

    def result(self) -> dict[str, float]:
        if not self._ranks:
            raise ValueError("no rows were evaluated: the evaluation set is empty")
        out = metrics_from_ranks(torch.cat(self._ranks), self.ks)
        for k in self.ks:
            out[f"coverage@{k}"] = float(self._recommended[k].sum()) / self.num_items
        return out


__all__ = ["target_ranks", "top_k_items", "metrics_from_ranks", "RankingAccumulator"]
