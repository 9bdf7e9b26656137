"""The results database: round trip of TrialRecords, idempotent upserts, WAL, crash safety."""

from __future__ import annotations

import json
import math
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from sweep_faults import hold_write_lock

from study.config import METRIC_KS, TrainConfig
from study.database.results_db import (
    CONFIG_COLUMNS,
    EPOCH_COLUMNS,
    METRIC_NAMES,
    TRIAL_COLUMNS,
    ResultsDB,
    load_epochs,
    load_trials,
    metric_column,
)
from study.record import EpochRecord, MemoryReport, TrialRecord

REPO_ROOT = Path(__file__).resolve().parents[1]


def random_metrics(rng: random.Random) -> dict[str, float]:
    return {f"{name}@{k}": rng.uniform(0.01, 0.99) for name in METRIC_NAMES for k in METRIC_KS}


def random_record(rng: random.Random, *, status: str = "ok", num_epochs: int = 3) -> TrialRecord:
    config = TrainConfig(
        loss=rng.choice(["ce", "ce-neg"]),
        num_negatives=rng.randint(1, 4096),
        batch_size=rng.randint(1, 1024),
        max_len=rng.randint(2, 512),
        negative_scope=rng.choice(["batch", "sequence", "position", "drawn"]),
        logq_correction=rng.random() < 0.5,
        lr=rng.uniform(1e-4, 1e-2),
        seed=rng.randint(0, 10_000),
        memory_budget=rng.choice([None, "8GiB", "0.5"]),
        time_limit_s=rng.choice([None, rng.uniform(10, 1000)]),
    )
    epochs = [
        EpochRecord(
            epoch=i + 1,
            train_loss=rng.uniform(0.5, 10.0),
            val_metrics=random_metrics(rng),
            epoch_seconds=rng.uniform(0.1, 100.0),
            eval_seconds=rng.uniform(0.1, 10.0),
            sequences_per_second=rng.uniform(10.0, 1e5),
            steps=rng.randint(1, 1000),
        )
        for i in range(num_epochs)
    ]
    return TrialRecord(
        status=status,  # type: ignore[arg-type]
        config=config.to_dict(),
        error=None if status == "ok" else f"error text {rng.random()}",
        val_metrics=random_metrics(rng),
        test_metrics=random_metrics(rng),
        popularity_val_metrics=random_metrics(rng),
        popularity_test_metrics=random_metrics(rng),
        best_epoch=rng.randint(1, max(num_epochs, 1)),
        epochs=epochs,
        memory=MemoryReport(
            torch_max_allocated=rng.randint(1, 2**36),
            torch_max_reserved=rng.randint(1, 2**36),
            nvml_process_peak=rng.choice([None, rng.randint(1, 2**37)]),
            cpu_peak_rss=rng.randint(1, 2**34),
            gpu_name="NVIDIA H100 80GB HBM3",
            gpu_total=rng.randint(2**36, 2**37),
            budget_bytes=rng.randint(2**30, 2**36),
        ),
        predicted_peak_bytes=rng.randint(1, 2**36),
        mean_epoch_seconds=rng.uniform(1, 100),
        steady_epoch_seconds=rng.uniform(1, 100),
        sequences_per_second=rng.uniform(1, 1e5),
        total_seconds=rng.uniform(1, 1e4),
        num_users=rng.randint(1, 10**6),
        num_items=rng.randint(1, 10**7),
        num_interactions=rng.randint(1, 10**9),
        device="cuda:0",
        loss_impl=rng.choice(["triton", "torch"]),
        versions={"torch": "2.11.0", "triton": "3.6.0"},
        git_commit=f"{rng.getrandbits(160):040x}",
        started_at="2026-11-26T06:00:00+00:00",
        finished_at="2026-11-26T06:10:00+00:00",
    )


def test_metric_column_names_and_errors() -> None:
    assert metric_column("ndcg@10") == "val_ndcg_10"
    assert metric_column("hit@20", "test") == "test_hit_20"
    assert metric_column("coverage@100", "pop_test") == "pop_test_coverage_100"
    with pytest.raises(ValueError, match="metric"):
        metric_column("ndcg10")
    with pytest.raises(ValueError, match="metric"):
        metric_column("recall@10")
    with pytest.raises(ValueError, match="split"):
        metric_column("ndcg@10", "train")


