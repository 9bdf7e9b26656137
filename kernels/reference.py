"""Plain PyTorch cross-entropy over the full catalogue or sampled negatives (CE and CE-).

These materialise the logits (`[N, K]`, or `[N, C]` for the full catalogue): they are the
paper's baseline ("PyTorch eager CE-") and the reference the fused kernels are tested against.
Inputs are already validated and normalised by `kernels.api`; the hot function has no
data-dependent Python control flow, so `torch.compile` can trace it.

Matrix products run in hidden's dtype (float32 items are cast after gathering, the autocast case);
the softmax runs in float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kernels.schemes import Reduction, Scheme


def reference_linear_cross_entropy(
    hidden: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor | None,
    *,
    scheme: Scheme,
    num_negatives: int,
    rows_per_sequence: int,
    seed: int | None,
    log_q: torch.Tensor | float | None,
    remove_accidental_hits: bool,
    ignore_index: int,
    reduction: Reduction,
) -> torch.Tensor:
    """Same arguments and result as `kernels.triton_dispatch.triton_linear_cross_entropy`."""
    kept = targets != ignore_index
    if scheme == "full":
        logits = hidden @ _cast(items, hidden.dtype).T
        row_loss = F.cross_entropy(logits.float(), targets, ignore_index=ignore_index, reduction="none")
        return reduce_rows(row_loss, kept, reduction)

    safe_targets = torch.where(kept, targets, torch.zeros_like(targets))
    stratum_weights = None
    if scheme == "drawn":
        from kernels.draw import draw_negatives, slice_log_weights

        if seed is None:
            raise ValueError("seed: required for the drawn scheme")
        negatives = draw_negatives(seed, hidden.shape[0], num_negatives, items.shape[0], device=hidden.device)
        stratum_weights = slice_log_weights(items.shape[0], num_negatives, device=hidden.device)
        scheme = "position"
    if negatives is None:
        raise ValueError(f"negatives: required for the {scheme} scheme")
    # Per-sequence negatives broadcast over the sequence's rows as [B, L, K]; other schemes use [N, K].
    row_shape = (negatives.shape[0], rows_per_sequence) if scheme == "sequence" else (hidden.shape[0],)
    per_row = _per_row_view(negatives, scheme)
    positive = positive_logits(hidden, items, safe_targets).reshape(row_shape)
    negative = negative_logits(hidden, items, negatives, scheme=scheme, rows_per_sequence=rows_per_sequence)
    # In place: the float32 logits are a fresh tensor that no backward needs, so no second [N, K] copy.
    negative = negative.reshape(*row_shape, num_negatives)
    if log_q is not None:
        negative = negative.sub_(logq_correction(per_row, num_negatives, log_q))
    if stratum_weights is not None:  # drawn: kernels/draw.py, why
        negative = negative.add_(stratum_weights)
    if remove_accidental_hits:
        negative = negative.masked_fill_(per_row == safe_targets.reshape(*row_shape, 1), float("-inf"))
    # logsumexp(s0, s1..sK) without concatenating s0: a row whose negatives are all hits has
    # lse = -inf and loss 0; its NaN gradients sit only at masked entries, which masked_fill_ zeroes.
    negative_lse = torch.logsumexp(negative, dim=-1)
    row_loss = (torch.logaddexp(positive, negative_lse) - positive).reshape(-1)
    return reduce_rows(row_loss, kept, reduction)


def positive_logits(hidden: torch.Tensor, items: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """h_i . E[p_i] for every row, float32 ([N]); targets must already be valid indices. The item rows are
    rounded to hidden's dtype first, like the negatives' (and like the fused kernels do)."""
    return (hidden.float() * _gather_rows(items, targets, hidden.dtype).float()).sum(dim=-1)


def negative_logits(
    hidden: torch.Tensor,
    items: torch.Tensor,
    negatives: torch.Tensor,
    *,
    scheme: Scheme,
    rows_per_sequence: int,
) -> torch.Tensor:
    """h_i . E[n_ik] as float32 [N, K] for the shared [K], sequence [B, K] or position [N, K] scheme."""
    if scheme == "shared":
        return (hidden @ _gather_rows(items, negatives, hidden.dtype).T).float()
    if scheme == "sequence":
        num_sequences = negatives.shape[0]
        per_sequence_hidden = hidden.reshape(num_sequences, rows_per_sequence, hidden.shape[-1])
        negative_items = _gather_rows(items, negatives, hidden.dtype)  # [B, K, d]
        logits = torch.bmm(per_sequence_hidden, negative_items.transpose(1, 2))  # [B, L, K]
        return logits.reshape(hidden.shape[0], -1).float()
    if scheme == "position":
        negative_items = _gather_rows(items, negatives, hidden.dtype)  # [N, K, d]
        return torch.bmm(negative_items, hidden.unsqueeze(-1)).squeeze(-1).float()
    raise ValueError(f"scheme: {scheme!r} has no negatives tensor")


def logq_correction(
    negatives: torch.Tensor, num_negatives: int, log_q: torch.Tensor | float
) -> torch.Tensor | float:
    """log(K) + log q(item) for each negative index (a float when log q is the same for every item)."""
    if isinstance(log_q, torch.Tensor):
        return math.log(num_negatives) + log_q[negatives]
    return math.log(num_negatives) + float(log_q)


def reduce_rows(row_loss: torch.Tensor, kept: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """Zero the ignored rows, then mean over kept rows (0 when none is kept), sum, or per row."""
    row_loss = torch.where(kept, row_loss.float(), torch.zeros_like(row_loss, dtype=torch.float32))
    if reduction == "none":
        return row_loss
    total = row_loss.sum()
    if reduction == "sum":
        return total
    return total / kept.sum().clamp(min=1).to(torch.float32)


def _per_row_view(negatives: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    # [K] -> [1, K] against [N, K]; [B, K] -> [B, 1, K] against [B, L, K]; [N, K] as is.
    if scheme == "shared":
        return negatives.unsqueeze(0)
    if scheme == "sequence":
        return negatives.unsqueeze(1)
    return negatives


def _cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def _gather_rows(items: torch.Tensor, index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # Gather first, then cast: the gather's backward then accumulates the item gradient in the
    # table's own dtype. Casting a float32 table to bf16 first would sum the N*K contributions to each
    # item in bf16 (thousands per item on small catalogues), which visibly degrades training.
    return _cast(items[index], dtype)
