"""Trace a trial's GPU allocations on CPU and replay them through a model of CUDA's caching allocator.

    python3 benchmarks/memory_trace.py '{"loss": "ce", "loss_impl": "triton", "batch_size": 64}' 5000000
        [--steps 5] [--eval-users 64] [--extrapolate S] [--workspace-mib 32] [--no-warm-up]
        [--perturb 40] [--show MiB]
    python3 benchmarks/memory_trace.py --measured results/memory-catalogue/measured-*.csv --out CSV
        [--only NAME,...] [--host-gib 2]

A development tool for study/memory/model.py where no GPU is at hand. It runs what a trial runs on the
card (the popularity baseline's evaluation, `--steps` training steps of the trainer's code path with
bf16 autocast, then the model's evaluation) on random batches of the given catalogue size, on CPU, and
records every tensor allocation and free with torch's profiler. Where CUDA allocates differently from
the CPU kernels, the step is patched to allocate as CUDA does (the numbers are not computed, only the
buffers): dropout keeps a bool mask, attention is flash attention (no L x L matrix; its backward makes
a float32 dq accumulator), item-row gathers scatter their gradient with CUDA's sort-based index_put_
(int64 sort buffers), the embedding's backward sorts its ids, Adam is the foreach implementation, and
the fused Triton losses allocate what kernels/triton_shared.py and kernels/triton_gather.py allocate.

CUDA also takes a cuBLAS workspace per thread at its first matmul (32 MiB on sm90) and keeps it: one for
the trial's thread and one for autograd's own CUDA thread, which runs the backward. The trainer makes both
before anything else of the trial (study/memory/blas_workspaces.py); trainers before it left them to the
first forward and the first backward. CPU traces make neither: the replay adds both (`--workspace-mib`),
each way, and prints both replays next to the memory model's prediction for each (`--no-warm-up` makes
--show and --perturb follow the old way). Trials too large for the host are traced at S, 2S and 3S times
their rows and catalogue (`--extrapolate S`; the evaluation's chunks keep their users) and each allocation
is replayed at its size extrapolated to scale 1 (sizes are polynomials of degree at most two in the scale).
Extrapolated, with the workspaces where those trainers took them, the replay reproduced the measured excess
(peak reserved minus peak allocated) of every PyTorch per-position and full-CE trial of the H200 runs made
with the current code within about 0.1 GiB (BENCHMARKS.md section 3). `--measured` replays every such trial
of the measured catalogue sets both ways, each from a scale chosen so that its largest trace fits the host,
and writes the measured, replayed and modelled excess side by side.

The trace is then replayed through `CachingAllocatorModel`, which follows the rules of PyTorch's CUDA
caching allocator with default settings: requests rounded up to 512 B; up to 1 MiB from a small pool
of 2 MiB segments, larger ones from the large pool, 1-10 MiB requests in 20 MiB segments, larger ones
in segments rounded up to 2 MiB; best fit (the smallest free block that is large enough), a block
split when more than 1 MiB (small pool: 512 B) would remain; freed blocks merged with free neighbours
of their segment; segments never returned. Its peak reserved memory against the trace's peak gives
the cache's excess; `--perturb N` replays N more times with the sizes of blocks under 64 MiB scaled by
a random factor in [0.7, 1.3], to see whether the excess depends on where small blocks land.

Prints the trace's peak allocated memory, the modelled peak reserved memory, and the memory model's
prediction of both for the same configuration. The CPU's kernels and these patches are not CUDA: use it
to find which buffers coexist and how the cache behaves, and check the model on a GPU
(benchmarks/memory_validation.py).
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import random
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30

# --- the caching allocator ---------------------------------------------------------------------------

MIN_BLOCK = 512
SMALL_SIZE = 1 << 20
SMALL_BUFFER = 2 << 20
MIN_LARGE_ALLOC = 10 << 20
ROUND_LARGE = 2 << 20
LARGE_BUFFER = 20 << 20


def round_size(size: int) -> int:
    return MIN_BLOCK if size < MIN_BLOCK else MIN_BLOCK * ((size + MIN_BLOCK - 1) // MIN_BLOCK)


def segment_size(size: int) -> int:
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return ROUND_LARGE * ((size + ROUND_LARGE - 1) // ROUND_LARGE)


class Block:
    __slots__ = ("address", "size", "free", "previous", "next", "small")

    def __init__(self, address: int, size: int, small: bool) -> None:
        self.address, self.size, self.small = address, size, small
        self.free = True
        self.previous: Block | None = None
        self.next: Block | None = None


class CachingAllocatorModel:
    """Allocations and frees by key; `reserved`, `allocated` and their peaks, in bytes."""

    def __init__(self) -> None:
        self.pools: dict[bool, list[tuple[int, int, Block]]] = {True: [], False: []}
        self.next_address = 0
        self.reserved = self.allocated = self.peak_reserved = self.peak_allocated = 0
        self.live: dict[Any, Block] = {}

    def _insert(self, block: Block) -> None:
        bisect.insort(self.pools[block.small], (block.size, block.address, block), key=lambda e: e[:2])

    def _remove(self, block: Block) -> None:
        pool = self.pools[block.small]
        index = bisect.bisect_left(pool, (block.size, block.address), key=lambda e: e[:2])
        assert pool[index][2] is block
        pool.pop(index)

    def malloc(self, key: Any, requested: int) -> None:
        size = round_size(requested)
        small = size <= SMALL_SIZE
        pool = self.pools[small]
        index = bisect.bisect_left(pool, (size, -1), key=lambda e: e[:2])
        if index < len(pool):
            block = pool.pop(index)[2]
        else:
            segment = segment_size(size)
            block = Block(self.next_address, segment, small)
            self.next_address += segment + (1 << 40)  # segments are never adjacent
            self.reserved += segment
            self.peak_reserved = max(self.peak_reserved, self.reserved)
        remaining = block.size - size
        if (remaining >= MIN_BLOCK) if small else (remaining > SMALL_SIZE):
            rest = Block(block.address + size, remaining, small)
            rest.previous, rest.next = block, block.next
            if block.next is not None:
                block.next.previous = rest
            block.next, block.size = rest, size
            self._insert(rest)
        block.free = False
        self.allocated += block.size
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        self.live[key] = block

    def free(self, key: Any) -> None:
        block = self.live.pop(key)
        self.allocated -= block.size
        block.free = True
        previous, following = block.previous, block.next
        if previous is not None and previous.free:
            self._remove(previous)
            previous.size += block.size
            previous.next = following
            if following is not None:
                following.previous = previous
            block = previous
        if following is not None and following.free:
            self._remove(following)
            block.size += following.size
            block.next = following.next
            if following.next is not None:
                following.next.previous = block
        self._insert(block)


def replay(events: Iterable[tuple[int, Any]]) -> CachingAllocatorModel:
    """events: (+bytes, key) allocates, (-bytes, key) frees; a key allocated again is freed first (the CPU
    allocator reuses an address whose free the profiler recorded out of order)."""
    model = CachingAllocatorModel()
    for size, key in events:
        replay_one(model, size, key)
    return model


def replay_one(model: CachingAllocatorModel, size: int, key: Any) -> None:
    if size > 0:
        if key in model.live:
            model.free(key)
        model.malloc(key, size)
    elif key in model.live:
        model.free(key)


def perturbed(events: list[tuple[int, Any]], seed: int) -> list[tuple[int, Any]]:
    """The same trace with blocks under 64 MiB resized by a factor in [0.7, 1.3]."""
    rng = random.Random(seed)
    sizes: dict[Any, int] = {}
    out = []
    for size, key in events:
        if size > 0:
            sizes[key] = int(size * rng.uniform(0.7, 1.3)) if size < 64 * MiB else size
            out.append((sizes[key], key))
        else:
            out.append((-sizes.get(key, -size), key))
    return out


# --- tracing ------------------------------------------------------------------------------------------


def allocation_trace(work: Callable[[], None]) -> list[tuple[int, Any, str]]:
    """(+bytes | -bytes, address, innermost op) of every CPU allocation and free that `work` makes."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        work()
    events: list[tuple[int, int, Any, str]] = []

    def walk(node: Any, op: str) -> None:
        if node.tag == _EventType.Allocation:
            events.append((node.start_time_ns, node.extra_fields.alloc_size, node.extra_fields.ptr, op))
        else:
            op = node.name
        for child in node.children:
            walk(child, op)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root, "")
    events.sort(key=lambda event: event[0])
    return [(size, address, op) for _, size, address, op in events]


