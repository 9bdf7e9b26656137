from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from study.evaluate import _History
from study.metrics import RankingAccumulator, metrics_from_ranks, target_ranks, top_k_items


def brute_force_order(row: list[float]) -> list[int]:
    """Column indices best first: score descending (NaN lowest), then index ascending."""
    key = [(-(s if not math.isnan(s) else -math.inf), j) for j, s in enumerate(row)]
    return [j for _, j in sorted(key)]


def test_ranks_and_top_k_on_a_hand_computed_row_with_ties():
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.5]])
    # order: item 1 (0.5), item 3 (0.5, tie broken by lower index), item 2, item 0
    assert target_ranks(scores, torch.tensor([1])).tolist() == [0]
    assert target_ranks(scores, torch.tensor([3])).tolist() == [1]
    assert target_ranks(scores, torch.tensor([2])).tolist() == [2]
    assert target_ranks(scores, torch.tensor([0])).tolist() == [3]
    assert top_k_items(scores, 1).tolist() == [[1]]
    assert top_k_items(scores, 2).tolist() == [[1, 3]]
    assert top_k_items(scores, 4).tolist() == [[1, 3, 2, 0]]


def test_ranks_and_top_k_match_a_sorting_reference_on_random_scores_with_many_ties():
    generator = torch.Generator().manual_seed(7)
    # rounding to a few levels makes ties frequent, including at the top-k boundary
    scores = torch.randint(0, 6, (40, 30), generator=generator).to(torch.float64) / 5.0 - 0.37
    scores[3, 4] = float("nan")
    scores[5, :] = 1.25  # a row where everything ties
    targets = torch.randint(0, 30, (40,), generator=generator)
    ranks = target_ranks(scores, targets)
    for row in range(40):
        order = brute_force_order(scores[row].tolist())
        assert ranks[row].item() == order.index(targets[row].item())
        for k in (1, 5, 13, 30):
            assert top_k_items(scores, k)[row].tolist() == order[:k]


def test_metrics_from_hand_computed_ranks():
    out = metrics_from_ranks(torch.tensor([0, 2, 15]), ks=(1, 10))
    assert out["ndcg@1"] == pytest.approx(1 / 3)
    assert out["hit@1"] == pytest.approx(1 / 3)
    assert out["mrr@1"] == pytest.approx(1 / 3)
    assert out["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4)) / 3)  # rank 15 is beyond k: 0
    assert out["hit@10"] == pytest.approx(2 / 3)
    assert out["mrr@10"] == pytest.approx((1 + 1 / 3) / 3)


def test_accumulator_coverage_counts_distinct_items_and_skips_excluded():
    accumulator = RankingAccumulator(num_items=6, ks=(1, 2))
    scores = torch.tensor([[0.9, 0.1, 0.2, 0.3, 0.4, 0.5],
                           [0.9, 0.8, 0.2, 0.3, 0.4, 0.5]])
    accumulator.add(scores, torch.tensor([0, 5]))
    # a second chunk where all but one item are excluded: only that item counts as recommended
    inf = float("-inf")
    accumulator.add(torch.tensor([[inf, inf, 0.7, inf, inf, inf]]), torch.tensor([2]))
    out = accumulator.result()
    assert accumulator.count == 3
    assert out["coverage@1"] == pytest.approx(2 / 6)  # items 0 and 2
    assert out["coverage@2"] == pytest.approx(4 / 6)  # items 0, 5, 1, 2
    assert out["hit@1"] == pytest.approx(2 / 3)  # targets 0 (rank 0), 5 (rank 2), 2 (rank 0)
    assert out["ndcg@2"] == pytest.approx(2 / 3)


def test_accumulator_without_rows_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        RankingAccumulator(num_items=3).result()


def test_bad_targets_name_the_argument():
    with pytest.raises(ValueError, match="targets"):
        target_ranks(torch.rand(2, 4), torch.tensor([0, 4]))


def test_history_exclusion_masks_seen_items_but_keeps_the_target():
    # users: 0 saw items 1, 3; 1 saw 2, 2, 5 (repeat); 2 saw 4. Item ids are 1-based, columns 0-based.
    sequences = SimpleNamespace(offsets=torch.tensor([0, 2, 5, 6]), items=torch.tensor([1, 3, 2, 2, 5, 4]))
    history = _History(sequences)
    scores = torch.rand(3, 5, generator=torch.Generator().manual_seed(1)) + 0.1
    original = scores.clone()
    rows = torch.tensor([2, 0, 1])  # chunk rows in a different order from the evaluation set
    targets = torch.tensor([0, 0, 4])  # user 0's target (item 1) is in its history: stays rankable
    history.exclude(scores, rows, targets)
    inf = float("-inf")
    expected = original.clone()
    expected[0, 3] = inf  # user 2: item 4
    expected[1, 2] = inf  # user 0: item 3 (item 1 is the target)
    expected[2, 1] = inf  # user 1: items 2, 5 -> item 5 is the target
    assert torch.equal(scores, expected)
