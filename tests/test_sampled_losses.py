"""BCE and gBCE against float64 formulas written out with explicit sigmoids, loss and gradients."""

from __future__ import annotations

import pytest
import torch

from kernels import bce_loss, gbce_beta, gbce_loss

IGNORE = -100


def float64_binary_loss(hidden, items, targets, negatives_of_row, beta):
    """mean over kept rows of -beta * log(sigmoid(s+)) - sum_k log(1 - sigmoid(s_k)), written plainly."""
    total = torch.zeros((), dtype=torch.float64)
    kept = 0
    for row in range(hidden.shape[0]):
        target = int(targets[row])
        if target == IGNORE:
            continue
        kept += 1
        total = total - beta * torch.log(torch.sigmoid(hidden[row] @ items[target]))
        for item in negatives_of_row(row):
            total = total - torch.log(1 - torch.sigmoid(hidden[row] @ items[item]))
    return total / max(kept, 1)


def problem(scheme, seed):
    generator = torch.Generator().manual_seed(seed)
    batch, seq_len, dim, num_items, num_negatives = 3, 4, 6, 19, 5
    hidden = torch.randn(batch, seq_len, dim, generator=generator) * 0.7
    items = torch.randn(num_items, dim, generator=generator) * 0.7
    targets = torch.randint(0, num_items, (batch, seq_len), generator=generator)
    targets[0, 1] = IGNORE
    targets[2, 3] = IGNORE
    if scheme == "shared":
        negatives = torch.randint(0, num_items, (num_negatives,), generator=generator)
        of_row = lambda row: negatives.tolist()
    elif scheme == "sequence":
        negatives = torch.randint(0, num_items, (batch, num_negatives), generator=generator)
        of_row = lambda row: negatives[row // seq_len].tolist()
    else:
        negatives = torch.randint(0, num_items, (batch, seq_len, num_negatives), generator=generator)
        of_row = lambda row: negatives.reshape(-1, num_negatives)[row].tolist()
        if scheme == "flat":
            negatives = negatives.reshape(-1, num_negatives)
    return hidden, items, targets, negatives, of_row


def check(loss_fn, scheme, beta_of, seed):
    hidden, items, targets, negatives, of_row = problem(scheme, seed)
    hidden32 = hidden.clone().requires_grad_(True)
    items32 = items.clone().requires_grad_(True)
    loss = loss_fn(hidden32, items32, targets, negatives)
    loss.backward()
    hidden64 = hidden.double().reshape(-1, hidden.shape[-1]).requires_grad_(True)
    items64 = items.double().requires_grad_(True)
    expected = float64_binary_loss(hidden64, items64, targets.reshape(-1), of_row,
                                   beta_of(len(of_row(0)), items.shape[0]))
    expected.backward()
    assert loss.dtype == torch.float32 and loss.shape == ()
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hidden32.grad.double().reshape(-1, hidden.shape[-1]), hidden64.grad,
                               rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(items32.grad.double(), items64.grad, rtol=1e-4, atol=1e-6)


SCHEMES = ["shared", "sequence", "position", "flat"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_bce_matches_float64(scheme):
    check(bce_loss, scheme, lambda k, c: 1.0, seed=SCHEMES.index(scheme))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("t", [0.0, 0.5, 0.75, 1.0])
def test_gbce_matches_float64_with_beta(scheme, t):
    def beta(num_negatives, num_items):
        alpha = num_negatives / (num_items - 1)
        return alpha * (t * (1 - 1 / alpha) + 1 / alpha)

    check(lambda *a: gbce_loss(*a, t=t), scheme, beta, seed=10 + SCHEMES.index(scheme))


def test_gbce_beta_endpoints():
    # t = 0: beta = 1 (plain BCE); t = 1: beta = alpha = K / (C - 1)
    assert gbce_beta(256, 3417, 0.0) == pytest.approx(1.0)
    assert gbce_beta(256, 3417, 1.0) == pytest.approx(256 / 3416)
    assert gbce_beta(256, 3417, 0.75) == pytest.approx(0.25 + 0.75 * 256 / 3416)


def test_gbce_with_t_zero_equals_bce():
    hidden, items, targets, negatives, _ = problem("position", 20)
    torch.testing.assert_close(gbce_loss(hidden, items, targets, negatives, t=0.0),
                               bce_loss(hidden, items, targets, negatives))


def test_large_logits_stay_finite():
    hidden, items, targets, negatives, _ = problem("shared", 21)
    hidden = (hidden * 200).requires_grad_(True)
    loss = bce_loss(hidden, items, targets, negatives)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0 and torch.isfinite(hidden.grad).all()


def test_all_rows_ignored_gives_zero():
    hidden, items, _, negatives, _ = problem("position", 22)
    targets = torch.full((3, 4), IGNORE)
    assert bce_loss(hidden, items, targets, negatives).item() == 0.0


@pytest.mark.parametrize("t", [-0.1, 1.5, "0.5", True])
def test_bad_t_is_named(t):
    hidden, items, targets, negatives, _ = problem("shared", 23)
    with pytest.raises(ValueError, match="^t:"):
        gbce_loss(hidden, items, targets, negatives, t=t)


def test_bad_inputs_are_named():
    hidden, items, targets, negatives, _ = problem("shared", 24)
    with pytest.raises(ValueError, match="^negatives:"):
        bce_loss(hidden, items, targets, 5)
    with pytest.raises(ValueError, match="^negatives:"):
        bce_loss(hidden, items, targets, negatives + 100)
    with pytest.raises(ValueError, match="^items:"):
        bce_loss(hidden, items[:, :3], targets, negatives)
    with pytest.raises(ValueError, match="^items:"):
        gbce_loss(hidden, items[:1], targets.clamp(max=0), negatives.clamp(max=0)[:1], t=0.5)
