"""Fused cross-entropy over a dense block of negatives: full catalogue, shared [K], per sequence [B, K].

When many rows score the same negatives the loss is a GEMM followed by a softmax, so the kernels follow
the FlashAttention pattern: a program holds a block of rows, walks the negative tiles with `tl.dot`
and keeps a running max and sum of exponentials (base 2: each exponential is one FMA + ex2, with
LOG2E = log2(e) from kernels.triton_common). Logits never reach global memory; forward
saves only logsumexp and the positive logit per row (float32 [N]). Opt-in (BlockConfig.block_d > 0, or
launch_config(d_blocked=True)): the forward with the d axis blocked, `_forward_dblock_kernel`, whose tiles
are pipelined GEMMs over d chunks (notes/kernel-shared.md); the default keeps whole rows resident. With it,
on shared negatives with both gradients wanted, the backward is one d-blocked pass,
`_backward_dblock_kernel` (SharedConfig.dblock_backward; last item below).

Backward recomputes the logits in two kernels:
- grad_hidden: one program per row block, walking the negative tiles (like forward); no atomics. The
  positive's share (p_i0 - 1) g_i E[p_i] is added once per row outside the loop ("full" scores the
  target column inside the loop, so only -g_i E[p_i] remains outside).
- grad_items: one program per negative tile (and row split, and sequence), walking row blocks.
  "full": each program owns its item rows and writes them directly, the target column included
  (dS = g p - g [c == p_i]), so the item gradient of "full" is deterministic, with no atomics.
  "shared": a [splits, K, d] float32 buffer (splits of the rows fill the GPU when K is small; at most
  N // K of them, so the buffer stays O(N*d + K*d)); the splits are summed and one `index_add_` adds
  the result into the rows of possibly repeated negatives.
  "sequence": each (tile, sequence) program adds its [BLOCK_N, d] sum into the item gradient with
  `tl.atomic_add` (sequences may share negatives; a [B, K, d] buffer would break the O(N*d + K*d)
  memory bound), in the gradient's dtype (bf16/fp16 atomics on CUDA round once per add, as
  `index_add_` into a half gradient does). The Triton interpreter adds half values as raw bits, so on
  CPU half gradients instead go through a float32 [chunk, K, d] buffer + `index_add_`.
- "shared" at d <= 64 and K <= 8192 (SharedConfig.fused_backward) runs one fused backward kernel
  instead of grad_hidden + grad_items: a program per row block walks every negative tile once, keeps dH
  in registers and adds dS^T H of each tile into a float32 [K, d] tile gradient with atomics (then the
  same `index_add_`). One recomputation of the logits instead of two; measured faster only there.
- Opt-in, "shared" (SharedConfig.dblock_backward, launch_config(d_blocked=True) at half precision and d <=
  256): one program per row block keeps its hidden rows resident in chunks of d, computes each logit tile
  once (a sum of chunk products) and from it both dH (registers, one float32 accumulator per chunk) and
  the tile's dE (chunk by chunk, float32 atomics into a [K, d] tile gradient, then the same `index_add_`):
  6NKd executed in the backward instead of the split kernels' 8NKd, no [N, K] anywhere.
- Negatives are prepared once per call (`_prepare_negatives`, one small kernel, no host synchronisation):
  int32 ids, -1 for an index outside [0, C) (reported through kernels.index_guard and never an address),
  and float32 offsets added to the base-2 logits (the logQ correction; -inf where refused). So the tile
  loops read ids and offsets and test no index ranges: forward adds the offset in the FMA that scales the
  logit; grad_items zeroes a refused negative's row when it stores it; grad_hidden and the fused backward
  read its item row as zeros, or add the offsets where they carry a logQ correction. (Range tests inside
  the tile loops made shared K=16384 d=64 40% slower on an H200: notes/kernel-shared.md.)
- The positive part of the item gradient for "shared"/"sequence", dE[p_i] += (p_i0 - 1) g_i h_i, is one
  `index_add_` of an [N, d] float32 buffer: targets repeat arbitrarily and are not ordered, and the
  buffer is within the O(N*d) allowance. On CUDA `index_add_` itself uses atomics, so the item
  gradients of "shared" and "sequence" are deterministic only up to float addition order on repeats.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from kernels import index_guard, tile_memory, triton_common
from kernels.schemes import Reduction, SharedScheme
from kernels.triton_common import LN2, LOG2E, LOG_Q_NONE, check_reduction, log_q_correction, parse_log_q
from kernels.triton_guard import NEGATIVES_SLOT, TARGETS_SLOT, in_catalogue, report_refused

__all__ = ["D_BLOCKED_FORWARD", "BlockConfig", "KernelConfigs", "SharedConfig", "SharedScheme",
           "d_blocked_backward", "default_config", "default_configs", "fit_config", "gpu_config",
           "launch_config", "shared_linear_cross_entropy"]


@dataclass(frozen=True)
class BlockConfig:
    """Tile shape and launch parameters of one kernel. block_m: rows, block_n: negatives per tile.

    block_d (opt-in, forward only): 0 (the default) keeps each row block's whole d-wide rows resident and
    scores a negative tile with one dot over d; a power of two >= 16 instead computes each
    [block_m, block_n] logit tile as a GEMM main loop over d in chunks of block_d, pipelined over
    (negative tile, chunk) steps, so shared memory holds num_stages chunks of both operands rather than
    whole rows and larger tiles fit at d = 256 (the hidden chunks are read again for every negative tile)."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    block_d: int = 0

    def __post_init__(self) -> None:
        if self.block_d != 0 and (self.block_d < 16 or self.block_d & (self.block_d - 1)):
            raise ValueError(f"block_d: expected 0 (whole rows) or a power of two >= 16, got {self.block_d}")


@dataclass(frozen=True)
class SharedConfig:
    """Launch parameters of the dense-negative kernels: one BlockConfig per kernel; `target_programs`
    sets how many row splits grad_items uses."""

    forward: BlockConfig
    grad_hidden: BlockConfig
    grad_items: BlockConfig
    target_programs: int
    # "shared" only, up to fused_max_negatives negatives: both gradients in one kernel (atomics into a
    # [K, d] float32 tile gradient). Otherwise grad_hidden and grad_items, which recompute the logits
    # once each but need no atomics.
    fused_backward: BlockConfig | None = None
    fused_max_negatives: int = 0
    # Opt-in ("shared" only, both gradients wanted; takes precedence over fused_backward): the d-blocked
    # one-pass backward, _backward_dblock_kernel. Its block_d (> 0) is the chunk of d in which the item
    # gradient's tiles are formed and added.
    dblock_backward: BlockConfig | None = None
    # How many programs share a row block in the d-blocked backward, each walking every dblock_splits-th
    # negative tile into its own float32 dH partial ([splits, N, d], summed after): more programs than row
    # blocks where N / block_m is a few waves of one program per multiprocessor and the last wave short.
    dblock_splits: int = 1


KernelConfigs = SharedConfig  # its name before the two kernel families were named alike


@functools.lru_cache(maxsize=64)
def default_config(device: torch.device, dim: int) -> SharedConfig:
    """Tiles tuned on one H200 (see notes/kernel-shared.md); tiny tiles for the CPU interpreter."""
    if device.type != "cuda":
        small = BlockConfig(block_m=16, block_n=16, num_warps=1, num_stages=1)
        return SharedConfig(forward=small, grad_hidden=small, grad_items=small, target_programs=4)
    return gpu_config(dim, torch.cuda.get_device_properties(device).multi_processor_count)


def gpu_config(dim: int, sm_count: int) -> SharedConfig:
    """default_config on a GPU with `sm_count` multiprocessors, whatever its shared memory (launch_config
    fits it to the device)."""
    # From the per-kernel sweep of benchmarks/dev_shared.py on an H200 (bf16, N=51,200, K=16,384).
    # grad_items: block_m is the rows per step, block_n the item tile each program owns.
    # At d = 128 (untimed) the d <= 64 tiles need more shared memory than an H200 has with bf16 hidden rows
    # and a float32 table (triton 3.6: 336 KiB forward, 272 KiB grad_hidden, of 227 KiB; a catalogue-scale
    # run crashed on them; bf16 alone needs 208 KiB), the d = 256 ones fit.
    # Wider rows and float32 tables need smaller tiles: launch_config shrinks these where they do not fit.
    if dim <= 64:
        forward = BlockConfig(block_m=64, block_n=256, num_warps=4, num_stages=3)
        grad_hidden = BlockConfig(block_m=128, block_n=128, num_warps=4, num_stages=4)
        grad_items = BlockConfig(block_m=128, block_n=128, num_warps=4, num_stages=3)
    else:
        forward = BlockConfig(block_m=64, block_n=64, num_warps=4, num_stages=3)
        grad_hidden = BlockConfig(block_m=64, block_n=64, num_warps=4, num_stages=3)
        grad_items = BlockConfig(block_m=32, block_n=64, num_warps=4, num_stages=3)
    # Fused backward, shared negatives, fwd+bwd on an H200 (N=51,200): d=64 K=4096 0.89 ms against 1.16
    # split; K=16384 2.20 against 2.20 (the tile-gradient atomics grow with K); d=256 always slower.
    # Used up to K=8192, which was not measured (between a clear win and a tie).
    fused = BlockConfig(block_m=128, block_n=128, num_warps=8, num_stages=3) if dim <= 64 else None
    return SharedConfig(forward=forward, grad_hidden=grad_hidden, grad_items=grad_items,
                        target_programs=4 * sm_count, fused_backward=fused, fused_max_negatives=8192)


default_configs = default_config  # its name before the two kernel families were named alike


# The d-blocked forward (BlockConfig.block_d) that launch_config(d_blocked=True) starts from: wgmma-sized
# logit tiles, two warpgroups. Compiled for sm_90 only (notes/kernel-shared.md); not yet timed on a GPU.
D_BLOCKED_FORWARD = BlockConfig(block_m=128, block_n=128, num_warps=8, num_stages=3, block_d=64)


