"""The kernels' side of `kernels.index_guard`: test an index's range before it becomes an address."""

from __future__ import annotations

import triton
import triton.language as tl

from kernels import index_guard

TARGETS_SLOT = tl.constexpr(index_guard.TARGETS_SLOT)
NEGATIVES_SLOT = tl.constexpr(index_guard.NEGATIVES_SLOT)


@triton.jit
def in_catalogue(index, num_items):
    """Whether each index lies in [0, num_items) (index of any integer type, scalar or block)."""
    return (index >= 0) & (index < num_items)


@triton.jit
def report_refused(flags_ptr, slot, index, refused, num_items):
    """Record in the flag buffer that `refused` (a mask over `index`) indices were left out: the flag,
    one refused value and C. Several lanes may store at once; any one of their values is kept."""
    zero = index.to(tl.int64) * 0
    tl.store(flags_ptr + slot + zero, zero + 1, mask=refused)
    tl.store(flags_ptr + slot + 1 + zero, index.to(tl.int64), mask=refused)
    tl.store(flags_ptr + slot + 2 + zero, zero + num_items, mask=refused)
