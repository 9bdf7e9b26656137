"""Synthetic logs: spec parsing, shape, power-law popularity, learnable sequential structure, scale."""

from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from study.data import (
    DataError,
    SyntheticSpec,
    generate_synthetic,
    load_dataset,
    make_split,
    parse_synthetic_spec,
)
from study.data.synthetic import canonical_synthetic_name

# A Zipf log that touches a few hundred of its 5,000 items: most of the catalogue never occurs.
SPARSE = "synthetic:users=60,items=5000,mean_len=8,alpha=1.0,seed=7"
ITEMS = 5000


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


def test_catalogue_setting_parses_and_a_bad_value_is_one_line() -> None:
    assert parse_synthetic_spec("synthetic:items=50,catalogue=full").catalogue == "full"
    assert parse_synthetic_spec("synthetic:catalogue = occurring ") == SyntheticSpec()
    for bad in ("all", "1", ""):
        with pytest.raises(DataError, match=rf"catalogue must be one of occurring, full, got '{bad}'$"):
            parse_synthetic_spec(f"synthetic:catalogue={bad}")


def test_old_specs_keep_their_canonical_name_and_hash() -> None:
    """The canonical text (and so the SHA-256 recorded as dataset_sha256) of a spec written before
    `catalogue` existed is what it was; only catalogue=full spells the new setting."""
    old = "synthetic:users=20000,items=1000000,mean_len=50,alpha=1.0,seed=0"
    recorded = "synthetic:users=20000,items=1000000,mean_len=50.0,alpha=1.0,follow=0.8,window=3,seed=0"
    for text in (old, old + ",catalogue=occurring"):
        name = canonical_synthetic_name(parse_synthetic_spec(text))
        assert name == recorded
        assert hashlib.sha256(name.encode()).hexdigest() == \
            "58e7796ac066d09fed1826a5370e9931e3ff605d904487e16f50e235783ad7db"
    assert canonical_synthetic_name(SyntheticSpec()) == \
        "synthetic:users=1000,items=10000,mean_len=50.0,alpha=1.0,follow=0.8,window=3,seed=0"
    full = parse_synthetic_spec(old + ",catalogue=full")
    assert canonical_synthetic_name(full) == recorded + ",catalogue=full"


@pytest.mark.parametrize("text", ["synthetic", "synthetic:users=7,items=90,mean_len=2.5,alpha=0,follow=0.3",
                                  "synthetic:window=5,seed=11,catalogue=full", SPARSE + ",catalogue=full"])
def test_canonical_name_round_trips_through_parse(text: str) -> None:
    spec = parse_synthetic_spec(text)
    name = canonical_synthetic_name(spec)
    assert parse_synthetic_spec(name) == spec
    assert canonical_synthetic_name(parse_synthetic_spec(name)) == name


def test_full_catalogue_keeps_every_generated_item_under_its_generator_id() -> None:
    raw = generate_synthetic(parse_synthetic_spec(SPARSE))
    occurring = load_dataset(SPARSE)
    full = load_dataset(SPARSE + ",catalogue=full")
    assert occurring.num_items == raw["item_id"].nunique() < ITEMS // 5
    assert full.num_items == ITEMS
    np.testing.assert_array_equal(full.item_labels, np.arange(ITEMS))
    # the generator's rows are already in (user, time) order with distinct times: row for row
    np.testing.assert_array_equal(full.frame["item"].to_numpy(), raw["item_id"].to_numpy() + 1)
    np.testing.assert_array_equal(full.frame["user"].to_numpy(), raw["user_id"].to_numpy())
    np.testing.assert_array_equal(occurring.item_labels[occurring.frame["item"].to_numpy() - 1],
                                  raw["item_id"].to_numpy())
    assert (full.num_users, len(full)) == (occurring.num_users, len(occurring))
    assert full.source == canonical_synthetic_name(parse_synthetic_spec(SPARSE)) + ",catalogue=full"
    assert full.sha256 != occurring.sha256


