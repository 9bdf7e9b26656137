from __future__ import annotations

import math

import pytest
import torch

from models.sasrec import SASRec
from study.data import EvalSet, Sequences
from study.training.evaluate import (
    evaluate_model,
    evaluate_popularity,
    exclude_seen_items,
    prepare_evaluation,
)
from study.training.metrics import RankingAccumulator, metrics_from_ranks, target_ranks, top_k_items


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
    evalset = eval_set([[1, 3], [2, 2, 5], [4]], [1, 5, 1])  # user 0's target (item 1) is in its history
    prepared = prepare_evaluation(evalset, num_items=5, max_len=2, device="cpu")
    assert prepared.seen_offsets == [0, 2, 5, 6]
    scores = torch.rand(2, 5, generator=torch.Generator().manual_seed(1)) + 0.1
    original = scores.clone()
    # rows 1..2 of the evaluation set as one chunk
    first, last = prepared.seen_offsets[1], prepared.seen_offsets[3]
    exclude_seen_items(scores, prepared.seen_rows[first:last] - 1, prepared.seen_columns[first:last],
                       prepared.target_columns[1:3])
    inf = float("-inf")
    expected = original.clone()
    expected[0, 1] = inf  # user 1: items 2, 5 -> item 5 is the target
    expected[1, 3] = inf  # user 2: item 4
    assert torch.equal(scores, expected)
    scores = torch.rand(1, 5, generator=torch.Generator().manual_seed(2)) + 0.1
    expected = scores.clone()
    exclude_seen_items(scores, prepared.seen_rows[:2], prepared.seen_columns[:2], prepared.target_columns[:1])
    expected[0, 2] = inf  # user 0: item 3 (item 1 is the target)
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


def brute_force_metrics(scores: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...]) -> dict[str, float]:
    """Ranks and coverage by sorting every row in Python (score descending, NaN lowest, index ascending)."""
    ranks, recommended = [], {k: set() for k in ks}
    for row, target in zip(scores.tolist(), targets.tolist()):
        order = brute_force_order(row)
        ranks.append(order.index(target))
        for k in ks:
            recommended[k].update(j for j in order[:k] if row[j] > -math.inf)
    out = metrics_from_ranks(torch.tensor(ranks), ks)
    out.update({f"coverage@{k}": len(recommended[k]) / scores.shape[1] for k in ks})
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_accumulator_matches_sorting_on_tie_heavy_chunks_with_special_values(dtype: torch.dtype):
    generator = torch.Generator().manual_seed(11)
    num_items, ks = 37, (1, 5, 10, 50)
    accumulator = RankingAccumulator(num_items, ks)
    all_scores, all_targets = [], []
    for rows in (9, 1, 14):  # chunks of different sizes
        scores = (torch.randint(-3, 4, (rows, num_items), generator=generator) / 4.0).to(dtype)
        scores[0, :5] = torch.tensor([float("nan"), float("inf"), -0.0, 0.0, float("-inf")]).to(dtype)
        scores[-1] = float("-inf")  # a row with every item excluded
        targets = torch.randint(0, num_items, (rows,), generator=generator)
        all_scores.append(scores.clone())
        all_targets.append(targets)
        accumulator.add(scores, targets, consume=True)
    expected = brute_force_metrics(torch.cat(all_scores).double(), torch.cat(all_targets), ks)
    assert accumulator.result() == expected


def test_popularity_on_real_data_matches_sorting(shared_data):
    """ml-100k, whose popularity counts tie often: every rank and top-k list exact, seen items excluded."""
    from study.data import load_dataset, make_split

    split = make_split(load_dataset(str(shared_data / "ml-100k")), "loo", seed=0)
    counts = split.item_counts[1:].to(torch.float32)
    evalset = split.validation
    scores = counts.expand(len(evalset), -1).clone()
    targets = evalset.targets - 1
    for row in range(len(evalset)):
        history = evalset.history.items[evalset.history.offsets[row]:evalset.history.offsets[row + 1]] - 1
        scores[row, history] = float("-inf")
        scores[row, targets[row]] = counts[targets[row]]
    ks = (1, 5, 10, 20, 100)
    expected = brute_force_metrics(scores, targets, ks)
    out = evaluate_popularity(split.item_counts, evalset, max_len=50, batch_size=100, ks=ks,
                              max_scores=30_000)
    assert out == expected
