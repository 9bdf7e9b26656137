"""The words of a loss call, shared by the public API, the reference and both Triton kernel families.

Free of torch and Triton, so that `kernels.api` imports where Triton is not installed.
"""

from __future__ import annotations

from typing import Literal

# How the negatives of a call are given. Dense blocks shared by many rows (kernels.triton_shared):
# "full" (the whole catalogue), "shared" ([K] for every row), "sequence" ([B, K], one set per sequence).
# Per row (kernels.triton_gather): "position" ([N, K]), "drawn" (K drawn inside the kernel from a seed).
SharedScheme = Literal["full", "shared", "sequence"]
GatherScheme = Literal["position", "drawn"]
Scheme = Literal[SharedScheme, GatherScheme]
Reduction = Literal["mean", "sum", "none"]

SHARED_SCHEMES: tuple[SharedScheme, ...] = ("full", "shared", "sequence")
GATHER_SCHEMES: tuple[GatherScheme, ...] = ("position", "drawn")
REDUCTIONS: tuple[Reduction, ...] = ("mean", "sum", "none")
