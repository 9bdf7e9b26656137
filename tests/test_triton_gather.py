"""Per-position CCE- Triton kernels (tensor and drawn negatives) against a float64 reference.

Runs the kernels through the Triton interpreter on CPU tensors; sizes are tiny and ragged (N and K
not multiples of the 16-wide chunks, d not always a power of two).
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
from loss_oracle import oracle_loss, oracle_with_grads, relative_error

import kernels.triton_common as triton_common
import kernels.triton_gather as triton_gather
from kernels.draw import draw_negatives
from kernels.triton_gather import GatherConfig, gather_linear_cross_entropy

IGNORE = -100


def make_case(num_rows, num_negatives, num_items, dim, hidden_dtype, items_dtype, *, scheme, seed,
              log_q_kind, index_dtype=torch.int64):
    generator = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(num_rows, dim, generator=generator) * 0.6).to(hidden_dtype)
    items = (torch.randn(num_items, dim, generator=generator) * 0.6).to(items_dtype)
    if items_dtype != hidden_dtype:
        # The interpreter casts fp32 -> bf16 by truncation, the GPU rounds to nearest: values exactly
        # representable in hidden's dtype make the in-kernel cast exact on both.
        items = items.to(hidden_dtype).to(items_dtype)
    targets = torch.randint(0, num_items, (num_rows,), generator=generator)
    targets[torch.randperm(num_rows, generator=generator)[: max(1, num_rows // 6)]] = IGNORE
    if scheme == "drawn":
        negatives = draw_negatives(seed, num_rows, num_negatives, num_items)
    else:
        negatives = torch.randint(0, num_items, (num_rows, num_negatives), generator=generator)
        hit_rows = torch.randperm(num_rows, generator=generator)[: num_rows // 3]
        hit_columns = torch.randint(0, num_negatives, (hit_rows.numel(),), generator=generator)
        negatives[hit_rows, hit_columns] = targets[hit_rows].clamp(min=0)
    has_hit = ((negatives == targets[:, None]) & (targets != IGNORE)[:, None]).any()
    assert has_hit, "the case must contain accidental hits"
    if log_q_kind == "tensor":
        log_q = torch.log_softmax(torch.randn(num_items, generator=generator), 0)
    elif log_q_kind == "float":
        log_q = -math.log(num_items)
    else:
        log_q = None
    return hidden, items, targets.to(index_dtype), negatives.to(index_dtype), log_q


def run_kernel(hidden, items, targets, negatives, log_q, *, scheme, seed, remove_hits=True, reduction="mean",
               config=None):
    return gather_linear_cross_entropy(
        hidden, items, targets, negatives if scheme == "position" else None, scheme=scheme,
        num_negatives=negatives.shape[1], seed=seed if scheme == "drawn" else None, log_q=log_q,
        remove_accidental_hits=remove_hits, ignore_index=IGNORE, reduction=reduction, config=config)


def tolerance_for(dtype):
    return FP32_TOLERANCE if dtype == torch.float32 else HALF_TOLERANCE


def check_against_reference(hidden, items, targets, negatives, log_q, *, scheme, seed, reduction,
                            remove_hits=True, config=None):
    """Loss to fp32 accuracy for every dtype (fp32 accumulation); gradients to their own dtype's."""
    kernel_hidden = hidden.clone().requires_grad_()
    kernel_items = items.clone().requires_grad_()
    loss = run_kernel(kernel_hidden, kernel_items, targets, negatives, log_q, scheme=scheme, seed=seed,
                      remove_hits=remove_hits, reduction=reduction, config=config)
    upstream = torch.rand(loss.shape, generator=torch.Generator().manual_seed(seed + 1)) + 0.5
    # The oracle rounds items to hidden's precision as the kernel does.
    expected, expected_hidden_grad, expected_items_grad = oracle_with_grads(
        hidden, items, targets, negatives, upstream=upstream, log_q=log_q, remove_accidental_hits=remove_hits,
        ignore_index=IGNORE, reduction=reduction, items_as=hidden.dtype, drawn=scheme == "drawn")
    assert loss.dtype == torch.float32
    assert loss.shape == expected.shape
    assert torch.isfinite(loss).all()
    assert relative_error(loss.detach(), expected) < FP32_TOLERANCE
    (loss * upstream).sum().backward()
    assert kernel_hidden.grad.dtype == hidden.dtype and kernel_items.grad.dtype == items.dtype
    assert relative_error(kernel_hidden.grad, expected_hidden_grad) < tolerance_for(hidden.dtype)
    assert relative_error(kernel_items.grad, expected_items_grad) < tolerance_for(items.dtype)
    ignored = targets == IGNORE
    assert kernel_hidden.grad[ignored].abs().max() == 0
    return loss


