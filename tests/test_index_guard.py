"""Out-of-range indices: refused before the call on the CPU, refused inside the kernels on CUDA.

On CUDA the fused path checks index ranges inside the kernels and raises at the next call
(`kernels.index_guard`). These tests run that path through the Triton interpreter on CPU tensors by
switching it on for the CPU (`defers_index_checks`), and compare its loss and gradients with a float64
reference in which the refused index is left out.
"""

from __future__ import annotations

import dataclasses
import math
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
from loss_oracle import stratum_log_weights

import kernels
import kernels.api as api
import kernels.triton_shared as triton_shared
from kernels import index_guard

B, L, D, C, K = 3, 5, 8, 40, 6
IGNORE = -100


@pytest.fixture(autouse=True)
def no_report_left_behind():
    index_guard._GUARDS.clear()
    yield
    index_guard._GUARDS.clear()


@pytest.fixture
def deferred(monkeypatch):
    """The CUDA behaviour on the CPU: the kernels check index ranges, the error comes later."""
    monkeypatch.setattr(api, "defers_index_checks", lambda hidden, impl: impl == "triton")


def inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, L, D, generator=generator).requires_grad_()
    items = (torch.randn(C, D, generator=generator) * 0.5).requires_grad_()
    targets = torch.randint(0, C, (B, L), generator=generator)
    targets[0, 0] = IGNORE
    return hidden, items, targets, generator


def negatives_for(scheme, generator):
    shape = {"shared": (K,), "sequence": (B, K), "position": (B, L, K)}[scheme]
    return torch.randint(0, C, shape, generator=generator)


def per_row(negatives, scheme):
    """The [N, K] negatives every row scores, whatever the scheme."""
    if scheme == "shared":
        return negatives.expand(B * L, K)
    if scheme == "sequence":
        return negatives.repeat_interleave(L, dim=0)
    return negatives.reshape(B * L, K)


def reference(hidden, items, targets, negatives, dropped, log_q=None, remove_hits=True, drawn=False):
    """Float64 CE- (mean over kept rows, accidental hits removed unless remove_hits=False, logits lowered by
    log K + log_q[item] with a log_q tensor, raised by their stratum weight when `drawn`) with `dropped`
    [N, K] entries left out; negatives None is the full catalogue. Rows whose target is outside [0, C) count
    as ignored."""
    h = hidden.double().reshape(B * L, D)
    e = items.double()
    t = targets.reshape(-1)
    kept = (t >= 0) & (t < C)
    safe = torch.where(kept, t, 0)
    positive = (h * e[safe]).sum(-1)
    if negatives is None:
        logits = h @ e.T
        row_loss = torch.logsumexp(logits, 1) - positive
    else:
        safe_negatives = torch.where(dropped, 0, negatives)
        logits = torch.einsum("nd,nkd->nk", h, e[safe_negatives])
        if log_q is not None:
            logits = logits - (math.log(negatives.shape[1]) + log_q.double()[safe_negatives])
        if drawn:
            logits = logits + stratum_log_weights(C, negatives.shape[1])
        hits = (safe_negatives == safe[:, None]) if remove_hits else torch.zeros_like(dropped)
        logits = logits.masked_fill(dropped | hits, float("-inf"))
        row_loss = torch.logsumexp(torch.cat([positive[:, None], logits], 1), 1) - positive
    return torch.where(kept, row_loss, 0.0).sum() / kept.sum()


def losses_and_grads(loss_fn, hidden, items):
    hidden.grad = items.grad = None
    loss = loss_fn()
    loss.backward()
    return float(loss.detach()), hidden.grad.clone(), items.grad.clone()


def assert_matches(got, expected, tolerance=2e-5):
    for value, reference_value in zip(got, expected):
        value, reference_value = torch.as_tensor(value).double(), torch.as_tensor(reference_value).double()
        error = (value - reference_value).norm() / reference_value.norm().clamp(min=1e-30)
        assert error < tolerance, error


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("scheme", ["shared", "sequence", "position"])
def test_cpu_refuses_before_the_call(impl, scheme):
    hidden, items, targets, generator = inputs()
    negatives = negatives_for(scheme, generator)
    negatives.view(-1)[3] = C + 5
    with pytest.raises(ValueError, match=rf"^negatives: value {C + 5} at index"):
        kernels.linear_cross_entropy(hidden, items, targets, negatives, impl=impl)
    targets[1, 2] = -3
    with pytest.raises(ValueError, match=r"^targets: value -3 at index \(7,\)"):
        kernels.linear_cross_entropy(hidden, items, targets, None, impl=impl)