def d_blocked_backward(dim: int, hidden_dtype: torch.dtype) -> BlockConfig | None:
    """The d-blocked backward of shared negatives (SharedConfig.dblock_backward) that launch_config(...,
    d_blocked=True) starts from on a GPU, or None where it would spill registers (compiled for sm_90,
    notes/kernel-shared.md; not yet timed): float32 rows (no warpgroup MMA; 48 KB of stack) and d > 256
    (the [128, d] float32 dH accumulator alone needs d/2 registers a thread). d <= 64: 128x128 tiles (220
    registers); up to 256, 128x64 (254 registers: the largest logit tile that the dH accumulator leaves room
    for)."""
    if hidden_dtype.itemsize != 2 or dim > 256:
        return None
    if dim <= 64:
        return BlockConfig(block_m=128, block_n=128, num_warps=8, num_stages=3, block_d=64)
    return BlockConfig(block_m=128, block_n=64, num_warps=8, num_stages=2, block_d=64)

_D_BLOCKED_INTERPRETER = BlockConfig(block_m=16, block_n=16, num_warps=1, num_stages=1, block_d=16)


def launch_config(device: torch.device, dim: int, hidden_dtype: torch.dtype,
                  items_dtype: torch.dtype, *, d_blocked: bool = False) -> SharedConfig:
    """The tiles a call launches: `default_config`'s, on CUDA each shrunk by `fit_config` to the device's
    shared memory, so that the first launch loads (a retry is a compilation: minutes for wide float32
    tiles). d_blocked (opt-in): the forward takes D_BLOCKED_FORWARD's d-blocked tiles instead, and the
    backward of shared negatives the one-pass d-blocked kernel with `d_blocked_backward`'s tiles where it
    gives some."""
    if device.type != "cuda":
        config = default_config(device, dim)
        if not d_blocked:
            return config
        return dataclasses.replace(config, forward=_D_BLOCKED_INTERPRETER,
                                   dblock_backward=_D_BLOCKED_INTERPRETER)
    return _cuda_launch_config(device, dim, hidden_dtype, items_dtype, d_blocked)


@functools.lru_cache(maxsize=64)
def _cuda_launch_config(device: torch.device, dim: int, hidden_dtype: torch.dtype,
                        items_dtype: torch.dtype, d_blocked: bool = False) -> SharedConfig:
    config = default_config(device, dim)
    if d_blocked:
        config = dataclasses.replace(config, forward=D_BLOCKED_FORWARD,
                                     dblock_backward=d_blocked_backward(dim, hidden_dtype))
    return fit_config(config, dim=dim, hidden_dtype=hidden_dtype, items_dtype=items_dtype,
                      limit=shared_memory_limit(device))


@functools.lru_cache(maxsize=16)
def shared_memory_limit(device: torch.device) -> int:
    """Bytes of shared memory one kernel may use on `device`: the per-block opt-in limit
    (CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN), which Triton compares with a compiled kernel's
    `shared` when it loads it; 232,448 (227 KiB) on an H100 or H200."""
    limit = getattr(torch.cuda.get_device_properties(device), "shared_memory_per_block_optin", None)
    if limit is None:  # a torch without the attribute: Triton's driver reads the same one
        index = device.index if device.index is not None else torch.cuda.current_device()
        limit = triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"]
    return int(limit)


@functools.lru_cache(maxsize=256)
def fit_config(config: SharedConfig, *, dim: int, hidden_dtype: torch.dtype, items_dtype: torch.dtype,
               limit: int) -> SharedConfig:
    """`config` with each kernel's tiles replaced by the first of `smaller_tiles`' steps (fewer stages
    first, then smaller blocks) whose estimated shared memory (kernels.tile_memory) is at most `limit`
    bytes; tiles that fit are kept. Where no step's estimate fits, the smallest step (the estimate bounds
    the need from above: it may still load, or fail naming the kernel, _launch_fitting)."""
    def fit(kernel: str, tiles: BlockConfig) -> BlockConfig:
        while shared_memory_bytes(kernel, tiles, dim=dim, hidden_dtype=hidden_dtype,
                                  items_dtype=items_dtype) > limit:
            smaller = smaller_tiles(tiles)
            if smaller is None:
                break
            tiles = smaller
        return tiles

    fused, dblock = config.fused_backward, config.dblock_backward
    return dataclasses.replace(
        config, forward=fit("forward", config.forward), grad_hidden=fit("grad_hidden", config.grad_hidden),
        grad_items=fit("grad_items", config.grad_items),
        fused_backward=None if fused is None else fit("fused_backward", fused),
        dblock_backward=None if dblock is None else fit("dblock_backward", dblock))


def shared_memory_bytes(kernel: str, tiles: BlockConfig, *, dim: int, hidden_dtype: torch.dtype,
                        items_dtype: torch.dtype) -> int:
    """kernels.tile_memory's estimate for one launch of `kernel` ("forward", "grad_hidden", "grad_items",
    "fused_backward" or "dblock_backward") with `tiles` at width `dim`."""
    chunk = _dblock_backward_chunk(dim, tiles.block_d) if kernel == "dblock_backward" else tiles.block_d
    return tile_memory.shared_memory_bytes(
        kernel, block_m=tiles.block_m, block_n=tiles.block_n, num_stages=tiles.num_stages,
        num_warps=tiles.num_warps, block_d=_block_d(dim), hidden_bytes=hidden_dtype.itemsize,
        items_bytes=items_dtype.itemsize, d_chunk=chunk)


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    # UPCAST works around the Triton interpreter (3.7), which multiplies bfloat16 operands as their raw
    # uint16 bits; float32 products of bfloat16 values are exact, so the result is the same function.
    if UPCAST:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        out = tl.dot(a, b, input_precision=PRECISION)
    return out