def test_schema_has_agreed_columns() -> None:
    agreed = {
        "trial_id", "sweep", "status", "error", "config_json", "loss_impl_used", "pop_val_ndcg_10",
        "pop_test_ndcg_10", "peak_bytes", "torch_max_allocated", "torch_max_reserved", "nvml_process_peak",
        "cpu_peak_rss", "gpu_name", "gpu_total", "budget_bytes", "predicted_peak_bytes", "best_epoch",
        "epochs_run", "mean_epoch_seconds", "steady_epoch_seconds", "sequences_per_second", "total_seconds",
        "num_users", "num_items", "num_interactions", "device", "versions_json", "git_commit", "started_at",
        "finished_at",
        "dataset", "split", "loss", "num_negatives", "negative_scope", "sampling", "loss_impl", "batch_size",
        "max_len", "hidden", "blocks", "heads", "seed",
    }
    agreed |= {f"{s}_{n}_{k}" for s in ("val", "test") for n in METRIC_NAMES for k in METRIC_KS}
    assert agreed <= set(TRIAL_COLUMNS)
    assert {"trial_id", "epoch", "train_loss", "epoch_seconds", "eval_seconds", "sequences_per_second",
            "steps", "val_ndcg_10", "val_coverage_100"} <= set(EPOCH_COLUMNS)


