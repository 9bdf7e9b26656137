"""The Triton kernel behind `study.training.metrics.lowest_equal_columns` on CUDA.

A row's top-k list, taken from `torch.topk` of k + 1 scores, is only uncertain where its k-th and
(k+1)-th values tie: then the list ends with the lowest-indexed items of that value, which topk does not
promise to pick. This kernel finds them, one program per row, and a row that needs none (need 0, nearly
every row of a model's float32 scores) returns at once without reading its scores, so the exact
fallback costs no device work where there is no tie, and the host never waits for the device.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _lowest_equal_kernel(values_ptr, bound_ptr, need_ptr, out_ptr, num_items, row_stride, out_stride,
                         BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    need = tl.load(need_ptr + row).to(tl.int32)
    bound = tl.load(bound_ptr + row)
    offsets = tl.arange(0, BLOCK)
    found = tl.zeros((), dtype=tl.int32)
    start = tl.zeros((), dtype=tl.int64)
    while (found < need) & (start < num_items):
        columns = start + offsets
        inside = columns < num_items
        value = tl.load(values_ptr + row * row_stride + columns, mask=inside, other=0.0)
        equal = (value == bound) & inside
        slot = found + tl.cumsum(equal.to(tl.int32), 0) - 1
        tl.store(out_ptr + row * out_stride + slot, columns, mask=equal & (slot < need))
        found += tl.sum(equal.to(tl.int32), 0)
        start += BLOCK


def lowest_equal_columns_triton(values: torch.Tensor, bound: torch.Tensor, need: torch.Tensor,
                                width: int) -> torch.Tensor:
    """See `study.training.metrics.lowest_equal_columns` (values float32 or float64 [rows, items], rows
    contiguous; bound [rows] of the same dtype; need [rows] integers in [0, width])."""
    if values.stride(1) != 1:
        values = values.contiguous()
    rows, num_items = values.shape
    out = torch.zeros((rows, width), dtype=torch.int64, device=values.device)
    if rows:
        _lowest_equal_kernel[(rows,)](values, bound.to(values.dtype).contiguous(), need.contiguous(), out,
                                      num_items, values.stride(0), out.stride(0), BLOCK=BLOCK)
    return out


__all__ = ["lowest_equal_columns_triton"]