FP32_TOLERANCE = 1e-5
HALF_TOLERANCE = 1e-2

CASES = [
    # scheme, N, K, C, d, hidden dtype, items dtype, log_q, reduction
    ("position", 37, 23, 61, 16, torch.float32, torch.float32, None, "mean"),
    ("position", 29, 33, 150, 48, torch.float32, torch.float32, "tensor", "sum"),
    ("position", 21, 17, 90, 128, torch.float32, torch.float32, "float", "none"),
    ("position", 43, 19, 70, 64, torch.bfloat16, torch.bfloat16, "tensor", "mean"),
    ("position", 33, 21, 55, 48, torch.float16, torch.float16, None, "none"),
    ("position", 27, 31, 120, 64, torch.bfloat16, torch.float32, "float", "sum"),
    ("drawn", 35, 29, 40, 16, torch.float32, torch.float32, "float", "mean"),
    ("drawn", 23, 37, 45, 64, torch.float32, torch.float32, "tensor", "none"),
    ("drawn", 25, 18, 30, 128, torch.bfloat16, torch.bfloat16, None, "sum"),
    ("drawn", 31, 27, 50, 48, torch.bfloat16, torch.float32, "tensor", "mean"),
]


@pytest.mark.parametrize(
    ("scheme", "num_rows", "num_negatives", "num_items", "dim", "hidden_dtype", "items_dtype", "log_q_kind",
     "reduction"),
    CASES,
)
def test_matches_float64_reference(scheme, num_rows, num_negatives, num_items, dim, hidden_dtype, items_dtype,
                                   log_q_kind, reduction):
    seed = 1000 + num_rows * 7 + dim
    hidden, items, targets, negatives, log_q = make_case(
        num_rows, num_negatives, num_items, dim, hidden_dtype, items_dtype, scheme=scheme, seed=seed,
        log_q_kind=log_q_kind)
    check_against_reference(hidden, items, targets, negatives, log_q, scheme=scheme, seed=seed,
                            reduction=reduction)


@pytest.mark.parametrize(("scheme", "block_k"), [("position", 32), ("drawn", 8)])
def test_other_block_sizes(scheme, block_k):
    hidden, items, targets, negatives, log_q = make_case(
        29, 21, 47, 48, torch.bfloat16, torch.float32, scheme=scheme, seed=21, log_q_kind="tensor")
    # Backward tiles of the same width, unsorted tensor negatives.
    config = GatherConfig(block_k=block_k, num_warps=1, num_stages=1, backward_block_k=block_k,
                          backward_warps=1, sort_negatives=False)
    check_against_reference(hidden, items, targets, negatives, log_q, scheme=scheme, seed=21,
                            reduction="sum", config=config)


@pytest.mark.parametrize("scheme", ["position", "drawn"])
def test_accidental_hits_kept_when_asked(scheme):
    hidden, items, targets, negatives, log_q = make_case(26, 20, 35, 16, torch.float32, torch.float32,
                                                         scheme=scheme, seed=7, log_q_kind="float")
    loss = check_against_reference(hidden, items, targets, negatives, log_q, scheme=scheme, seed=7,
                                   reduction="none", remove_hits=False)
    masked = run_kernel(hidden, items, targets, negatives, log_q, scheme=scheme, seed=7, reduction="none")
    hit_rows = ((negatives == targets[:, None]).any(1)) & (targets != IGNORE)
    # Keeping a hit adds a logit to the logsumexp, so those rows' losses grow.
    assert (loss.detach()[hit_rows] > masked[hit_rows]).all()


