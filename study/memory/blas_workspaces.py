"""The cuBLAS workspaces of a trial, created before anything else it allocates on the card.

cuBLAS keeps a workspace for each thread and stream, taken from PyTorch's caching allocator at that
thread's first matmul on the stream and kept for the life of the process: CUBLAS_WORKSPACE_CONFIG's size,
by default 32 MiB on sm90 (4096 KiB x 8); torch keys it by the thread's cuBLAS handle and the stream
(cublas_handle_stream_to_workspace in ATen/cuda/CUDAContextLight.h, torch 2.13). cuBLASLt, which
torch uses for a linear layer with a bias, shares it in recent versions (pytorch#168175); where it does
not (TORCH_CUBLASLT_UNIFIED_WORKSPACE=0, older versions), it keeps one of its own per handle and stream,
CUBLASLT_WORKSPACE_SIZE (1 MiB by default). A training step runs matmuls on two threads: the trial's
(the forward, evaluation) and autograd's own thread for the CUDA device, which runs every backward.

Left to the first step, autograd's thread takes its workspace at the first matmul of the first backward,
when the step's largest transient (the PyTorch per-position losses' float32 [N, K, d] gather, full CE's
float32 [N, C] logits) has just been freed. The caching allocator gives the 32 MiB to the smallest free
block that holds them, and in some trials that block lies in the transient's segment (it depends on how
the activations packed into the segments evaluation left): the segment can then never hold the transient
again, and every later step needs one more segment of its size. On one H200 such trials kept 1.5 to 2
transients beyond their allocated peak where the others kept 0.5 to 1 (study/memory/model.py,
PINNED_TRANSIENT_SHARE): 12.4 and 18.1 GiB more in two trials whose steps were replayed both ways through a
model of the allocator (benchmarks/memory_trace.py).

`warm_up_blas_workspaces` runs a small linear layer with a bias, a batched product and their backward on
the trial's thread under the trial's autocast, before the trial allocates anything else: the forward
creates the trial thread's workspace, the backward autograd's, each while no freed block exists, so each
gets a segment of its own that it fills (a request over 10 MiB is served by a segment of its size
rounded up to 2 MiB), and no later free can ever leave one of them inside a transient's segment. Its
tensors are a few KiB (the allocator's small pool, which large requests never use). It draws no random
number (the tensors are built from constants) and leaves no gradient behind, so a seeded trial trains
exactly as without it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

AutocastFactory = Callable[[], contextlib.AbstractContextManager[Any]]
# Side of the warm-up's matrices: large enough for cuBLAS (not a scalar path), small enough that every
# tensor stays in the caching allocator's small pool (at most 1 MiB).
WARM_UP_SIZE = 64


def warm_up_blas_workspaces(device: torch.device, autocast: AutocastFactory) -> None:
    """On CUDA, create the cuBLAS workspaces of this thread and of autograd's thread for `device` now
    (see the module docstring); `autocast` is the trial's (the same kernels as its steps). No-op elsewhere:
    a CPU has no such workspaces."""
    if device.type != "cuda":
        return
    run_matmuls_forward_and_backward(device, autocast)


def run_matmuls_forward_and_backward(device: torch.device, autocast: AutocastFactory) -> None:
    """A linear layer with a bias (addmm; cuBLASLt on CUDA), a batched product (bmm, as the losses' einsum)
    and their backward (mm and bmm, on autograd's thread for a CUDA device), from constant tensors on
    `device`."""
    size = WARM_UP_SIZE
    ramp = torch.arange(size * size, dtype=torch.float32, device=device).reshape(size, size) / (size * size)
    with torch.enable_grad():
        weight = ramp.clone().requires_grad_()
        bias = torch.full((size,), 0.5, device=device, requires_grad=True)
        inputs = ramp.flip(0).repeat(2, 1, 1)  # contiguous, so that the linear layer is one addmm
        with autocast():
            hidden = F.linear(inputs, weight, bias)
            scores = torch.bmm(hidden, hidden.transpose(1, 2))
            total = scores.float().sum()
        torch.autograd.grad(total, (weight, bias))


__all__ = ["WARM_UP_SIZE", "run_matmuls_forward_and_backward", "warm_up_blas_workspaces"]
