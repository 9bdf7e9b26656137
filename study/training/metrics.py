"""Full-catalogue ranking metrics from score matrices.

Ordering: items are ranked by score, highest first; equal scores are ordered by item index, lowest
first. This one total order defines both a target's rank and the top-k lists, so the two always
agree (the target is in the top-k list exactly when its rank < k), results are deterministic, and a
model that scores everything the same gains nothing from ties. NaN scores count as -inf, and -0.0 as
0.0. Items a caller excluded carry the score -inf; they never count towards coverage.

rank (0-based) = #items scoring strictly higher than the target + #items tied with it at a lower index.
NDCG@k = 1 / log2(rank + 2), HitRate@k = 1, MRR@k = 1 / (rank + 1) when rank < k, else 0 (one relevant
item per user, so the ideal DCG is 1). Coverage@k = distinct items in all top-k lists / catalogue size.

How `RankingAccumulator` computes them (every metric only asks whether rank < k, k <= K = max(ks)):
the exact top-K list of every row is enough, and the target's rank is its position in that list (K when
it is not in it). The list comes from `torch.topk` of K + 1 scores (float32, or float64 as given; half
types are widened to float32, exactly): it holds every item scoring above its K-th value, and the K
candidates sorted by (score desc, index asc) are the list unless the K-th value ties with the (K+1)-th,
where the items of that value to keep are the lowest-indexed ones of the whole row. Such rows (rare in a
model's float32 scores, common in the popularity baseline's counts; a row with at most K rankable items
ties at -inf, so the list is exact at every position, excluded ones included) are completed by
`complete_tied_rows`: a Triton kernel on CUDA that reads only those rows, torch ops on those rows on
CPU. Per chunk that is one in-place NaN pass and one float top-k over the scores, with no other
[rows, items] temporary, and no host synchronisation on CUDA (`RankingAccumulator` keeps its sums on the
scores' device until `result()`). The first implementation, an int64 key per score, is kept as the
reference the tests and benchmarks/eval_split.py compare with (tests/metrics_reference.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from study.config import METRIC_KS


def ranking_values(scores: torch.Tensor, *, consume: bool = False) -> torch.Tensor:
    """The scores as the order reads them: float64 stays float64, other types become float32 (exact for
    the half types), NaN becomes -inf. consume=True reuses `scores` (float32 or float64) in place."""
    if scores.dim() != 2:
        raise ValueError(f"scores: expected [rows, items], got shape {tuple(scores.shape)}")
    dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    values = scores if consume and scores.dtype == dtype else scores.to(dtype, copy=True)
    return values.nan_to_num_(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))


def top_k_columns(values: torch.Tensor, k: int) -> torch.Tensor:
    """int64 [rows, k]: each row's k best columns, best first, under the score-then-index order, from
    `ranking_values` (no NaN; not modified). Exact: see the module's docstring."""
    num_items = values.shape[1]
    width = min(k + 1, num_items)  # one beyond k: a tie across the k-th position shows as equal values
    candidate_values, columns = values.topk(width, dim=1, sorted=False)
    candidate_values = candidate_values + 0.0  # -0.0 + 0.0 = +0.0: the sorts must not tell them apart
    # (value desc, column asc): stable sorts, the less significant key first
    by_column = columns.argsort(dim=1, stable=True)
    columns, candidate_values = columns.gather(1, by_column), candidate_values.gather(1, by_column)
    by_value = candidate_values.argsort(dim=1, descending=True, stable=True)
    columns, candidate_values = columns.gather(1, by_value), candidate_values.gather(1, by_value)
    if width == k:  # the whole row
        return columns
    columns = columns[:, :k].contiguous()
    bound = candidate_values[:, k - 1]
    tied = bound == candidate_values[:, k]
    above = (candidate_values[:, :k] > bound[:, None]).sum(dim=1)  # all of them are candidates
    complete_tied_rows(values, columns, bound, above, torch.where(tied, k - above, 0))
    return columns


def complete_tied_rows(values: torch.Tensor, columns: torch.Tensor, bound: torch.Tensor, above: torch.Tensor,
                       need: torch.Tensor) -> None:
    """In place: in each row r with need[r] > 0, columns[r, above[r]:above[r] + need[r]] becomes the
    need[r] lowest columns of `values` whose value equals bound[r], ascending (above[r] + need[r] must be
    columns' width, and the row must hold that many). Rows with need 0 are left alone and cost nothing:
    a Triton kernel on CUDA skips them, torch ops on CPU run on the other rows only."""
    if values.is_cuda:
        try:
            from study.training.topk_ties import complete_tied_rows_triton
        except ImportError:  # CUDA without Triton: torch ops on every row, still without a sync
            _complete_tied_rows_torch(values, columns, bound, above, need, rows=None)
            return
        complete_tied_rows_triton(values, columns, bound, above, need)
        return
    _complete_tied_rows_torch(values, columns, bound, above, need, rows=need.nonzero().flatten())


