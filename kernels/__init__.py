"""Fused and reference losses for sequential recommendation over large catalogues."""

from kernels.api import linear_cross_entropy
from kernels.draw import draw_negatives
from kernels.index_guard import check_index_errors
from kernels.sampled_losses import bce_loss, gbce_beta, gbce_loss
from kernels.samplers import NegativeSampler

__all__ = ["NegativeSampler", "bce_loss", "check_index_errors", "draw_negatives", "gbce_beta", "gbce_loss",
           "linear_cross_entropy"]
