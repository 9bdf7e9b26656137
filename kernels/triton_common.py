"""What the two Triton kernel families share: constants, the logQ correction and the output buffers.

`kernels.triton_shared` (dense blocks of negatives, a GEMM) and `kernels.triton_gather` (per-row
negatives, a gather) use the same words for the same things: LOG_Q_MODE / log_q_ptr / log_q_scalar for
the logQ correction, REMOVE_HITS for masking accidental hits, a frozen `_Plan` for a call's non-tensor
arguments and `new_output` for the buffers their kernels overwrite.

A rule of both families' kernels that only the compiler checks: a name bound before a loop and again
inside it is loop-carried and must keep its type, so `_` is not reused for a scalar before a loop and a
block inside it (the interpreter accepts it; tests/test_kernel_compile.py compiles every variant).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kernels.schemes import REDUCTIONS

# exp(x) = exp2(x * LOG2E) (one FMA and one ex2 per element); ln(x) = log2(x) * LN2.
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)

# LOG_Q_MODE, how a call corrects the logits of its negatives by log K + log q[item]:
LOG_Q_NONE = tl.constexpr(0)  # no correction
LOG_Q_CONSTANT = tl.constexpr(1)  # the same log q for every item: log_q_scalar = log K + log q
LOG_Q_TENSOR = tl.constexpr(2)  # log q[item] read from log_q_ptr (float32 [C]): log_q_scalar = log K


@triton.jit
def log_q_correction(log_q_ptr, items, mask, log_q_scalar, LOG_Q_MODE: tl.constexpr, SCALE: tl.constexpr):
    """SCALE * (log K + log q[item]) per entry of `items` (a block of item ids; `mask`: which to read),
    float32: what the logit of each negative is lowered by (SCALE = LOG2E for base-2 logits). Not for
    LOG_Q_NONE, whose callers subtract nothing."""
    if LOG_Q_MODE == LOG_Q_TENSOR:
        log_q = tl.load(log_q_ptr + items, mask=mask, other=0.0).to(tl.float32)
        correction = (log_q + log_q_scalar) * SCALE
    else:
        correction = tl.full(items.shape, log_q_scalar * SCALE, tl.float32)
    return correction


def parse_log_q(log_q: torch.Tensor | float | None, num_negatives: int, num_items: int,
                device: torch.device) -> tuple[int, float, torch.Tensor | None]:
    """(LOG_Q_MODE, log_q_scalar, the float32 [C] tensor for LOG_Q_TENSOR or None) of a call's log_q:
    None, a float (the same log q for every item) or a tensor [C]."""
    if log_q is None:
        return LOG_Q_NONE.value, 0.0, None
    log_k = math.log(num_negatives) if num_negatives > 0 else 0.0
    if isinstance(log_q, torch.Tensor):
        if tuple(log_q.shape) != (num_items,):
            raise ValueError(f"log_q: expected shape ({num_items},) (one value per item), "
                             f"got {tuple(log_q.shape)}")
        return LOG_Q_TENSOR.value, log_k, log_q.detach().to(device=device, dtype=torch.float32).contiguous()
    return LOG_Q_CONSTANT.value, log_k + float(log_q), None


def new_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Every buffer a kernel overwrites completely comes from here (called as `triton_common.new_output`,
    so that tests can poison them all in one place)."""
    return torch.empty(shape, dtype=dtype, device=device)


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: must be 'mean', 'sum' or 'none', got {reduction!r}")