@pytest.mark.parametrize("k", [2, 3])
def test_kcore_on_a_full_catalogue_removes_interactions_not_items(k: int) -> None:
    spec = "synthetic:users=300,items=3000,mean_len=8,alpha=1.2,seed=2"
    filtered = load_dataset(spec + ",catalogue=full", kcore=k)
    dense = load_dataset(spec, kcore=k)
    assert filtered.num_items == 3000 > dense.num_items
    assert filtered.frame.groupby("item").size().min() >= k
    assert filtered.frame.groupby("user").size().min() >= k
    assert len(filtered) == len(dense) < len(load_dataset(spec))
    # the same surviving interactions, each item under its generator id + 1
    np.testing.assert_array_equal(filtered.frame["item"].to_numpy(),
                                  dense.item_labels[dense.frame["item"].to_numpy() - 1] + 1)


def test_split_sampler_and_popularity_see_the_whole_catalogue() -> None:
    import kernels
    from study.training.evaluate import evaluate_popularity

    data = load_dataset(SPARSE + ",catalogue=full")
    split = make_split(data, "loo")
    assert split.num_items == ITEMS and tuple(split.item_counts.shape) == (ITEMS + 1,)
    never = split.item_counts[1:] == 0
    assert int(never.sum()) >= ITEMS - data.frame["item"].nunique()
    # uniform negatives over 1..ITEMS (indices 0..ITEMS-1): mostly items nobody interacted with
    sampler = kernels.NegativeSampler(split.num_items, 256, scope="position",
                                      generator=torch.Generator().manual_seed(0))
    drawn = sampler.sample(8, 16).flatten()
    assert int(drawn.max()) >= ITEMS - 50
    assert abs(float(never[drawn].float().mean()) - float(never.float().mean())) < 0.02
    # the popularity baseline ranks all ITEMS items, never-seen ones with count 0: coverage is a share of
    # the whole catalogue (the distinct items in some user's top 10, seen items excluded)
    metrics = evaluate_popularity(split.item_counts, split.test, max_len=8, batch_size=16)
    covered = metrics["coverage@10"] * ITEMS
    assert covered == pytest.approx(round(covered), abs=1e-6)
    assert 10 <= round(covered) <= 10 * len(split.test.targets)


def test_a_trial_and_its_memory_plan_use_the_full_catalogue(tmp_path: Path) -> None:
    """Training (model, evaluation, record) and the sweep's planning (what `sweep --dry-run` predicts)
    read the catalogue size from the loaded data: ITEMS with catalogue=full, far fewer without."""
    from study import sweep
    from study.config import TrainConfig
    from study.memory.model import DatasetSize, predict_trial_memory
    from study.sweep.spec import load_spec
    from study.training.trainer import run_trial

    spec_path = tmp_path / "full.toml"
    spec_path.write_text(f"""
name = "full"
datasets = ["{SPARSE},catalogue=full", "{SPARSE}"]
[trial]
loss = "ce-neg"
negative_scope = "position"
hidden = 16
[axes]
num_negatives = [64]
batch_size = [16]
max_len = [8]
""")
    planned = sweep.plan_trials(load_spec(spec_path), None)
    full, occurring = sorted(planned, key=lambda trial: trial.config.dataset, reverse=True)
    assert full.config.dataset.endswith("catalogue=full")
    assert full.num_items == ITEMS > occurring.num_items
    assert full.predicted_peak_bytes > occurring.predicted_peak_bytes

    config = TrainConfig(dataset=full.config.dataset, loss="ce-neg", num_negatives=64,
                         negative_scope="position", max_len=8, hidden=16, blocks=1, batch_size=16,
                         eval_batch_size=16, epochs=1, max_steps_per_epoch=2, device="cpu", progress=False)
    record = run_trial(config)
    assert record.status == "ok" and record.num_items == ITEMS
    assert record.predicted_peak_bytes == predict_trial_memory(
        config, DatasetSize(ITEMS, record.num_users), device="cpu").total_bytes
    assert record.popularity_test_metrics is not None and record.test_metrics is not None


def test_a_bad_catalogue_value_is_one_line_and_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    from study.cli import main

    code = main(["train", "--dataset", "synthetic:users=30,items=40,catalogue=all", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == "cce-study train: error: synthetic: catalogue must be one of occurring, full, got 'all'"
