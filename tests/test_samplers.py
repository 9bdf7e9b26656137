"""Negative samplers: shapes, index range, popularity frequencies and log q."""

from __future__ import annotations

import math

import pytest
import torch

from kernels import NegativeSampler, linear_cross_entropy


def popularity_counts(num_items, seed=0):
    generator = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 50, (num_items,), generator=generator).to(torch.int64)
    counts[::7] = 0  # some items never seen in training
    counts[-1] = 0  # including the last one (the clamp of the inverse CDF must not land there)
    return counts


@pytest.mark.parametrize("distribution", ["uniform", "popularity"])
@pytest.mark.parametrize(("scope", "expected"),
                         [("batch", (6,)), ("sequence", (3, 6)), ("position", (3, 4, 6))])
def test_shapes_dtype_and_range(distribution, scope, expected):
    counts = popularity_counts(20) if distribution == "popularity" else None
    sampler = NegativeSampler(20, 6, distribution=distribution, scope=scope, item_counts=counts,
                              generator=torch.Generator().manual_seed(1))
    negatives = sampler.sample(3, 4)
    assert negatives.shape == expected == sampler.shape(3, 4)
    assert negatives.dtype == torch.int64
    assert int(negatives.min()) >= 0 and int(negatives.max()) < 20


def chi_square(observed, expected):
    mask = expected > 0
    return float(((observed[mask] - expected[mask]) ** 2 / expected[mask]).sum()), int(mask.sum()) - 1


@pytest.mark.parametrize("distribution", ["uniform", "popularity"])
def test_frequencies_match_the_distribution(distribution):
    num_items = 50
    counts = popularity_counts(num_items, seed=2) if distribution == "popularity" else None
    sampler = NegativeSampler(num_items, 40, distribution=distribution, scope="position", item_counts=counts,
                              generator=torch.Generator().manual_seed(3))
    draws = sampler.sample(100, 50).reshape(-1)  # 200,000 draws
    observed = torch.bincount(draws, minlength=num_items).double()
    probabilities = torch.full((num_items,), 1 / num_items, dtype=torch.float64)
    if counts is not None:
        probabilities = counts.double() / counts.sum()
        assert torch.all(observed[counts == 0] == 0)
    statistic, degrees = chi_square(observed, probabilities * draws.numel())
    # mean = degrees, sd = sqrt(2 * degrees): 6 sd is a false alarm far below 1e-6
    assert statistic < degrees + 6 * math.sqrt(2 * degrees)


def test_popularity_is_not_uniform():
    counts = torch.zeros(10, dtype=torch.int64)
    counts[3] = 90
    counts[8] = 10
    sampler = NegativeSampler(10, 5, distribution="popularity", scope="position", item_counts=counts,
                              generator=torch.Generator().manual_seed(4))
    draws = sampler.sample(100, 100).reshape(-1)
    assert set(draws.unique().tolist()) == {3, 8}
    assert abs(float((draws == 3).double().mean()) - 0.9) < 0.01


def test_log_q_is_log_of_draw_probability():
    counts = popularity_counts(30, seed=5)
    popularity = NegativeSampler(30, 4, distribution="popularity", item_counts=counts)
    expected = (counts.double() / counts.sum()).log()
    assert popularity.log_q.dtype == torch.float32 and popularity.log_q.shape == (30,)
    torch.testing.assert_close(popularity.log_q.double(), expected, rtol=1e-6, atol=0, equal_nan=False)
    assert NegativeSampler(30, 4).log_q == pytest.approx(-math.log(30))


def test_uniform_log_q_matches_loss_uniform_correction():
    generator = torch.Generator().manual_seed(6)
    sampler = NegativeSampler(25, 6, scope="sequence", generator=generator)
    hidden = torch.randn(3, 4, 8, generator=generator)
    items = torch.randn(25, 8, generator=generator)
    targets = torch.randint(0, 25, (3, 4), generator=generator)
    negatives = sampler.sample(3, 4)
    log_q_table = torch.full((25,), sampler.log_q)
    with_float = linear_cross_entropy(hidden, items, targets, negatives, log_q=log_q_table, impl="torch")
    with_name = linear_cross_entropy(hidden, items, targets, negatives, log_q="uniform", impl="torch")
    torch.testing.assert_close(with_float, with_name)


def test_same_generator_seed_repeats_draws():
    def draw():
        return NegativeSampler(100, 7, distribution="popularity", scope="sequence",
                               item_counts=popularity_counts(100), generator=torch.Generator().manual_seed(9)
                               ).sample(5, 2)
    assert torch.equal(draw(), draw())


def test_large_draw_spans_several_chunks(monkeypatch):
    import kernels.samplers as samplers

    monkeypatch.setattr(samplers, "POPULARITY_CHUNK", 1000)
    counts = popularity_counts(40, seed=7)
    draws = NegativeSampler(40, 10, distribution="popularity", scope="position", item_counts=counts,
                            generator=torch.Generator().manual_seed(8)).sample(35, 10)  # 3,500 draws
    observed = torch.bincount(draws.reshape(-1), minlength=40).double()
    assert torch.all(observed[counts == 0] == 0)
    assert torch.all(observed[counts > 20] > 0)  # the last chunk is filled, not left empty


BAD = {
    "num_items": dict(num_items=0),
    "num_negatives": dict(num_negatives=11),
    "distribution": dict(distribution="zipf"),
    "scope": dict(scope="drawn"),
    "item_counts": dict(distribution="popularity"),
}


@pytest.mark.parametrize("argument", sorted(BAD))
def test_bad_constructor_argument_is_named(argument):
    arguments = dict(num_items=10, num_negatives=3)
    arguments.update(BAD[argument])
    with pytest.raises(ValueError, match=f"^{argument}:"):
        NegativeSampler(arguments.pop("num_items"), arguments.pop("num_negatives"), **arguments)


@pytest.mark.parametrize("counts", [torch.zeros(10), torch.full((10,), -1.0), torch.ones(9),
                                    torch.full((10,), float("nan"))])
def test_bad_item_counts_are_named(counts):
    with pytest.raises(ValueError, match="^item_counts:"):
        NegativeSampler(10, 3, distribution="popularity", item_counts=counts)


def test_item_counts_with_uniform_is_an_error():
    with pytest.raises(ValueError, match="^item_counts:"):
        NegativeSampler(10, 3, item_counts=torch.ones(10))


def test_bad_sample_arguments_are_named():
    sampler = NegativeSampler(10, 3)
    with pytest.raises(ValueError, match="^batch_size:"):
        sampler.sample(0, 4)
    with pytest.raises(ValueError, match="^seq_len:"):
        sampler.sample(2, 2.5)