def test_int32_indices_and_strided_item_view():
    hidden, weight, targets, negatives, log_q = make_case(24, 19, 41, 48, torch.float32, torch.float32,
                                                          scheme="position", seed=3, log_q_kind=None,
                                                          index_dtype=torch.int32)
    items = weight[1:]  # a view with a non-zero storage offset, as the harness passes embedding.weight[1:]
    targets = torch.where(targets == IGNORE, targets, targets.clamp(max=39))
    negatives = negatives.clamp(max=39)
    check_against_reference(hidden, items, targets, negatives, log_q, scheme="position", seed=3,
                            reduction="mean")
    weight = weight.clone().requires_grad_()
    run_kernel(hidden, weight[1:], targets, negatives, log_q, scheme="position", seed=3).backward()
    assert weight.grad[0].abs().max() == 0 and weight.grad[1:].abs().max() > 0


def test_drawn_equals_position_with_host_draws_when_k_divides_the_catalogue():
    # 26 slices of 2 items each: every stratum weight is log(2 * 26 / 52) = 0 exactly.
    hidden, items, targets, negatives, log_q = make_case(30, 26, 52, 64, torch.float32, torch.float32,
                                                         scheme="drawn", seed=11, log_q_kind="tensor")
    drawn = run_kernel(hidden, items, targets, negatives, log_q, scheme="drawn", seed=11, reduction="none")
    given = run_kernel(hidden, items, targets, negatives, log_q, scheme="position", seed=11, reduction="none")
    assert torch.equal(drawn, given)
    other_seed = run_kernel(hidden, items, targets, negatives, log_q, scheme="drawn", seed=12,
                            reduction="none")
    assert not torch.equal(drawn, other_seed)


def test_every_output_element_is_written(monkeypatch):
    def poisoned(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(triton_common, "new_output", poisoned)
    hidden, items, targets, negatives, _ = make_case(22, 17, 33, 48, torch.bfloat16, torch.bfloat16,
                                                     scheme="position", seed=5, log_q_kind=None)
    hidden.requires_grad_()
    loss = run_kernel(hidden, items, targets, negatives, None, scheme="position", seed=5, reduction="none")
    assert torch.isfinite(loss).all() and (loss[targets == IGNORE] == 0).all()
    loss.sum().backward()
    assert torch.isfinite(hidden.grad).all()


def test_all_rows_ignored_gives_zero_loss_and_gradients():
    hidden, items, _, negatives, _ = make_case(18, 17, 30, 16, torch.float32, torch.float32,
                                               scheme="position", seed=9, log_q_kind=None)
    hidden.requires_grad_()
    items.requires_grad_()
    targets = torch.full((18,), IGNORE)
    loss = run_kernel(hidden, items, targets, negatives, None, scheme="position", seed=9)
    assert loss.item() == 0
    loss.backward()
    assert hidden.grad.abs().max() == 0 and items.grad.abs().max() == 0


@pytest.mark.parametrize("trainable", ["hidden", "items"])
def test_only_requested_gradients(trainable):
    hidden, items, targets, negatives, _ = make_case(20, 17, 30, 16, torch.float32, torch.float32,
                                                     scheme="drawn", seed=13, log_q_kind=None)
    (hidden if trainable == "hidden" else items).requires_grad_()
    run_kernel(hidden, items, targets, negatives, None, scheme="drawn", seed=13).backward()
    assert (hidden.grad is not None) == (trainable == "hidden")
    assert (items.grad is not None) == (trainable == "items")


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        ({"negatives": None, "scheme": "position"}, "negatives"),
        ({"seed": None, "scheme": "drawn"}, "seed"),
        ({"scheme": "shared"}, "scheme"),
        ({"reduction": "max"}, "reduction"),
        ({"log_q": torch.zeros(5)}, "log_q"),
    ],
)
def test_bad_arguments_name_themselves(changes, name):
    hidden, items, targets, negatives, _ = make_case(8, 17, 20, 16, torch.float32, torch.float32,
                                                     scheme="position", seed=1, log_q_kind=None)
    kwargs = dict(scheme="position", num_negatives=17, seed=1, log_q=None, remove_accidental_hits=True,
                  ignore_index=IGNORE, reduction="mean")
    negatives_arg = changes.pop("negatives", negatives)
    if changes.get("scheme") == "drawn":
        negatives_arg = None
    with pytest.raises(ValueError, match=name):
        gather_linear_cross_entropy(hidden, items, targets, negatives_arg, **(kwargs | changes))