# --- CUDA's allocation pattern on CPU ----------------------------------------------------------------------


class _Dropout(torch.autograd.Function):
    """CUDA's fused dropout: the output and a bool mask saved for backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: float) -> torch.Tensor:  # type: ignore[override]
        mask = torch.empty(x.shape, dtype=torch.bool).bernoulli_(1 - p)
        ctx.save_for_backward(mask)
        ctx.scale = 1 / (1 - p)
        return (x * mask).mul_(ctx.scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        return (grad * mask).mul_(ctx.scale), None


class _FlashAttention(torch.autograd.Function):
    """Flash attention: output [B, L, H, dh] and a float32 logsumexp [B, H, L] saved; backward makes
    dq, dk, dv, a float32 [B, H, L] and a float32 dq accumulator [B, L, H, dh]."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        b, h, length, dh = q.shape
        out = torch.zeros(b, length, h, dh, dtype=q.dtype)
        lse = torch.empty(b, h, length, dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out.transpose(1, 2)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        q = ctx.saved_tensors[0]
        b, h, length, dh = q.shape
        grads = [torch.zeros(b, length, h, dh, dtype=q.dtype) for _ in range(3)]
        scratch = (torch.empty(b, h, length, dtype=torch.float32),
                   torch.empty(b, length, h, dh, dtype=torch.float32))
        del scratch
        return tuple(g.transpose(1, 2) for g in grads)


class _Gather(torch.autograd.Function):
    """items[index] whose backward allocates as CUDA's index_put_(accumulate=True): a zeroed [C, d]
    gradient, then four int64 index buffers and cub's two alternate buffers."""

    @staticmethod
    def forward(ctx: Any, items: torch.Tensor, index: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(index)
        ctx.shape, ctx.dtype = items.shape, items.dtype
        return items[index]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (index,) = ctx.saved_tensors
        out = torch.zeros(ctx.shape, dtype=ctx.dtype)
        count = index.numel()
        buffers = [torch.empty(count, dtype=torch.int64) for _ in range(6)]
        out.index_add_(0, index.reshape(-1), grad.reshape(count, -1).to(ctx.dtype))
        del buffers
        return out, None


class _Embedding(torch.autograd.Function):
    """CUDA's embedding backward: sorts the N ids (int64 buffers) into a zeroed [C + 1, d] gradient,
    through float32 partial sums of at most [N, d]."""

    @staticmethod
    def forward(ctx: Any, ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(ids)
        ctx.shape = weight.shape
        return weight[ids]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor]:  # type: ignore[override]
        (ids,) = ctx.saved_tensors
        count = ids.numel()
        buffers = [torch.empty(count, dtype=torch.int64) for _ in range(6)]
        out = torch.zeros(ctx.shape, dtype=grad.dtype)
        partial = torch.empty(count, ctx.shape[1], dtype=torch.float32)
        out.index_add_(0, ids.reshape(-1), grad.reshape(count, -1))
        del buffers, partial
        return None, out


class _FusedShared(torch.autograd.Function):
    """kernels/triton_shared.py's buffers: per-row results in forward; in backward the hidden gradient,
    the item gradient ([C, d]; for "shared" through a [splits, K, d] partial or a [K, d] tile) and the
    positive rows' float32 contributions."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hidden: torch.Tensor, items: torch.Tensor, targets: torch.Tensor,
        negatives: torch.Tensor | None, scheme: str, num_negatives: int,
    ) -> torch.Tensor:
        rows = hidden.shape[0]
        lse, positive, loss = (torch.zeros(rows, dtype=torch.float32) for _ in range(3))
        kept = targets != -100
        count = kept.sum().clamp(min=1)
        row_weight = kept.to(torch.float32) / count
        safe = torch.where(kept, targets, 0)
        ctx.save_for_backward(hidden, items, negatives, lse, positive, row_weight, safe)
        ctx.scheme, ctx.num_negatives = scheme, num_negatives
        return loss.sum() / count

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        hidden, items, negatives, lse, positive, row_weight, safe = ctx.saved_tensors
        rows, dim = hidden.shape
        k = ctx.num_negatives
        row_grad = grad.to(torch.float32) * row_weight
        coef = -row_grad if ctx.scheme == "full" else row_grad * torch.expm1(positive - lse)
        grad_hidden = torch.zeros(rows, dim, dtype=hidden.dtype)
        grad_items = torch.zeros(items.shape, dtype=items.dtype)
        if ctx.scheme == "shared":
            if dim <= 64 and k <= 8192:
                tile = torch.zeros(k, dim, dtype=torch.float32)
            else:
                splits = max(1, min(-(-4 * 132 // -(-k // 128)), rows // k, -(-rows // 128)))
                partial = torch.zeros(splits, k, dim, dtype=torch.float32)
                tile = partial.sum(dim=0) if splits > 1 else partial[0]
            grad_items.index_add_(0, negatives, tile)
        if ctx.scheme != "full":
            grad_items.index_add_(0, safe, coef[:, None] * hidden.to(torch.float32))
        return grad_hidden, grad_items, None, None, None, None


class _FusedGather(torch.autograd.Function):
    """kernels/triton_gather.py's buffers: per-row results in forward; in backward float32 zeroed hidden
    and item gradients, the rows of negatives sorted into int32 (d <= 128; torch.sort's chunk buffers
    beyond K = 512), and the hidden gradient cast back."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hidden: torch.Tensor, items: torch.Tensor, targets: torch.Tensor,
        negatives: torch.Tensor | None, num_negatives: int,
    ) -> torch.Tensor:
        rows = hidden.shape[0]
        loss, lse = torch.zeros(rows, dtype=torch.float32), torch.zeros(rows, dtype=torch.float32)
        ctx.save_for_backward(hidden, items, negatives, lse)
        ctx.num_negatives = num_negatives
        return loss

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        from kernels.triton_gather import SORT_CHUNK_ELEMENTS, SORT_IN_TRITON_MAX_NEGATIVES, SORT_MAX_DIM

        hidden, items, negatives, lse = ctx.saved_tensors
        rows, dim = hidden.shape
        k = ctx.num_negatives
        grad_hidden = torch.zeros(rows, dim, dtype=torch.float32)
        grad_items = torch.zeros(items.shape[0], dim, dtype=torch.float32)
        if negatives is not None and dim <= SORT_MAX_DIM:
            ordered = torch.empty(rows, k, dtype=torch.int32)
            if k > SORT_IN_TRITON_MAX_NEGATIVES:
                chunk = max(1, SORT_CHUNK_ELEMENTS // k)
                order = torch.empty(min(chunk, rows), k, dtype=torch.int64)
                for first in range(0, rows, chunk):
                    copy = negatives[first:first + chunk].to(torch.int32)
                    del copy
                del order
            del ordered
        grad.to(torch.float32).contiguous()
        return grad_hidden.to(hidden.dtype), grad_items.to(items.dtype), None, None, None


def _fused_loss(hidden: torch.Tensor, items: torch.Tensor, targets: torch.Tensor,
                negatives: torch.Tensor | None, *, scheme: str, num_negatives: int, ignore_index: int,
                **_: Any) -> torch.Tensor:
    if scheme in ("full", "shared", "sequence"):
        if scheme == "sequence" and negatives is not None:
            negatives = negatives.contiguous()
        return _FusedShared.apply(hidden, items, targets, negatives, scheme, num_negatives)
    tensor_negatives = negatives if scheme == "position" else None
    rows = _FusedGather.apply(hidden.contiguous(), items, targets, tensor_negatives, num_negatives)
    return rows.sum() / (targets != ignore_index).sum().clamp(min=1)


def install_cuda_allocation_pattern() -> None:
    """Patch this process (and only it) to allocate as the CUDA step does; see the module docstring."""
    import kernels.reference as reference
    import kernels.triton_dispatch as dispatch
    import models.sasrec as sasrec

    def dropout(x: torch.Tensor, p: float = 0.5, training: bool = True,
                inplace: bool = False) -> torch.Tensor:
        return _Dropout.apply(x, p) if training and p > 0 else x

    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: Any,
                  **kwargs: Any) -> torch.Tensor:
        if q.requires_grad:
            return _FlashAttention.apply(q, k, v)
        b, h, length, dh = q.shape
        return torch.zeros(b, length, h, dh, dtype=q.dtype).transpose(1, 2)

    def gather_rows(items: torch.Tensor, index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        rows = _Gather.apply(items, index)
        return rows if rows.dtype == dtype else rows.to(dtype)

    def embedding(ids: torch.Tensor, weight: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return _Embedding.apply(ids, weight)

    F.dropout = dropout  # type: ignore[assignment]
    F.embedding = embedding  # type: ignore[assignment]
    sasrec.F.scaled_dot_product_attention = attention  # type: ignore[assignment]
    reference._gather_rows = gather_rows
    dispatch.triton_linear_cross_entropy = _fused_loss


def trace_trial(config: Any, num_items: int, *, steps: int, eval_users: int,
                max_scores: int | None = None) -> list[tuple[int, Any, str]]:
    """The allocations of what a trial runs on the card, for `config` on `num_items` items. Every random
    draw is seeded, so that traces of one configuration at several scales make the same operations.
    `max_scores` is the evaluation's scores per chunk (default: the trial's)."""
    from models.sasrec import SASRec
    from study.data.sequences import EvalSet, Sequences
    from study.training.evaluate import evaluate_model, evaluate_popularity
    from study.training.trainer import build_loss

    max_scores = max_scores or config.eval_max_scores
    generator = torch.Generator().manual_seed(0)
    batch, length = config.batch_size, config.max_len
    offsets = torch.arange(eval_users + 1, dtype=torch.int64) * length
    histories = torch.randint(1, num_items + 1, (eval_users * length,), generator=generator)
    targets = torch.randint(1, num_items + 1, (eval_users,), generator=generator)
    evalset = EvalSet(Sequences(offsets, histories), targets, torch.arange(eval_users))
    counts = torch.ones(num_items + 1, dtype=torch.int64)
    counts[0] = 0
    device = torch.device("cpu")
    bf16 = config.precision != "fp32"

    def autocast() -> Any:
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    def work() -> None:
        for _ in range(2):
            evaluate_popularity(counts, evalset, max_len=length, batch_size=config.eval_batch_size,
                                device=device, max_scores=max_scores)
        torch.manual_seed(0)
        model = SASRec(num_items, max_len=length, hidden=config.hidden, blocks=config.blocks,
                       heads=config.heads, dropout=config.dropout)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                     foreach=True)
        loss_function = build_loss(config, model, counts, device, generator=torch.Generator().manual_seed(1))
        for step in range(steps):
            rows = torch.randint(1, num_items + 1, (batch, length + 1), generator=generator)
            targets = rows[:, 1:]
            inputs = rows[:, :-1] * (targets != 0)
            with autocast():
                loss = loss_function(model(inputs), targets, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            del loss, rows, targets, inputs
        for _ in range(2):
            evaluate_model(model, evalset, num_items=num_items, max_len=length,
                           batch_size=config.eval_batch_size, device=device, autocast=autocast,
                           max_scores=max_scores)

    return allocation_trace(work)


# --- the trace at the real sizes, from traces at small scales -----------------------------------------


def keyed(trace: list[tuple[int, Any, str]]) -> list[tuple[int, int, str]]:
    """(+bytes, id, op) for each allocation and (-1, id, op) for its free: an id per allocation, so that
    traces taken at different scales (different addresses) can be compared event by event."""
    live: dict[Any, int] = {}
    out: list[tuple[int, int, str]] = []
    for size, address, op in trace:
        if size > 0:
            if address in live:  # the CPU allocator reused an address whose free came out of order
                out.append((-1, live.pop(address), op))
            out.append((size, len(out), op))
            live[address] = out[-1][1]
        elif address in live:
            out.append((-1, live.pop(address), op))
    return out


def _aligned(traces: list[list[tuple[int, int, str]]]) -> list[list[tuple[int, int, str]]]:
    """The events every trace makes (matched by kind and op, in order); CPU kernels make a few temporaries
    only at some sizes (a reduction's buffer), which are dropped with their frees."""
    import difflib

    def signature(trace: list[tuple[int, int, str]]) -> list[str]:
        return [("+" if size > 0 else "-") + op for size, _, op in trace]

    first = signature(traces[0])
    common = set(range(len(first)))
    matches = []
    for trace in traces[1:]:
        match: dict[int, int] = {}
        for tag, i1, i2, j1, _ in difflib.SequenceMatcher(None, first, signature(trace),
                                                          autojunk=False).get_opcodes():
            if tag == "equal":
                match.update({i1 + offset: j1 + offset for offset in range(i2 - i1)})
        common &= set(match)
        matches.append(match)
    kept = sorted(common)
    allocated = {traces[0][i][1] for i in kept if traces[0][i][0] > 0}
    kept = [i for i in kept if traces[0][i][0] > 0 or traces[0][i][1] in allocated]
    return [[traces[0][i] for i in kept]] + [[trace[match[i]] for i in kept]
                                              for trace, match in zip(traces[1:], matches)]


def extrapolated(traces: list[list[tuple[int, int, str]]], scales: list[float]) -> list[tuple[int, int, str]]:
    """Each allocation's size at scale 1, from its sizes at `scales` (a polynomial of degree len - 1:
    sizes are products of at most two scaled dimensions, rows and catalogue); frees as in the first trace."""
    import numpy as np

    if len({len(trace) for trace in traces}) > 1:
        traces = _aligned(traces)
    out = []
    for events in zip(*traces):
        size, key, op = events[0]
        sizes = [event[0] for event in events]
        if size > 0 and len(set(sizes)) > 1:
            size = max(1, int(round(float(np.polyval(np.polyfit(scales, sizes, len(scales) - 1), 1.0)))))
        out.append((size, key, op))
    return out


# cuBLAS takes a workspace for each thread's handle from the caching allocator at that handle's first
# matmul and keeps it: 32 MiB on sm90 (torch's default, 4096 KiB x 8). Trainers before the warm-up left
# them to the first step: the trial's thread made its first matmul in the encoder's forward, autograd's CUDA
# thread (which runs the backward) in the first backward. The trainer now makes both before anything else of
# the trial (study/memory/blas_workspaces.py). CPU traces make neither.
CUBLAS_WORKSPACE_MIB = 32
_MATMULS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::matmul")
WORKSPACE_KEYS = ("cublas workspace, trial thread", "cublas workspace, autograd thread")


def with_workspaces(events: list[tuple[int, Any, str]], workspace: int, *,
                    warmed: bool = True) -> list[tuple[int, Any, str]]:
    """The events with the two cuBLAS workspaces added where CUDA takes them (never freed). `warmed`: as the
    trainer runs a trial, both before anything else (its warm-up's own tensors are a few KiB in the
    allocator's small pool, which large requests never use, so they are left out); else as trainers before
    the warm-up did, the trial thread's at its first matmul and autograd's at the first matmul of the first
    backward."""
    if warmed:
        return [(workspace, key, "workspace") for key in WORKSPACE_KEYS] + list(events)
    out: list[tuple[int, Any, str]] = []
    forward_taken = backward_taken = in_backward = False
    for size, key, op in events:
        out.append((size, key, op))
        in_backward = in_backward or op.startswith("autograd::engine") or "Backward" in op
        if size > 0 and op in _MATMULS:
            if not in_backward and not forward_taken:
                forward_taken = True
                out.append((workspace, WORKSPACE_KEYS[0], "workspace"))
            elif in_backward and not backward_taken:
                backward_taken = True
                out.append((workspace, WORKSPACE_KEYS[1], "workspace"))
    return out


def trace_at_scale(config: Any, num_items: int, *, scale: float, smallest: float, steps: int,
                   eval_users: int) -> list[tuple[int, int, str]]:
    """The trial traced at `scale` times its rows (its batch, or its length where the batch does not
    scale to a whole number at the `smallest` scale of the series) and catalogue (kept where the smallest
    scale would leave fewer than four items per negative); evaluation chunks keep their number of users."""
    from study.config import eval_chunk_rows

    by_batch = _whole(config.batch_size * smallest)
    rows = ({"batch_size": round(config.batch_size * scale)} if by_batch
            else {"max_len": max(1, round(config.max_len * scale))})
    scale_items = num_items * smallest >= 4 * max(config.num_negatives if config.loss != "ce" else 1, 64)
    items = round(num_items * scale) if scale_items else num_items
    scaled = config.replace(**rows)
    if scaled.loss != "ce":
        scaled = scaled.replace(num_negatives=min(scaled.num_negatives, items))
    chunk_users = eval_chunk_rows(config.eval_max_scores, num_items)
    return keyed(trace_trial(scaled, items, steps=steps, eval_users=eval_users,
                             max_scores=chunk_users * items))


def _whole(value: float) -> bool:
    return abs(value - round(value)) < 1e-9


def choose_scale(config: Any, num_items: int, *, host_bytes: int = 2 * GiB) -> float:
    """The smallest scale S of an --extrapolate series for `config`: the largest at which the trace at 3S
    allocates about `host_bytes` at most (by the memory model: full CE's [N, C] logits grow with the square
    of the scale, everything else linearly), at most 1/3, and such that the batch (else the length) scales
    to whole numbers."""
    from study.memory.model import TORCH_FULL_BACKWARD_BYTES_PER_LOGIT, predict_peak_bytes

    prediction = predict_peak_bytes(config.replace(device="cuda", precision="auto"), num_items)
    quadratic = (config.batch_size * config.max_len * num_items * TORCH_FULL_BACKWARD_BYTES_PER_LOGIT
                 if config.loss == "ce" else 0)
    linear = max(prediction.torch_max_allocated - quadratic, 1)
    # 9 quadratic S^2 + 3 linear S = host_bytes
    root = (-3 * linear + math.sqrt(9 * linear**2 + 36 * quadratic * host_bytes)) / (18 * quadratic) \
        if quadratic else host_bytes / (3 * linear)
    largest = min(1 / 3, root)
    for side in (config.batch_size, config.max_len):
        if side * largest >= 1:
            return int(side * largest) / side
    return 1 / config.max_len


def trace_events(config: Any, num_items: int, *, steps: int, eval_users: int,
                 extrapolate: float | None) -> list[tuple[int, Any, str]]:
    """The trial's allocations at its real sizes (traced, or extrapolated from three smaller traces)."""
    if extrapolate:
        scales = [extrapolate * multiple for multiple in (1, 2, 3)]
        traces = [trace_at_scale(config, num_items, scale=scale, smallest=scales[0], steps=steps,
                                 eval_users=eval_users) for scale in scales]
        return list(extrapolated(traces, scales))
    return list(keyed(trace_trial(config, num_items, steps=steps, eval_users=eval_users)))


def replay_both_ways(events: list[tuple[int, Any, str]],
                     workspace: int) -> dict[bool, CachingAllocatorModel]:
    """The replay with the workspaces made first (warmed, True: today's trainer) and at the first matmuls
    (False: trainers before the warm-up)."""
    return {warmed: replay((size, key) for size, key, _ in with_workspaces(events, workspace, warmed=warmed))
            for warmed in (True, False)}


def model_excess(config: Any, num_items: int, num_users: int | None) -> dict[bool, Any]:
    """The memory model's prediction, with and without the warm-up (keys as replay_both_ways)."""
    from study.memory.model import predict_peak_bytes

    return {warmed: predict_peak_bytes(config.replace(device="cuda", precision="auto"), num_items,
                                       num_users=num_users, workspaces_warmed=warmed)
            for warmed in (True, False)}


REPLAYED_SCOPES = ("position", "drawn", "full")


def replay_measured(paths: list[Path], out: Path, *, steps: int, workspace: int, only: set[str] | None,
                    host_bytes: int) -> int:
    """Replays each PyTorch per-position, drawn and full-CE trial of measured CSVs (memory_validation.py's
    rows) both ways, next to its measured excess and the model's; writes `out` after every trial."""
    import csv

    import pandas as pd

    sys.path.insert(0, str(REPO / "benchmarks"))
    from memory_cases import SETS

    from study.config import TrainConfig

    cases = {case["name"]: case for cases in SETS.values() for case in cases}
    rows: list[dict[str, Any]] = []
    for path in paths:
        with open(path, newline="") as handle:
            rows += [row for row in csv.DictReader(handle)
                     if row.get("status") == "ok" and row.get("loss_impl") == "torch"
                     and row.get("negative_scope") in REPLAYED_SCOPES and row.get("torch_max_reserved")
                     and (only is None or row["name"] in only)]
    if not rows:
        print("memory_trace: no PyTorch per-position, drawn or full-CE rows to replay", file=sys.stderr)
        return 2
    install_cuda_allocation_pattern()
    results = []
    for number, row in enumerate(rows, 1):
        case = cases[row["name"]]
        config = TrainConfig.from_dict({**case["config"], "device": "cpu", "precision": "bf16"})
        num_items, num_users = int(row["num_items"]), int(row["num_users"])
        scale = choose_scale(config, num_items, host_bytes=host_bytes)
        began = time.perf_counter()
        events = trace_events(config, num_items, steps=steps, eval_users=case.get("eval_users") or 64,
                              extrapolate=scale)
        replays = replay_both_ways(events, workspace)
        predictions = model_excess(config, num_items, num_users)
        measured_excess = int(row["torch_max_reserved"]) - int(row["torch_max_allocated"])
        result: dict[str, Any] = {"name": row["name"], "num_items": num_items, "scale": round(scale, 6),
                                  "measured_allocated": int(row["torch_max_allocated"]),
                                  "measured_excess": measured_excess,
                                  "replayed_allocated": replays[False].peak_allocated}
        for warmed, label in ((False, "unwarmed"), (True, "warmed")):
            replayed = replays[warmed]
            prediction = predictions[warmed]
            result[f"replayed_excess_{label}"] = replayed.peak_reserved - replayed.peak_allocated
            result[f"model_excess_{label}"] = prediction.torch_max_reserved - prediction.torch_max_allocated
            result[f"predicted_peak_{label}"] = prediction.total_bytes
        # what the model charges beyond the replay, as a share of the predicted process peak
        beyond = result["model_excess_warmed"] - result["replayed_excess_warmed"]
        result["model_minus_replay_warmed_of_peak"] = round(beyond / result["predicted_peak_warmed"], 4)
        result["replay_minus_measured_unwarmed_gib"] = round(
            (result["replayed_excess_unwarmed"] - measured_excess) / GiB, 3)
        result["seconds"] = round(time.perf_counter() - began, 1)
        results.append(result)
        out.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(results).to_csv(out, index=False)
        gib = {key: value / GiB for key, value in result.items() if "excess" in key}
        print(f"[{number}/{len(rows)}] {row['name']} (S={scale:.4g}, {result['seconds']} s): excess GiB "
              f"measured {gib['measured_excess']:.2f}, replayed {gib['replayed_excess_unwarmed']:.2f} "
              f"(warmed {gib['replayed_excess_warmed']:.2f}); model {gib['model_excess_unwarmed']:.2f} "
              f"(warmed {gib['model_excess_warmed']:.2f}, "
              f"{100 * result['model_minus_replay_warmed_of_peak']:+.1f}% of its peak)", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("config", nargs="?",
                        help="TrainConfig settings as JSON (device and precision are set here)")
    parser.add_argument("num_items", type=int, nargs="?", help="catalogue size")
    parser.add_argument("--steps", type=int, default=5, help="training steps (default 5, as the validation)")
    parser.add_argument("--eval-users", type=int, default=64, help="users of each evaluation (default 64)")
    parser.add_argument("--extrapolate", type=float, default=None, metavar="S",
                        help="trace at S, 2S and 3S times the rows and catalogue and replay each allocation "
                             "at its size extrapolated to the real ones (for trials too large for the host)")
    parser.add_argument("--workspace-mib", type=int, default=CUBLAS_WORKSPACE_MIB,
                        help=f"cuBLAS workspace of each thread, MiB (default {CUBLAS_WORKSPACE_MIB}: sm90; "
                             "0: none)")
    parser.add_argument("--no-warm-up", action="store_true",
                        help="--show and --perturb replay the workspaces where trainers before the warm-up "
                             "took them (default: made first, as the trainer does)")
    parser.add_argument("--perturb", type=int, default=0,
                        help="replays with small blocks resized (default 0)")
    parser.add_argument("--show", type=float, default=None,
                        help="print every event of at least this many MiB")
    parser.add_argument("--measured", type=Path, nargs="+", metavar="CSV",
                        help="instead of CONFIG: replay the PyTorch per-position, drawn and full-CE "
                             "trials of measured sets (results/memory-catalogue/measured-*.csv), each "
                             "extrapolated from a scale chosen for the host; the comparison goes to --out")
    parser.add_argument("--out", type=Path, help="with --measured: the CSV to write")
    parser.add_argument("--only", help="with --measured: comma list of configuration names")
    parser.add_argument("--host-gib", type=float, default=2.0,
                        help="with --measured: memory the largest trace may allocate (default 2 GiB)")
    args = parser.parse_args(argv)

    if args.measured:
        if args.out is None:
            parser.error("--measured: give --out CSV")
        only = {name.strip() for name in args.only.split(",") if name.strip()} if args.only else None
        return replay_measured(args.measured, args.out, steps=args.steps,
                               workspace=args.workspace_mib * MiB, only=only,
                               host_bytes=int(args.host_gib * GiB))
    if args.config is None or args.num_items is None:
        parser.error("config and num_items: required (or --measured CSV ...)")

    from study.config import TrainConfig

    settings = json.loads(args.config)
    config = TrainConfig.from_dict({**settings, "device": "cpu", "precision": "bf16"})
    if config.loss_impl == "auto":
        config = config.replace(loss_impl="triton")
    install_cuda_allocation_pattern()
    keyed_events = trace_events(config, args.num_items, steps=args.steps, eval_users=args.eval_users,
                                extrapolate=args.extrapolate)
    workspace = args.workspace_mib * MiB
    shown = (with_workspaces(keyed_events, workspace, warmed=not args.no_warm_up) if workspace
             else keyed_events)
    if args.show is not None:
        model, current, sizes = CachingAllocatorModel(), 0, {}
        for size, key, op in shown:
            if size > 0:
                sizes[key] = size
            current += size if size > 0 else -sizes.get(key, 0)
            replay_one(model, size, key)
            if sizes.get(key, 0) >= args.show * MiB:
                sign = "+" if size > 0 else "-"
                print(f"{sign}{sizes[key] / MiB:9.1f} MiB  allocated {current / MiB:9.1f}  "
                      f"reserved {model.reserved / MiB:9.1f}  {op}")
    predictions = model_excess(config, args.num_items, None)
    if workspace:
        replays = replay_both_ways(keyed_events, workspace)
    else:
        replays = {warmed: replay((size, key) for size, key, _ in keyed_events) for warmed in (True, False)}
    for warmed, label in ((True, "workspaces made first (the trainer's warm-up)"),
                          (False, "workspaces at the first matmuls (trainers before the warm-up)")):
        model, prediction = replays[warmed], predictions[warmed]
        replayed_excess = (model.peak_reserved - model.peak_allocated) / GiB
        print(f"{label}:\n"
              f"  replayed: allocated {model.peak_allocated / GiB:.3f} GiB, cache model reserved "
              f"{model.peak_reserved / GiB:.3f} GiB (excess {replayed_excess:.3f})\n"
              f"  memory model: allocated {prediction.torch_max_allocated / GiB:.3f} GiB, reserved "
              f"{prediction.torch_max_reserved / GiB:.3f} GiB (excess "
              f"{(prediction.torch_max_reserved - prediction.torch_max_allocated) / GiB:.3f}; "
              f"peak phase {prediction.peak_phase})")
    if args.perturb:
        events = [(size, key) for size, key, _ in shown]
        excess = sorted(round((m.peak_reserved - m.peak_allocated) / GiB, 3)
                        for m in (replay(perturbed(events, seed)) for seed in range(args.perturb)))
        print(f"excess with small blocks resized, {args.perturb} replays (GiB): {excess}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
