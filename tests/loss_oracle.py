"""The loss of docs/design.md#the-loss in float64 with explicit logits: the one oracle that the loss tests
(tests/test_loss_reference.py, test_triton_*.py, test_cuda_kernels.py) and the GPU dev benchmarks
(benchmarks/dev_*.py) check every implementation against.

Row i of `hidden` scores its target t and its negatives n_1..n_K against `items` (s_ij = h_i . e_j):
    sampled (CE-):        loss_i = logsumexp(s_it, s_in_1 - c_1, ..., s_in_K - c_K) - s_it
    full catalogue (CE):  loss_i = logsumexp_j(s_ij) - s_it
with the logQ correction c_k = log K + log q(n_k) (0 without it), for negatives drawn in the kernel also
minus their stratum weight (c_k -= log(size_k K / C), kernels/draw.py), and a negative equal to the target
left out when accidental hits are removed. A row whose target is `ignore_index` is no row: 0 with reduction
"none", left out of "sum" and of the count that "mean" divides by.

Kept beside the tests (not in kernels/: no library code needs it); the benchmarks put tests/ on their path.
"""

from __future__ import annotations

import math

import torch

IGNORE_INDEX = -100


def row_negatives(negatives: torch.Tensor, num_rows: int) -> torch.Tensor:
    """The negatives of each of `num_rows` rows, [num_rows, K], from any layout the loss takes: one set
    shared by every row [K], one per sequence [S, K] (the rows of a sequence are consecutive, num_rows / S
    of them), or one per row ([num_rows, K] or [B, L, K])."""
    if negatives.dim() == 1:
        return negatives.expand(num_rows, negatives.shape[0])
    per_set = negatives.reshape(-1, negatives.shape[-1])
    if per_set.shape[0] == num_rows:
        return per_set
    assert num_rows % per_set.shape[0] == 0, f"{num_rows} rows in {per_set.shape[0]} sequences"
    return per_set.repeat_interleave(num_rows // per_set.shape[0], dim=0)


def oracle_loss(hidden: torch.Tensor, items: torch.Tensor, targets: torch.Tensor,
                negatives: torch.Tensor | None = None, *, log_q: torch.Tensor | float | None = None,
                remove_accidental_hits: bool = True, ignore_index: int = IGNORE_INDEX,
                reduction: str = "mean", items_as: torch.dtype | None = None,
                drawn: bool = False) -> torch.Tensor:
    """The loss in float64, differentiable (give float64 leaves to get float64 gradients).

    hidden [N, d] or [B, L, d]; items [C, d]; targets [N] or [B, L]; negatives None for the full catalogue,
    else any layout `row_negatives` takes; log_q None, a tensor [C] of log q per item, or one float for
    every item. `items_as`: the items are first rounded to this dtype, as a kernel computing in hidden's
    precision sees them (their gradient passes the rounding unchanged). `drawn`: the negatives are those the
    kernel drew (`kernels.draw_negatives`), column k from catalogue slice k, so each gets its stratum
    weight. Reduction "none" gives [N].
    """
    if items_as is not None:
        items = items + (items.to(items_as).to(items.dtype) - items).detach()
    h = hidden.reshape(-1, hidden.shape[-1]).double()
    e = items.double()
    flat_targets = targets.reshape(-1).long()
    kept = flat_targets != ignore_index
    safe_targets = torch.where(kept, flat_targets, torch.zeros_like(flat_targets))
    positive = (h * e[safe_targets]).sum(-1)
    if negatives is None:
        lse = torch.logsumexp(h @ e.T, dim=1)
    else:
        rows = row_negatives(negatives.long(), h.shape[0])
        scores = torch.einsum("nd,nkd->nk", h, e[rows])
        if log_q is not None:
            log_q_of_rows = log_q.double()[rows] if isinstance(log_q, torch.Tensor) else log_q
            scores = scores - (math.log(rows.shape[1]) + log_q_of_rows)
        if drawn:
            scores = scores + stratum_log_weights(e.shape[0], rows.shape[1]).to(scores.device)
        if remove_accidental_hits:
            scores = scores.masked_fill(rows == safe_targets[:, None], float("-inf"))
        lse = torch.logsumexp(torch.cat([positive[:, None], scores], dim=1), dim=1)
    loss = torch.where(kept, lse - positive, torch.zeros_like(lse))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    assert reduction == "mean", reduction
    return loss.sum() / kept.sum().clamp(min=1)


def stratum_log_weights(num_items: int, num_negatives: int) -> torch.Tensor:
    """float64 [K]: log(size_k * K / C) for the K catalogue slices of the drawn negatives (their bounds:
    `kernels.draw.slice_starts`, checked against the kernel's draws in tests/test_draw.py)."""
    from kernels.draw import slice_starts

    sizes = slice_starts(num_items, num_negatives).diff().double()
    return torch.log(sizes * num_negatives / num_items)


def oracle_with_grads(hidden: torch.Tensor, items: torch.Tensor, targets: torch.Tensor,
                      negatives: torch.Tensor | None = None, *, upstream: torch.Tensor | None = None,
                      **options: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, grad of hidden, grad of items) of `oracle_loss` in float64 at the values of `hidden` and
    `items` (any dtype; gradients in their shapes). The gradients are those of (loss * upstream).sum():
    pass the upstream gradient the implementation under test got, so per-row gradients are all compared."""
    hidden64 = hidden.detach().double().requires_grad_(True)
    items64 = items.detach().double().requires_grad_(True)
    loss = oracle_loss(hidden64, items64, targets, negatives, **options)  # type: ignore[arg-type]
    weights = torch.ones_like(loss) if upstream is None else upstream.detach().double().reshape(loss.shape)
    (loss * weights).sum().backward()
    assert hidden64.grad is not None and items64.grad is not None
    return loss.detach(), hidden64.grad, items64.grad


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64 (the norm of all elements)."""
    actual, expected = torch.as_tensor(actual).detach().double(), torch.as_tensor(expected).detach().double()
    actual = actual.reshape(expected.shape)
    return float((actual - expected).norm() / expected.norm().clamp(min=1e-30))
