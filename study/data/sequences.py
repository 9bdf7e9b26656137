"""Ragged chronological item sequences in CSR layout, and evaluation sets built on them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Sequences:
    """Sequence i is items[offsets[i]:offsets[i + 1]], oldest first; item ids are 1..num_items."""

    offsets: torch.Tensor  # int64 [S + 1]
    items: torch.Tensor  # int64 [nnz]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def get(self, i: int) -> torch.Tensor:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sequence index {i} out of range for {len(self)} sequences")
        i %= len(self)
        return self.items[int(self.offsets[i]):int(self.offsets[i + 1])]

    @classmethod
    def from_groups(cls, group: np.ndarray, items: np.ndarray) -> Sequences:
        """One sequence per run of equal, ascending `group` values (rows already in sequence order)."""
        if len(group) and np.any(np.diff(group) < 0):
            raise ValueError("group: rows must be sorted by group")
        _, counts = np.unique(group, return_counts=True)
        offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        items = np.ascontiguousarray(items, dtype=np.int64)
        return cls(offsets=torch.from_numpy(offsets), items=torch.from_numpy(items))


@dataclass
class EvalSet:
    """For each evaluated user: the chronological history before the target, and the target."""

    history: Sequences  # also the items to exclude as already seen
    targets: torch.Tensor  # int64 [S]
    users: torch.Tensor  # int64 [S]

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, rows: torch.Tensor) -> EvalSet:
        """The rows selected by a boolean mask or an index tensor, history included."""
        index = rows.nonzero().flatten() if rows.dtype == torch.bool else rows
        lengths = self.history.lengths()[index]
        starts = self.history.offsets[index]
        offsets = torch.cat((torch.zeros(1, dtype=torch.int64), torch.cumsum(lengths, 0)))
        gather = torch.repeat_interleave(starts - offsets[:-1], lengths) + torch.arange(int(offsets[-1]))
        return EvalSet(Sequences(offsets, self.history.items[gather]), self.targets[index], self.users[index])
