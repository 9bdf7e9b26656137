"""Fused CCE- for per-position negatives: Triton gather kernels and their autograd function.

Every row i has its own K negatives, either an index tensor `[N, K]` ("position") or drawn inside
the kernel from a seed ("drawn", see `kernels.draw`). Nothing is shared between rows, so this is a
gather, not a GEMM: each pass reads N*K item rows of d values, and the pass count is what costs.

Forward (one program per row, the K negatives in chunks of BLOCK_K): gather the chunk's item rows
`[BLOCK_K, d]`, dot them with h_i, apply the logQ correction (drawn negatives: and their stratum
weight, `kernels.draw`) and the accidental-hit mask, and fold
them into an online logsumexp that starts from the positive logit. Only the per-row loss and
logsumexp (fp32 `[N]`) are kept for backward; logits never reach global memory.

Backward (one pass, one program per row and column block of BLOCK_K negatives, the column block
the slow grid axis): regather and recompute the logits, p_ik = exp(s_ik - lse_i), then in the same
pass over the gathered tile
    dH_i      += g_i * sum_k p_ik E[n_ik]   (+ g_i (p_i0 - 1) E[p_i] in column block 0)   (atomic add)
    dE[n_ik]  += g_i * p_ik * h_i                                                      (atomic scatter-add)
    dE[p_i]   += g_i * (p_i0 - 1) * h_i   (column block 0)                             (atomic scatter-add)
Programs run roughly in launch order, so the GPU works on one column block of every row at a time.
When a column block's negatives lie in one part of the catalogue, the concurrent scatter-adds hit an
L2-sized slice of the item gradient instead of all of it (measured at N=51,200, K=2047, d=64,
C=10^6 on an H200: 15.5 ms against 24.0 ms; notes/kernel-gather.md). Drawn negatives are built that
way (negative k is uniform on the k-th catalogue slice, kernels.draw); tensor negatives are sorted
within each row first (`sorted_rows`: an int32 copy of the [N, K] indices, half the size of an int64
input, alive during backward; only at d <= SORT_MAX_DIM, where it was measured to pay).
The atomics stay: the destinations are arbitrary items shared by arbitrary rows, so no program owns
an item row, and dH_i is summed over column blocks. They are fp32, relaxed ordering, 16 bytes wide
(Triton emits `atom.global.gpu.relaxed.add.v4.f32` for sm_90), into fp32 gradients: for fp32 inputs
(autocast training keeps an fp32 item table, the main case) these buffers ARE the gradients. For
bf16/fp16 inputs they are cast at the end: half-precision atomic accumulation of ~N*K/C terms per item
loses too much, so a half item table costs one extra fp32 `[C, d]` buffer (2x the gradient's size)
and half hidden states an fp32 `[N, d]` one. The atomics make both gradients' summation order, and
so their last bits, non-deterministic.

Drawn negatives are regenerated in backward from the seed: no index memory at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl

from kernels import index_guard, triton_common
from kernels.draw import MAX_ITEMS, MAX_ROWS, seed_key, slice_starts, slice_step
from kernels.schemes import GatherScheme, Reduction
from kernels.triton_common import LOG_Q_NONE, check_reduction, log_q_correction, parse_log_q
from kernels.triton_guard import NEGATIVES_SLOT, TARGETS_SLOT, in_catalogue, report_refused

# Backward sorts each row of tensor negatives (see GatherConfig.sort_negatives) when d <= SORT_MAX_DIM;
# study/memory_model.py charges the int32 copy and torch.sort's buffers (SORT_CHUNK_ELEMENTS at a time).
SORT_MAX_DIM = 128
SORT_CHUNK_ELEMENTS = 1 << 22
# Up to this many negatives a row is sorted by one Triton program in registers (`sorted_rows`); beyond,
# torch.sort. H200 (results/h200-2026-11-26b/run6-sort-d8bc2d9): K=511 0.79 ms against torch.sort's
# 1.91; K=2047 7.38 against 3.94; K=4096 10.9 against 3.93 (N*K of 2.6-10.5 * 10^7 indices).
SORT_IN_TRITON_MAX_NEGATIVES = 512


@dataclass(frozen=True)
class GatherConfig:
    """Launch parameters of the gather kernels.

    Forward: one program per row, BLOCK_K = block_k negatives per chunk (a power of two).
    Backward: one program per (row, backward_block_k negatives), column blocks the slow grid axis
    (see _gather_backward_kernel). sort_negatives: backward walks a copy of tensor negatives sorted
    within each row (int32 [N, K]), so that a column block lies in one part of the catalogue as the
    drawn negatives' do by construction.
    """

    block_k: int
    num_warps: int = 4
    num_stages: int = 2
    backward_block_k: int = 16
    backward_warps: int = 4
    sort_negatives: bool = True
    # Backward in this many catalogue slices, one launch each (0: one launch over all column blocks).
    # Each launch visits only the negatives inside its slice (tensor negatives sorted within rows first;
    # drawn ones by columns), accumulates their item gradient in a float32 buffer of that slice alone
    # and writes it into the gradient: for half item tables the float32 accumulator is C/item_slices rows
    # instead of C, and the concurrent scatter-adds stay inside one slice. Not the default: not timed yet
    # (benchmarks/dev_speed.py); the way to the memory target of half item tables (notes/kernel-gather.md).
    item_slices: int = 0
    # Sliced backward only: rows per program (each row brings only its negatives in one slice). The
    # column-block backward takes one: 2 or 4 rows per program were slower on an H200.
    backward_rows: int = 1


def default_config(device: torch.device, dim: int, num_negatives: int) -> GatherConfig:
    block_d = triton.next_power_of_2(dim)
    sort = dim <= SORT_MAX_DIM
    if device.type != "cuda":
        # The interpreter runs every element in numpy: small tiles keep tests fast.
        return GatherConfig(block_k=16, num_warps=1, num_stages=1, backward_block_k=16, backward_warps=1,
                            sort_negatives=sort)
    # Measured on H200 (notes/kernel-gather.md), forward: 128 at d <= 64, 16 at d = 256. Backward at
    # N=51,200 K=2047 d=64: column blocks of 128 rows, 4 warps, sorted: 15.5 ms (unsorted 24.0; the sort
    # alone 3.9). At N=65,536 K=511 d=256 sorting gained nothing (33.8 vs 33.6 ms: the slice of the item
    # gradient a column block touches no longer fits L2); blocks of 16 with 2 warps were fastest (29.9).
    # d = 128 was not measured: between the two.
    small = max(16, min(triton.next_power_of_2(max(num_negatives, 1)), 128))
    block_k = 128 if block_d <= 64 else 4096 // block_d
    if block_d <= 64:
        backward_block_k, backward_warps = 128, 4
    elif block_d <= 128:
        backward_block_k, backward_warps = 64, 4
    else:
        backward_block_k, backward_warps = 4096 // block_d, 2
    return GatherConfig(block_k=min(block_k, small), num_warps=4, num_stages=2,
                        backward_block_k=min(backward_block_k, small), backward_warps=backward_warps,
                        sort_negatives=sort)


# --- the in-kernel draw: kernels.draw written in uint32 (keep the two identical) -----------------

@triton.jit
def _mix32(x):
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    x = x ^ (x >> 16)
    return x


@triton.jit
def _slice_bounds(ks, num_items, num_negatives, slice_step):
    # The k-th of K catalogue slices is [start_k, start_(k+1)), start_k = (k * slice_step) >> 32, the last
    # ending at C (kernels.draw; no 64-bit division here).
    step = tl.cast(slice_step, tl.uint64)
    start = (ks.to(tl.uint64) * step) >> 32
    next_start = ((ks + 1).to(tl.uint64) * step) >> 32
    end = tl.where(ks + 1 >= num_negatives, tl.cast(num_items, tl.uint64), next_start)
    return start, end


@triton.jit
def _draw_items(row_state, ks, num_items, num_negatives, slice_step):
    # Negative k is uniform on the k-th catalogue slice.
    state = _mix32(row_state + ks.to(tl.uint32) * 0x9E3779B9)
    start, end = _slice_bounds(ks, num_items, num_negatives, slice_step)
    return (start + ((state.to(tl.uint64) * (end - start)) >> 32)).to(tl.int64)


@triton.jit
def _stratum_log_weights(ks, num_items, num_negatives, slice_step):
    # log(size_k * K / C), added to drawn negative k's logit: with it every item counts K/C times in
    # expectation, as with K uniform draws, when K does not divide C (kernels.draw.slice_log_weights).
    start, end = _slice_bounds(ks, num_items, num_negatives, slice_step)
    size = tl.where(ks < num_negatives, (end - start).to(tl.float32), 1.0)  # columns past K: no slice
    ratio = tl.cast(num_negatives, tl.float32) / tl.cast(num_items, tl.float32)
    return tl.log(size * ratio)


@triton.jit
def _row_state(row, stream_key):
    """The per-row hash state of the draw (kernels.draw: mix32(row ^ key))."""
    return _mix32(row.to(tl.uint32) ^ tl.cast(stream_key, tl.uint32))


@triton.jit
def _draw_kernel(out_ptr, stream_key, num_negatives, num_items, slice_step, BLOCK_K: tl.constexpr):
    """Writes the draws of one row; exists so tests can compare the Triton draw with the host twin."""
    row = tl.program_id(0)
    row_state = _row_state(row, stream_key)
    for k0 in range(0, num_negatives, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        items = _draw_items(row_state, ks, num_items, num_negatives, slice_step)
        tl.store(out_ptr + row.to(tl.int64) * num_negatives + ks, items, mask=ks < num_negatives)


# --- shared pieces of forward and backward -------------------------------------------------------

@triton.jit
def _row_target(targets_ptr, row, ignore_index, num_items):
    """(target, kept, refused): the row's target (0 where not kept), whether the row counts, and whether
    its target was refused as out of range (kernels.index_guard: the row then counts as ignored)."""
    target = tl.load(targets_ptr + row).to(tl.int64)
    labelled = target != ignore_index
    refused = labelled & ~in_catalogue(target, num_items)
    kept = labelled & ~refused
    return tl.where(kept, target, 0), kept, refused


@triton.jit
def _positive_row(items_ptr, target, kept, stride_item, d_offs, d_mask, hidden_row):
    """The positive item's row in hidden's precision (as float32) and its logit h_i . E[p_i]."""
    # tl.where(kept, mask, False), not `mask & kept`, wherever a row's scalar flag meets a block mask:
    # Triton 3.9's interpreter gives a scalar comparison the dtype of its operands, so `block & scalar`
    # became an int32 mask that its loads refuse ("mask has unsupported dtype"). Same code on the GPU.
    positive = tl.load(items_ptr + target * stride_item + d_offs, mask=tl.where(kept, d_mask, False),
                       other=0.0)
    positive = positive.to(hidden_row.dtype).to(tl.float32)
    return positive, tl.sum(positive * hidden_row.to(tl.float32), axis=0)


@triton.jit
def _negative_logits(
    hidden_row, items_ptr, negatives_ptr, log_q_ptr, row, target, kept, ks, column_end, d_offs, d_mask,
    row_state, num_negatives, num_items, slice_step, stride_item, stride_neg, log_q_scalar,
    DRAWN: tl.constexpr, LOG_Q_MODE: tl.constexpr, REMOVE_HITS: tl.constexpr,
):
    """Gathers one chunk of negatives of a row: (item ids, item rows fp32 [BLOCK_K, BLOCK_D], logits,
    the columns that count, the columns refused as out of range). Negatives of a row that is not kept
    are not read at all. Columns from column_end on do not count."""
    k_mask = tl.where(kept, ks < column_end, False)
    if DRAWN:
        item_ids = _draw_items(row_state, ks, num_items, num_negatives, slice_step)
        refused = ks < 0  # drawn items lie in the catalogue by construction
    else:
        item_ids = tl.load(negatives_ptr + row.to(tl.int64) * stride_neg + ks, mask=k_mask, other=0)
        item_ids = item_ids.to(tl.int64)
        # kernels.index_guard: an out-of-range negative is left out, never turned into an address.
        refused = k_mask & ~in_catalogue(item_ids, num_items)
        k_mask = k_mask & ~refused
        item_ids = tl.where(refused, 0, item_ids)
    tile_mask = k_mask[:, None] & d_mask[None, :]
    rows = tl.load(items_ptr + item_ids[:, None] * stride_item + d_offs[None, :], mask=tile_mask, other=0.0)
    # Autocast semantics: an fp32 table is used in hidden's precision, cast on load (no table copy).
    rows = rows.to(hidden_row.dtype).to(tl.float32)
    logits = tl.sum(rows * hidden_row.to(tl.float32)[None, :], axis=1)
    if LOG_Q_MODE != LOG_Q_NONE:
        logits = logits - log_q_correction(log_q_ptr, item_ids, k_mask, log_q_scalar, LOG_Q_MODE, 1.0)
    if DRAWN:
        logits = logits + _stratum_log_weights(ks, num_items, num_negatives, slice_step)
    if REMOVE_HITS:
        k_mask = k_mask & (item_ids != target)
    logits = tl.where(k_mask, logits, float("-inf"))
    return item_ids, rows, logits, k_mask, refused


@triton.jit
def _gather_forward_kernel(
    hidden_ptr, items_ptr, targets_ptr, negatives_ptr, log_q_ptr, loss_ptr, lse_ptr, kept_ptr, flags_ptr,
    num_negatives, num_items, slice_step, dim, stride_item, stride_neg, stream_key, log_q_scalar,
    ignore_index,
    DRAWN: tl.constexpr, LOG_Q_MODE: tl.constexpr, REMOVE_HITS: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0)
    target, kept, target_refused = _row_target(targets_ptr, row, ignore_index, num_items)
    report_refused(flags_ptr, TARGETS_SLOT, tl.load(targets_ptr + row), target_refused, num_items)
    d_offs = tl.arange(0, BLOCK_D)
    d_mask = d_offs < dim
    hidden_row = tl.load(hidden_ptr + row.to(tl.int64) * dim + d_offs, mask=d_mask, other=0.0)
    positive, positive_logit = _positive_row(items_ptr, target, kept, stride_item, d_offs, d_mask, hidden_row)

    row_state = _row_state(row, stream_key)
    running_max = positive_logit
    running_sum = positive_logit * 0.0 + 1.0
    for k0 in range(0, num_negatives, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        _, _, logits, _, refused = _negative_logits(
            hidden_row, items_ptr, negatives_ptr, log_q_ptr, row, target, kept, ks, num_negatives, d_offs,
            d_mask, row_state, num_negatives, num_items, slice_step, stride_item, stride_neg, log_q_scalar,
            DRAWN, LOG_Q_MODE, REMOVE_HITS,
        )
        if not DRAWN:
            report_refused(flags_ptr, NEGATIVES_SLOT,
                           tl.load(negatives_ptr + row.to(tl.int64) * stride_neg + ks, mask=refused, other=0),
                           refused, num_items)
        new_max = tl.maximum(running_max, tl.max(logits, axis=0))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(logits - new_max), axis=0)
        running_max = new_max
    lse = running_max + tl.log(running_sum)
    tl.store(lse_ptr + row, lse)
    tl.store(loss_ptr + row, tl.where(kept, lse - positive_logit, 0.0))
    tl.store(kept_ptr + row, kept.to(tl.float32))


@triton.jit
def _backward_row(hidden_ptr, targets_ptr, lse_ptr, row_grad_ptr, row, dim, stream_key, ignore_index,
                  num_items, d_offs, d_mask):
    """What backward needs of a row: (target, kept, upstream gradient g_i (0 if not kept), lse, the hidden
    row as stored and as float32, the draw's row state)."""
    target, kept, _ = _row_target(targets_ptr, row, ignore_index, num_items)
    row_grad = tl.where(kept, tl.load(row_grad_ptr + row), 0.0)
    lse = tl.load(lse_ptr + row)
    hidden_row = tl.load(hidden_ptr + row.to(tl.int64) * dim + d_offs, mask=d_mask, other=0.0)
    hidden_f32 = hidden_row.to(tl.float32)
    row_state = _row_state(row, stream_key)
    return target, kept, row_grad, lse, hidden_row, hidden_f32, row_state


@triton.jit
def _positive_share(items_ptr, target, kept, stride_item, d_offs, d_mask, hidden_row, row_grad, lse):
    """(E[p_i] as float32, g_i (p_i0 - 1)): the positive's row and its coefficient in both gradients,
    dH_i += g_i (p_i0 - 1) E[p_i] and dE[p_i] += g_i (p_i0 - 1) h_i."""
    positive, positive_logit = _positive_row(items_ptr, target, kept, stride_item, d_offs, d_mask, hidden_row)
    return positive, row_grad * (tl.exp(positive_logit - lse) - 1.0)


@triton.jit
def _negatives_backward(
    hidden_row, hidden_f32, items_ptr, negatives_ptr, log_q_ptr, grad_items_ptr, row, target, kept, ks,
    column_end, d_offs, d_mask, row_state, row_grad, lse, item_base, num_negatives, num_items, slice_step,
    dim, stride_item, stride_neg, log_q_scalar,
    DRAWN: tl.constexpr, LOG_Q_MODE: tl.constexpr, REMOVE_HITS: tl.constexpr,
    COMPUTE_GRAD_ITEMS: tl.constexpr,
):
    """Backward of one chunk of a row's negatives (columns ks, up to column_end): scatter-adds
    dE[n_ik] += g_i p_ik h_i into row n_ik - item_base of grad_items_ptr (float32; atomic: negatives of
    different rows, and of one row, may repeat) and returns the chunk's share of dH_i,
    g_i sum_k p_ik E[n_ik]."""
    item_ids, rows, logits, k_mask, _ = _negative_logits(
        hidden_row, items_ptr, negatives_ptr, log_q_ptr, row, target, kept, ks, column_end, d_offs, d_mask,
        row_state, num_negatives, num_items, slice_step, stride_item, stride_neg, log_q_scalar,
        DRAWN, LOG_Q_MODE, REMOVE_HITS,
    )
    coef = row_grad * tl.exp(logits - lse)
    if COMPUTE_GRAD_ITEMS:
        tl.atomic_add(grad_items_ptr + (item_ids - item_base)[:, None] * dim + d_offs[None, :],
                      coef[:, None] * hidden_f32[None, :], mask=k_mask[:, None] & d_mask[None, :],
                      sem="relaxed")
    return tl.sum(coef[:, None] * rows, axis=0)


@triton.jit
def _gather_backward_kernel(
    hidden_ptr, items_ptr, targets_ptr, negatives_ptr, log_q_ptr, lse_ptr, row_grad_ptr,
    grad_hidden_ptr, grad_items_ptr,
    num_negatives, num_items, slice_step, dim, stride_item, stride_neg, stream_key, log_q_scalar,
    ignore_index,
    DRAWN: tl.constexpr, LOG_Q_MODE: tl.constexpr, REMOVE_HITS: tl.constexpr,
    COMPUTE_GRAD_HIDDEN: tl.constexpr, COMPUTE_GRAD_ITEMS: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One column block of negatives (axis 1, the slow one) of one row (axis 0).

    Programs run roughly in launch order, so at any moment the GPU works on one column block of
    every row. The negatives of a column block lie in one slice of the catalogue (drawn negatives by
    construction; tensor negatives after sorting each row), so the scatter-adds of concurrent programs
    hit an L2-sized slice of the item gradient instead of the whole of it. dH_i is summed over column
    blocks with float32 atomics into grad_hidden_ptr (a float32 [N, d] buffer, zeroed).
    """
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    ks = chunk * BLOCK_K + tl.arange(0, BLOCK_K)
    d_offs = tl.arange(0, BLOCK_D)
    d_mask = d_offs < dim
    target, kept, row_grad, lse, hidden_row, hidden_f32, row_state = _backward_row(
        hidden_ptr, targets_ptr, lse_ptr, row_grad_ptr, row, dim, stream_key, ignore_index, num_items,
        d_offs, d_mask)
    grad_hidden = _negatives_backward(
        hidden_row, hidden_f32, items_ptr, negatives_ptr, log_q_ptr, grad_items_ptr, row, target, kept, ks,
        num_negatives, d_offs, d_mask, row_state, row_grad, lse, 0, num_negatives, num_items, slice_step, dim,
        stride_item, stride_neg, log_q_scalar, DRAWN, LOG_Q_MODE, REMOVE_HITS, COMPUTE_GRAD_ITEMS,
    )
    if chunk == 0:
        # The positive's share, once per row (atomic into dE: the positive may be any row's item).
        positive, positive_coef = _positive_share(items_ptr, target, kept, stride_item, d_offs,
                                                  d_mask, hidden_row, row_grad, lse)
        grad_hidden += positive_coef * positive
        if COMPUTE_GRAD_ITEMS:
            tl.atomic_add(grad_items_ptr + target * dim + d_offs, positive_coef * hidden_f32,
                          mask=tl.where(kept, d_mask, False), sem="relaxed")
    if COMPUTE_GRAD_HIDDEN:
        tl.atomic_add(grad_hidden_ptr + row.to(tl.int64) * dim + d_offs, grad_hidden, mask=d_mask,
                      sem="relaxed")


@triton.jit
def _gather_slice_backward_kernel(
    hidden_ptr, items_ptr, targets_ptr, negatives_ptr, segments_ptr, log_q_ptr, lse_ptr, row_grad_ptr,
    grad_hidden_ptr, slice_grad_ptr,
    num_rows, num_negatives, num_items, slice_step, dim, stride_item, stride_neg, stream_key, log_q_scalar,
    ignore_index, slice_index, num_slices, slice_lo, slice_hi, item_base, first_column, end_column,
    DRAWN: tl.constexpr, LOG_Q_MODE: tl.constexpr, REMOVE_HITS: tl.constexpr,
    COMPUTE_GRAD_HIDDEN: tl.constexpr, COMPUTE_GRAD_ITEMS: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Backward of ROWS rows restricted to the negatives in catalogue slice [slice_lo, slice_hi).

    One launch per slice (GatherConfig.item_slices): every negative a launch visits lies in its slice,
    so the item gradient is accumulated in float32 for that slice alone (slice_grad_ptr, row
    item - item_base), while the GPU's concurrent scatter-adds stay inside it. Drawn negatives: the
    slice is the columns [first_column, end_column) of every row (stratified draws). Tensor negatives:
    each row's negatives sorted, segments_ptr [N, num_slices + 1] gives the columns of each slice.
    A row belongs to one program per launch, so dH (float32, grad_hidden_ptr) is added without atomics.
    """
    d_offs = tl.arange(0, BLOCK_D)
    d_mask = d_offs < dim
    for r in range(ROWS):
        row = tl.program_id(0) * ROWS + r
        if row < num_rows:
            target, kept, row_grad, lse, hidden_row, hidden_f32, row_state = _backward_row(
                hidden_ptr, targets_ptr, lse_ptr, row_grad_ptr, row, dim, stream_key, ignore_index, num_items,
                d_offs, d_mask)
            if DRAWN:
                start = first_column
                end = end_column
            else:
                segment = segments_ptr + row.to(tl.int64) * (num_slices + 1) + slice_index
                start = tl.load(segment)
                end = tl.load(segment + 1)
            grad_hidden = tl.zeros([BLOCK_D], dtype=tl.float32)
            for k0 in range(start, end, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                grad_hidden += _negatives_backward(
                    hidden_row, hidden_f32, items_ptr, negatives_ptr, log_q_ptr, slice_grad_ptr, row, target,
                    kept, ks, end, d_offs, d_mask, row_state, row_grad, lse, item_base, num_negatives,
                    num_items, slice_step, dim, stride_item, stride_neg, log_q_scalar, DRAWN, LOG_Q_MODE,
                    REMOVE_HITS, COMPUTE_GRAD_ITEMS,
                )
            # The positive's share: of dH once per row (slice 0), of dE[p_i] in the launch whose slice
            # holds the target; its row is read only in those launches.
            in_slice = kept & (target >= slice_lo) & (target < slice_hi)
            if (slice_index == 0) | in_slice:
                positive, positive_coef = _positive_share(items_ptr, target, kept, stride_item, d_offs,
                                                          d_mask, hidden_row, row_grad, lse)
                if slice_index == 0:
                    grad_hidden += positive_coef * positive
                if COMPUTE_GRAD_ITEMS:
                    tl.atomic_add(slice_grad_ptr + (target - item_base) * dim + d_offs,
                                  positive_coef * hidden_f32, mask=tl.where(in_slice, d_mask, False),
                                  sem="relaxed")
            if COMPUTE_GRAD_HIDDEN:
                out = grad_hidden_ptr + row.to(tl.int64) * dim + d_offs
                tl.store(out, tl.load(out, mask=d_mask, other=0.0) + grad_hidden, mask=d_mask)


# --- host side ----------------------------------------------------------------------------------

def draw_in_kernel(seed: int, num_rows: int, num_negatives: int, num_items: int,
                   device: torch.device | str = "cpu", block_k: int = 16) -> torch.Tensor:
    """The negatives as the Triton draw produces them (int64 [num_rows, K]); for tests and checks."""
    out = torch.empty((num_rows, num_negatives), dtype=torch.int64, device=device)
    if num_rows and num_negatives:
        _draw_kernel[(num_rows,)](out, seed_key(seed), num_negatives, num_items,
                                  slice_step(num_items, num_negatives), BLOCK_K=block_k)
    return out


@dataclass(frozen=True)
class _Plan:
    """Everything about a call that is not a tensor: the kernels' scalar and constexpr arguments."""

    scheme: GatherScheme
    num_items: int
    num_negatives: int
    slice_step: int  # kernels.draw: C / K in 32.32 fixed point
    stream_key: int  # kernels.draw: the seed's key ("drawn"; 0 for "position")
    log_q_mode: int  # LOG_Q_NONE, LOG_Q_CONSTANT or LOG_Q_TENSOR (kernels.triton_common)
    log_q_scalar: float
    remove_hits: bool
    ignore_index: int
    config: GatherConfig

    @property
    def drawn(self) -> bool:
        return self.scheme == "drawn"


def _common_args(items: torch.Tensor, negatives: torch.Tensor | None, dim: int,
                 plan: _Plan) -> tuple[int | float, ...]:
    """The kernels' arguments from num_negatives to ignore_index, in their order (strides of the tensors
    launched with: backward may walk a sorted copy of the negatives)."""
    stride_neg = negatives.stride(0) if negatives is not None else 0
    return (plan.num_negatives, plan.num_items, plan.slice_step, dim, items.stride(0), stride_neg,
            plan.stream_key, plan.log_q_scalar, plan.ignore_index)


class _GatherLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, hidden: torch.Tensor, items: torch.Tensor, targets: torch.Tensor,
        negatives: torch.Tensor | None, log_q_tensor: torch.Tensor | None, plan: _Plan,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss [N], kept [N]): the row losses and 1.0 on the rows that count (a labelled target in
        range), 0.0 elsewhere, for the mean's count."""
        num_rows, dim = hidden.shape
        config = plan.config
        loss = triton_common.new_output((num_rows,), torch.float32, hidden.device)
        lse = triton_common.new_output((num_rows,), torch.float32, hidden.device)
        kept = triton_common.new_output((num_rows,), torch.float32, hidden.device)
        if num_rows:
            _gather_forward_kernel[(num_rows,)](
                hidden, items, targets, negatives if negatives is not None else targets,
                log_q_tensor if log_q_tensor is not None else lse, loss, lse, kept,
                index_guard.flags(hidden.device), *_common_args(items, negatives, dim, plan),
                DRAWN=plan.drawn, LOG_Q_MODE=plan.log_q_mode, REMOVE_HITS=plan.remove_hits,
                BLOCK_K=config.block_k, BLOCK_D=triton.next_power_of_2(dim),
                num_warps=config.num_warps, num_stages=config.num_stages,
            )
        ctx.save_for_backward(hidden, items, targets, negatives, log_q_tensor, lse)
        ctx.plan = plan
        ctx.mark_non_differentiable(kept)
        return loss, kept

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, _grad_kept: torch.Tensor | None
                 ) -> tuple[torch.Tensor | None, ...]:
        hidden, items, targets, negatives, log_q_tensor, lse = ctx.saved_tensors
        need_hidden, need_items = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        num_rows, dim = hidden.shape
        plan: _Plan = ctx.plan
        config = plan.config
        row_grad = grad_loss.to(torch.float32).contiguous()
        if config.item_slices > 0:
            return _slice_backward(hidden, items, targets, negatives, log_q_tensor, lse, row_grad,
                                   need_hidden, need_items, plan)
        # float32 accumulation targets of the atomics; for float32 inputs they are the gradients.
        grad_hidden = (torch.zeros((num_rows, dim), dtype=torch.float32, device=hidden.device)
                       if need_hidden else None)
        grad_items = (torch.zeros((items.shape[0], dim), dtype=torch.float32, device=items.device)
                      if need_items else None)
        if negatives is not None and config.sort_negatives:
            negatives = sorted_rows(negatives)
        if num_rows and (need_hidden or need_items):
            # At least one column block: its programs also add the positive's share.
            grid = (num_rows, max(1, triton.cdiv(plan.num_negatives, config.backward_block_k)))
            _gather_backward_kernel[grid](
                hidden, items, targets, negatives if negatives is not None else targets,
                log_q_tensor if log_q_tensor is not None else lse, lse, row_grad,
                grad_hidden if grad_hidden is not None else lse,
                grad_items if grad_items is not None else lse,
                *_common_args(items, negatives, dim, plan),
                DRAWN=plan.drawn, LOG_Q_MODE=plan.log_q_mode, REMOVE_HITS=plan.remove_hits,
                COMPUTE_GRAD_HIDDEN=need_hidden, COMPUTE_GRAD_ITEMS=need_items,
                BLOCK_K=config.backward_block_k, BLOCK_D=triton.next_power_of_2(dim),
                num_warps=config.backward_warps, num_stages=1,
            )
        if grad_hidden is not None and grad_hidden.dtype != hidden.dtype:
            grad_hidden = grad_hidden.to(hidden.dtype)
        if grad_items is not None and grad_items.dtype != items.dtype:
            grad_items = grad_items.to(items.dtype)
        return grad_hidden, grad_items, None, None, None, None


def catalogue_slices(num_items: int, num_negatives: int, slices: int, *, drawn: bool
                     ) -> list[tuple[int, int, int, int]]:
    """(first item, end item, first column, end column) of each slice of the sliced backward.

    Drawn negatives: groups of consecutive columns, whose items lie in consecutive draw slices (column k
    is drawn from [start_k, start_(k+1)), kernels.draw), so at most K groups. Tensor negatives: C split
    into `slices` equal item ranges (the columns differ by row: the kernel reads them from segments)."""
    if drawn:
        count = max(1, min(slices, num_negatives))
        starts = slice_starts(num_items, num_negatives).tolist()
        columns = [(i * num_negatives) // count for i in range(count + 1)]
        return [(starts[columns[i]], starts[columns[i + 1]], columns[i], columns[i + 1])
                for i in range(count)]
    bounds = [(i * num_items) // slices for i in range(slices + 1)]
    return [(bounds[i], bounds[i + 1], 0, 0) for i in range(slices)]


def _slice_backward(hidden: torch.Tensor, items: torch.Tensor, targets: torch.Tensor,
                    negatives: torch.Tensor | None, log_q_tensor: torch.Tensor | None, lse: torch.Tensor,
                    row_grad: torch.Tensor, need_hidden: bool, need_items: bool,
                    plan: _Plan) -> tuple[torch.Tensor | None, ...]:
    """Backward in catalogue slices (GatherConfig.item_slices), one launch each: the float32 item
    gradient exists for one slice at a time (for half item tables; float32 tables accumulate in place)."""
    num_rows, dim = hidden.shape
    num_items = items.shape[0]
    config = plan.config
    slices = catalogue_slices(num_items, plan.num_negatives, config.item_slices, drawn=plan.drawn)
    segments = lse  # unused by drawn negatives
    if negatives is not None:
        negatives = sorted_rows(negatives)
        bounds = torch.tensor([lo for lo, _, _, _ in slices] + [num_items], dtype=torch.int32,
                              device=negatives.device)
        segments = torch.searchsorted(negatives, bounds.expand(num_rows, -1).contiguous(), out_int32=True)
    grad_hidden = (torch.zeros((num_rows, dim), dtype=torch.float32, device=hidden.device)
                   if need_hidden else None)
    in_place = items.dtype == torch.float32
    grad_items = buffer = None
    if need_items:
        if in_place:
            grad_items = torch.zeros((num_items, dim), dtype=torch.float32, device=items.device)
        else:
            grad_items = triton_common.new_output((num_items, dim), items.dtype, items.device)
            longest = max(hi - lo for lo, hi, _, _ in slices)
            buffer = torch.empty((longest, dim), dtype=torch.float32, device=items.device)
    for index, (lo, hi, first_column, end_column) in enumerate(slices):
        if buffer is not None:
            buffer[:hi - lo].zero_()
        if num_rows and (need_hidden or need_items):
            _gather_slice_backward_kernel[(triton.cdiv(num_rows, config.backward_rows),)](
                hidden, items, targets, negatives if negatives is not None else targets, segments,
                log_q_tensor if log_q_tensor is not None else lse, lse, row_grad,
                grad_hidden if grad_hidden is not None else lse,
                (buffer if buffer is not None else grad_items) if need_items else lse,
                num_rows, *_common_args(items, negatives, dim, plan),
                index, len(slices), lo, hi, lo if buffer is not None else 0, first_column, end_column,
                DRAWN=plan.drawn, LOG_Q_MODE=plan.log_q_mode, REMOVE_HITS=plan.remove_hits,
                COMPUTE_GRAD_HIDDEN=need_hidden, COMPUTE_GRAD_ITEMS=need_items,
                ROWS=config.backward_rows, BLOCK_K=config.backward_block_k,
                BLOCK_D=triton.next_power_of_2(dim), num_warps=config.backward_warps, num_stages=1,
            )
        if buffer is not None and grad_items is not None:
            grad_items[lo:hi].copy_(buffer[:hi - lo])
    if grad_hidden is not None and grad_hidden.dtype != hidden.dtype:
        grad_hidden = grad_hidden.to(hidden.dtype)
    return grad_hidden, grad_items, None, None, None, None


@triton.jit
def _sort_rows_kernel(src_ptr, dst_ptr, num_negatives, stride_src, BLOCK_K: tl.constexpr):
    """One row of negatives sorted in registers (a bitonic network); padding sorts last, unstored."""
    row = tl.program_id(0)
    ks = tl.arange(0, BLOCK_K)
    mask = ks < num_negatives
    values = tl.load(src_ptr + row.to(tl.int64) * stride_src + ks, mask=mask, other=2147483647)
    # Clamped before the int32 cast, so that an out-of-range int64 index stays out of range (refused by
    # the backward kernel as by the forward) instead of wrapping into the catalogue.
    values = tl.minimum(tl.maximum(values, -1), 2147483647).to(tl.int32)
    values = tl.sort(values, dim=0)
    tl.store(dst_ptr + row.to(tl.int64) * num_negatives + ks, values, mask=mask)


def sorted_rows(negatives: torch.Tensor, *, method: str = "auto") -> torch.Tensor:
    """An int32 copy of [N, K] negatives with each row in ascending order (the loss of a row does not
    depend on the order of its negatives).

    method "triton": one program per row sorts it in registers, no other buffer (K up to
    SORT_IN_TRITON_MAX_NEGATIVES); "torch": `torch.sort` in chunks of rows, which bounds its int32 and
    int64 buffers to SORT_CHUNK_ELEMENTS indices; "auto": triton on CUDA where K allows it (in the CPU
    interpreter torch.sort is much faster; both give the same rows, which the tests check).
    """
    if method not in ("auto", "triton", "torch"):
        raise ValueError(f"method: expected 'auto', 'triton' or 'torch', got {method!r}")
    num_rows, num_negatives = negatives.shape
    out = torch.empty((num_rows, num_negatives), dtype=torch.int32, device=negatives.device)
    if num_rows == 0 or num_negatives == 0:
        return out
    use_triton = negatives.is_cuda and num_negatives <= SORT_IN_TRITON_MAX_NEGATIVES
    if method == "triton" or (method == "auto" and use_triton):
        if negatives.stride(1) != 1:
            negatives = negatives.contiguous()
        block_k = triton.next_power_of_2(num_negatives)
        _sort_rows_kernel[(num_rows,)](negatives, out, num_negatives, negatives.stride(0), BLOCK_K=block_k,
                                       num_warps=max(1, min(8, block_k // 256)))
        return out
    chunk = max(1, SORT_CHUNK_ELEMENTS // num_negatives)
    order = torch.empty((min(chunk, num_rows), num_negatives), dtype=torch.int64, device=negatives.device)
    for first in range(0, num_rows, chunk):
        count = min(chunk, num_rows - first)
        chunk_values = negatives[first:first + count]
        if chunk_values.dtype != torch.int32:
            # Out-of-range int64 values stay out of range (see the kernel); `order` is the scratch space.
            chunk_values = torch.clamp(chunk_values, -1, 2**31 - 1, out=order[:count]).to(torch.int32)
        torch.sort(chunk_values, dim=1, out=(out[first:first + count], order[:count]))
    return out


def gather_linear_cross_entropy(
    hidden: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor | None,
    *,
    scheme: GatherScheme,
    num_negatives: int,
    seed: int | None,
    log_q: torch.Tensor | float | None,
    remove_accidental_hits: bool,
    ignore_index: int,
    reduction: Reduction,
    config: GatherConfig | None = None,
) -> torch.Tensor:
    """CCE- with per-row negatives (docs/design.md#the-loss), fused in Triton.

    hidden [N, d] (float32/bf16/fp16), items [C, d] (last dim contiguous; any row stride, e.g. the
    view `weight[1:]`), targets [N] int64/int32 (ignore_index allowed).
    scheme "position": negatives [N, K] int64/int32 in [0, C). scheme "drawn": negatives None, K =
    num_negatives drawn uniformly inside the kernel from `seed` (exactly `kernels.draw_negatives(seed,
    N, K, C)`); pass a fresh seed every step. Returns fp32: a scalar for "mean" (over kept rows, 0 if
    none) and "sum", or [N] for "none" (0 on ignored rows).
    """
    if hidden.dim() != 2 or items.dim() != 2 or hidden.shape[1] != items.shape[1]:
        raise ValueError(f"hidden/items: expected [N, d] and [C, d], got {tuple(hidden.shape)} "
                         f"and {tuple(items.shape)}")
    num_rows, dim = hidden.shape
    num_items = items.shape[0]
    if targets.shape != (num_rows,):
        raise ValueError(f"targets: expected shape ({num_rows},), got {tuple(targets.shape)}")
    if num_items > MAX_ITEMS or num_rows > MAX_ROWS:
        raise ValueError(f"items/hidden: at most {MAX_ITEMS} items and {MAX_ROWS} rows are supported")
    check_reduction(reduction)
    if scheme == "position":
        if negatives is None or negatives.shape != (num_rows, num_negatives):
            shape = None if negatives is None else tuple(negatives.shape)
            raise ValueError(f"negatives: scheme 'position' needs [{num_rows}, {num_negatives}], got {shape}")
        if negatives.stride(1) != 1:
            negatives = negatives.contiguous()
        stream_key = 0
    elif scheme == "drawn":
        if negatives is not None:
            raise ValueError("negatives: scheme 'drawn' draws its negatives; pass None")
        if seed is None:
            raise ValueError("seed: scheme 'drawn' needs an int seed (a fresh one every step)")
        stream_key = seed_key(seed)
    else:
        raise ValueError(f"scheme: must be 'position' or 'drawn', got {scheme!r}")
    hidden = hidden.contiguous()
    if items.stride(1) != 1:
        items = items.contiguous()
    log_q_mode, log_q_scalar, log_q_tensor = parse_log_q(log_q, num_negatives, num_items, hidden.device)
    plan = _Plan(
        scheme=scheme, num_items=num_items, num_negatives=num_negatives,
        slice_step=slice_step(num_items, num_negatives), stream_key=stream_key, log_q_mode=log_q_mode,
        log_q_scalar=log_q_scalar, remove_hits=bool(remove_accidental_hits), ignore_index=ignore_index,
        config=config or default_config(hidden.device, dim, num_negatives),
    )
    row_losses, kept = _GatherLinearCrossEntropy.apply(hidden, items, targets, negatives, log_q_tensor, plan)
    if reduction == "none":
        return row_losses
    if reduction == "sum":
        return row_losses.sum()
    return row_losses.sum() / kept.sum().clamp(min=1.0)