def test_docs_name_every_column() -> None:
    """docs/database.md is the schema users query by: every column of `trials` and `epochs` is named
    there (metric columns through their documented patterns), and every TrainConfig field in its list."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "database.md").read_text()
    patterns = {f"{prefix}{stage}_{name}_{k}" for prefix in ("", "pop_") for stage in ("val", "test")
                for name in METRIC_NAMES for k in METRIC_KS}
    undocumented = [column for column in [*TRIAL_COLUMNS, *EPOCH_COLUMNS]
                    if f"`{column}`" not in doc and column not in patterns]
    assert not undocumented, f"docs/database.md does not name: {undocumented}"
    assert all(f"`{field}`" in doc for field in CONFIG_COLUMNS)


def test_round_trip_of_a_record(tmp_path: Path) -> None:
    rng = random.Random(1234)
    record = random_record(rng)
    path = tmp_path / "nested" / "results.sqlite"
    with ResultsDB(path) as db:
        db.record_trial("sweep-a-0001", "sweep-a", record)
        assert db.load_record("sweep-a-0001") == record
        assert db.trial_ids() == {"sweep-a-0001"}

    trials = load_trials(path)
    assert len(trials) == 1
    row = trials.iloc[0]
    assert row["status"] == "ok" and row["sweep"] == "sweep-a"
    for name, value in record.config.items():
        if name == "device":
            continue  # the column holds the device that ran, checked below
        if value is None:
            assert row[name] is None or (isinstance(row[name], float) and math.isnan(row[name]))
        elif isinstance(value, float):
            assert row[name] == pytest.approx(value, rel=1e-15)
        else:
            assert row[name] == value, name
    assert row["device"] == "cuda:0"
    assert bool(row["logq_correction"]) == record.config["logq_correction"]
    assert str(trials["logq_correction"].dtype) == "boolean"
    for metric, value in record.val_metrics.items():
        assert row[metric_column(metric, "val")] == pytest.approx(value, rel=1e-15)
    for metric, value in record.test_metrics.items():
        assert row[metric_column(metric, "test")] == pytest.approx(value, rel=1e-15)
    assert row["pop_test_ndcg_10"] == pytest.approx(record.popularity_test_metrics["ndcg@10"], rel=1e-15)
    assert row["peak_bytes"] == record.memory.peak_bytes
    assert row["budget_bytes"] == record.memory.budget_bytes
    assert row["predicted_peak_bytes"] == record.predicted_peak_bytes
    assert row["loss_impl_used"] == record.loss_impl
    assert row["epochs_run"] == len(record.epochs)
    # the recorded value, not one recomputed from the epochs
    assert row["steady_epoch_seconds"] == pytest.approx(record.steady_epoch_seconds, rel=1e-15)
    assert row["mean_epoch_seconds"] == pytest.approx(record.mean_epoch_seconds, rel=1e-15)
    assert row["num_items"] == record.num_items

    epochs = load_epochs(path)
    assert list(epochs["epoch"]) == [1, 2, 3]
    for (_, epoch_row), epoch in zip(epochs.iterrows(), record.epochs):
        assert epoch_row["train_loss"] == pytest.approx(epoch.train_loss, rel=1e-15)
        assert epoch_row["steps"] == epoch.steps
        assert epoch_row["val_mrr_20"] == pytest.approx(epoch.val_metrics["mrr@20"], rel=1e-15)


def test_upsert_is_idempotent_and_rewrites_epochs(tmp_path: Path) -> None:
    rng = random.Random(99)
    path = tmp_path / "results.sqlite"
    first = random_record(rng, num_epochs=4)
    second = random_record(rng, status="over_budget", num_epochs=2)
    with ResultsDB(path) as db:
        db.record_trial("t1", "s", first)
        db.record_trial("t1", "s", first)
        db.record_trial("t1", "s", second)
        db.record_trial("t2", "other", first)
        assert db.trial_ids("s") == {"t1"}
        assert db.trial_ids("other") == {"t2"}
        assert db.status_counts("s") == {"over_budget": 1}
    trials = load_trials(path, sweep="s")
    assert list(trials["trial_id"]) == ["t1"]
    assert trials.iloc[0]["status"] == "over_budget"
    assert trials.iloc[0]["error"] == second.error
    epochs = load_epochs(path, sweep="s")
    assert list(epochs["epoch"]) == [1, 2]
    assert epochs.iloc[1]["train_loss"] == pytest.approx(second.epochs[1].train_loss)
    assert len(load_epochs(path)) == 2 + 4


def test_wal_mode_and_reader_during_open_write(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    rng = random.Random(5)
    with ResultsDB(path) as db:
        db.record_trial("t1", "s", random_record(rng))
        with sqlite3.connect(path) as probe:
            assert probe.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        # a writer holding an open transaction must not block readers
        db._connection.execute("BEGIN IMMEDIATE")
        db._connection.execute("UPDATE trials SET status = 'failed'")
        assert list(load_trials(path)["status"]) == ["ok"]
        db._connection.rollback()


def test_missing_or_foreign_file_gives_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.sqlite"):
        load_trials(tmp_path / "nope.sqlite")
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite, just some text " * 100)
    with pytest.raises(ValueError, match="junk.sqlite"):
        ResultsDB(junk)
    with pytest.raises(ValueError, match="trial_id"), ResultsDB(tmp_path / "ok.sqlite") as db:
        db.record_trial("", "s", random_record(random.Random(0)))


def test_old_database_gains_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as old:
        old.execute("CREATE TABLE trials (trial_id TEXT PRIMARY KEY, sweep TEXT, status TEXT)")
        old.execute("INSERT INTO trials VALUES ('old-1', 's', 'ok')")
    record = random_record(random.Random(7))
    with ResultsDB(path) as db:
        db.record_trial("new-1", "s", record)
    trials = load_trials(path).set_index("trial_id")
    assert set(trials.index) == {"old-1", "new-1"}
    assert trials.loc["new-1", "val_ndcg_10"] == pytest.approx(record.val_metrics["ndcg@10"])
    assert trials.loc["old-1", "val_ndcg_10"] != trials.loc["old-1", "val_ndcg_10"]  # NaN


def _without_steady_column(path: Path) -> None:
    """Make a database look written before `steady_epoch_seconds` existed: no column, no JSON field."""
    with sqlite3.connect(path) as old:
        old.execute("ALTER TABLE trials DROP COLUMN steady_epoch_seconds")
        for trial_id, text in old.execute("SELECT trial_id, record_json FROM trials").fetchall():
            values = json.loads(text)
            del values["steady_epoch_seconds"]
            old.execute("UPDATE trials SET record_json = ? WHERE trial_id = ?",
                        (json.dumps(values), trial_id))
    old.close()


def old_database_with_steady_times(path: Path) -> dict[str, TrialRecord]:
    rng = random.Random(11)
    records = {
        "five-epochs": random_record(rng, num_epochs=5),
        "one-epoch": random_record(rng, num_epochs=1),
        "failed": random_record(rng, status="failed", num_epochs=2),
        "no-epoch-rows": random_record(rng, num_epochs=2),
    }
    records["failed"].mean_epoch_seconds = records["failed"].steady_epoch_seconds = None
    with ResultsDB(path) as db:
        for trial_id, record in records.items():
            db.record_trial(trial_id, "s", record)
        db._connection.execute("DELETE FROM epochs WHERE trial_id = 'no-epoch-rows'")
        db._connection.commit()
    _without_steady_column(path)
    return records


def test_old_database_without_steady_times_gets_them_from_its_epochs(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    records = old_database_with_steady_times(path)
    with sqlite3.connect(path) as probe:
        assert "steady_epoch_seconds" not in {r[1] for r in probe.execute("PRAGMA table_info(trials)")}
    probe.close()

    trials = load_trials(path).set_index("trial_id")
    assert str(trials["steady_epoch_seconds"].dtype) == "float64"
    columns = list(trials.columns)
    assert columns.index("steady_epoch_seconds") == columns.index("mean_epoch_seconds") + 1
    times = [e.epoch_seconds for e in records["five-epochs"].epochs]
    # epochs 2..5: the median of four is the mean of the middle two
    assert trials.loc["five-epochs", "steady_epoch_seconds"] == pytest.approx(sum(sorted(times[1:])[1:3]) / 2)
    assert trials.loc["one-epoch", "steady_epoch_seconds"] == pytest.approx(
        records["one-epoch"].epochs[0].epoch_seconds)
    assert math.isnan(trials.loc["failed", "steady_epoch_seconds"])  # no mean time: no steady time either
    assert math.isnan(trials.loc["no-epoch-rows", "steady_epoch_seconds"])  # nothing to compute it from
    # reading never writes: the file still lacks the column
    with sqlite3.connect(path) as probe:
        assert "steady_epoch_seconds" not in {r[1] for r in probe.execute("PRAGMA table_info(trials)")}
    probe.close()


def test_old_database_without_steady_times_opens_migrates_and_loads(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    records = old_database_with_steady_times(path)
    new = random_record(random.Random(12), num_epochs=3)
    with ResultsDB(path) as db:  # a sweep resuming on the old file adds the column
        old_record = db.load_record("five-epochs")
        assert old_record.steady_epoch_seconds is None
        assert old_record.mean_epoch_seconds == records["five-epochs"].mean_epoch_seconds
        db.record_trial("new", "s", new)
        assert db.load_record("new") == new
    with sqlite3.connect(path) as probe:
        stored = dict(probe.execute("SELECT trial_id, steady_epoch_seconds FROM trials").fetchall())
    probe.close()
    assert stored["five-epochs"] is None and stored["new"] == new.steady_epoch_seconds
    trials = load_trials(path).set_index("trial_id")
    assert trials.loc["new", "steady_epoch_seconds"] == pytest.approx(new.steady_epoch_seconds, rel=1e-15)
    times = [e.epoch_seconds for e in records["five-epochs"].epochs]
    assert trials.loc["five-epochs", "steady_epoch_seconds"] == pytest.approx(sum(sorted(times[1:])[1:3]) / 2)
    assert math.isnan(trials.loc["no-epoch-rows", "steady_epoch_seconds"])


def test_trials_table_alone_loads_with_nan_steady_times(tmp_path: Path) -> None:
    path = tmp_path / "bare.sqlite"
    with sqlite3.connect(path) as old:
        old.execute("CREATE TABLE trials (trial_id TEXT PRIMARY KEY, sweep TEXT, status TEXT, "
                    "mean_epoch_seconds REAL)")
        old.execute("INSERT INTO trials VALUES ('old-1', 's', 'ok', 2.5)")
    old.close()
    trials = load_trials(path)
    assert trials.loc[0, "mean_epoch_seconds"] == 2.5
    assert math.isnan(trials.loc[0, "steady_epoch_seconds"])


def test_rows_survive_a_sigkilled_writer(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    script = textwrap.dedent(
        f"""
        import os, random, signal, sys
        sys.path.insert(0, {str(REPO_ROOT)!r})
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_db import random_record
        from study.database.results_db import ResultsDB
        db = ResultsDB({str(path)!r})
        rng = random.Random(3)
        for i in range(5):
            db.record_trial(f"t{{i}}", "s", random_record(rng))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    completed = subprocess.run([sys.executable, "-c", script], timeout=120)
    assert completed.returncode == -signal.SIGKILL
    with ResultsDB(path) as db:
        assert db.trial_ids("s") == {f"t{i}" for i in range(5)}
    assert len(load_epochs(path)) == 5 * 3