def test_public_api_position_negatives_per_sequence_layout():
    from kernels import linear_cross_entropy

    hidden, items, targets, negatives, log_q = make_case(4 * 9, 19, 57, 48, torch.bfloat16, torch.float32,
                                                         scheme="position", seed=31, log_q_kind="tensor")
    hidden = hidden.reshape(4, 9, 48).requires_grad_()
    items.requires_grad_()
    loss = linear_cross_entropy(hidden, items, targets.reshape(4, 9), negatives.reshape(4, 9, 19),
                                log_q=log_q, reduction="none", impl="triton")
    assert loss.shape == (4, 9)
    expected, expected_hidden_grad, expected_items_grad = oracle_with_grads(
        hidden, items, targets, negatives, log_q=log_q, ignore_index=IGNORE, reduction="none",
        items_as=torch.bfloat16)
    assert relative_error(loss.detach(), expected) < FP32_TOLERANCE
    loss.sum().backward()
    assert relative_error(hidden.grad, expected_hidden_grad) < HALF_TOLERANCE
    assert relative_error(items.grad, expected_items_grad) < FP32_TOLERANCE


def test_public_api_drawn_negatives_with_uniform_log_q():
    from kernels import linear_cross_entropy

    hidden, items, targets, negatives, _ = make_case(33, 23, 40, 16, torch.float32, torch.float32,
                                                     scheme="drawn", seed=41, log_q_kind=None)
    loss = linear_cross_entropy(hidden, items, targets, 23, seed=41, log_q="uniform", impl="triton")
    expected = oracle_loss(hidden, items, targets, negatives, log_q=-math.log(40), ignore_index=IGNORE,
                           drawn=True)
    assert relative_error(loss, expected) < FP32_TOLERANCE


@pytest.mark.parametrize("scheme", ["position", "drawn"])
def test_single_negative_and_single_dimension(scheme):
    generator = torch.Generator().manual_seed(51)
    hidden = torch.randn(7, 1, generator=generator)
    items = torch.randn(3, 1, generator=generator)
    targets = torch.tensor([0, 1, 2, IGNORE, 1, 0, 2])
    negatives = (draw_negatives(51, 7, 1, 3) if scheme == "drawn"
                 else torch.tensor([[1], [1], [0], [2], [2], [0], [1]]))  # rows 1 and 5 hit their target
    assert ((negatives[:, 0] == targets) & (targets != IGNORE)).any()
    check_against_reference(hidden, items, targets, negatives, None, scheme=scheme, seed=51, reduction="none")