@pytest.mark.parametrize("scheme", ["shared", "sequence", "position"])
@pytest.mark.parametrize("bad_value", [C, -1, 2**33 + 1])
def test_bad_negative_is_left_out_then_reported(deferred, scheme, bad_value):
    hidden, items, targets, generator = inputs(1)
    negatives = negatives_for(scheme, generator)
    # a column every row (shared), one sequence, or one kept position sees (row 0 is ignored)
    negatives.view(-1)[4 if scheme == "shared" else K + 4] = bad_value
    rows = per_row(negatives, scheme)
    expected = losses_and_grads(lambda: reference(hidden, items, targets, rows, (rows < 0) | (rows >= C)),
                                hidden, items)
    got = losses_and_grads(
        lambda: kernels.linear_cross_entropy(hidden, items, targets, negatives, impl="triton"), hidden, items)
    assert_matches(got, expected)
    with pytest.raises(ValueError, match=rf"^negatives: value {bad_value} is outside \[0, {C}\)"):
        kernels.check_index_errors()
    kernels.check_index_errors()  # reported once


@pytest.mark.parametrize("scheme", ["shared", "shared-fused", "sequence"])
@pytest.mark.parametrize("with_log_q", [False, True], ids=["no-log-q", "log-q"])
@pytest.mark.parametrize("remove_hits", [True, False], ids=["hits-removed", "hits-kept"])
def test_bad_negative_is_left_out_on_every_dense_kernel_path(deferred, monkeypatch, scheme, with_log_q,
                                                             remove_hits):
    """The dense kernels leave a refused negative out in each of their ways: the forward by its -inf logit
    offset, the backward by its zero item row or (with a logQ correction) the offset, the fused backward
    and the item gradient by adding nothing for it."""
    if scheme == "shared-fused":
        base = triton_shared.default_config(torch.device("cpu"), D)
        fused = dataclasses.replace(base, fused_backward=base.grad_hidden, fused_max_negatives=10**6)
        monkeypatch.setattr(triton_shared, "default_config", lambda device, dim: fused)
        scheme = "shared"
    hidden, items, targets, generator = inputs(6)
    negatives = negatives_for(scheme, generator)
    negatives.view(-1)[2 if scheme == "shared" else K + 2] = -2
    log_q = -torch.rand(C, generator=generator) - 3.0 if with_log_q else None
    rows = per_row(negatives, scheme)
    expected = losses_and_grads(lambda: reference(hidden, items, targets, rows, (rows < 0) | (rows >= C),
                                                  log_q=log_q, remove_hits=remove_hits), hidden, items)
    got = losses_and_grads(lambda: kernels.linear_cross_entropy(
        hidden, items, targets, negatives, log_q=log_q, remove_accidental_hits=remove_hits, impl="triton"),
        hidden, items)
    assert_matches(got, expected)
    with pytest.raises(ValueError, match=r"^negatives: value -2 is outside"):
        kernels.check_index_errors()


@pytest.mark.parametrize("scheme", [None, "shared", "sequence", "position", "drawn"])
def test_bad_target_row_counts_as_ignored_then_reported(deferred, scheme):
    hidden, items, targets, generator = inputs(2)
    negatives = K if scheme == "drawn" else None if scheme is None else negatives_for(scheme, generator)
    seed = 11 if scheme == "drawn" else None
    targets[2, 1] = C + 3
    if scheme is None:
        rows = None
    else:
        drawn = kernels.draw_negatives(seed, B * L, K, C) if scheme == "drawn" else None
        rows = drawn if drawn is not None else per_row(negatives, scheme)
    dropped = None if rows is None else torch.zeros(rows.shape, dtype=torch.bool)
    expected = losses_and_grads(
        lambda: reference(hidden, items, targets, rows, dropped, drawn=scheme == "drawn"), hidden, items)
    got = losses_and_grads(
        lambda: kernels.linear_cross_entropy(hidden, items, targets, negatives, seed=seed, impl="triton"),
        hidden, items)
    assert_matches(got, expected)
    with pytest.raises(ValueError, match=rf"^targets: value {C + 3} is outside \[0, {C}\)"):
        kernels.check_index_errors()