def test_a_write_waits_for_another_process_lock_and_then_succeeds(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    rng = random.Random(21)
    with ResultsDB(path, busy_timeout_s=60) as db:
        db.record_trial("before", "s", random_record(rng))
        holder = hold_write_lock(path, 7.0)  # longer than one attempt's own wait (5 s)
        held_from = time.monotonic()
        try:
            record = random_record(rng)
            db.record_trial("during", "s", record)  # blocks until the holder lets go
            # (the holder may still be exiting after its commit, so time the wait rather than poll it)
            assert time.monotonic() - held_from >= 6.5, "the write went through while the lock was held"
            assert db.load_record("during") == record
        finally:
            holder.kill()
            holder.wait()


def test_a_write_gives_up_after_the_busy_timeout_and_writes_nothing(tmp_path: Path) -> None:
    from study.database.results_db import DatabaseBusyError

    path = tmp_path / "results.sqlite"
    ResultsDB(path).close()
    holder = hold_write_lock(path, 60.0)
    try:
        # opening needs no write (the schema is there), so it does not wait
        with (ResultsDB(path, busy_timeout_s=1.5) as db,
              pytest.raises(DatabaseBusyError, match="results.sqlite: the database stayed locked")):
            db.record_trial("t", "s", random_record(random.Random(1)))
    finally:
        holder.kill()
        holder.wait()
    with ResultsDB(path) as db:
        assert db.trial_ids() == set()


def test_a_path_that_cannot_hold_a_database_is_one_clear_error(tmp_path: Path) -> None:
    from study.database.results_db import check_database_path

    with pytest.raises(ValueError, match="is a folder"):
        ResultsDB(tmp_path)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="file.txt is not a folder"):
        ResultsDB(a_file / "results.sqlite")
    with pytest.raises(ValueError, match="cce-test.sqlite"):
        ResultsDB("/proc/cce-test.sqlite")
    with pytest.raises(ValueError, match="is a folder"):
        load_trials(tmp_path)
    assert check_database_path(tmp_path / "new" / "deeper" / "r.sqlite", writable=True).name == "r.sqlite"


