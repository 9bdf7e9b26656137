"""Padded tensors for training and evaluation, built once and sliced per batch (no per-example Python)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from study.data.sequences import EvalSet, Sequences


def tail_windows(sequences: Sequences, rows: torch.Tensor, width: int) -> torch.Tensor:
    """[len(rows), width] int64: the last `width` items of each selected sequence, right-padded with 0."""
    if len(sequences.items) == 0:
        return torch.zeros(len(rows), width, dtype=torch.int64)
    lengths = sequences.lengths()[rows].clamp(max=width)
    starts = sequences.offsets[rows + 1] - lengths
    columns = torch.arange(width)
    present = columns < lengths[:, None]
    index = (starts[:, None] + columns).clamp(max=len(sequences.items) - 1)
    return torch.where(present, sequences.items[index], 0)


class TrainBatches:
    """Training windows: the most recent max_len + 1 items of every sequence with at least 2 items."""

    def __init__(self, sequences: Sequences, max_len: int) -> None:
        if max_len < 1:
            raise ValueError(f"max_len: must be >= 1, got {max_len}")
        self.max_len = max_len
        kept = (sequences.lengths() >= 2).nonzero().flatten()
        self.windows = tail_windows(sequences, kept, max_len + 1)  # [S, max_len + 1]

    def __len__(self) -> int:
        return len(self.windows)

    def iterate(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(inputs, targets), each [B, max_len], right-padded with 0; targets[b, t] is the item after
        inputs[b, t], and 0 wherever there is none (inputs are 0 there too)."""
        if batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
        order = torch.randperm(len(self), generator=generator) if shuffle else None
        for start in range(0, len(self), batch_size):
            rows = self.windows[order[start:start + batch_size]] if order is not None \
                else self.windows[start:start + batch_size]
            if device is not None:
                rows = rows.to(device, non_blocking=True)
            targets = rows[:, 1:]
            inputs = rows[:, :-1] * (targets != 0)
            yield inputs, targets


def eval_batches(
    evalset: EvalSet,
    max_len: int,
    batch_size: int,
    device: torch.device | str | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (inputs, targets, rows) over the evaluation set in order: inputs [B, max_len] hold the last
    max_len history items right-padded with 0, targets [B], rows [B] index the evaluation set."""
    if max_len < 1:
        raise ValueError(f"max_len: must be >= 1, got {max_len}")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    for start in range(0, len(evalset), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(evalset)))
        inputs = tail_windows(evalset.history, rows, max_len)
        targets = evalset.targets[rows]
        if device is not None:
            inputs, targets, rows = (t.to(device, non_blocking=True) for t in (inputs, targets, rows))
        yield inputs, targets, rows
