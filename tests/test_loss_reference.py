"""The PyTorch reference loss (impl="torch") against the float64 oracle (tests/loss_oracle.py), loss and
gradients."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F
from loss_oracle import oracle_with_grads, relative_error

from kernels import linear_cross_entropy

IGNORE = -100


def random_problem(generator, batch=3, seq_len=5, dim=7, num_items=23, num_ignored=3):
    hidden = torch.randn(batch, seq_len, dim, generator=generator)
    items = torch.randn(num_items, dim, generator=generator)
    targets = torch.randint(0, num_items, (batch, seq_len), generator=generator)
    flat = targets.view(-1)
    flat[torch.randperm(flat.numel(), generator=generator)[:num_ignored]] = IGNORE
    return hidden, items, targets


def make_negatives(scheme, generator, targets, num_items, num_negatives):
    """Negatives for a scheme, with accidental hits planted."""
    batch, seq_len = targets.shape
    kept_targets = targets[targets != IGNORE]
    if scheme == "shared":
        negatives = torch.randint(0, num_items, (num_negatives,), generator=generator)
        negatives[0] = kept_targets[0]
        return negatives
    if scheme == "sequence":
        negatives = torch.randint(0, num_items, (batch, num_negatives), generator=generator)
        for b in range(batch):
            row_targets = targets[b][targets[b] != IGNORE]
            negatives[b, 1] = row_targets[-1]
        return negatives
    negatives = torch.randint(0, num_items, (batch, seq_len, num_negatives), generator=generator)
    negatives[..., 2] = targets.clamp(min=0)  # every row has one hit
    negatives[0, 0, 3] = targets[0, 0].clamp(min=0)  # and one row two
    if scheme == "position_flat":
        return negatives.reshape(batch * seq_len, num_negatives)
    return negatives


def run_both(hidden, items, targets, negatives, log_q, remove_hits, reduction):
    """Loss and gradients of impl="torch" (float32) and of the float64 oracle on the same values."""
    hidden32 = hidden.clone().requires_grad_(True)
    items32 = items.clone().requires_grad_(True)
    loss = linear_cross_entropy(hidden32, items32, targets, negatives, log_q=log_q,
                                remove_accidental_hits=remove_hits, ignore_index=IGNORE,
                                reduction=reduction, impl="torch")
    # A random upstream gradient so that per-row ("none") gradients are all checked.
    upstream = torch.rand(loss.shape, dtype=torch.float64) + 0.5
    (loss.double() * upstream).sum().backward()
    expected, *expected_grads = oracle_with_grads(
        hidden, items, targets, negatives, upstream=upstream, remove_accidental_hits=remove_hits,
        log_q=-math.log(items.shape[0]) if isinstance(log_q, str) else log_q, reduction=reduction)
    return loss, expected, (hidden32.grad, items32.grad), expected_grads


@pytest.mark.parametrize("scheme", ["shared", "sequence", "position", "position_flat"])
@pytest.mark.parametrize("log_q_kind", [None, "tensor", "uniform"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("remove_hits", [True, False])
def test_sampled_schemes_match_float64_formula(scheme, log_q_kind, reduction, remove_hits):
    generator = torch.Generator().manual_seed(hash((scheme, log_q_kind, reduction, remove_hits)) % 2**31)
    hidden, items, targets = random_problem(generator)
    num_items = items.shape[0]
    negatives = make_negatives(scheme, generator, targets, num_items, num_negatives=6)
    log_q = None
    if log_q_kind == "tensor":
        log_q = torch.log_softmax(torch.randn(num_items, generator=generator), dim=0)
    elif log_q_kind == "uniform":
        log_q = "uniform"
    loss, expected, grads, expected_grads = run_both(hidden, items, targets, negatives, log_q, remove_hits,
                                                     reduction)
    assert loss.dtype == torch.float32
    assert loss.shape == (targets.shape if reduction == "none" else ())
    torch.testing.assert_close(loss.double().reshape(expected.shape), expected.detach(), rtol=1e-5, atol=1e-5)
    if reduction == "none":
        assert torch.all(loss[targets == IGNORE] == 0)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got.double().reshape(want.shape), want, rtol=1e-4, atol=1e-5)


def test_accidental_hit_removal_changes_the_loss():
    generator = torch.Generator().manual_seed(1)
    hidden, items, targets = random_problem(generator, num_ignored=0)
    negatives = make_negatives("position", generator, targets, items.shape[0], num_negatives=4)
    removed = linear_cross_entropy(hidden, items, targets, negatives, impl="torch")
    kept = linear_cross_entropy(hidden, items, targets, negatives, remove_accidental_hits=False, impl="torch")
    assert kept > removed + 1e-3


def test_every_negative_a_hit_leaves_a_zero_loss_and_finite_gradients():
    generator = torch.Generator().manual_seed(2)
    hidden = torch.randn(4, 5, generator=generator, requires_grad=True)
    items = torch.randn(9, 5, generator=generator, requires_grad=True)
    targets = torch.tensor([3, 1, 8, 0])
    loss = linear_cross_entropy(hidden, items, targets, targets.unsqueeze(1).repeat(1, 3), impl="torch")
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(hidden.grad).all() and torch.isfinite(items.grad).all()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("leading", [(17,), (3, 6)])
def test_full_catalogue_equals_cross_entropy(reduction, leading):
    generator = torch.Generator().manual_seed(len(leading) * 10 + len(reduction))
    hidden = torch.randn(*leading, 11, generator=generator, dtype=torch.float64)
    items = torch.randn(29, 11, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 29, leading, generator=generator)
    targets.view(-1)[::4] = IGNORE
    hidden32 = hidden.float().requires_grad_(True)
    items32 = items.float().requires_grad_(True)
    loss = linear_cross_entropy(hidden32, items32, targets, None, reduction=reduction, impl="torch")
    hidden.requires_grad_(True)
    items.requires_grad_(True)
    expected = F.cross_entropy(hidden.reshape(-1, 11) @ items.T, targets.reshape(-1), reduction=reduction)
    expected = expected.reshape(leading) if reduction == "none" else expected
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-5, atol=1e-6)
    upstream = torch.rand(expected.shape, dtype=torch.float64) + 0.5
    (loss.double() * upstream).sum().backward()
    (expected * upstream).sum().backward()
    torch.testing.assert_close(hidden32.grad.double(), hidden.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(items32.grad.double(), items.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("negatives", [None, "shared", "position"])
def test_mean_over_no_kept_rows_is_zero_with_zero_gradients(negatives):
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 4, 6, generator=generator, requires_grad=True)
    items = torch.randn(12, 6, generator=generator, requires_grad=True)
    targets = torch.full((2, 4), IGNORE)
    negative_tensor = {None: None, "shared": torch.tensor([1, 5, 7]),
                       "position": torch.randint(0, 12, (2, 4, 3), generator=generator)}[negatives]
    loss = linear_cross_entropy(hidden, items, targets, negative_tensor, impl="torch")
    loss.backward()
    assert loss.item() == 0.0
    assert torch.all(hidden.grad == 0) and torch.all(items.grad == 0)


def test_half_hidden_with_float32_items_computes_in_hidden_dtype():
    generator = torch.Generator().manual_seed(4)
    hidden = torch.randn(2, 8, 16, generator=generator).to(torch.bfloat16).requires_grad_(True)
    items = torch.randn(40, 16, generator=generator, requires_grad=True)
    targets = torch.randint(0, 40, (2, 8), generator=generator)
    negatives = torch.randint(0, 40, (2, 8, 5), generator=generator)
    loss = linear_cross_entropy(hidden, items, targets, negatives, log_q="uniform", impl="torch")
    loss.backward()
    assert loss.dtype == torch.float32
    assert hidden.grad.dtype == torch.bfloat16 and items.grad.dtype == torch.float32
    # Against float32 on the values the computation sees (items rounded to bfloat16).
    items_seen = items.detach().to(torch.bfloat16).float()
    expected = linear_cross_entropy(hidden.detach().float(), items_seen, targets, negatives,
                                    log_q="uniform", impl="torch")
    torch.testing.assert_close(loss, expected, rtol=2e-2, atol=1e-2)


@pytest.mark.parametrize("scheme", ["shared", "sequence", "position"])
def test_float32_item_gradient_accumulates_in_float32_when_rows_repeat(scheme):
    # The autocast case: bf16 hidden, float32 table, far more gathered rows than items (N*K >> C),
    # so every item receives thousands of gradient contributions. They must be summed in float32:
    # summing them in bf16 (casting the table before the gather) loses ~1e-2 of the item gradient.
    generator = torch.Generator().manual_seed(11)
    batch, seq_len, num_items, num_negatives, dim = 16, 64, 24, 24, 16
    hidden = torch.randn(batch, seq_len, dim, generator=generator).to(torch.bfloat16)
    items = torch.randn(num_items, dim, generator=generator)
    targets = torch.randint(0, num_items, (batch, seq_len), generator=generator)
    shape = {"shared": (num_negatives,), "sequence": (batch, num_negatives),
             "position": (batch, seq_len, num_negatives)}[scheme]
    negatives = torch.randint(0, num_items, shape, generator=generator)
    items_bf16 = items.clone().requires_grad_(True)
    linear_cross_entropy(hidden, items_bf16, targets, negatives, impl="torch", reduction="sum").backward()
    # The same loss in float64 on the bf16-rounded items.
    _, _, items_grad = oracle_with_grads(hidden, items, targets, negatives, items_as=torch.bfloat16,
                                         reduction="sum")
    error = relative_error(items_bf16.grad, items_grad)
    assert error < 4e-3, f"item gradient relative error {error:.2e}"


def test_non_contiguous_hidden_and_items_view_give_the_same_loss():
    generator = torch.Generator().manual_seed(5)
    table = torch.randn(31, 8, generator=generator)
    items = table[1:]  # the harness passes embedding.weight[1:]
    hidden = torch.randn(6, 3, 8, generator=generator).transpose(0, 1)  # [3, 6, 8], not contiguous
    targets = torch.randint(0, 30, (3, 6), generator=generator)
    negatives = torch.randint(0, 30, (3, 4), generator=generator)
    loss = linear_cross_entropy(hidden, items, targets, negatives, impl="torch")
    expected = linear_cross_entropy(hidden.contiguous(), items.clone(), targets, negatives, impl="torch")
    torch.testing.assert_close(loss, expected)


@pytest.mark.skipif(importlib.util.find_spec("kernels.draw") is None, reason="kernels.draw not written yet")
@pytest.mark.parametrize("num_items", [23, 25])  # slices of 4 and 5 items (stratum weights), all of 5 (none)
def test_drawn_negatives_are_the_host_draw_with_their_stratum_weights(num_items):
    from kernels.draw import draw_negatives

    generator = torch.Generator().manual_seed(6)
    hidden, items, targets = random_problem(generator, num_items=num_items)
    hidden.requires_grad_()
    items.requires_grad_()
    drawn = linear_cross_entropy(hidden, items, targets, 5, seed=1234, log_q="uniform", reduction="none",
                                 impl="torch")
    host = draw_negatives(1234, 15, 5, num_items)
    upstream = torch.rand(drawn.shape, generator=generator) + 0.5
    expected, expected_hidden_grad, expected_items_grad = oracle_with_grads(
        hidden, items, targets, host, upstream=upstream, log_q=-math.log(num_items), ignore_index=IGNORE,
        reduction="none", drawn=True)
    assert relative_error(drawn, expected) < 1e-6
    (drawn * upstream).sum().backward()
    assert relative_error(hidden.grad, expected_hidden_grad) < 1e-5
    assert relative_error(items.grad, expected_items_grad) < 1e-5
    if num_items == 25:
        given = linear_cross_entropy(hidden, items, targets, host, log_q="uniform", reduction="none",
                                     impl="torch")
        torch.testing.assert_close(drawn, given)


def test_auto_uses_torch_on_cpu():
    generator = torch.Generator().manual_seed(7)
    hidden, items, targets = random_problem(generator)
    negatives = torch.randint(0, items.shape[0], (4,), generator=generator)
    auto = linear_cross_entropy(hidden, items, targets, negatives, impl="auto")
    torch_impl = linear_cross_entropy(hidden, items, targets, negatives, impl="torch")
    assert torch.equal(auto, torch_impl)


@pytest.mark.parametrize("shape", [(7,), (2, 7), (2, 5, 7)])
def test_int32_negatives_are_kept_int32_and_give_the_same_loss(shape):
    from kernels.api import normalise_inputs

    generator = torch.Generator().manual_seed(12)
    hidden = torch.randn(2, 5, 16, generator=generator)
    items = torch.randn(40, 16, generator=generator)
    targets = torch.randint(0, 40, (2, 5), generator=generator)
    negatives = torch.randint(0, 40, shape, generator=generator)
    call = normalise_inputs(hidden, items, targets, negatives.int(), seed=None, ignore_index=IGNORE)
    assert call.negatives is not None and call.negatives.dtype == torch.int32
    expected = linear_cross_entropy(hidden, items, targets, negatives, log_q="uniform", impl="torch")
    got = linear_cross_entropy(hidden, items, targets, negatives.int(), log_q="uniform", impl="torch")
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_positive_logit_uses_item_rows_rounded_like_the_negatives():
    """bf16 hidden with a float32 table (autocast): the positive's item row is rounded to bf16 as the
    negatives' rows are, so a target that is also a negative scores the same row."""
    from kernels.reference import positive_logits

    generator = torch.Generator().manual_seed(8)
    hidden = torch.randn(6, 24, generator=generator).to(torch.bfloat16)
    items = torch.randn(40, 24, generator=generator) / 3  # float32 values that bf16 cannot hold exactly
    targets = torch.randint(0, 40, (6,), generator=generator)
    assert not torch.equal(items.to(torch.bfloat16).float(), items)
    rounded = positive_logits(hidden, items.to(torch.bfloat16), targets)
    assert torch.equal(positive_logits(hidden, items, targets), rounded)
    items.requires_grad_(True)
    positive_logits(hidden, items, targets).sum().backward()
    assert items.grad is not None and items.grad.dtype == torch.float32
