from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from models.sasrec import SASRec
from study.data import EvalSet, Sequences
from study.evaluate import _History, evaluate_model, evaluate_popularity
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


def eval_set(histories: list[list[int]], targets: list[int]) -> EvalSet:
    lengths = torch.tensor([len(h) for h in histories])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    items = torch.tensor([item for history in histories for item in history], dtype=torch.long)
    return EvalSet(Sequences(offsets, items), torch.tensor(targets), torch.arange(len(targets)))


POPULARITY_CASE = eval_set([[1], [3, 2], [3], [1, 3], [2]], [3, 1, 3, 4, 2])
ITEM_COUNTS = torch.tensor([0, 5, 3, 8, 1])  # index 0 is padding


@pytest.mark.parametrize("max_scores", [4, 1 << 20])  # one user per chunk, or all at once
def test_popularity_baseline_on_hand_computed_ranks(max_scores: int):
    # seen items excluded, targets kept: ranks 0, 0, 0 (target 3 in history), 1, 2 (target 2 in history)
    out = evaluate_popularity(ITEM_COUNTS, POPULARITY_CASE, max_len=3, batch_size=2, ks=(1, 2),
                              max_scores=max_scores)
    assert out["hit@1"] == pytest.approx(3 / 5)
    assert out["hit@2"] == pytest.approx(4 / 5)
    assert out["mrr@2"] == pytest.approx((3 + 1 / 2) / 5)
    assert out["ndcg@2"] == pytest.approx((3 + 1 / math.log2(3)) / 5)
    assert out["coverage@1"] == pytest.approx(3 / 4)  # top-1 lists: items 3, 1, 3, 2, 3
    # without exclusion: ranks 0, 1, 0, 3, 2
    kept = evaluate_popularity(ITEM_COUNTS, POPULARITY_CASE, max_len=3, batch_size=2, ks=(1, 2),
                               exclude_seen=False, max_scores=max_scores)
    assert kept["hit@1"] == pytest.approx(2 / 5)
    assert kept["mrr@2"] == pytest.approx((2 + 1 / 2) / 5)
    assert kept["coverage@1"] == pytest.approx(1 / 4)


def test_model_evaluation_matches_a_float64_brute_force_ranking():
    torch.manual_seed(4)
    num_items, max_len = 40, 6
    model = SASRec(num_items, max_len=max_len, hidden=8, blocks=1, heads=1, dropout=0.0).eval()
    generator = torch.Generator().manual_seed(8)
    histories = [torch.randint(1, num_items + 1, (int(n),), generator=generator).tolist()
                 for n in torch.randint(1, 10, (23,), generator=generator)]
    targets = torch.randint(1, num_items + 1, (23,), generator=generator).tolist()
    targets[0] = histories[0][-1]  # a target the user already saw stays rankable
    evalset = eval_set(histories, targets)

    expected_ranks, recommended = [], set()
    with torch.no_grad():
        for history, target in zip(histories, targets):
            window = history[-max_len:]
            inputs = torch.tensor([window + [0] * (max_len - len(window))])
            hidden = model.last_hidden(inputs).double()[0]
            scores = (model.item_embedding.weight[1:].double() @ hidden).tolist()
            for item in set(history) - {target}:
                scores[item - 1] = -math.inf
            order = brute_force_order(scores)
            expected_ranks.append(order.index(target - 1))
            recommended.update(order[:5])
    expected = metrics_from_ranks(torch.tensor(expected_ranks), ks=(1, 5, 10))
    out = evaluate_model(model, evalset, num_items=num_items, max_len=max_len, batch_size=5, device="cpu",
                         ks=(1, 5, 10), max_scores=3 * num_items)
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, abs=1e-12), key
    assert out["coverage@5"] == pytest.approx(len(recommended) / num_items)
    assert not model.training
