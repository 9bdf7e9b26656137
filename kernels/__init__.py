"""Fused and reference losses for sequential recommendation over large catalogues."""

from kernels.api import linear_cross_entropy

__all__ = ["linear_cross_entropy"]
