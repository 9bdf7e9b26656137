"""The trainer's start-of-trial cuBLAS warm-up (study/memory/blas_workspaces.py): it draws no random number
and changes nothing a seeded trial computes (CPU, where the same matmuls run through the same code), it is a
no-op off CUDA, and on a GPU (`pytest -m cuda`) it leaves each thread's workspace alone in a segment of its
own, so that a later step creates none."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import study.training.trainer as train
from study.config import TrainConfig
from study.memory import blas_workspaces

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50 users walking 8 steps along a cycle of 40 items from random starts."""
    rng = np.random.default_rng(11)
    rows = [(f"u{user}", f"i{(start + step) % 40}", 1_000 + 10 * step + user)
            for user, start in enumerate(rng.integers(0, 40, size=50)) for step in range(8)]
    path = tmp_path_factory.mktemp("warm-up") / "log.csv"
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(path, index=False)
    return path


def _rng_states() -> tuple[object, ...]:
    return (random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state().tolist())


@pytest.mark.parametrize("bf16", [True, False])
def test_warm_up_draws_no_random_number_and_leaves_no_state(bf16: bool) -> None:
    device = torch.device("cpu")

    def autocast():  # the trainer's autocast on this device
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    torch.manual_seed(1234)
    before = _rng_states()
    with torch.no_grad():  # a caller without gradients: the warm-up takes them itself, and gives them back
        blas_workspaces.run_matmuls_forward_and_backward(device, autocast)
        assert not torch.is_grad_enabled()
    assert _rng_states() == before
    assert not torch.is_autocast_enabled("cpu")


def test_warm_up_is_a_no_op_off_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(blas_workspaces, "run_matmuls_forward_and_backward",
                        lambda device, autocast: calls.append(device))
    blas_workspaces.warm_up_blas_workspaces(torch.device("cpu"), lambda: torch.autocast("cpu"))
    assert calls == []
    blas_workspaces.warm_up_blas_workspaces(torch.device("cuda", 0), lambda: torch.autocast("cpu"))
    assert calls == [torch.device("cuda", 0)]


@pytest.mark.parametrize("loss", ["ce", "ce-neg"])
def test_a_seeded_trial_trains_the_same_with_the_warm_up(small_log: Path, monkeypatch: pytest.MonkeyPatch,
                                                         loss: str) -> None:
    """The trainer calls the warm-up before anything else of the trial; run on the CPU (where it is otherwise
    skipped) with the trial's bf16 autocast, it changes no loss, metric or weight of a seeded trial with
    dropout and sampled negatives."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = TrainConfig(dataset=str(small_log), loss=loss, negative_scope="position", num_negatives=16,
                             loss_impl="torch", max_len=8, hidden=16, blocks=1, batch_size=8,
                             eval_batch_size=16, epochs=2, patience=2, device="cpu", precision="bf16",
                             dropout=0.3, progress=False, lr=5e-3, seed=7)
        plain = train.run_trial(config)
        calls = []

        def warm_up_on_cpu(device: torch.device, autocast: blas_workspaces.AutocastFactory) -> None:
            calls.append(device)
            blas_workspaces.run_matmuls_forward_and_backward(device, autocast)

        monkeypatch.setattr(train, "warm_up_blas_workspaces", warm_up_on_cpu)
        warmed = train.run_trial(config)
    finally:
        torch.set_num_threads(previous_threads)
    assert calls == [torch.device("cpu")]
    assert plain.status == warmed.status == "ok"
    assert [e.train_loss for e in plain.epochs] == [e.train_loss for e in warmed.epochs]
    assert plain.epochs[0].train_loss != plain.epochs[1].train_loss  # it trained
    assert plain.val_metrics == warmed.val_metrics and plain.test_metrics == warmed.test_metrics


# Run in a fresh process: the workspaces are per thread and kept for the process's life, so a process
# that already ran a matmul on the card (another test) has them.
CUDA_CHECK = textwrap.dedent("""
    import torch, torch.nn.functional as F
    from study.memory.blas_workspaces import warm_up_blas_workspaces

    device = torch.device("cuda")
    torch.manual_seed(5)
    rng = torch.cuda.get_rng_state()

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16)

    warm_up_blas_workspaces(device, autocast)
    torch.cuda.synchronize()
    assert torch.equal(torch.cuda.get_rng_state(), rng), "the warm-up drew random numbers"
    large = [s for s in torch.cuda.memory_snapshot() if s["segment_type"] == "large"]
    sizes = sorted(s["total_size"] for s in large)
    # every large segment is one live block that fills it: a workspace alone in its segment
    assert all(len(s["blocks"]) == 1 and s["blocks"][0]["state"] == "active_allocated" for s in large), large
    assert len(large) == 2, f"expected the two threads' workspaces, found segments of {sizes} bytes"
    kept = torch.cuda.memory_allocated()

    # a step as the trainer runs it, with a freed transient of 256 MiB when the backward starts
    weight = torch.randn(256, 256, device=device, requires_grad=True)
    bias = torch.zeros(256, device=device, requires_grad=True)
    with autocast():
        hidden = F.linear(torch.randn(64, 200, 256, device=device), weight, bias)
        transient = torch.empty(256 << 20, dtype=torch.uint8, device=device)
        del transient
        loss = torch.einsum("bld,bkd->blk", hidden, hidden).float().square().mean()
    loss.backward()
    del hidden, loss
    weight.grad = bias.grad = None
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == kept + weight.nbytes + bias.nbytes, (
        "the step created a workspace the warm-up did not")
    print("ok", sizes)
""")


@pytest.mark.cuda
def test_warm_up_gives_each_threads_workspace_a_segment_of_its_own() -> None:
    result = subprocess.run([sys.executable, "-c", CUDA_CHECK], cwd=REPO, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok")
