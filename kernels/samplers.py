"""Negative samplers: uniform or popularity-proportional, shared by the batch, a sequence or a position.

Indices are in the loss's index space `[0, num_items)` (padding excluded; see ARCHITECTURE.md).
Draws are with replacement. `log_q` is the log of the per-draw probability of each item, for the
logQ correction of `kernels.linear_cross_entropy(..., log_q=sampler.log_q)`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Distribution = Literal["uniform", "popularity"]
SamplerScope = Literal["batch", "sequence", "position"]
DISTRIBUTIONS: tuple[Distribution, ...] = ("uniform", "popularity")
SCOPES: tuple[SamplerScope, ...] = ("batch", "sequence", "position")
# Popularity draws are made in chunks so the float64 uniforms never exceed 32 MiB at a time.
POPULARITY_CHUNK = 2**22


class NegativeSampler:
    """Draws negatives of shape [K] (batch), [B, K] (sequence) or [B, L, K] (position), int64."""

    def __init__(
        self,
        num_items: int,
        num_negatives: int,
        *,
        distribution: Distribution = "uniform",
        scope: SamplerScope = "batch",
        item_counts: torch.Tensor | None = None,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        for name, value in (("num_items", num_items), ("num_negatives", num_negatives)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive int, got {value!r}")
        if num_negatives > num_items:
            raise ValueError(f"num_negatives: {num_negatives} exceeds num_items={num_items} "
                             "(the loss needs K <= C)")
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution: must be one of {', '.join(DISTRIBUTIONS)}, got {distribution!r}")
        if scope not in SCOPES:
            raise ValueError(f"scope: must be one of {', '.join(SCOPES)}, got {scope!r}")
        self.num_items = num_items
        self.num_negatives = num_negatives
        self.distribution: Distribution = distribution
        self.scope: SamplerScope = scope
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if generator is not None and generator.device.type != self.device.type:
            raise ValueError(f"generator: on {generator.device}, but the sampler draws on {self.device}")
        self.generator = generator
        self._cumulative_counts: torch.Tensor | None = None
        self._log_q_table: torch.Tensor | None = None
        self._last_drawable_item = num_items - 1
        if distribution == "popularity":
            self._cumulative_counts, self._log_q_table = self._popularity_tables(item_counts)
        elif item_counts is not None:
            raise ValueError("item_counts: only used by distribution='popularity'")

    @property
    def log_q(self) -> torch.Tensor | float:
        """log per-draw probability: -log(num_items) (uniform) or float32 [num_items] (popularity)."""
        if self._log_q_table is not None:
            return self._log_q_table
        return -math.log(self.num_items)

    def shape(self, batch_size: int, seq_len: int) -> tuple[int, ...]:
        """The shape `sample(batch_size, seq_len)` returns."""
        if self.scope == "batch":
            return (self.num_negatives,)
        if self.scope == "sequence":
            return (batch_size, self.num_negatives)
        return (batch_size, seq_len, self.num_negatives)

    def sample(self, batch_size: int, seq_len: int) -> torch.Tensor:
        """Fresh negatives for a batch of `batch_size` sequences of `seq_len` positions."""
        for name, value in (("batch_size", batch_size), ("seq_len", seq_len)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive int, got {value!r}")
        shape = self.shape(batch_size, seq_len)
        if self._cumulative_counts is None:
            return torch.randint(0, self.num_items, shape, device=self.device, generator=self.generator)
        return self._sample_popularity(math.prod(shape)).reshape(shape)

    def _popularity_tables(self, item_counts: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if item_counts is None:
            raise ValueError("item_counts: required for distribution='popularity' (training counts per item)")
        if not isinstance(item_counts, torch.Tensor):
            raise ValueError(f"item_counts: expected a tensor, got {type(item_counts).__name__}")
        if tuple(item_counts.shape) != (self.num_items,):
            raise ValueError(f"item_counts: expected shape ({self.num_items},), "
                             f"got {tuple(item_counts.shape)}")
        counts = item_counts.detach().to(device=self.device, dtype=torch.float64)
        if not bool(torch.isfinite(counts).all()) or bool((counts < 0).any()):
            raise ValueError("item_counts: must be finite and non-negative")
        # Integer counts stay exact in float64 up to 2**53, so zero-count items are never drawn.
        cumulative = torch.cumsum(counts, dim=0)
        total = float(cumulative[-1])
        if total <= 0:
            raise ValueError("item_counts: all counts are zero")
        log_q = (counts / total).log().to(torch.float32)
        self._last_drawable_item = int(counts.nonzero()[-1])
        return cumulative, log_q

    def _sample_popularity(self, num_draws: int) -> torch.Tensor:
        assert self._cumulative_counts is not None
        cumulative = self._cumulative_counts
        total = cumulative[-1]
        out = torch.empty(num_draws, dtype=torch.int64, device=self.device)
        uniforms = torch.empty(min(num_draws, POPULARITY_CHUNK), dtype=torch.float64, device=self.device)
        for start in range(0, num_draws, POPULARITY_CHUNK):
            chunk = uniforms[: min(POPULARITY_CHUNK, num_draws - start)]
            chunk.uniform_(generator=self.generator).mul_(total)
            # The first item whose cumulative count exceeds u: item j with probability counts[j] / total.
            torch.searchsorted(cumulative, chunk, right=True, out=out[start : start + chunk.numel()])
        # u * total can round up to total itself; that draw belongs to the last item with a count.
        return out.clamp_(max=self._last_drawable_item)
