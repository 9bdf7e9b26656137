"""The Triton kernel behind `study.training.metrics.complete_tied_rows` on CUDA.

A row's top-k list, taken from `torch.topk` of k + 1 scores, is only uncertain where its k-th and
(k+1)-th values tie: then the list ends with the lowest-indexed items of that value, which topk does not
promise to pick. This kernel finds them and writes them into the list in place, one program per row; a
row that needs none (need 0: nearly every row of a model's float32 scores) returns at once without
reading its scores, so the exact fallback costs no device work where there is no tie, and the host never
waits for the device.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _complete_tied_rows_kernel(values_ptr, columns_ptr, bound_ptr, above_ptr, need_ptr, num_items, row_stride,
                               columns_stride, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    need = tl.load(need_ptr + row).to(tl.int32)
    bound = tl.load(bound_ptr + row)
    first = columns_ptr + row * columns_stride + tl.load(above_ptr + row)
    offsets = tl.arange(0, BLOCK)
    found = tl.zeros((), dtype=tl.int32)
    start = tl.zeros((), dtype=tl.int64)
    while (found < need) & (start < num_items):
        columns = start + offsets
        inside = columns < num_items
        value = tl.load(values_ptr + row * row_stride + columns, mask=inside, other=0.0)
        equal = (value == bound) & inside
        slot = found + tl.cumsum(equal.to(tl.int32), 0) - 1
        tl.store(first + slot, columns, mask=equal & (slot < need))
        found += tl.sum(equal.to(tl.int32), 0)
        start += BLOCK


def complete_tied_rows_triton(values: torch.Tensor, columns: torch.Tensor, bound: torch.Tensor,
                              above: torch.Tensor, need: torch.Tensor) -> None:
    """See `study.training.metrics.complete_tied_rows` (values float32 or float64 [rows, items]; columns
    int64 [rows, width] with unit column stride; bound [rows]; above and need [rows] integers)."""
    if values.stride(1) != 1:
        values = values.contiguous()
    if columns.stride(1) != 1:
        raise ValueError("columns: the kernel writes rows of unit column stride")
    rows, num_items = values.shape
    if rows:
        # Triton launches on the current device (CPU tensors: the interpreter, in tests)
        on_device = torch.cuda.device(values.device) if values.is_cuda else contextlib.nullcontext()
        with on_device:
            _complete_tied_rows_kernel[(rows,)](values, columns, bound.to(values.dtype).contiguous(),
                                                above.contiguous(), need.contiguous(), num_items,
                                                values.stride(0), columns.stride(0), BLOCK=BLOCK)


__all__ = ["complete_tied_rows_triton"]