def test_full_ce_stores_no_number_of_negatives_and_keeps_its_trial_id(tmp_path: Path) -> None:
    from study.sweep.spec import trial_id

    path = tmp_path / "results.sqlite"
    rng = random.Random(4)
    ce, sampled = random_record(rng), random_record(rng)
    ce.config.update(loss="ce", num_negatives=32)
    sampled.config.update(loss="ce-neg", num_negatives=32)
    ce_id = trial_id("s", TrainConfig.from_dict(ce.config))
    with ResultsDB(path) as db:
        db.record_trial(ce_id, "s", ce)
        db.record_trial("sampled", "s", sampled)
        assert db.load_record(ce_id) == ce  # the TrainConfig, default negatives and all, round-trips
    with sqlite3.connect(path) as raw:
        stored = dict(raw.execute("SELECT trial_id, num_negatives FROM trials").fetchall())
    raw.close()
    assert stored == {ce_id: None, "sampled": 32}
    assert ce_id == trial_id("s", TrainConfig.from_dict(json.loads(load_trials(path)["config_json"][0])))


def test_old_full_ce_rows_read_as_no_negatives_and_are_migrated_by_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    rng = random.Random(6)
    ce = random_record(rng)
    ce.config.update(loss="ce", num_negatives=32)
    with ResultsDB(path) as db:
        db.record_trial("ce", "s", ce)
        db.record_trial("neg", "s", random_record(rng))
        # as an older version wrote it: the config's default in the column
        db._connection.execute("UPDATE trials SET num_negatives = 32 WHERE trial_id = 'ce'")
        db._connection.commit()
    trials = load_trials(path).set_index("trial_id")
    assert math.isnan(trials.loc["ce", "num_negatives"]) and trials.loc["neg", "num_negatives"] > 0
    with sqlite3.connect(path) as raw:  # reading did not change the file
        assert raw.execute("SELECT num_negatives FROM trials WHERE trial_id = 'ce'").fetchone() == (32,)
    raw.close()
    ResultsDB(path).close()  # a sweep opening it migrates the rows
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT num_negatives FROM trials WHERE trial_id = 'ce'").fetchone() == (None,)
    raw.close()


