"""Route a validated, normalised call to the Triton implementation of its negative scheme.

`kernels.api.linear_cross_entropy` validates and normalises the public arguments, then calls
`triton_linear_cross_entropy` here. Two families of kernels serve the schemes:

- `kernels.triton_shared`: the negatives form a dense block shared by many rows (the full
  catalogue, one `[K]` set, or one `[K]` set per sequence): a GEMM with an online softmax.
- `kernels.triton_gather`: every row has its own negatives (a `[N, K]` tensor, or drawn inside
  the kernel from a seed): a gather, bound by memory bandwidth.
"""

from __future__ import annotations

import torch

from kernels.schemes import GATHER_SCHEMES, SHARED_SCHEMES, Reduction, Scheme
from kernels.triton_gather import gather_linear_cross_entropy
from kernels.triton_shared import shared_linear_cross_entropy

__all__ = ["Reduction", "Scheme", "triton_linear_cross_entropy"]


def triton_linear_cross_entropy(
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
    """The loss of docs/design.md#the-loss for already validated inputs.

    hidden [N, d] (contiguous), items [C, d] (row-major), targets [N] int64 (ignore_index allowed).
    negatives: None for "full" and "drawn"; [K] for "shared"; [B, K] for "sequence" (row i uses
    negatives[i // rows_per_sequence]); [N, K] for "position". int64 or int32, in [0, C).
    num_negatives: K (C for "full"). seed: only for "drawn".
    log_q: None (no correction), a float (the same log q for every item, e.g. -log C for uniform),
    or a float32 tensor [C]; the correction subtracted from a negative's logit is log(K) + log_q.
    Returns a float32 scalar for "mean"/"sum" (0 when no row is kept) or [N] for "none"
    (0 for ignored rows).
    """
    if scheme in ("full", "shared", "sequence"):
        return shared_linear_cross_entropy(
            hidden, items, targets, negatives, scheme=scheme, num_negatives=num_negatives,
            rows_per_sequence=rows_per_sequence, log_q=log_q,
            remove_accidental_hits=remove_accidental_hits, ignore_index=ignore_index, reduction=reduction,
        )
    if scheme in ("position", "drawn"):
        return gather_linear_cross_entropy(
            hidden, items, targets, negatives, scheme=scheme, num_negatives=num_negatives, seed=seed,
            log_q=log_q, remove_accidental_hits=remove_accidental_hits, ignore_index=ignore_index,
            reduction=reduction,
        )
    raise ValueError(f"scheme: expected one of {', '.join(SHARED_SCHEMES + GATHER_SCHEMES)}, got {scheme!r}")
