"""The key-based ranking of study/training/metrics.py as of commit f441039 (unchanged up to 94b2261),
kept verbatim less its public wrappers: the reference the current implementation is compared with, by
tests/test_metrics_reference.py on random inputs and by benchmarks/eval_split.py --mode ranking on real
ones (old and new in one process).

Every score becomes one int64 key (the float32 bits mapped to an integer of the same order, high 32
bits; C - 1 - index, low 32 bits); the target's rank is the number of keys above its own and `topk` of
the keys is the top-k list. Exact, and several passes of 8 bytes per score: not for the hot path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from study.config import METRIC_KS
from study.training.metrics import metrics_from_ranks

_LOW_BITS = 0x7FFFFFFF


def order_keys(scores: torch.Tensor, *, in_place: bool = False) -> torch.Tensor:
    """int64 [rows, items]: a key per score that sorts like the score-then-index order (higher key =
    better rank). NaN counts as -inf, and -0.0 as 0.0 (they compare equal as floats). in_place=True
    reuses `scores` (float32) as scratch space: its values are lost."""
    if scores.dim() != 2:
        raise ValueError(f"scores: expected [rows, items], got shape {tuple(scores.shape)}")
    num_items = scores.shape[1]
    if num_items > _LOW_BITS:
        raise ValueError(f"scores: at most {_LOW_BITS} items, got {num_items}")
    if scores.dtype == torch.float64:  # no room for 64 bits of score: rank the distinct values instead
        values = scores.nan_to_num(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf")) + 0.0
        keys = torch.unique(values, return_inverse=True)[1]
        del values
    else:  # float32, or a half type (exactly representable in float32)
        values = scores if in_place and scores.dtype == torch.float32 else scores.to(torch.float32, copy=True)
        values.nan_to_num_(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
        values.add_(0.0)  # -0.0 + 0.0 = +0.0
        bits = values.view(torch.int32)
        # Negative floats order in reverse as integers: flipping their 31 low bits restores the order.
        bits ^= (bits >> 31) & _LOW_BITS
        keys = bits.to(torch.int64)
        del values, bits
    keys <<= 32
    keys |= torch.arange(num_items - 1, -1, -1, device=keys.device, dtype=torch.int64)
    return keys


# A float32 score of -inf has this value in the high 32 bits of its key, below every other score's.
_NEG_INF_HIGH = int(torch.tensor([float("-inf")]).view(torch.int32).item()) ^ _LOW_BITS


def _check_targets(targets: torch.Tensor, num_rows: int, num_items: int) -> None:
    if targets.shape != (num_rows,):
        raise ValueError(f"targets: expected shape ({num_rows},), got {tuple(targets.shape)}")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= num_items):
        raise ValueError(f"targets: column indices must lie in [0, {num_items})")


def _ranks_from_keys(keys: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    target_keys = keys.gather(1, targets.to(device=keys.device, dtype=torch.long)[:, None])
    return (keys > target_keys).sum(dim=1)


class RankingAccumulator:
    """Collects ranks and top-k lists chunk by chunk; `result()` gives the metric dict for all rows seen.

    Everything stays on the scores' device until `result()`, which reads it back once: `add` never
    waits for the device. Coverage keeps, per item, the best position it reached in any top-k list.
    """

    def __init__(self, num_items: int, ks: Sequence[int] = METRIC_KS) -> None:
        if num_items < 1:
            raise ValueError(f"num_items: must be positive, got {num_items}")
        if not ks or min(ks) < 1:
            raise ValueError(f"ks: need positive cut-offs, got {list(ks)}")
        self.num_items = num_items
        self.ks = tuple(sorted(set(ks)))
        self.depth = min(self.ks[-1], num_items)
        self._ranks: list[torch.Tensor] = []
        self._never = self.ks[-1]  # the best position of an item never recommended: not below any k
        self._best_position: torch.Tensor | None = None  # int64 [num_items]

    def add(self, scores: torch.Tensor, targets: torch.Tensor, *, consume: bool = False,
            checked: bool = False) -> None:
        """scores [rows, num_items] (excluded items at -inf), targets [rows] column indices.

        consume=True lets the accumulator overwrite `scores` (a float32 tensor the caller no longer
        needs: no copy). checked=True skips the targets' range check, which reads them on the host."""
        if scores.dim() != 2 or scores.shape[1] != self.num_items:
            raise ValueError(f"scores: expected [rows, {self.num_items}], got shape {tuple(scores.shape)}")
        if scores.shape[0] == 0:
            return
        if not checked:
            _check_targets(targets, scores.shape[0], self.num_items)
        keys = order_keys(scores, in_place=consume)
        self._ranks.append(_ranks_from_keys(keys, targets))
        top = keys.topk(self.depth, dim=1)
        if scores.dtype == torch.float64:  # keys rank the distinct values: read the scores themselves
            rankable = scores.gather(1, top.indices) > float("-inf")
        else:
            rankable = (top.values >> 32) > _NEG_INF_HIGH
        positions = torch.arange(self.depth, device=keys.device).expand(keys.shape[0], -1)
        positions = torch.where(rankable, positions, self._never)
        if self._best_position is None:
            self._best_position = torch.full((self.num_items,), self._never, dtype=torch.int64,
                                             device=keys.device)
        self._best_position.scatter_reduce_(0, top.indices.reshape(-1), positions.reshape(-1), reduce="amin")

    @property
    def count(self) -> int:
        return sum(len(r) for r in self._ranks)

    def result(self) -> dict[str, float]:
        if not self._ranks:
            raise ValueError("no rows were evaluated: the evaluation set is empty")
        out = metrics_from_ranks(torch.cat(self._ranks).cpu(), self.ks)
        assert self._best_position is not None
        best = self._best_position.cpu()
        for k in self.ks:
            out[f"coverage@{k}"] = float((best < k).sum()) / self.num_items
        return out
