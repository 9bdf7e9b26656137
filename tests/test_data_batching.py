"""Training and evaluation batches: truncation to the most recent items, the target shift, right padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from study.data import EvalSet, Sequences, TrainBatches, eval_batches


def _random_sequences(rng: np.random.Generator, count: int, max_length: int) -> list[np.ndarray]:
    return [rng.integers(1, 1000, size=rng.integers(1, max_length + 1)) for _ in range(count)]


def _pack(sequences: list[np.ndarray]) -> Sequences:
    offsets = np.concatenate(([0], np.cumsum([len(s) for s in sequences])))
    return Sequences(torch.from_numpy(offsets).long(), torch.from_numpy(np.concatenate(sequences)).long())


def _padded(values: np.ndarray, width: int) -> np.ndarray:
    return np.concatenate((values, np.zeros(width - len(values), dtype=np.int64)))


def test_sequences_access() -> None:
    packed = _pack([np.array([5, 6, 7]), np.array([9])])
    assert len(packed) == 2 and packed.lengths().tolist() == [3, 1]
    assert packed.get(0).tolist() == [5, 6, 7] and packed.get(-1).tolist() == [9]
    with pytest.raises(IndexError):
        packed.get(2)


@pytest.mark.parametrize("max_len", [1, 4, 30])
def test_train_windows_match_a_plain_reference(max_len: int) -> None:
    rng = np.random.default_rng(max_len)
    sequences = _random_sequences(rng, 57, 12)
    batches = TrainBatches(_pack(sequences), max_len)
    kept = [s for s in sequences if len(s) >= 2]
    assert len(batches) == len(kept) < len(sequences)
    expected_inputs, expected_targets = [], []
    for s in kept:
        window = s[-(max_len + 1):]  # the most recent items
        expected_inputs.append(_padded(window[:-1], max_len))
        expected_targets.append(_padded(window[1:], max_len))
    chunks = list(batches.iterate(16, shuffle=False))
    assert [len(x) for x, _ in chunks] == [16, 16, 16, len(kept) - 48][: len(chunks)]
    inputs = torch.cat([x for x, _ in chunks])
    targets = torch.cat([y for _, y in chunks])
    assert inputs.dtype == targets.dtype == torch.int64 and inputs.shape == (len(kept), max_len)
    assert np.array_equal(inputs.numpy(), np.stack(expected_inputs))
    assert np.array_equal(targets.numpy(), np.stack(expected_targets))
    assert torch.equal(inputs != 0, targets != 0)  # padding is aligned and always at the end


def test_truncation_keeps_the_most_recent_items() -> None:
    batches = TrainBatches(_pack([np.arange(1, 11)]), max_len=3)
    ((inputs, targets),) = list(batches.iterate(4, shuffle=False))
    assert inputs.tolist() == [[7, 8, 9]] and targets.tolist() == [[8, 9, 10]]


def test_shuffle_covers_every_sequence_once_and_is_reproducible() -> None:
    rng = np.random.default_rng(0)
    batches = TrainBatches(_pack(_random_sequences(rng, 100, 9)), 8)
    def epoch(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return torch.cat([x for x, _ in batches.iterate(7, shuffle=True, generator=generator, device="cpu")])
    plain = torch.cat([x for x, _ in batches.iterate(7, shuffle=False)])
    first, again, other = epoch(1), epoch(1), epoch(2)
    assert torch.equal(first, again) and not torch.equal(first, other) and not torch.equal(first, plain)
    def as_set(rows: torch.Tensor) -> list[tuple[int, ...]]:
        return sorted(tuple(r) for r in rows.tolist())
    assert as_set(first) == as_set(plain)


def test_eval_batches_take_the_last_history_items() -> None:
    rng = np.random.default_rng(3)
    histories = _random_sequences(rng, 23, 15)
    targets = torch.from_numpy(rng.integers(1, 1000, 23))
    evalset = EvalSet(_pack(histories), targets, torch.arange(100, 123))
    seen = []
    for inputs, batch_targets, rows in eval_batches(evalset, max_len=6, batch_size=10):
        for b, row in enumerate(rows.tolist()):
            expected = _padded(histories[row][-6:], 6)
            assert inputs[b].tolist() == expected.tolist()
            assert batch_targets[b] == targets[row]
        seen.extend(rows.tolist())
    assert seen == list(range(23))


def test_bad_sizes() -> None:
    packed = _pack([np.array([1, 2])])
    with pytest.raises(ValueError, match="max_len"):
        TrainBatches(packed, 0)
    with pytest.raises(ValueError, match="batch_size"):
        next(TrainBatches(packed, 2).iterate(0, shuffle=False))