def _complete_tied_rows_torch(values: torch.Tensor, columns: torch.Tensor, bound: torch.Tensor,
                              above: torch.Tensor, need: torch.Tensor, *, rows: torch.Tensor | None) -> None:
    """complete_tied_rows with torch ops on `rows` (None: every row)."""
    if rows is not None and rows.numel() == 0:
        return
    selected: slice | torch.Tensor = slice(None) if rows is None else rows
    num_items, width = values.shape[1], columns.shape[1]
    key_dtype = torch.int32 if num_items < 2**31 else torch.int64
    # num_items - column for an equal value, 0 otherwise: distinct keys, so topk's set and order are exact
    reversed_columns = torch.arange(num_items, 0, -1, device=values.device, dtype=key_dtype)
    keys = torch.where(values[selected] == bound[selected, None], reversed_columns, 0)
    lowest = keys.topk(width, dim=1).indices
    del keys
    offset = torch.arange(width, device=values.device)[None, :] - above[selected, None]
    from_lowest = (offset >= 0) & (offset < need[selected, None])
    columns[selected] = torch.where(from_lowest, lowest.gather(1, offset.clamp(min=0)), columns[selected])


def _check_targets(targets: torch.Tensor, num_rows: int, num_items: int) -> None:
    if targets.shape != (num_rows,):
        raise ValueError(f"targets: expected shape ({num_rows},), got {tuple(targets.shape)}")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= num_items):
        raise ValueError(f"targets: column indices must lie in [0, {num_items})")


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each row's target column under the score-then-index order: [rows] int64."""
    values = ranking_values(scores)
    _check_targets(targets, values.shape[0], values.shape[1])
    targets = targets.to(device=values.device, dtype=torch.long)[:, None]
    target_values = values.gather(1, targets)
    before = torch.arange(values.shape[1], device=values.device)[None, :] < targets
    return (values > target_values).sum(dim=1) + ((values == target_values) & before).sum(dim=1)


def top_k_items(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Column indices of each row's k best items, best first, under the score-then-index order: [rows, k]."""
    values = ranking_values(scores)
    if not 1 <= k <= values.shape[1]:
        raise ValueError(f"k: must be in [1, {values.shape[1]}], got {k}")
    return top_k_columns(values, k)


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
    """Collects ranks and top-k lists chunk by chunk; `result()` gives the metric dict for all rows seen.

    Everything stays on the scores' device until `result()`, which reads it back once: on CUDA `add`
    never waits for the device. Coverage keeps, per item, the best position it reached in any top-k list;
    ranks are kept up to the deepest cut-off only (a rank beyond it counts as that cut-off: no metric
    tells them apart).
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

        consume=True lets the accumulator overwrite `scores` (a float32 or float64 tensor the caller no
        longer needs: no copy). checked=True skips the targets' range check, which reads them on the host."""
        if scores.dim() != 2 or scores.shape[1] != self.num_items:
            raise ValueError(f"scores: expected [rows, {self.num_items}], got shape {tuple(scores.shape)}")
        if scores.shape[0] == 0:
            return
        if not checked:
            _check_targets(targets, scores.shape[0], self.num_items)
        values = ranking_values(scores, consume=consume)
        columns = top_k_columns(values, self.depth)
        positions = torch.arange(self.depth, device=values.device).expand(values.shape[0], -1)
        # the target's rank where it is in the list; depth (beyond every k) where it is not
        hit = columns == targets.to(device=values.device, dtype=torch.long)[:, None]
        self._ranks.append(torch.where(hit, positions, self.depth).amin(dim=1))
        rankable = values.gather(1, columns) > float("-inf")
        del values
        positions = torch.where(rankable, positions, self._never)
        if self._best_position is None:
            self._best_position = torch.full((self.num_items,), self._never, dtype=torch.int64,
                                             device=columns.device)
        self._best_position.scatter_reduce_(0, columns.reshape(-1), positions.reshape(-1), reduce="amin")

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


__all__ = ["ranking_values", "top_k_columns", "complete_tied_rows", "target_ranks", "top_k_items",
           "metrics_from_ranks", "RankingAccumulator"]
