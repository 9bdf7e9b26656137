"""Every Triton kernel variant passes Triton's code generator for a GPU (sm_90), without a GPU.

The other kernel tests run the Triton interpreter, which accepts code the compiler refuses (the sliced
per-position backward once failed to compile on the H200 only). `benchmarks/kernel_ptx.py --check` runs
the kernels' host code with every launch compiled to TTIR instead of run, in a process without
TRITON_INTERPRET (the interpreter's kernels cannot be compiled).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_kernel_ptx(option: str) -> subprocess.CompletedProcess[str]:
    """`benchmarks/kernel_ptx.py OPTION` in a process without TRITON_INTERPRET, asserted to succeed; skips
    where Triton has no NVIDIA backend."""
    triton = pytest.importorskip("triton")
    from triton.backends import backends

    if "nvidia" not in backends:
        pytest.skip(f"triton {triton.__version__} has no NVIDIA backend here")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernel_ptx.py"), option], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def test_every_kernel_variant_compiles_for_sm90() -> None:
    result = run_kernel_ptx("--check")
    assert "0 refused" in result.stdout


def test_dense_tile_loops_test_no_index_ranges() -> None:
    """The shared benchmark's kernels (bf16, d=64), compiled for sm_90: no tile loop compares 64-bit
    integers (an index range tested per tile) or converts a 2-D boolean tensor between layouts. Both came
    with the in-kernel index checks of 3ffe63d and made shared K=16384 d=64 40% slower on an H200."""
    result = run_kernel_ptx("--loops")
    for kernel in ("_forward_kernel", "_fused_backward_kernel", "_grad_hidden_kernel", "_grad_items_kernel"):
        assert kernel in result.stdout, result.stdout


def test_dense_kernels_fit_an_h200s_shared_memory() -> None:
    """Every dense kernel (forward, grad_hidden, grad_items, fused backward; full, shared and per-sequence
    negatives) with the tiles an H200 launches (triton_shared.launch_config), at d = 64, 96, 128, 256 and
    512 in bf16, fp16, fp32 and bf16 hidden with fp32 items, compiled for sm_90 up to its shared-memory
    allocation: each needs at most the H200's 227 KiB (232,448 bytes), and at most kernels.tile_memory's
    estimate, which chose the tiles. At d = 512 in float32 the tuned tiles need up to 411,136 bytes, each
    refused launch cost a compilation, and the GPU tests there did not finish in 300 s."""
    result = run_kernel_ptx("--shared-memory")
    assert result.stdout.count("bytes of 232448") >= 5 * 4 * 3 * 3, result.stdout


def test_d_blocked_kernels_run_on_warpgroup_mma_without_spills() -> None:
    """The opt-in d-blocked forward (BlockConfig.block_d) at d=256 in bf16 with each of
    kernel_ptx.DBLOCK_CANDIDATES' tiles, and the d-blocked backward of shared negatives
    (SharedConfig.dblock_backward) at d=256 and 64 with each of DBLOCK_BACKWARD_CANDIDATES', compiled for
    sm_90: Hopper's warpgroup MMA (PTX wgmma.mma_async, SASS HGMMA), no spilled registers in the forward
    and at most kernel_ptx.BACKWARD_SPILL_TOLERANCE bytes in the backward (triton 3.9 spills a few words
    there that 3.7 does not), within the H200's shared memory and kernels.tile_memory's estimate (the script
    fails otherwise)."""
    from repo_scripts import load_script

    tolerance = load_script("benchmarks/kernel_ptx.py").BACKWARD_SPILL_TOLERANCE
    result = run_kernel_ptx("--dblock")
    blocked = [line for line in result.stdout.splitlines() if "block_d=64" in line]
    backward = [line for line in blocked if line.startswith("_backward_dblock_kernel")]
    assert len(blocked) >= 14 and len(backward) >= 6, result.stdout
    for line in blocked:
        spilled = re.search(r"(\d+) stack bytes", line)
        assert "PTX wgmma.mma_async 0" not in line and spilled is not None, line
        assert int(spilled.group(1)) <= (tolerance if line in backward else 0), line
