"""Synthetic logs: spec parsing, shape, power-law popularity, learnable sequential structure, scale."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pytest

from study.data import DataError, SyntheticSpec, generate_synthetic, load_dataset, parse_synthetic_spec


def test_spec_parsing_defaults_and_errors() -> None:
    assert parse_synthetic_spec("synthetic") == SyntheticSpec()
    assert parse_synthetic_spec("synthetic:") == SyntheticSpec()
    spec = parse_synthetic_spec("synthetic:users=30, items=1e6,mean_len=7.5,alpha=1.2,seed=4")
    assert spec == SyntheticSpec(users=30, items=1_000_000, mean_len=7.5, alpha=1.2, seed=4)
    with pytest.raises(DataError, match="bad setting 'colour=red'"):
        parse_synthetic_spec("synthetic:colour=red")
    with pytest.raises(DataError, match=r"users='2.5' is not a valid number"):
        parse_synthetic_spec("synthetic:users=2.5")
    with pytest.raises(DataError, match="mean_len must be >= 2"):
        parse_synthetic_spec("synthetic:mean_len=1")


def test_log_shape_and_chronology() -> None:
    spec = SyntheticSpec(users=500, items=5000, mean_len=15, seed=1)
    raw = generate_synthetic(spec)
    lengths = raw.groupby("user_id").size()
    assert len(lengths) == spec.users and lengths.min() >= 2
    assert abs(lengths.mean() - spec.mean_len) < 0.15 * spec.mean_len
    assert raw["item_id"].between(0, spec.items - 1).all()
    assert (raw.groupby("user_id")["timestamp"].diff().dropna() > 0).all()
    assert raw.equals(generate_synthetic(spec)), "same seed, same log"
    assert not raw.equals(generate_synthetic(SyntheticSpec(users=500, items=5000, mean_len=15, seed=2)))


def test_loadable_by_name() -> None:
    data = load_dataset("synthetic:users=50,items=400,mean_len=6,seed=5", kcore=2)
    assert data.num_users > 0 and data.frame["item"].min() == 1
    assert data.frame.groupby("item").size().min() >= 2


def test_popularity_is_heavy_tailed() -> None:
    raw = generate_synthetic(SyntheticSpec(users=2000, items=2000, mean_len=20, alpha=1.0, seed=0))
    counts = np.sort(raw["item_id"].value_counts().to_numpy())[::-1]
    top_share = counts[: 2000 // 100].sum() / counts.sum()
    assert top_share > 0.10, f"the top 1% of items get only {top_share:.1%} of interactions"
    flat = generate_synthetic(SyntheticSpec(users=2000, items=2000, mean_len=20, alpha=0.0, seed=0))
    flat_counts = np.sort(flat["item_id"].value_counts().to_numpy())[::-1]
    assert flat_counts[:20].sum() / flat_counts.sum() < 0.03


def test_next_item_is_predictable_far_beyond_popularity() -> None:
    raw = generate_synthetic(SyntheticSpec(users=2000, items=2000, mean_len=20, seed=0))
    user, item = raw["user_id"].to_numpy(), raw["item_id"].to_numpy()
    same_user = user[1:] == user[:-1]
    previous, following, owner = item[:-1][same_user], item[1:][same_user], user[1:][same_user]
    fit = owner < 1000  # learn transitions from half the users, predict the other half
    pairs = pd.DataFrame({"previous": previous[fit], "following": following[fit]})
    counts = pairs.value_counts().reset_index(name="n").sort_values("n", ascending=False, kind="stable")
    most_likely_next = counts.drop_duplicates("previous").set_index("previous")["following"]
    predicted = pd.Series(previous[~fit]).map(most_likely_next).to_numpy()
    transition_hit = np.mean(predicted == following[~fit])
    most_popular = np.bincount(item[user < 1000]).argmax()
    popularity_hit = np.mean(following[~fit] == most_popular)
    assert transition_hit > 0.15
    assert transition_hit > 5 * popularity_hit, (transition_hit, popularity_hit)


def test_scales_to_ten_million_items_in_linear_memory() -> None:
    items = 10_000_000
    tracemalloc.start()
    try:
        raw = generate_synthetic(SyntheticSpec(users=200, items=items, mean_len=10, seed=0))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert raw["item_id"].max() < items
    assert raw["item_id"].max() > items // 10  # ids are spread over the whole catalogue
    assert peak < 40 * items, f"peak {peak / 2**20:.0f} MiB for {items} items"
