"""Host twin of the negatives drawn inside the per-position Triton kernel.

The kernel draws negative k of row i as a counter-based hash of (seed, i, k), so it never stores the
draws (backward regenerates them) and the host can reproduce them exactly:

    key   = seed_key(seed)                             # 32 bits, derived once on the host
    x     = mix32(row ^ key)                           # once per row
    x     = mix32((x + k * WEYL) mod 2**32)            # once per negative
    step  = (C << 32) // K                             # on the host: C / K in 32.32 fixed point
    start = (k * step) >> 32                           # slice k: [start_k, start_(k+1)), the last ends at C
    item  = start + (x * size) >> 32                   # uniform on slice k, size = its length

The draw is stratified: the catalogue [0, C) is cut into K consecutive slices whose sizes differ by
at most one item (the fixed point keeps 64-bit division out of the kernel), and negative k of every
row is uniform on slice k. A row never draws the same item twice, and rows are independent. Why not K
independent uniform draws: with slices, the k-th negatives of all rows lie in one narrow part of the
catalogue, so backward, which walks the negatives column block by column block for all rows,
scatter-adds into a part of the item gradient that stays in L2 (kernels/triton_gather.py).

An item of slice k is a negative of a row with probability 1/size_k, which is K/C only when K divides
C: the slices hold floor(C/K) or ceil(C/K) items, so at K = 3000 of C = 3416 (ml-1m) 2,584 items are a
negative of every row and 832 of every other row. Left as it is, that halves the push on the second
group's logits: a bias in the model, not noise. So the loss adds to negative k's logit its stratum
weight log(size_k * K / C) (`slice_log_weights`): every item then counts K/C times in expectation in a
row's sum of exp(logits), as with K uniform draws, whatever K and C. The weight is 0 when K divides C
and between log(1 - K/C) and log(1 + K/C) otherwise.

`mix32` is the "lowbias32" integer finaliser (xor-shift / multiply, a bijection on 32 bits). The
multiply-shift map onto a slice is off uniform by at most size / 2**32 relative.

The same seed gives the same negatives, so the caller must pass a fresh seed every training step
(for example `base_seed * 1_000_003 + step`); reusing a seed reuses the negatives.

The Triton side (`kernels.triton_gather._draw_items`) writes the same arithmetic; tests check the two
bit for bit.
"""

from __future__ import annotations

import torch

# How the loss weights the negatives it draws (the docstring above); trials record it (study.record).
WEIGHTING = "stratum-weighted"
MASK32 = 0xFFFFFFFF
MIX_SHIFT_1, MIX_MUL_1, MIX_SHIFT_2, MIX_MUL_2, MIX_SHIFT_3 = 16, 0x7FEB352D, 15, 0x846CA68B, 16
WEYL = 0x9E3779B9
SEED_SALT = 0x5BD1E995
MAX_ITEMS = 2**31 - 1
MAX_ROWS = 2**31 - 1


def _mix32_int(x: int) -> int:
    x &= MASK32
    x ^= x >> MIX_SHIFT_1
    x = (x * MIX_MUL_1) & MASK32
    x ^= x >> MIX_SHIFT_2
    x = (x * MIX_MUL_2) & MASK32
    x ^= x >> MIX_SHIFT_3
    return x


def seed_key(seed: int) -> int:
    """The 32-bit stream key of a seed (any Python int; taken modulo 2**64)."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed: must be an int, got {type(seed).__name__}")
    seed &= 2**64 - 1
    low, high = seed & MASK32, seed >> 32
    return _mix32_int(_mix32_int(high ^ SEED_SALT) ^ low)


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """(x * constant) mod 2**32 for int64 x in [0, 2**32) without int64 overflow.

    Splitting the constant in 16-bit halves keeps every intermediate below 2**49 (signed int64
    overflow is undefined behaviour in the C++ kernels underneath).
    """
    low, high = constant & 0xFFFF, constant >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> MIX_SHIFT_1)
    x = _mul32(x, MIX_MUL_1)
    x = x ^ (x >> MIX_SHIFT_2)
    x = _mul32(x, MIX_MUL_2)
    return x ^ (x >> MIX_SHIFT_3)


def draw_negatives(
    seed: int, num_rows: int, num_negatives: int, num_items: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """The negatives the kernel draws: int64 [num_rows, num_negatives], column k uniform on the k-th of
    `num_negatives` equal slices of [0, num_items) (see the module docstring).

    Row i, column k holds exactly the item the Triton kernel uses as negative k of row i for this seed.
    A row's negatives are distinct; they may hit the row's target (the loss masks accidental hits).
    """
    for name, value, lowest, highest in (
        ("num_rows", num_rows, 0, MAX_ROWS),
        ("num_negatives", num_negatives, 0, None),
        ("num_items", num_items, 1, MAX_ITEMS),
    ):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name}: must be an int, got {type(value).__name__}")
        if value < lowest or (highest is not None and value > highest):
            raise ValueError(f"{name}: must be in [{lowest}, {highest or 'inf'}], got {value}")
    if num_negatives > num_items:
        raise ValueError(f"num_negatives: at most num_items={num_items} (one per catalogue slice), "
                         f"got {num_negatives}")
    key = seed_key(seed)
    rows = torch.arange(num_rows, dtype=torch.int64, device=device)
    ks = torch.arange(num_negatives, dtype=torch.int64, device=device)
    row_state = _mix32(rows ^ key)
    state = _mix32((row_state[:, None] + _mul32(ks, WEYL)[None, :]) & MASK32)
    start = slice_starts(num_items, num_negatives, device=device)
    size = start[1:] - start[:-1]
    return start[None, :-1] + ((state * size[None, :]) >> 32)


def slice_step(num_items: int, num_negatives: int) -> int:
    """C / K in 32.32 fixed point: slice k starts at (k * step) >> 32 (below 2**63 for k < K)."""
    return (num_items << 32) // max(num_negatives, 1)


def slice_starts(num_items: int, num_negatives: int,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """int64 [K + 1]: where each of the K catalogue slices starts, and C at the end."""
    ks = torch.arange(num_negatives + 1, dtype=torch.int64, device=device)
    starts = (ks * slice_step(num_items, num_negatives)) >> 32
    starts[-1] = num_items
    return starts


def slice_log_weights(num_items: int, num_negatives: int,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """float32 [K]: the stratum weight log(size_k * K / C) that the loss adds to drawn negative k's logit
    (see the module docstring; the Triton side computes the same from the slice bounds)."""
    starts = slice_starts(num_items, num_negatives, device=device)
    sizes = (starts[1:] - starts[:-1]).to(torch.float64)
    return torch.log(sizes * (num_negatives / num_items)).to(torch.float32)