def test_next_call_raises_the_pending_error(deferred):
    hidden, items, targets, generator = inputs(3)
    bad = negatives_for("position", generator)
    bad[1, 0, 0] = -7
    good = negatives_for("position", generator)
    kernels.linear_cross_entropy(hidden, items, targets, bad, impl="triton")
    with pytest.raises(ValueError, match=r"^negatives: value -7 .* earlier call"):
        kernels.linear_cross_entropy(hidden, items, targets, good, impl="triton")
    loss = kernels.linear_cross_entropy(hidden, items, targets, good, impl="triton")  # reported once
    assert torch.isfinite(loss)


def test_negatives_of_ignored_rows_are_not_read(deferred):
    """Per position, an ignored row's negatives are never loaded: not used, so not checked either."""
    hidden, items, targets, generator = inputs(5)
    negatives = negatives_for("position", generator)
    negatives[0, 0, 2] = C + 1  # row 0 is ignored
    kernels.linear_cross_entropy(hidden, items, targets, negatives, impl="triton").backward()
    kernels.check_index_errors()


def test_eager_paths_keep_checking_before_the_call(deferred):
    """The reference and the binary losses index with torch: they still check before the call."""
    hidden, items, targets, generator = inputs(4)
    negatives = negatives_for("shared", generator)
    negatives[0] = C
    with pytest.raises(ValueError, match="^negatives:"):
        kernels.linear_cross_entropy(hidden, items, targets, negatives, impl="torch")
    with pytest.raises(ValueError, match="^negatives:"):
        kernels.bce_loss(hidden, items, targets, negatives)


def test_only_the_fused_path_on_cuda_defers():
    cpu = torch.zeros(1)
    assert not api.defers_index_checks(cpu, "triton")
    assert not api.defers_index_checks(cpu, "torch")
    meta = torch.zeros(1, device="meta")
    assert not api.defers_index_checks(meta, "triton")


class FakeEvent:
    """Stands in for torch.cuda.Event: `done` says whether the queued copy has arrived."""

    def __init__(self):
        self.done = False
        self.recorded = 0

    def record(self):
        self.recorded += 1

    def query(self):
        return self.done


def test_cuda_report_waits_for_nothing_until_the_copy_has_arrived(monkeypatch):
    """The CUDA bookkeeping with a stand-in event: publish copies the flags, the next call raises only
    once the copy has arrived, check_index_errors reads the flags themselves."""
    device = torch.device("cpu")  # the tensors' device does not matter to the bookkeeping
    flags = torch.zeros(index_guard.FLAG_SLOTS, dtype=torch.int64)
    event = FakeEvent()
    guard = index_guard._DeviceGuard(flags, torch.zeros_like(flags), event)
    index_guard._GUARDS[device] = guard
    flags[index_guard.NEGATIVES_SLOT:index_guard.NEGATIVES_SLOT + 3] = torch.tensor([1, C + 9, C])
    index_guard.raise_pending(device, wait=False)  # nothing copied yet
    index_guard.publish(device)
    assert event.recorded == 1 and guard.host.tolist() == flags.tolist()
    index_guard.raise_pending(device, wait=False)  # copy queued, not arrived: no error, no wait
    event.done = True
    with pytest.raises(ValueError, match=rf"^negatives: value {C + 9} is outside \[0, {C}\)"):
        index_guard.raise_pending(device, wait=False)
    assert flags.abs().sum() == 0 and guard.host.abs().sum() == 0  # reported once
    flags[index_guard.TARGETS_SLOT:index_guard.TARGETS_SLOT + 3] = torch.tensor([1, -4, C])
    event.done = False
    with pytest.raises(ValueError, match=r"^targets: value -4"):
        kernels.check_index_errors(device)  # reads the flags, not the (stale) copy
