"""Binary losses over sampled negatives: BCE (original SASRec) and gBCE (gSASRec).

Both take the same hidden/items/targets/negatives shapes as `kernels.linear_cross_entropy`
(negatives [K], [B, K] with hidden [B, L, d], [B, L, K] or [N, K]) and return the mean over kept
rows of each row's sum over its positive and its negatives. Negatives that equal the target are
kept, as in the original papers. Sigmoids use `logsigmoid`, stable for any logit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.api import NormalisedCall, normalise_inputs
from kernels.reference import negative_logits, positive_logits, reduce_rows


def bce_loss(
    hidden: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor,
    *,
    ignore_index: int = -100,
) -> torch.Tensor:
    """SASRec's loss: mean over kept rows of -log sigmoid(s+) - sum_k log(1 - sigmoid(s_k)), float32."""
    call = _normalise(hidden, items, targets, negatives, ignore_index)
    return _binary_loss(call, ignore_index, positive_weight=1.0)


def gbce_loss(
    hidden: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor,
    *,
    t: float,
    ignore_index: int = -100,
) -> torch.Tensor:
    """gSASRec's generalised BCE (Petrov & Macdonald, 2023), float32.

    -beta * log sigmoid(s+) - sum_k log(1 - sigmoid(s_k)) with beta = alpha * (t * (1 - 1/alpha) + 1/alpha)
    and alpha = K / (C - 1); t = 0 is plain BCE, t = 1 calibrates the scores to the full softmax.
    """
    if isinstance(t, bool) or not isinstance(t, int | float) or not 0.0 <= t <= 1.0:
        raise ValueError(f"t: the calibration parameter must be a number in [0, 1], got {t!r}")
    call = _normalise(hidden, items, targets, negatives, ignore_index)
    beta = gbce_beta(call.num_negatives, call.items.shape[0], t)
    return _binary_loss(call, ignore_index, positive_weight=beta)


def gbce_beta(num_negatives: int, num_items: int, t: float) -> float:
    """The power beta applied to the positive's sigmoid in gBCE."""
    if num_items < 2:
        raise ValueError(f"items: gBCE needs at least 2 items (alpha = K / (C - 1)), got C={num_items}")
    alpha = num_negatives / (num_items - 1)
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


def _normalise(
    hidden: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor,
    ignore_index: int,
) -> NormalisedCall:
    if not isinstance(negatives, torch.Tensor):
        raise ValueError(f"negatives: expected an integer tensor ([K], [B, K], [B, L, K] or [N, K]), "
                         f"got {type(negatives).__name__}")
    return normalise_inputs(hidden, items, targets, negatives, seed=None, ignore_index=ignore_index)


def _binary_loss(call: NormalisedCall, ignore_index: int, positive_weight: float) -> torch.Tensor:
    assert call.negatives is not None
    kept = call.targets != ignore_index
    safe_targets = torch.where(kept, call.targets, torch.zeros_like(call.targets))
    positive = positive_logits(call.hidden, call.items, safe_targets)
    negative = negative_logits(call.hidden, call.items, call.negatives, scheme=call.scheme,
                               rows_per_sequence=call.rows_per_sequence)
    # log(1 - sigmoid(s)) = logsigmoid(-s)
    row_loss = -positive_weight * F.logsigmoid(positive) - F.logsigmoid(-negative).sum(dim=-1)
    return reduce_rows(row_loss, kept, "mean")