def test_spec_versions_choose_which_rows_analysis_sees(tmp_path: Path) -> None:
    from study.database.results_db import load_spec_versions

    path = tmp_path / "results.sqlite"
    rng = random.Random(8)
    records = {name: random_record(rng) for name in ("a", "b", "c", "other")}
    with ResultsDB(path) as db:
        first = db.add_spec_version("s", "hash1", {"axes": {"k": [1, 2]}}, ["a", "b"])
        db.record_trial("a", "s", records["a"], spec_hash="hash1", spec_version=1)
        db.record_trial("b", "s", records["b"], spec_hash="hash1", spec_version=1)
        # version 2 keeps configuration a (same trial id) and adds c
        second = db.add_spec_version("s", "hash2", {"axes": {"k": [1, 3]}}, ["a", "c"])
        db.record_trial("c", "s", records["c"], spec_hash="hash2", spec_version=2)
        db.record_trial("other", "o", records["other"])  # a sweep recorded before spec versions
        assert [v.version for v in db.spec_versions("s")] == [1, 2]
    assert (first.version, second.version) == (1, 2) and second.trial_ids == {"a", "c"}
    assert sorted(load_trials(path)["trial_id"]) == ["a", "c", "other"]  # latest version of each sweep
    assert sorted(load_trials(path, sweep="s", spec_version=1)["trial_id"]) == ["a", "b"]
    assert sorted(load_trials(path, spec_version="all")["trial_id"]) == ["a", "b", "c", "other"]
    assert sorted(set(load_epochs(path, sweep="s")["trial_id"])) == ["a", "c"]
    assert sorted(set(load_epochs(path, sweep="s", spec_version=1)["trial_id"])) == ["a", "b"]
    row = load_trials(path, sweep="s").set_index("trial_id").loc["c"]
    assert (row["spec_hash"], row["spec_version"]) == ("hash2", 2)
    with pytest.raises(ValueError, match="spec_version: 7 is not recorded"):
        load_trials(path, spec_version=7)
    assert [v.content for v in load_spec_versions(path, sweep="s")][1] == {"axes": {"k": [1, 3]}}


def test_a_database_from_before_spec_versions_loads_and_gains_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    record = random_record(random.Random(9))
    with ResultsDB(path) as db:
        db.record_trial("old", "s", record)
    with sqlite3.connect(path) as old:
        old.execute("ALTER TABLE trials DROP COLUMN spec_hash")
        old.execute("ALTER TABLE trials DROP COLUMN spec_version")
        old.execute("DROP TABLE spec_versions")
    old.close()
    trials = load_trials(path)
    assert list(trials["trial_id"]) == ["old"] and "spec_hash" not in trials.columns
    with ResultsDB(path) as db:
        assert db.spec_versions("s") == []
        db.record_trial("new", "s", record, spec_hash="h", spec_version=1)
    trials = load_trials(path).set_index("trial_id")
    assert trials.loc["new", "spec_hash"] == "h" and pd.isna(trials.loc["old", "spec_hash"])


@pytest.mark.parametrize("written_before", ["no column", "null"])
def test_rows_from_before_a_field_existed_read_as_its_old_behaviour(tmp_path: Path,
                                                                    written_before: str) -> None:
    """`eval_max_scores` came after the study's databases: their rows (no column in a file opened read-only,
    or NULL once a writer added it) read as 2^24, how they ran, and so group as seeds of one configuration
    with new rows at that default, and apart from rows at another chunk size."""
    from study.analysis import pareto
    from study.config import FIELDS_ADDED_LATER

    path = tmp_path / "old.sqlite"
    base = TrainConfig(dataset="ml-1m", loss="ce-neg", num_negatives=256, batch_size=64, max_len=50)
    records = {}
    for trial_id, config in (("old", base), ("new", base.replace(seed=1)),
                             ("larger-chunks", base.replace(seed=2, eval_max_scores=1 << 26))):
        record = random_record(random.Random(5))  # the same record but for the configuration
        record.config = config.to_dict()
        records[trial_id] = record
    with ResultsDB(path) as db:
        db.record_trial("old", "s", records["old"])
    with sqlite3.connect(path) as old:
        if written_before == "no column":
            old.execute("ALTER TABLE trials DROP COLUMN eval_max_scores")
        else:
            old.execute("UPDATE trials SET eval_max_scores = NULL")
    old.close()
    if written_before == "no column":
        assert load_trials(path).loc[0, "eval_max_scores"] == FIELDS_ADDED_LATER["eval_max_scores"]
    with ResultsDB(path) as db:  # a later sweep writes into the same file
        db.record_trial("new", "s", records["new"])
        db.record_trial("larger-chunks", "s", records["larger-chunks"])
    trials = load_trials(path).set_index("trial_id")
    assert trials.loc["old", "eval_max_scores"] == 1 << 24 == trials.loc["new", "eval_max_scores"]
    keys = pareto.seed_key_columns(trials.reset_index())
    assert "eval_max_scores" in keys
    same = trials[keys].astype(str)
    assert same.loc["old"].equals(same.loc["new"]) and not same.loc["old"].equals(same.loc["larger-chunks"])
