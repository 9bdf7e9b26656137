"""The host twin of the in-kernel negative draw: exact spec, statistics, and bit-identity with Triton."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

from kernels.draw import draw_negatives, seed_key, slice_log_weights


def _mix32_spec(x: int) -> int:
    """lowbias32 written with Python's unbounded ints, independently of kernels.draw."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) % 2**32
    x ^= x >> 15
    x = (x * 0x846CA68B) % 2**32
    x ^= x >> 16
    return x


def _draw_spec(seed: int, row: int, k: int, num_negatives: int, num_items: int) -> int:
    seed %= 2**64
    key = _mix32_spec(_mix32_spec((seed >> 32) ^ 0x5BD1E995) ^ (seed % 2**32))
    state = _mix32_spec(row ^ key)
    state = _mix32_spec((state + k * 0x9E3779B9) % 2**32)
    start, end = _slice_spec(k, num_negatives, num_items)
    return start + (state * (end - start) >> 32)


def _slice_spec(k: int, num_negatives: int, num_items: int) -> tuple[int, int]:
    """Slice k of the catalogue: C/K in 32.32 fixed point, the last slice ending at C."""
    step = (num_items << 32) // num_negatives
    end = num_items if k == num_negatives - 1 else ((k + 1) * step) >> 32
    return (k * step) >> 32, end


@pytest.mark.parametrize("seed", [0, 1, 2**31 + 5, 2**32 + 3, 987654321987654, -7])
@pytest.mark.parametrize(("num_negatives", "num_items"),
                         [(13, 1_000_003), (13, 13), (7, 2**31 - 1), (1, 2**31 - 1), (2047, 10**6)])
def test_matches_scalar_specification(seed: int, num_negatives: int, num_items: int) -> None:
    draws = draw_negatives(seed, 9, num_negatives, num_items)
    assert draws.dtype == torch.int64 and draws.shape == (9, num_negatives)
    expected = [[_draw_spec(seed, row, k, num_negatives, num_items) for k in range(num_negatives)]
                for row in range(9)]
    assert draws.tolist() == expected


def test_reproducible_and_seed_dependent() -> None:
    first = draw_negatives(42, 50, 64, 10_000)
    assert torch.equal(first, draw_negatives(42, 50, 64, 10_000))
    assert (first != draw_negatives(43, 50, 64, 10_000)).float().mean() > 0.99
    # A row's draws do not depend on how many rows are drawn.
    assert torch.equal(first[:7], draw_negatives(42, 7, 64, 10_000))
    assert seed_key(42) != seed_key(43)


def test_uniform_over_catalogue_one_draw_per_slice() -> None:
    num_items, num_negatives, num_rows = 97, 10, 20_000
    draws = draw_negatives(2024, num_rows, num_negatives, num_items)
    # Negative k lies in the k-th slice, so a row's negatives are distinct; slices differ by <= 1 item.
    bounds = torch.tensor([_slice_spec(k, num_negatives, num_items) for k in range(num_negatives)])
    start, end = bounds[:, 0], bounds[:, 1]
    assert int(start[0]) == 0 and int(end[-1]) == num_items and torch.equal(start[1:], end[:-1])
    assert int((end - start).max() - (end - start).min()) <= 1
    assert bool(((draws >= start) & (draws < end)).all())
    assert bool((draws[:, 1:] > draws[:, :-1]).all())
    # Each item is a negative with probability 1/size of its slice: count_c ~ Binomial(rows, 1/size).
    counts = torch.bincount(draws.flatten(), minlength=num_items).double()
    sizes = (end - start).repeat_interleave(end - start).double()
    expected = num_rows / sizes
    chi_square = float(((counts - expected) ** 2 / (expected * (1 - 1 / sizes))).sum())
    # 97 items in 10 slices: 87 degrees of freedom, mean 87, sd ~13.2; 180 is beyond the 99.9999th percentile.
    assert chi_square < 180, chi_square
    # The place within a slice is uniform and independent of the neighbouring row's and column's.
    offset = (draws - start).double() / (end - start).double()
    rows_corr = torch.corrcoef(torch.stack([offset[:-1].flatten(), offset[1:].flatten()]))[0, 1]
    cols_corr = torch.corrcoef(torch.stack([offset[:, :-1].flatten(), offset[:, 1:].flatten()]))[0, 1]
    assert abs(float(rows_corr)) < 0.01 and abs(float(cols_corr)) < 0.01


def test_more_negatives_than_items_is_refused() -> None:
    with pytest.raises(ValueError, match="num_negatives"):
        draw_negatives(1, 2, 11, 10)
    assert torch.equal(draw_negatives(3, 4, 10, 10), torch.arange(10).expand(4, 10))


def test_single_item_catalogue_and_empty_shapes() -> None:
    assert torch.equal(draw_negatives(5, 3, 1, 1), torch.zeros(3, 1, dtype=torch.int64))
    assert draw_negatives(5, 0, 4, 10).shape == (0, 4)
    assert draw_negatives(5, 3, 0, 10).shape == (3, 0)
    assert draw_negatives(5, 0, 0, 10).shape == (0, 0)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_items": 0}, "num_items"),
        ({"num_items": 2**31}, "num_items"),
        ({"num_rows": -1}, "num_rows"),
        ({"num_negatives": 2.5}, "num_negatives"),
        ({"seed": "7"}, "seed"),
        ({"seed": None}, "seed"),
    ],
)
def test_bad_arguments_name_themselves(kwargs: dict, name: str) -> None:
    args = {"seed": 1, "num_rows": 2, "num_negatives": 3, "num_items": 10} | kwargs
    with pytest.raises(ValueError, match=name):
        draw_negatives(**args)


@pytest.mark.parametrize(("seed", "num_items"), [(0, 61), (2**33 + 17, 1_000_000), (123456789, 2**31 - 1)])
def test_triton_draw_is_bit_identical(seed: int, num_items: int) -> None:
    from kernels.triton_gather import draw_in_kernel

    # 45 negatives with 16-wide chunks: the last chunk is ragged.
    in_kernel = draw_in_kernel(seed, 11, 45, num_items)
    assert torch.equal(in_kernel, draw_negatives(seed, 11, 45, num_items))


@pytest.mark.parametrize(("num_items", "num_negatives", "num_rows", "tolerance"),
                         [(7, 5, 40_000, 0.03), (3416, 3000, 2_000, 0.12)])  # 3416 items: ml-1m
def test_stratum_weights_make_every_item_count_k_over_c_times_per_row(num_items, num_negatives, num_rows,
                                                                      tolerance):
    # Slices of floor(C/K) and ceil(C/K) items: alone, an item is a negative with probability 1/size of its
    # slice; weighted by exp(stratum weight) = size * K / C, every item counts K / C times per row on average.
    draws = draw_negatives(99, num_rows, num_negatives, num_items).flatten()
    uniform = num_negatives / num_items
    weights = slice_log_weights(num_items, num_negatives).double().exp().repeat(num_rows)
    weighted = torch.zeros(num_items, dtype=torch.float64).index_add_(0, draws, weights) / num_rows
    unweighted = torch.bincount(draws, minlength=num_items).double() / num_rows
    assert float((weighted / uniform - 1).abs().max()) < tolerance
    assert float((unweighted / uniform - 1).abs().max()) > 0.25  # the bias the weights remove
    assert torch.equal(slice_log_weights(60, 12), torch.zeros(12))  # K divides C: no weight