@pytest.mark.parametrize("method", ["triton", "torch", "auto"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_sorted_rows_sorts_each_row(method, dtype):
    generator = torch.Generator().manual_seed(3)
    negatives = torch.randint(0, 5000, (9, 37), generator=generator).to(dtype)
    negatives[2, :5] = 4999  # repeats
    expected = torch.sort(negatives.to(torch.int32), dim=1).values
    assert torch.equal(triton_gather.sorted_rows(negatives, method=method), expected)
    strided = torch.randint(0, 5000, (37, 9), generator=generator).to(dtype).T  # rows not contiguous
    assert torch.equal(triton_gather.sorted_rows(strided, method=method),
                       torch.sort(strided.to(torch.int32), dim=1).values)
    assert triton_gather.sorted_rows(negatives[:0], method=method).shape == (0, 37)


def test_sorted_rows_torch_path_in_chunks(monkeypatch):
    """torch.sort (beyond SORT_IN_TRITON_MAX_NEGATIVES, or off CUDA) runs a chunk of rows at a time."""
    monkeypatch.setattr(triton_gather, "SORT_CHUNK_ELEMENTS", 40)
    negatives = torch.randint(0, 100, (7, 13), generator=torch.Generator().manual_seed(4))
    expected = torch.sort(negatives.to(torch.int32), dim=1).values
    assert torch.equal(triton_gather.sorted_rows(negatives), expected)
    with pytest.raises(ValueError, match="method"):
        triton_gather.sorted_rows(negatives, method="bubble")


SLICED_CASES = [
    # scheme, N, K, C, d, hidden dtype, items dtype, log_q, reduction, slices, backward rows
    ("position", 37, 23, 61, 16, torch.float32, torch.float32, None, "mean", 3, 1),
    ("position", 29, 33, 150, 48, torch.bfloat16, torch.bfloat16, "tensor", "sum", 5, 2),
    ("position", 27, 31, 120, 64, torch.bfloat16, torch.float32, "float", "none", 4, 3),
    ("position", 21, 17, 7, 32, torch.float16, torch.float16, None, "mean", 9, 1),  # more slices than items
    ("drawn", 35, 29, 40, 16, torch.float32, torch.float32, "float", "mean", 4, 1),
    ("drawn", 25, 18, 30, 128, torch.bfloat16, torch.bfloat16, None, "sum", 3, 2),
    ("drawn", 31, 27, 50, 48, torch.bfloat16, torch.float32, "tensor", "none", 40, 1),  # more slices than K
]


@pytest.mark.parametrize(
    ("scheme", "num_rows", "num_negatives", "num_items", "dim", "hidden_dtype", "items_dtype", "log_q_kind",
     "reduction", "slices", "backward_rows"),
    SLICED_CASES,
)
def test_sliced_backward_matches_float64_reference(scheme, num_rows, num_negatives, num_items, dim,
                                                   hidden_dtype, items_dtype, log_q_kind, reduction, slices,
                                                   backward_rows, monkeypatch):
    """GatherConfig.item_slices: the backward in catalogue slices, each with its own item-gradient buffer
    (poisoned outputs: every item row must be written by exactly one slice)."""
    def poisoned(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(triton_common, "new_output", poisoned)
    seed = 2000 + num_rows * 7 + dim
    hidden, items, targets, negatives, log_q = make_case(
        num_rows, num_negatives, num_items, dim, hidden_dtype, items_dtype, scheme=scheme, seed=seed,
        log_q_kind=log_q_kind)
    config = GatherConfig(block_k=16, num_warps=1, num_stages=1, backward_block_k=8,
                          backward_rows=backward_rows, backward_warps=1, item_slices=slices)
    check_against_reference(hidden, items, targets, negatives, log_q, scheme=scheme, seed=seed,
                            reduction=reduction, config=config)


@pytest.mark.parametrize("drawn", [False, True])
def test_catalogue_slices_partition_the_catalogue(drawn):
    for num_items, num_negatives, slices in [(1_000_003, 511, 16), (50, 7, 3), (7, 5, 9), (40, 29, 40)]:
        parts = triton_gather.catalogue_slices(num_items, num_negatives, slices, drawn=drawn)
        assert parts[0][0] == 0 and parts[-1][1] == num_items
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
        if drawn:
            assert len(parts) == min(slices, num_negatives) and parts[-1][3] == num_negatives
            starts = kernels_slice_starts(num_items, num_negatives)
            for lo, hi, first, end in parts:
                assert (lo, hi) == (starts[first], starts[end])


def kernels_slice_starts(num_items, num_negatives):
    from kernels.draw import slice_starts

    return slice_starts(num_items, num_negatives).tolist()