@triton.jit
def _dot_acc(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b (float32 acc), with _dot's interpreter workaround."""
    if UPCAST:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        out = tl.dot(a, b, acc, input_precision=PRECISION)
    return out


@triton.jit
def _load_rows(base_ptr, rows, row_mask, stride_row, stride_col, d_offs, d_mask):
    ptrs = base_ptr + rows.to(tl.int64)[:, None] * stride_row + d_offs[None, :] * stride_col
    return tl.load(ptrs, mask=row_mask[:, None] & d_mask[None, :], other=0.0)


@triton.jit
def _row_block(hidden_ptr, ids_ptr, offsets_ptr, rows_per_group, dim, stride_hidden_row, stride_hidden_col,
               stride_neg_group, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """The rows of program (row block, group) of forward and grad_hidden: (the group's negative ids and
    logit offsets, rows (int64), which rows exist, the d offsets and mask, the hidden rows
    [BLOCK_M, BLOCK_D])."""
    # Row blocks of one sequence are neighbours in launch order, so they share its negative tiles in L2.
    group = tl.program_id(1)
    group_start = group.to(tl.int64) * stride_neg_group
    local_rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = local_rows < rows_per_group
    rows = group.to(tl.int64) * rows_per_group + local_rows
    d_offs = tl.arange(0, BLOCK_D)
    d_mask = d_offs < dim
    h = _load_rows(hidden_ptr, rows, row_mask, stride_hidden_row, stride_hidden_col, d_offs, d_mask)
    return ids_ptr + group_start, offsets_ptr + group_start, rows, row_mask, d_offs, d_mask, h


@triton.jit
def _prepare_negatives_kernel(negatives_ptr, ids_ptr, offsets_ptr, scatter_ids_ptr, flags_ptr, log_q_ptr,
                              numel, num_items, log_q_scalar, LOG_Q_MODE: tl.constexpr, BLOCK: tl.constexpr):
    """Once per call, over every negative (kernels.index_guard): its int32 item id (-1 where refused as out
    of range), the float32 offset added to its base-2 logit (the logQ correction
    -LOG2E * (log K + log q[item]), or -inf where refused) and its id for index_add_ (0 where refused);
    refused ones are reported."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    raw = tl.load(negatives_ptr + offs, mask=mask, other=0)
    ok = in_catalogue(raw, num_items)
    ids = tl.where(ok, raw, -1).to(tl.int32)
    if LOG_Q_MODE == LOG_Q_NONE:
        offset = tl.zeros([BLOCK], dtype=tl.float32)
    else:
        offset = -log_q_correction(log_q_ptr, tl.maximum(ids, 0), mask & ok, log_q_scalar, LOG_Q_MODE, LOG2E)
    tl.store(ids_ptr + offs, ids, mask=mask)
    tl.store(scatter_ids_ptr + offs, tl.maximum(ids, 0), mask=mask)
    tl.store(offsets_ptr + offs, tl.where(ok, offset, float("-inf")), mask=mask)
    report_refused(flags_ptr, NEGATIVES_SLOT, raw, mask & ~ok, num_items)


@triton.jit
def _negative_columns(group_ids_ptr, group_offsets_ptr, cols, col_mask, FULL: tl.constexpr):
    """(item ids, logit offsets) of a tile of negative columns: "full" scores the items in order, with no
    offset; otherwise both come from _prepare_negatives_kernel (-1 and -inf where refused; columns past
    K: 0 and 0, which the callers mask as before). So no tile loop tests an index's range or gathers a
    logQ correction."""
    if FULL:
        idx = cols
        offsets = tl.zeros(cols.shape, dtype=tl.float32)
    else:
        idx = tl.load(group_ids_ptr + cols, mask=col_mask, other=0)
        offsets = tl.load(group_offsets_ptr + cols, mask=col_mask, other=0.0)
    return idx, offsets


@triton.jit
def _item_rows(items_ptr, idx, col_mask, stride_item_row, stride_item_col, d_offs, d_mask, dtype,
               FULL: tl.constexpr, ZERO_REFUSED: tl.constexpr):
    """The item rows of a tile of negatives in `dtype`: zeros past K; for a refused negative (id -1, never
    an address) item 0's row, or zeros with ZERO_REFUSED."""
    if FULL:
        rows = idx
        row_mask = col_mask
    else:
        rows = tl.maximum(idx, 0)
        if ZERO_REFUSED:
            row_mask = col_mask & (idx >= 0)
        else:
            row_mask = col_mask
    return _load_rows(items_ptr, rows, row_mask, stride_item_row, stride_item_col, d_offs, d_mask).to(dtype)


@triton.jit
def _score_tile(h, items_ptr, group_ids_ptr, group_offsets_ptr, first_col, num_negatives, stride_item_row,
                stride_item_col, d_offs, d_mask, FULL: tl.constexpr, ZERO_REFUSED: tl.constexpr,
                PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_N: tl.constexpr):
    """The negative tile of columns [first_col, first_col + BLOCK_N) against a row block h: (cols, col_mask,
    item ids, logit offsets as _negative_columns gives them, the tile's item rows e in h's dtype as
    _item_rows reads them, the logits h e^T)."""
    cols = first_col + tl.arange(0, BLOCK_N)
    col_mask = cols < num_negatives
    idx, offsets = _negative_columns(group_ids_ptr, group_offsets_ptr, cols, col_mask, FULL)
    e = _item_rows(items_ptr, idx, col_mask, stride_item_row, stride_item_col, d_offs, d_mask, h.dtype, FULL,
                   ZERO_REFUSED)
    return cols, col_mask, idx, offsets, e, _dot(h, tl.trans(e), PRECISION, UPCAST)


@triton.jit
def _drop_columns(x, idx, col_mask, safe_targets, EVEN_K: tl.constexpr, REMOVE_HITS: tl.constexpr):
    """-inf where a [rows, negatives] tile's column does not count: past K, or (REMOVE_HITS) the row's own
    target. (A refused negative's offset is -inf already.)"""
    if not EVEN_K:
        x = tl.where(col_mask[None, :], x, float("-inf"))
    if REMOVE_HITS:
        x = tl.where(idx[None, :] == safe_targets[:, None], float("-inf"), x)
    return x


@triton.jit
def _store_forward_rows(lse_ptr, positive_ptr, loss_ptr, kept_ptr, safe_targets_ptr, rows, row_mask, run_max,
                        run_sum, positive, kept, safe_targets):
    """A forward's per-row outputs from its online log-sum-exp (base 2): lse, the positive logit, the row's
    loss (0 where ignored), whether it is kept, its safe target."""
    lse = (run_max + tl.math.log2(run_sum)) * LN2
    tl.store(lse_ptr + rows, lse, mask=row_mask)
    tl.store(positive_ptr + rows, positive, mask=row_mask)
    tl.store(loss_ptr + rows, tl.where(kept, lse - positive, 0.0), mask=row_mask)
    tl.store(kept_ptr + rows, kept.to(tl.float32), mask=row_mask)
    tl.store(safe_targets_ptr + rows, safe_targets, mask=row_mask)


@triton.jit
def _lse_step(run_max, run_sum, scores, idx, offsets, col_mask, safe_targets, FULL: tl.constexpr,
              EVEN_K: tl.constexpr, REMOVE_HITS: tl.constexpr):
    """One tile of the online log-sum-exp (base 2) over a row block: the tile's logits with their
    offsets, uncounted columns dropped, folded into the running max and sum."""
    if FULL:
        scores2 = scores * LOG2E
    else:
        scores2 = scores * LOG2E + offsets[None, :]
    scores2 = _drop_columns(scores2, idx, col_mask, safe_targets, EVEN_K, REMOVE_HITS)
    new_max = tl.maximum(run_max, tl.max(scores2, axis=1))
    run_sum = run_sum * tl.math.exp2(run_max - new_max) + tl.sum(tl.math.exp2(scores2 - new_max[:, None]),
                                                                   axis=1)
    return new_max, run_sum


@triton.jit
def _row_targets(targets_ptr, rows, row_mask, ignore_index, num_items):
    """(kept, safe_targets, refused, targets) of a row block: the rows that count, their int32 targets
    (0 where not kept), the rows whose target was refused as out of range (kernels.index_guard: they
    count as ignored) and the targets as loaded (int64)."""
    targets = tl.load(targets_ptr + rows, mask=row_mask, other=ignore_index).to(tl.int64)
    labelled = row_mask & (targets != ignore_index)
    refused = labelled & ~in_catalogue(targets, num_items)
    kept = labelled & ~refused
    return kept, tl.where(kept, targets, 0).to(tl.int32), refused, targets


@triton.jit
def _row_grad_inputs(lse_ptr, row_grad_ptr, rows, row_mask):
    """(log2(e) * lse, upstream gradient) of a row block; the gradient is 0 on padded and ignored rows."""
    lse2 = tl.load(lse_ptr + rows, mask=row_mask, other=0.0) * LOG2E
    return lse2, tl.load(row_grad_ptr + rows, mask=row_mask, other=0.0)


@triton.jit
def _softmax_grad(scores, idx, col_mask, offsets, lse2, row_grad, safe_targets, ADD_OFFSETS: tl.constexpr,
                  EVEN_K: tl.constexpr, REMOVE_HITS: tl.constexpr):
    """dLoss/dscores of a [rows, negatives] tile, g_i * p_ik, in float32 (columns past K and hits: 0;
    refused negatives: 0 with ADD_OFFSETS, else whatever, for the caller's zero item rows to cancel)."""
    shifted = scores * LOG2E - lse2[:, None]
    if ADD_OFFSETS:
        shifted += offsets[None, :]
    shifted = _drop_columns(shifted, idx, col_mask, safe_targets, EVEN_K, REMOVE_HITS)
    return tl.math.exp2(shifted) * row_grad[:, None]


@triton.jit
def _store_grad_hidden(acc, items_ptr, safe_targets, positive_coef_ptr, grad_hidden_ptr, rows, row_mask,
                       stride_item_row, stride_item_col, stride_hidden_row, stride_hidden_col, d_offs, d_mask,
                       h):
    """Stores dH of a row block: the negatives' share `acc` plus the positive's, added outside the loop:
    (p_i0 - 1) g_i E[p_i], or -g_i E[p_i] for "full", whose loop already scored the target column with
    its softmax weight."""
    e_pos = _load_rows(items_ptr, safe_targets, row_mask, stride_item_row, stride_item_col, d_offs,
                       d_mask).to(h.dtype)
    positive_coef = tl.load(positive_coef_ptr + rows, mask=row_mask, other=0.0)
    acc += positive_coef[:, None] * e_pos.to(tl.float32)
    out = grad_hidden_ptr + rows[:, None] * stride_hidden_row + d_offs[None, :] * stride_hidden_col
    tl.store(out, acc.to(grad_hidden_ptr.dtype.element_ty), mask=row_mask[:, None] & d_mask[None, :])


@triton.jit
def _forward_kernel(
    hidden_ptr, items_ptr, targets_ptr, ids_ptr, offsets_ptr, lse_ptr, positive_ptr, loss_ptr,
    kept_ptr, safe_targets_ptr, flags_ptr,
    rows_per_group, num_negatives, num_items, dim,
    stride_hidden_row, stride_hidden_col, stride_item_row, stride_item_col, stride_neg_group,
    ignore_index,
    FULL: tl.constexpr, REMOVE_HITS: tl.constexpr, EVEN_K: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    group_ids_ptr, group_offsets_ptr, rows, row_mask, d_offs, d_mask, h = _row_block(
        hidden_ptr, ids_ptr, offsets_ptr, rows_per_group, dim, stride_hidden_row, stride_hidden_col,
        stride_neg_group, BLOCK_M, BLOCK_D)
    kept, safe_targets, refused_targets, raw_targets = _row_targets(targets_ptr, rows, row_mask, ignore_index,
                                                                    num_items)
    report_refused(flags_ptr, TARGETS_SLOT, raw_targets, refused_targets, num_items)
    e_pos = _load_rows(items_ptr, safe_targets, row_mask, stride_item_row, stride_item_col, d_offs,
                       d_mask).to(h.dtype)
    positive = tl.sum(h.to(tl.float32) * e_pos.to(tl.float32), axis=1)

    # Running max starts at the positive logit, so it is finite even when every negative is a hit.
    # For "full" the target column is scored inside the loop, so the positive is not counted twice.
    run_max = positive * LOG2E
    if FULL:
        run_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    else:
        run_sum = tl.zeros([BLOCK_M], dtype=tl.float32) + 1.0
    for k0 in range(0, num_negatives, BLOCK_N):
        cols, col_mask, idx, offsets, e, scores = _score_tile(
            h, items_ptr, group_ids_ptr, group_offsets_ptr, k0, num_negatives, stride_item_row,
            stride_item_col, d_offs, d_mask, FULL, False, PRECISION, UPCAST, BLOCK_N)
        run_max, run_sum = _lse_step(run_max, run_sum, scores, idx, offsets, col_mask, safe_targets, FULL,
                                     EVEN_K, REMOVE_HITS)
    _store_forward_rows(lse_ptr, positive_ptr, loss_ptr, kept_ptr, safe_targets_ptr, rows, row_mask, run_max,
                        run_sum, positive, kept, safe_targets)


@triton.jit
def _forward_dblock_kernel(
    hidden_ptr, items_ptr, table_ptr, targets_ptr, ids_ptr, offsets_ptr, lse_ptr, positive_ptr, loss_ptr,
    kept_ptr, safe_targets_ptr, flags_ptr,
    rows_per_group, num_negatives, num_items, dim,
    stride_hidden_row, stride_hidden_col, stride_item_row, stride_item_col, stride_table_row,
    stride_table_col, stride_neg_group,
    ignore_index,
    FULL: tl.constexpr, GATHERED: tl.constexpr, REMOVE_HITS: tl.constexpr, EVEN_K: tl.constexpr,
    EVEN_D: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, D_CHUNKS: tl.constexpr,
):
    """_forward_kernel's results with the d axis blocked (BlockConfig.block_d): one flat loop over
    (negative tile, d chunk) steps, each adding a [BLOCK_M, BLOCK_D] chunk of the hidden rows times a
    [BLOCK_N, BLOCK_D] chunk of the tile's item rows into the logit accumulator, with the online
    log-sum-exp after a tile's last chunk. One flat loop, not a loop over d inside the loop over tiles, so
    that the software pipeline runs across tiles (a 4-step inner loop would drain it at every tile) and
    each of its stages holds one chunk of each operand. BLOCK_D is the chunk width, D_CHUNKS = cdiv(d,
    BLOCK_D); EVEN_D: d % BLOCK_D == 0.

    The loop reads item rows from `table_ptr`: the catalogue ("full"), the negatives' rows gathered once
    per call in their order (GATHERED, shared negatives: row c is negative c), or, for per-sequence
    negatives, the catalogue through the ids. Compiled for sm_90, loads whose addresses come from loaded
    ids cost the pipeline two of its stages and held 1.7x the registers (notes/kernel-shared.md)."""
    group = tl.program_id(1)
    group_start = group.to(tl.int64) * stride_neg_group
    group_ids_ptr = ids_ptr + group_start
    group_offsets_ptr = offsets_ptr + group_start
    local_rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = local_rows < rows_per_group
    rows = group.to(tl.int64) * rows_per_group + local_rows
    kept, safe_targets, refused_targets, raw_targets = _row_targets(targets_ptr, rows, row_mask, ignore_index,
                                                                    num_items)
    report_refused(flags_ptr, TARGETS_SLOT, raw_targets, refused_targets, num_items)
    chunk_offs = tl.arange(0, BLOCK_D)

    positive = tl.zeros([BLOCK_M], dtype=tl.float32)
    for chunk in range(0, D_CHUNKS):
        d_offs = chunk * BLOCK_D + chunk_offs
        d_mask = (d_offs < dim) | EVEN_D
        h = _load_rows(hidden_ptr, rows, row_mask, stride_hidden_row, stride_hidden_col, d_offs, d_mask)
        e_pos = _load_rows(items_ptr, safe_targets, row_mask, stride_item_row, stride_item_col, d_offs,
                           d_mask).to(h.dtype)
        positive += tl.sum(h.to(tl.float32) * e_pos.to(tl.float32), axis=1)

    # As in _forward_kernel: the running max starts at the positive logit; "full" scores the target in
    # the loop.
    run_max = positive * LOG2E
    if FULL:
        run_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    else:
        run_sum = tl.zeros([BLOCK_M], dtype=tl.float32) + 1.0
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    num_steps = tl.cdiv(num_negatives, BLOCK_N) * D_CHUNKS
    for step in range(0, num_steps):
        chunk = step % D_CHUNKS
        cols = (step // D_CHUNKS) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_mask = cols < num_negatives
        d_offs = chunk * BLOCK_D + chunk_offs
        d_mask = (d_offs < dim) | EVEN_D
        h = _load_rows(hidden_ptr, rows, row_mask, stride_hidden_row, stride_hidden_col, d_offs, d_mask)
        if FULL or GATHERED:
            e = _load_rows(table_ptr, cols, col_mask, stride_table_row, stride_table_col, d_offs,
                           d_mask).to(h.dtype)
        else:
            gather_ids, _offsets = _negative_columns(group_ids_ptr, group_offsets_ptr, cols, col_mask, FULL)
            e = _item_rows(table_ptr, gather_ids, col_mask, stride_table_row, stride_table_col, d_offs,
                           d_mask, h.dtype, FULL, False)
        acc = _dot_acc(h, tl.trans(e), acc, PRECISION, UPCAST)
        if chunk == D_CHUNKS - 1:
            idx, offsets = _negative_columns(group_ids_ptr, group_offsets_ptr, cols, col_mask, FULL)
            run_max, run_sum = _lse_step(run_max, run_sum, acc, idx, offsets, col_mask, safe_targets, FULL,
                                         EVEN_K, REMOVE_HITS)
            acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    _store_forward_rows(lse_ptr, positive_ptr, loss_ptr, kept_ptr, safe_targets_ptr, rows, row_mask, run_max,
                        run_sum, positive, kept, safe_targets)


@triton.jit
def _grad_hidden_kernel(
    hidden_ptr, items_ptr, safe_targets_ptr, ids_ptr, offsets_ptr, lse_ptr, row_grad_ptr, positive_coef_ptr,
    grad_hidden_ptr,
    rows_per_group, num_negatives, dim,
    stride_hidden_row, stride_hidden_col, stride_item_row, stride_item_col, stride_neg_group,
    FULL: tl.constexpr, CORRECTED: tl.constexpr, REMOVE_HITS: tl.constexpr, EVEN_K: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dH of a row block. A refused negative adds nothing: CORRECTED (the offsets carry a logQ correction,
    added to every logit anyway), its offset -inf makes its softmax weight 0; otherwise its item row is
    read as zeros, which spares adding an offset to every logit (compiled for sm_90 at d=64, that addition
    spilled registers in this loop: notes/kernel-shared.md). Its weight exp2(-lse2) times the zero row is
    0, unless the row's logsumexp is below -88.7 (every logit of the row is), where it is NaN: only in a
    call that carries an out-of-range negative, whose error is raised."""
    group_ids_ptr, group_offsets_ptr, rows, row_mask, d_offs, d_mask, h = _row_block(
        hidden_ptr, ids_ptr, offsets_ptr, rows_per_group, dim, stride_hidden_row, stride_hidden_col,
        stride_neg_group, BLOCK_M, BLOCK_D)
    safe_targets = tl.load(safe_targets_ptr + rows, mask=row_mask, other=0)
    lse2, row_grad = _row_grad_inputs(lse_ptr, row_grad_ptr, rows, row_mask)

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for k0 in range(0, num_negatives, BLOCK_N):
        cols, col_mask, idx, offsets, e, scores = _score_tile(
            h, items_ptr, group_ids_ptr, group_offsets_ptr, k0, num_negatives, stride_item_row,
            stride_item_col, d_offs, d_mask, FULL, not CORRECTED, PRECISION, UPCAST, BLOCK_N)
        dscores = _softmax_grad(scores, idx, col_mask, offsets, lse2, row_grad, safe_targets, CORRECTED,
                                EVEN_K, REMOVE_HITS)
        acc += _dot(dscores.to(h.dtype), e, PRECISION, UPCAST)
    _store_grad_hidden(acc, items_ptr, safe_targets, positive_coef_ptr, grad_hidden_ptr, rows, row_mask,
                       stride_item_row, stride_item_col, stride_hidden_row, stride_hidden_col, d_offs, d_mask,
                       h)


@triton.jit
def _grad_items_kernel(
    hidden_ptr, items_ptr, safe_targets_ptr, ids_ptr, offsets_ptr, lse_ptr, row_grad_ptr, out_ptr,
    rows_per_group, num_negatives, dim, num_splits, group_offset,
    stride_hidden_row, stride_hidden_col, stride_item_row, stride_item_col, stride_neg_group,
    stride_out_split, stride_out_group, stride_out_row,
    FULL: tl.constexpr, CORRECTED: tl.constexpr, REMOVE_HITS: tl.constexpr, ATOMIC: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dE^T for one tile of negatives over one split of the rows of one group, in [BLOCK_N, BLOCK_M]
    orientation. Columns past K are computed on zeros and never stored, so they need no mask; a refused
    negative's row is stored as zeros. CORRECTED: the offsets carry a logQ correction (otherwise the loop
    needs none of them)."""
    split = tl.program_id(1)
    local_group = tl.program_id(2)
    group = local_group + group_offset
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < num_negatives
    d_offs = tl.arange(0, BLOCK_D)
    d_mask = d_offs < dim
    group_start = group.to(tl.int64) * stride_neg_group
    idx, offsets = _negative_columns(ids_ptr + group_start, offsets_ptr + group_start, cols, col_mask, FULL)
    e = _item_rows(items_ptr, idx, col_mask, stride_item_row, stride_item_col, d_offs, d_mask,
                   hidden_ptr.dtype.element_ty, FULL, False)

    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for r0 in range(split * BLOCK_M, rows_per_group, num_splits * BLOCK_M):
        local_rows = r0 + tl.arange(0, BLOCK_M)
        row_mask = local_rows < rows_per_group
        rows = group.to(tl.int64) * rows_per_group + local_rows
        h = _load_rows(hidden_ptr, rows, row_mask, stride_hidden_row, stride_hidden_col, d_offs, d_mask)
        safe_targets = tl.load(safe_targets_ptr + rows, mask=row_mask, other=0)
        lse2, row_grad = _row_grad_inputs(lse_ptr, row_grad_ptr, rows, row_mask)
        scores_t = _dot(e, tl.trans(h), PRECISION, UPCAST)
        shifted_t = scores_t * LOG2E - lse2[None, :]
        if CORRECTED:
            shifted_t += offsets[:, None]
        if REMOVE_HITS:
            shifted_t = tl.where(idx[:, None] == safe_targets[None, :], float("-inf"), shifted_t)
        dscores_t = tl.math.exp2(shifted_t) * row_grad[None, :]
        if FULL:
            dscores_t -= tl.where(idx[:, None] == safe_targets[None, :], row_grad[None, :], 0.0)
        acc += _dot(dscores_t.to(h.dtype), h, PRECISION, UPCAST)

    out_mask = col_mask[:, None] & d_mask[None, :]
    if not FULL:
        acc = tl.where((idx >= 0)[:, None], acc, 0.0)  # a refused negative's row adds nothing
    if ATOMIC:
        # Sequences may share negatives, so programs of different sequences can hit the same item row.
        out_ptrs = out_ptr + tl.maximum(idx, 0).to(tl.int64)[:, None] * stride_out_row + d_offs[None, :]
        tl.atomic_add(out_ptrs, acc, mask=out_mask & (idx >= 0)[:, None])
    else:
        # int64: C * d passes 2**31 for catalogues of 10^7 items.
        out_rows = (split.to(tl.int64) * stride_out_split + local_group.to(tl.int64) * stride_out_group
                    + cols.to(tl.int64) * stride_out_row)
        out_ptrs = out_ptr + out_rows[:, None] + d_offs[None, :]
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _fused_backward_kernel(
    hidden_ptr, items_ptr, safe_targets_ptr, ids_ptr, offsets_ptr, lse_ptr, row_grad_ptr, positive_coef_ptr,
    grad_hidden_ptr, tile_grad_ptr,
    num_rows, num_negatives, dim,
    stride_hidden_row, stride_hidden_col, stride_item_row, stride_item_col,
    CORRECTED: tl.constexpr, REMOVE_HITS: tl.constexpr, EVEN_K: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Both gradients of "shared" in one pass over the logits: one program per row block walks every
    negative tile, keeps dH of its rows in registers and adds its share of each tile's dE^T H into the
    float32 [K, d] tile gradient with atomics (programs start at different tiles to spread them).
    Refused negatives as in _grad_hidden_kernel; their tile gradient rows are not added to."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < num_rows
    rows = rows.to(tl.int64)
    d_offs = tl.arange(0, BLOCK_D)
    d_mask = d_offs < dim
    h = _load_rows(hidden_ptr, rows, row_mask, stride_hidden_row, stride_hidden_col, d_offs, d_mask)
    safe_targets = tl.load(safe_targets_ptr + rows, mask=row_mask, other=0)
    lse2, row_grad = _row_grad_inputs(lse_ptr, row_grad_ptr, rows, row_mask)

    num_tiles = tl.cdiv(num_negatives, BLOCK_N)
    first_tile = tl.program_id(0) % num_tiles
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for step in range(0, num_tiles):
        tile = (first_tile + step) % num_tiles
        cols, col_mask, idx, offsets, e, scores = _score_tile(
            h, items_ptr, ids_ptr, offsets_ptr, tile * BLOCK_N, num_negatives, stride_item_row,
            stride_item_col, d_offs, d_mask, False, not CORRECTED, PRECISION, UPCAST, BLOCK_N)
        dscores = _softmax_grad(scores, idx, col_mask, offsets, lse2, row_grad, safe_targets, CORRECTED,
                                EVEN_K, REMOVE_HITS).to(h.dtype)
        acc += _dot(dscores, e, PRECISION, UPCAST)
        tile_part = _dot(tl.trans(dscores), h, PRECISION, UPCAST)
        out = tile_grad_ptr + cols.to(tl.int64)[:, None] * dim + d_offs[None, :]
        tl.atomic_add(out, tile_part, mask=(col_mask & (idx >= 0))[:, None] & d_mask[None, :], sem="relaxed")
    _store_grad_hidden(acc, items_ptr, safe_targets, positive_coef_ptr, grad_hidden_ptr, rows, row_mask,
                       stride_item_row, stride_item_col, stride_hidden_row, stride_hidden_col, d_offs, d_mask,
                       h)


@triton.jit
def _chunk_offsets(chunk: tl.constexpr, dim, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr):
    """The d offsets of chunk `chunk` (of BLOCK_D) and which of them are inside d."""
    chunk_d = chunk * BLOCK_D + tl.arange(0, BLOCK_D)
    return chunk_d, (chunk_d < dim) | EVEN_D


@triton.jit
def _tile_chunk_grads(acc, dscores, dscores_t, e, h, tile_grad_ptr, cols, col_mask, chunk: tl.constexpr, dim,
                      PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_D: tl.constexpr,
                      EVEN_D: tl.constexpr):
    """One d chunk of a negative tile's two gradient products: returns acc + dS e[:, chunk] (the row
    block's dH chunk) and adds dS^T h[:, chunk] into the tile gradient's rows `cols` with atomics."""
    chunk_d, chunk_mask = _chunk_offsets(chunk, dim, BLOCK_D, EVEN_D)
    acc = _dot_acc(dscores, e, acc, PRECISION, UPCAST)
    part = _dot(dscores_t, h, PRECISION, UPCAST)
    tl.atomic_add(tile_grad_ptr + cols.to(tl.int64)[:, None] * dim + chunk_d[None, :], part,
                  mask=col_mask[:, None] & chunk_mask[None, :], sem="relaxed")
    return acc


@triton.jit
def _store_grad_hidden_chunk(acc, hidden_ptr, items_ptr, safe_targets, positive_coef, out_ptr, rows, row_mask,
                             chunk: tl.constexpr, dim, stride_item_row, stride_item_col, stride_out_row,
                             stride_out_col, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr):
    """_store_grad_hidden for one d chunk of a row block's dH (or its partial), into `out_ptr` (item rows
    read in hidden's dtype, as the loop's dots read them)."""
    chunk_d, chunk_mask = _chunk_offsets(chunk, dim, BLOCK_D, EVEN_D)
    e_pos = _load_rows(items_ptr, safe_targets, row_mask, stride_item_row, stride_item_col, chunk_d,
                       chunk_mask)
    acc += positive_coef[:, None] * e_pos.to(hidden_ptr.dtype.element_ty).to(tl.float32)
    out = out_ptr + rows[:, None] * stride_out_row + chunk_d[None, :] * stride_out_col
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & chunk_mask[None, :])


@triton.jit
def _backward_dblock_kernel(
    hidden_ptr, table_ptr, items_ptr, safe_targets_ptr, ids_ptr, offsets_ptr, lse_ptr, row_grad_ptr,
    positive_coef_ptr, out_ptr, tile_grad_ptr,
    num_rows, num_negatives, dim, num_splits,
    stride_hidden_row, stride_hidden_col, stride_table_row, stride_table_col, stride_item_row,
    stride_item_col, stride_out_split, stride_out_row, stride_out_col,
    REMOVE_HITS: tl.constexpr, EVEN_D: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, D_CHUNKS: tl.constexpr,
):
    """Both gradients of shared negatives in one pass over the logits, d blocked
    (SharedConfig.dblock_backward). One program per row block holds its hidden rows as D_CHUNKS (1 to 4)
    resident chunks of BLOCK_D columns and walks every negative tile once. Per tile, with e the tile's rows
    of the gathered [K, d] copy (hidden's dtype, `table_ptr`) read chunk by chunk: the logit tile as the
    sum over chunks of h_c e_c^T, dS = g p from it, then per chunk dH_c += dS e_c (D_CHUNKS float32
    [BLOCK_M, BLOCK_D] accumulators) and dS^T h_c added into the float32 [K, d] tile gradient with atomics.
    So each logit tile is computed once (6NKd for the backward, against the split kernels' 8NKd) and no
    product needs a whole-row operand or result tile. Programs start at different tiles, so that their
    atomics spread over the buffer. With num_splits > 1, program (row block, split) walks every
    num_splits-th tile and stores its dH partial at `out_ptr` + split * stride_out_split (float32; split 0
    adds the positive's share); otherwise `out_ptr` is dH itself.

    The chunks are written out (up to 4, not a loop): a loop over chunks inside the tile loop would stop
    the software pipeline of the tile loop (Triton pipelines innermost loops), and unrolled it reloaded the
    row block's hidden chunks in every tile (loads in a loop are not hoisted), pipelined: 279 KB of shared
    memory at 128x64 tiles, d = 256 (notes/kernel-shared.md).

    Offsets are always added: a refused negative (offset -inf, its gathered row item 0's) gets softmax
    weight 0, so it adds nothing to dH and zeros to its tile-gradient row; (REMOVE_HITS) a row's own target
    is dropped; padded and ignored rows have upstream gradient 0. Columns past K need no mask on the logits:
    their item rows are read as zeros, so they add nothing to dH, and their tile-gradient rows are not
    added to."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < num_rows
    rows = rows.to(tl.int64)
    safe_targets = tl.load(safe_targets_ptr + rows, mask=row_mask, other=0)
    lse2, row_grad = _row_grad_inputs(lse_ptr, row_grad_ptr, rows, row_mask)
    d0, m0 = _chunk_offsets(0, dim, BLOCK_D, EVEN_D)
    h0 = _load_rows(hidden_ptr, rows, row_mask, stride_hidden_row, stride_hidden_col, d0, m0)
    acc0 = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # Chunks past D_CHUNKS are never used: their names are bound for the compiler, their code never emitted.
    h1, h2, h3 = h0, h0, h0
    acc1, acc2, acc3 = acc0, acc0, acc0
    if D_CHUNKS > 1:
        d1, m1 = _chunk_offsets(1, dim, BLOCK_D, EVEN_D)
        h1 = _load_rows(hidden_ptr, rows, row_mask, stride_hidden_row, stride_hidden_col, d1, m1)
    if D_CHUNKS > 2:
        d2, m2 = _chunk_offsets(2, dim, BLOCK_D, EVEN_D)
        h2 = _load_rows(hidden_ptr, rows, row_mask, stride_hidden_row, stride_hidden_col, d2, m2)
    if D_CHUNKS > 3:
        d3, m3 = _chunk_offsets(3, dim, BLOCK_D, EVEN_D)
        h3 = _load_rows(hidden_ptr, rows, row_mask, stride_hidden_row, stride_hidden_col, d3, m3)

    split = tl.program_id(1)
    num_tiles = tl.cdiv(num_negatives, BLOCK_N)
    first_tile = tl.program_id(0) % num_tiles
    for step in range(split, num_tiles, num_splits):
        cols = ((first_tile + step) % num_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_mask = cols < num_negatives
        idx, offsets = _negative_columns(ids_ptr, offsets_ptr, cols, col_mask, False)
        e0 = _load_rows(table_ptr, cols, col_mask, stride_table_row, stride_table_col, d0, m0)
        scores = _dot(h0, tl.trans(e0), PRECISION, UPCAST)
        e1, e2, e3 = e0, e0, e0
        if D_CHUNKS > 1:
            e1 = _load_rows(table_ptr, cols, col_mask, stride_table_row, stride_table_col, d1, m1)
            scores = _dot_acc(h1, tl.trans(e1), scores, PRECISION, UPCAST)
        if D_CHUNKS > 2:
            e2 = _load_rows(table_ptr, cols, col_mask, stride_table_row, stride_table_col, d2, m2)
            scores = _dot_acc(h2, tl.trans(e2), scores, PRECISION, UPCAST)
        if D_CHUNKS > 3:
            e3 = _load_rows(table_ptr, cols, col_mask, stride_table_row, stride_table_col, d3, m3)
            scores = _dot_acc(h3, tl.trans(e3), scores, PRECISION, UPCAST)
        dscores = _softmax_grad(scores, idx, col_mask, offsets, lse2, row_grad, safe_targets, True, True,
                                REMOVE_HITS).to(h0.dtype)
        dscores_t = tl.trans(dscores)
        acc0 = _tile_chunk_grads(acc0, dscores, dscores_t, e0, h0, tile_grad_ptr, cols, col_mask, 0, dim,
                                 PRECISION, UPCAST, BLOCK_D, EVEN_D)
        if D_CHUNKS > 1:
            acc1 = _tile_chunk_grads(acc1, dscores, dscores_t, e1, h1, tile_grad_ptr, cols, col_mask, 1, dim,
                                     PRECISION, UPCAST, BLOCK_D, EVEN_D)
        if D_CHUNKS > 2:
            acc2 = _tile_chunk_grads(acc2, dscores, dscores_t, e2, h2, tile_grad_ptr, cols, col_mask, 2, dim,
                                     PRECISION, UPCAST, BLOCK_D, EVEN_D)
        if D_CHUNKS > 3:
            acc3 = _tile_chunk_grads(acc3, dscores, dscores_t, e3, h3, tile_grad_ptr, cols, col_mask, 3, dim,
                                     PRECISION, UPCAST, BLOCK_D, EVEN_D)

    # tl.where, not `row_mask & (split == 0)`: Triton 3.9's interpreter gives the scalar comparison an int32
    # dtype and the & an int32 mask, which loads refuse ('mask has unsupported dtype')
    positive_coef = tl.load(positive_coef_ptr + rows, mask=tl.where(split == 0, row_mask, False), other=0.0)
    split_out_ptr = out_ptr + split.to(tl.int64) * stride_out_split
    store = (hidden_ptr, items_ptr, safe_targets, positive_coef, split_out_ptr, rows, row_mask)
    strides = (stride_item_row, stride_item_col, stride_out_row, stride_out_col)
    _store_grad_hidden_chunk(acc0, *store, 0, dim, *strides, BLOCK_D, EVEN_D)
    if D_CHUNKS > 1:
        _store_grad_hidden_chunk(acc1, *store, 1, dim, *strides, BLOCK_D, EVEN_D)
    if D_CHUNKS > 2:
        _store_grad_hidden_chunk(acc2, *store, 2, dim, *strides, BLOCK_D, EVEN_D)
    if D_CHUNKS > 3:
        _store_grad_hidden_chunk(acc3, *store, 3, dim, *strides, BLOCK_D, EVEN_D)


@dataclass(frozen=True)
class _Plan:
    """Everything about a call that is not a tensor: how rows group and how negatives are scored."""

    scheme: SharedScheme
    num_items: int
    num_groups: int
    rows_per_group: int
    num_negatives: int
    log_q_mode: int  # LOG_Q_NONE, LOG_Q_CONSTANT or LOG_Q_TENSOR (kernels.triton_common)
    log_q_scalar: float
    remove_hits: bool
    ignore_index: int
    reduction: Reduction
    config: SharedConfig

    @property
    def full(self) -> bool:
        return self.scheme == "full"


def _precision(dtype: torch.dtype) -> str:
    # float32 inputs must not silently drop to tf32 (Triton's default for a float32 dot).
    return "ieee" if dtype == torch.float32 else "tf32"


def _upcast(hidden: torch.Tensor) -> bool:
    return hidden.device.type != "cuda" and hidden.dtype == torch.bfloat16


def _adds_atomically(items: torch.Tensor) -> bool:
    """Whether grad_items adds the per-sequence item gradient into it with atomics (the interpreter adds half
    values as raw bits, so on CPU half gradients go through a float32 buffer instead)."""
    return items.dtype == torch.float32 or items.is_cuda


def _check_d_blocked(config: SharedConfig) -> None:
    """The forward and dblock_backward have d-blocked forms (BlockConfig.block_d), the other backward kernels
    none; dblock_backward has no other."""
    for kernel in ("grad_hidden", "grad_items", "fused_backward"):
        tiles = getattr(config, kernel)
        if tiles is not None and tiles.block_d:
            raise ValueError(f"config.{kernel}.block_d: the d-blocked tiles exist for the forward kernel "
                             f"and dblock_backward only; set block_d=0 for {kernel}")
    if config.dblock_backward is not None and not config.dblock_backward.block_d:
        raise ValueError("config.dblock_backward.block_d: the d-blocked backward needs a chunk of d (a power "
                         "of two >= 16), got 0")
    if config.dblock_splits < 1:
        raise ValueError(f"config.dblock_splits: expected at least 1 program per row block, got "
                         f"{config.dblock_splits}")


def _block_d(dim: int) -> int:
    return max(16, triton.next_power_of_2(dim))


def _d_chunk(dim: int, block_d: int) -> int:
    """The d chunk of a d-blocked kernel (BlockConfig.block_d), no wider than the padded rows."""
    return min(block_d, _block_d(dim))


# _backward_dblock_kernel writes out its chunks of d: it has at most this many.
DBLOCK_BACKWARD_MAX_CHUNKS = 4


def _dblock_backward_chunk(dim: int, block_d: int) -> int:
    """The d chunk of the d-blocked backward: block_d, no wider than the padded rows, widened where d would
    need more than DBLOCK_BACKWARD_MAX_CHUNKS chunks of it."""
    return max(_d_chunk(dim, block_d), _block_d(dim) // DBLOCK_BACKWARD_MAX_CHUNKS)


# Tiles that needed more shared memory than the GPU has, and the smaller ones that ran instead, by
# (kernel, device, dtypes, padded width, asked tiles): each kernel's first launch there tries once.
_fitted_tiles: dict[tuple[object, ...], BlockConfig] = {}


def smaller_tiles(config: BlockConfig) -> BlockConfig | None:
    """What to try after `config` ran out of shared memory (None: nothing smaller). Shared memory grows with
    stages x (block_m + block_n) x width: first down to 2 pipeline stages, then the larger tile side halved
    down to 32, then 1 stage, then halved down to 16 (tl.dot's smallest)."""
    larger = "block_n" if config.block_n >= config.block_m else "block_m"
    size = getattr(config, larger)
    if config.num_stages > 2:
        return dataclasses.replace(config, num_stages=config.num_stages - 1)
    if size > 32:
        return dataclasses.replace(config, **{larger: size // 2})
    if config.num_stages > 1:
        return dataclasses.replace(config, num_stages=1)
    if size > 16:
        return dataclasses.replace(config, **{larger: size // 2})
    return None


def _footprint(config: BlockConfig) -> int:
    return config.num_stages * (config.block_m + config.block_n)


def _fraction_available(error: OutOfResources) -> float:
    """limit / required of Triton's report, or 1.0 when it gives no numbers."""
    try:
        required, limit = float(error.required), float(error.limit)
    except (TypeError, ValueError):
        return 1.0
    return limit / required if required > 0 and limit > 0 else 1.0


def _tiles_text(config: BlockConfig) -> str:
    return f"{config.block_m}x{config.block_n} tiles, {config.num_stages} stage(s)"


def _launch_fitting(kernel: str, hidden: torch.Tensor, items: torch.Tensor, config: BlockConfig,
                    launch: Callable[[BlockConfig], None]) -> None:
    """launch(config), or, where the GPU cannot hold its tiles (Triton raises OutOfResources when it loads the
    compiled kernel, before anything runs), launch with the largest of `smaller_tiles` that fits. The
    safety net for where launch_config's estimate falls short (a Triton version or GPU that stages more
    than kernels.tile_memory counts); the results do not depend on the tiles."""
    key = (kernel, hidden.device, hidden.dtype, items.dtype, _block_d(hidden.shape[1]), config)
    tiles = _fitted_tiles.get(key, config)
    while True:
        try:
            launch(tiles)
        except OutOfResources as error:
            # Each refused compilation can take seconds (wide float32 tiles: tens): skip the steps that the
            # reported shortfall already rules out, taking shared memory as proportional to the footprint.
            smaller = smaller_tiles(tiles)
            wanted = _footprint(tiles) * _fraction_available(error)
            while smaller is not None and _footprint(smaller) > wanted and smaller_tiles(smaller) is not None:
                smaller = smaller_tiles(smaller)
            if smaller is None:
                raise RuntimeError(
                    f"kernels: the {kernel} kernel needs more {error.name} than {hidden.device} has even "
                    f"with {_tiles_text(tiles)} (width d={hidden.shape[1]}, {hidden.dtype}/{items.dtype}); "
                    f"use impl='torch' for this width") from error
            tiles = smaller
            continue
        if tiles != config and key not in _fitted_tiles:
            _fitted_tiles[key] = tiles
            warnings.warn(f"kernels: the {kernel} kernel's {_tiles_text(config)} need more shared memory "
                          f"than {hidden.device} has (d={hidden.shape[1]}, {hidden.dtype}/{items.dtype}); "
                          f"running {_tiles_text(tiles)}", stacklevel=2)
        return


def _common_args(hidden: torch.Tensor, items: torch.Tensor, negatives: _Negatives | None,
                 plan: _Plan) -> tuple[int, int, int, int, int]:
    neg_group_stride = negatives.ids.stride(0) if plan.scheme == "sequence" and negatives is not None else 0
    return (hidden.stride(0), hidden.stride(1), items.stride(0), items.stride(1), neg_group_stride)


_PREPARE_BLOCK = 1024


class _Negatives(NamedTuple):
    """A call's negatives as `_prepare_negatives` gives them, each of the negatives' shape."""

    ids: torch.Tensor  # int32 item ids, -1 where out of range: what the kernels read
    offsets: torch.Tensor  # float32 base-2 logit offsets: the logQ correction, -inf where out of range
    scatter_ids: torch.Tensor  # int32 item ids, 0 where out of range: for index_add_ of zero rows


def _prepare_negatives(negatives: torch.Tensor, log_q: torch.Tensor | None, plan: _Plan) -> _Negatives:
    """A call's negatives for the kernels, in one launch and without a host synchronisation; an
    out-of-range negative is reported through kernels.index_guard. The tile loops then read ids and offsets
    instead of testing each index's range and gathering log q in every program."""
    prepared = _Negatives(*(triton_common.new_output(tuple(negatives.shape), dtype, negatives.device)
                            for dtype in (torch.int32, torch.float32, torch.int32)))
    numel = negatives.numel()
    if numel > 0:
        _prepare_negatives_kernel[(triton.cdiv(numel, _PREPARE_BLOCK),)](
            negatives.contiguous(), *prepared, index_guard.flags(negatives.device),
            log_q if log_q is not None else prepared.offsets, numel, plan.num_items, plan.log_q_scalar,
            LOG_Q_MODE=plan.log_q_mode, BLOCK=_PREPARE_BLOCK)
    return prepared


def _negative_args(negatives: _Negatives | None, ids_stand_in: torch.Tensor,
                   offsets_stand_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernels' ids and offsets arguments; "full" (None) passes stand-ins that the kernels never read."""
    if negatives is None:
        return ids_stand_in, offsets_stand_in
    return negatives.ids, negatives.offsets


def _forward(hidden: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, negatives: _Negatives | None,
             plan: _Plan) -> tuple[torch.Tensor, ...]:
    """(lse, positive logit, loss, kept, safe targets) per row: float32 [N] but safe targets, int32 [N]
    (0 where the row does not count); kept is 1.0 on rows with a target in range, 0.0 elsewhere.
    negatives: as `_prepare_negatives` gives them (None for "full")."""
    num_rows, dim = hidden.shape
    lse = triton_common.new_output((num_rows,), torch.float32, hidden.device)
    positive = triton_common.new_output((num_rows,), torch.float32, hidden.device)
    loss = triton_common.new_output((num_rows,), torch.float32, hidden.device)
    kept = triton_common.new_output((num_rows,), torch.float32, hidden.device)
    safe_targets = triton_common.new_output((num_rows,), torch.int32, hidden.device)

    # The d-blocked forward reads shared negatives' rows from one gathered copy in hidden's dtype (the dtype
    # the kernels convert item rows to before the dot): [K, d], within the O(N*d + K*d) allowance.
    gathered = None
    if plan.config.forward.block_d and plan.scheme == "shared":
        assert negatives is not None
        gathered = items.index_select(0, negatives.scatter_ids).to(hidden.dtype)

    def launch(config: BlockConfig) -> None:
        grid = (triton.cdiv(plan.rows_per_group, config.block_m), plan.num_groups)
        ids, offsets = _negative_args(negatives, targets, lse)
        outputs = (lse, positive, loss, kept, safe_targets, index_guard.flags(hidden.device),
                   plan.rows_per_group, plan.num_negatives, plan.num_items, dim)
        common = dict(FULL=plan.full, REMOVE_HITS=plan.remove_hits,
                      EVEN_K=plan.num_negatives % config.block_n == 0, PRECISION=_precision(hidden.dtype),
                      UPCAST=_upcast(hidden), BLOCK_M=config.block_m, BLOCK_N=config.block_n,
                      num_warps=config.num_warps, num_stages=config.num_stages)
        strides = _common_args(hidden, items, negatives, plan)
        if config.block_d:
            chunk = _d_chunk(dim, config.block_d)
            table = items if gathered is None else gathered
            _forward_dblock_kernel[grid](
                hidden, items, table, targets, ids, offsets, *outputs, *strides[:4], table.stride(0),
                table.stride(1), strides[4], plan.ignore_index, GATHERED=gathered is not None,
                EVEN_D=dim % chunk == 0, BLOCK_D=chunk, D_CHUNKS=triton.cdiv(dim, chunk), **common)
        else:
            _forward_kernel[grid](hidden, items, targets, ids, offsets, *outputs, *strides, plan.ignore_index,
                                  BLOCK_D=_block_d(dim), **common)

    _launch_fitting("forward", hidden, items, plan.config.forward, launch)
    return lse, positive, loss, kept, safe_targets


def _grad_hidden(hidden: torch.Tensor, items: torch.Tensor, safe_targets: torch.Tensor,
                 negatives: _Negatives | None, lse: torch.Tensor, row_grad: torch.Tensor,
                 positive_coef: torch.Tensor, plan: _Plan) -> torch.Tensor:
    num_rows, dim = hidden.shape
    grad_hidden = triton_common.new_output((num_rows, dim), hidden.dtype, hidden.device)

    def launch(config: BlockConfig) -> None:
        grid = (triton.cdiv(plan.rows_per_group, config.block_m), plan.num_groups)
        _grad_hidden_kernel[grid](
            hidden, items, safe_targets, *_negative_args(negatives, safe_targets, lse), lse, row_grad,
            positive_coef, grad_hidden,
            plan.rows_per_group, plan.num_negatives, dim, *_common_args(hidden, items, negatives, plan),
            FULL=plan.full, CORRECTED=plan.log_q_mode != LOG_Q_NONE, REMOVE_HITS=plan.remove_hits,
            EVEN_K=plan.num_negatives % config.block_n == 0,
            PRECISION=_precision(hidden.dtype), UPCAST=_upcast(hidden),
            BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_D=_block_d(dim),
            num_warps=config.num_warps, num_stages=config.num_stages,
        )

    _launch_fitting("grad_hidden", hidden, items, plan.config.grad_hidden, launch)
    return grad_hidden


def _launch_grad_items(hidden: torch.Tensor, items: torch.Tensor, safe_targets: torch.Tensor,
                       negatives: _Negatives | None, lse: torch.Tensor,
                       row_grad: torch.Tensor, out: torch.Tensor, *, num_splits: int, group_offset: int,
                       num_groups: int, out_strides: tuple[int, int, int], atomic: bool, plan: _Plan) -> None:
    dim = hidden.shape[1]

    def launch(config: BlockConfig) -> None:
        # The row splits loop over row blocks of any size: num_splits needs no particular block_m.
        grid = (triton.cdiv(plan.num_negatives, config.block_n), num_splits, num_groups)
        _grad_items_kernel[grid](
            hidden, items, safe_targets, *_negative_args(negatives, safe_targets, lse), lse, row_grad, out,
            plan.rows_per_group, plan.num_negatives, dim, num_splits, group_offset,
            *_common_args(hidden, items, negatives, plan), *out_strides,
            FULL=plan.full, CORRECTED=plan.log_q_mode != LOG_Q_NONE, REMOVE_HITS=plan.remove_hits,
            ATOMIC=atomic, PRECISION=_precision(hidden.dtype), UPCAST=_upcast(hidden),
            BLOCK_M=config.block_m, BLOCK_N=config.block_n,
            BLOCK_D=_block_d(dim), num_warps=config.num_warps, num_stages=config.num_stages,
        )

    _launch_fitting("grad_items", hidden, items, plan.config.grad_items, launch)


def _row_splits(plan: _Plan, num_rows: int) -> int:
    """How many row ranges grad_items splits a negative tile's rows into, to fill the GPU when K is small.
    Each split costs K*d floats, so splits stay within max(1, N // K) to keep the buffer O(N*d + K*d)."""
    config = plan.config.grad_items
    tiles = triton.cdiv(plan.num_negatives, config.block_n)
    wanted = triton.cdiv(plan.config.target_programs, tiles)
    return max(1, min(wanted, num_rows // plan.num_negatives, triton.cdiv(num_rows, config.block_m)))


def _grad_items(hidden: torch.Tensor, items: torch.Tensor, safe_targets: torch.Tensor,
                negatives: _Negatives | None, lse: torch.Tensor, row_grad: torch.Tensor,
                positive_coef: torch.Tensor, plan: _Plan) -> torch.Tensor:
    num_rows, dim = hidden.shape
    num_items = items.shape[0]
    launch = functools.partial(_launch_grad_items, hidden, items, safe_targets, negatives, lse, row_grad,
                               plan=plan)
    if plan.scheme in ("full", "shared"):
        splits = _row_splits(plan, num_rows)
        if plan.full and splits == 1:
            grad_items = triton_common.new_output((num_items, dim), items.dtype, items.device)
            launch(out=grad_items, num_splits=1, group_offset=0, num_groups=1,
                   out_strides=(0, 0, dim), atomic=False)
            return grad_items
        k = plan.num_negatives
        partial = triton_common.new_output((splits, k, dim), torch.float32, items.device)
        launch(out=partial, num_splits=splits, group_offset=0, num_groups=1,
               out_strides=(k * dim, 0, dim), atomic=False)
        tile_grad = partial.sum(dim=0) if splits > 1 else partial[0]
        if plan.full:
            return tile_grad.to(items.dtype)
        assert negatives is not None
        return _shared_item_gradient(tile_grad, hidden, items, negatives, positive_coef, safe_targets)
    else:
        assert negatives is not None
        grad_items = torch.zeros((num_items, dim), dtype=items.dtype, device=items.device)
        if _adds_atomically(items):
            launch(out=grad_items, num_splits=1, group_offset=0,
                   num_groups=plan.num_groups, out_strides=(0, 0, dim), atomic=True)
        else:
            k = plan.num_negatives
            chunk = max(1, min(plan.num_groups, max(num_rows, k) // k))
            buffer = triton_common.new_output((chunk, k, dim), torch.float32, items.device)
            for first in range(0, plan.num_groups, chunk):
                count = min(chunk, plan.num_groups - first)
                launch(out=buffer, num_splits=1, group_offset=first,
                       num_groups=count, out_strides=(0, k * dim, dim), atomic=False)
                # Refused (out-of-range) negatives have zero rows here: they add nothing.
                grad_items.index_add_(0, negatives.scatter_ids[first:first + count].reshape(-1),
                                      buffer[:count].reshape(count * k, dim).to(items.dtype))
    _add_positive_rows(grad_items, hidden, positive_coef, safe_targets)
    return grad_items


def _shared_item_gradient(tile_grad: torch.Tensor, hidden: torch.Tensor, items: torch.Tensor,
                          negatives: _Negatives, positive_coef: torch.Tensor,
                          safe_targets: torch.Tensor) -> torch.Tensor:
    """The item gradient of "shared" from dE of its [K] negatives (float32, in their order; a refused
    negative's row is zero)."""
    grad_items = torch.zeros(tuple(items.shape), dtype=items.dtype, device=items.device)
    grad_items.index_add_(0, negatives.scatter_ids, tile_grad.to(items.dtype))
    _add_positive_rows(grad_items, hidden, positive_coef, safe_targets)
    return grad_items


def _add_positive_rows(grad_items: torch.Tensor, hidden: torch.Tensor, positive_coef: torch.Tensor,
                       safe_targets: torch.Tensor) -> None:
    # No boolean indexing (a host synchronisation): ignored rows have coefficient 0 and add zeros to item 0.
    positive_rows = positive_coef[:, None] * hidden.to(torch.float32)
    grad_items.index_add_(0, safe_targets, positive_rows.to(grad_items.dtype))


def _fused_backward(hidden: torch.Tensor, items: torch.Tensor, safe_targets: torch.Tensor,
                    negatives: _Negatives, lse: torch.Tensor, row_grad: torch.Tensor,
                    positive_coef: torch.Tensor, plan: _Plan,
                    config: BlockConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Both gradients of "shared" with one pass over the logits (see _fused_backward_kernel)."""
    num_rows, dim = hidden.shape
    grad_hidden = triton_common.new_output((num_rows, dim), hidden.dtype, hidden.device)
    tile_grad = torch.zeros((plan.num_negatives, dim), dtype=torch.float32, device=hidden.device)

    def launch(tiles: BlockConfig) -> None:
        _fused_backward_kernel[(triton.cdiv(num_rows, tiles.block_m),)](
            hidden, items, safe_targets, negatives.ids, negatives.offsets, lse, row_grad, positive_coef,
            grad_hidden, tile_grad,
            num_rows, plan.num_negatives, dim,
            hidden.stride(0), hidden.stride(1), items.stride(0), items.stride(1),
            CORRECTED=plan.log_q_mode != LOG_Q_NONE, REMOVE_HITS=plan.remove_hits,
            EVEN_K=plan.num_negatives % tiles.block_n == 0,
            PRECISION=_precision(hidden.dtype), UPCAST=_upcast(hidden),
            BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_D=_block_d(dim),
            num_warps=tiles.num_warps, num_stages=tiles.num_stages,
        )

    _launch_fitting("fused_backward", hidden, items, config, launch)
    grad_items = _shared_item_gradient(tile_grad, hidden, items, negatives, positive_coef, safe_targets)
    return grad_hidden, grad_items


def _dblock_backward(hidden: torch.Tensor, items: torch.Tensor, safe_targets: torch.Tensor,
                     negatives: _Negatives, lse: torch.Tensor, row_grad: torch.Tensor,
                     positive_coef: torch.Tensor, plan: _Plan,
                     config: BlockConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Both gradients of "shared" in one pass over the logits with d-blocked item-gradient tiles (see
    _backward_dblock_kernel)."""
    num_rows, dim = hidden.shape
    splits = plan.config.dblock_splits
    if splits == 1:
        out = triton_common.new_output((num_rows, dim), hidden.dtype, hidden.device)
        out_strides = (0, out.stride(0), out.stride(1))
    else:
        out = triton_common.new_output((splits, num_rows, dim), torch.float32, hidden.device)
        out_strides = (out.stride(0), out.stride(1), out.stride(2))
    tile_grad = torch.zeros((plan.num_negatives, dim), dtype=torch.float32, device=hidden.device)
    # The negatives' rows in order, in the dtype the dots read (as the d-blocked forward gathers them).
    table = items.index_select(0, negatives.scatter_ids).to(hidden.dtype)

    def launch(tiles: BlockConfig) -> None:
        chunk = _dblock_backward_chunk(dim, tiles.block_d)
        _backward_dblock_kernel[(triton.cdiv(num_rows, tiles.block_m), splits)](
            hidden, table, items, safe_targets, negatives.ids, negatives.offsets, lse, row_grad,
            positive_coef, out, tile_grad,
            num_rows, plan.num_negatives, dim, splits,
            hidden.stride(0), hidden.stride(1), table.stride(0), table.stride(1), items.stride(0),
            items.stride(1), *out_strides,
            REMOVE_HITS=plan.remove_hits, EVEN_D=dim % chunk == 0, PRECISION=_precision(hidden.dtype),
            UPCAST=_upcast(hidden),
            BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_D=chunk, D_CHUNKS=triton.cdiv(dim, chunk),
            num_warps=tiles.num_warps, num_stages=tiles.num_stages,
        )

    _launch_fitting("dblock_backward", hidden, items, config, launch)
    grad_hidden = out if splits == 1 else out.sum(dim=0).to(hidden.dtype)
    grad_items = _shared_item_gradient(tile_grad, hidden, items, negatives, positive_coef, safe_targets)
    return grad_hidden, grad_items


class _SharedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, hidden: torch.Tensor, items: torch.Tensor,
        targets: torch.Tensor, negatives: _Negatives | None, plan: _Plan,
    ) -> torch.Tensor:
        lse, positive, loss, kept, safe_targets = _forward(hidden, items, targets, negatives, plan)
        # d loss / d loss_i for a unit upstream gradient; few small ops, since at K ~ 4096 the host's
        # launch time is comparable to the kernels'.
        row_weight = kept
        if plan.reduction == "mean":
            count = kept.sum().clamp(min=1.0)
            row_weight = row_weight / count
            result = loss.sum() / count
        else:
            result = loss if plan.reduction == "none" else loss.sum()
        ctx.save_for_backward(hidden, items, lse, positive, row_weight, safe_targets,
                              *(negatives if negatives is not None else ()))
        ctx.plan = plan  # type: ignore[attr-defined]
        return result

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_output: torch.Tensor,
    ) -> tuple[torch.Tensor | None, ...]:
        hidden, items, lse, positive, row_weight, safe_targets, *prepared = ctx.saved_tensors  # type: ignore[attr-defined]
        negatives = _Negatives(*prepared) if prepared else None
        plan: _Plan = ctx.plan  # type: ignore[attr-defined]
        needs_hidden, needs_items = ctx.needs_input_grad[0], ctx.needs_input_grad[1]  # type: ignore[attr-defined]
        row_grad = (grad_output.to(torch.float32) * row_weight).contiguous()
        # d loss_i / d s_i0 = p_i0 - 1; "full" scores the target column inside the loop with weight p_i0,
        # so only the -1 remains outside it.
        if plan.full:
            positive_coef = -row_grad
        else:
            positive_coef = row_grad * torch.expm1(positive - lse)
        grad_hidden = grad_items = None
        dblock = plan.config.dblock_backward
        if dblock is not None and plan.scheme == "shared" and needs_hidden and needs_items:
            assert negatives is not None
            grad_hidden, grad_items = _dblock_backward(hidden, items, safe_targets, negatives, lse, row_grad,
                                                       positive_coef, plan, dblock)
            return grad_hidden, grad_items, None, None, None
        fused = plan.config.fused_backward
        if (fused is not None and plan.scheme == "shared" and needs_hidden and needs_items
                and plan.num_negatives <= plan.config.fused_max_negatives):
            assert negatives is not None
            grad_hidden, grad_items = _fused_backward(hidden, items, safe_targets, negatives, lse, row_grad,
                                                      positive_coef, plan, fused)
            return grad_hidden, grad_items, None, None, None
        if needs_hidden:
            grad_hidden = _grad_hidden(hidden, items, safe_targets, negatives, lse, row_grad, positive_coef,
                                       plan)
        if needs_items:
            grad_items = _grad_items(hidden, items, safe_targets, negatives, lse, row_grad, positive_coef,
                                     plan)
        return grad_hidden, grad_items, None, None, None


def shared_linear_cross_entropy(
    hidden: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor | None,
    *,
    scheme: SharedScheme,
    num_negatives: int,
    rows_per_sequence: int,
    log_q: torch.Tensor | float | None,
    remove_accidental_hits: bool,
    ignore_index: int,
    reduction: Reduction,
    config: SharedConfig | None = None,
) -> torch.Tensor:
    """The loss (docs/design.md#the-loss) for negatives shared by many rows; inputs as `triton_dispatch`
    describes.

    scheme "full": negatives None, every item scored once (F.cross_entropy; log_q must be None).
    "shared": negatives [K] for every row. "sequence": negatives [B, K], row i uses
    negatives[i // rows_per_sequence]. Returns float32: a scalar for "mean"/"sum", [N] for "none".
    `config` overrides the tile shapes (benchmarks); None picks `launch_config`.
    """
    if hidden.dim() != 2:
        raise ValueError(f"hidden: expected [N, d], got shape {tuple(hidden.shape)}")
    if items.dim() != 2 or items.shape[1] != hidden.shape[1]:
        raise ValueError(f"items: expected [C, {hidden.shape[1]}], got shape {tuple(items.shape)}")
    num_rows = hidden.shape[0]
    num_items = items.shape[0]
    if scheme == "full":
        if negatives is not None or log_q is not None:
            raise ValueError("negatives/log_q: the full catalogue takes neither negatives nor a log_q "
                             "correction")
        if num_negatives != num_items:
            raise ValueError(f"num_negatives: must be C={num_items} for the full catalogue, "
                             f"got {num_negatives}")
        num_groups, rows_per_group = 1, num_rows
    elif scheme == "shared":
        if negatives is None or negatives.dim() != 1 or negatives.shape[0] != num_negatives:
            raise ValueError(f"negatives: expected [K={num_negatives}] for scheme 'shared'")
        num_groups, rows_per_group = 1, num_rows
    elif scheme == "sequence":
        if negatives is None or negatives.dim() != 2 or negatives.shape[1] != num_negatives:
            raise ValueError(f"negatives: expected [B, K={num_negatives}] for scheme 'sequence'")
        num_groups, rows_per_group = negatives.shape[0], rows_per_sequence
        if num_groups * rows_per_group != num_rows:
            raise ValueError(f"rows_per_sequence: {rows_per_sequence} x B={num_groups} sequences "
                             f"!= N={num_rows}")
        negatives = negatives.contiguous()
    else:
        raise ValueError(f"scheme: expected 'full', 'shared' or 'sequence', got {scheme!r}")
    check_reduction(reduction)
    if config is not None:
        _check_d_blocked(config)
    log_q_mode, log_q_scalar, log_q_tensor = parse_log_q(log_q, num_negatives, num_items, hidden.device)
    plan = _Plan(
        scheme=scheme, num_items=num_items, num_groups=num_groups, rows_per_group=rows_per_group,
        num_negatives=num_negatives, log_q_mode=log_q_mode, log_q_scalar=log_q_scalar,
        remove_hits=remove_accidental_hits and scheme != "full", ignore_index=ignore_index,
        reduction=reduction,
        config=config if config is not None else launch_config(hidden.device, hidden.shape[1], hidden.dtype,
                                                               items.dtype),
    )
    if num_rows == 0:
        empty = hidden.sum(dim=1).to(torch.float32) + items.sum() * 0.0
        return empty if reduction == "none" else empty.sum()
    with torch.cuda.device(hidden.device) if hidden.is_cuda else contextlib.nullcontext():
        prepared = _prepare_negatives(negatives, log_q_tensor, plan) if negatives is not None else None
        return _SharedLinearCrossEntropy.apply(hidden, items, targets, prepared, plan)
