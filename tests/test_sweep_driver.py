"""The sweep driver around its trials: retrying failed trials, specifications edited between runs, and a
results database that another process keeps locked (real local Ray, in process; trial functions from
tests/sweep_faults.py keep their state next to the test's dataset file)."""

from __future__ import annotations

import argparse
import contextlib
import json
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sweep_faults import hold_write_lock

from study import db_spool, sweep
from study.db import ResultsDB, load_spec_versions, load_trials

pytestmark = pytest.mark.slow  # every test here starts Ray


def sweep_args(spec: Path, db: Path, *options: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sweep.configure(parser)
    return parser.parse_args([str(spec), "--db", str(db), *options])


def dataset_file(folder: Path) -> Path:
    """A small interaction log (60 items) that the trial functions also use as their state's anchor."""
    rng = np.random.default_rng(0)
    path = folder / "log.csv"
    pd.DataFrame({"user_id": np.repeat(np.arange(30), 6), "item_id": rng.integers(1, 61, 180),
                  "timestamp": np.arange(180)}).to_csv(path, index=False)
    return path


def write_spec(path: Path, dataset: Path, function: str, *, seeds: str = "[0, 1, 2]",
               negatives: str = "[8]", epochs: int = 1, comment: str = "") -> Path:
    path.write_text(textwrap.dedent(f"""
        # {comment}
        name = "drv"
        datasets = [{str(dataset)!r}]
        [trial]
        loss = "ce-neg"
        epochs = {epochs}
        [axes]
        num_negatives = {negatives}
        batch_size = [8]
        max_len = [10]
        seed = {seeds}
        [resources]
        max_concurrent = 1
        [run]
        trial_function = "tests.sweep_faults:{function}"
    """))
    return path


def runs(dataset: Path) -> list[int]:
    path = Path(f"{dataset}.runs")
    return [int(s) for s in path.read_text().split()] if path.exists() else []


def test_retry_runs_failed_trials_again_and_only_those(local_ray: str, tmp_path: Path) -> None:
    dataset = dataset_file(tmp_path)
    spec = write_spec(tmp_path / "s.toml", dataset, "flaky_trial", seeds="[0, 1]")
    db = tmp_path / "r.sqlite"
    assert sweep.run(sweep_args(spec, db)) == 0
    assert set(load_trials(db)["status"]) == {"failed"} and sorted(runs(dataset)) == [0, 1]
    assert sweep.run(sweep_args(spec, db, "--resume")) == 0  # failed trials are recorded: nothing runs
    assert sorted(runs(dataset)) == [0, 1]
    assert sweep.run(sweep_args(spec, db, "--resume", "--retry", "oom,over_budget")) == 0  # none of those
    assert sorted(runs(dataset)) == [0, 1]
    assert sweep.run(sweep_args(spec, db, "--retry", "failed")) == 0  # --retry implies --resume
    trials = load_trials(db)
    assert set(trials["status"]) == {"ok"} and len(trials) == 2 and trials["trial_id"].is_unique
    assert sorted(runs(dataset)) == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="--retry: 'ok' is not one of oom, over_budget"):
        sweep.run(sweep_args(spec, db, "--retry", "ok"))


def test_an_edited_spec_is_refused_with_what_changed_or_run_as_a_new_version(
        local_ray: str, tmp_path: Path) -> None:
    dataset = dataset_file(tmp_path)
    spec = write_spec(tmp_path / "s.toml", dataset, "flaky_trial", seeds="[0]", negatives="[4, 8]")
    db = tmp_path / "r.sqlite"
    assert sweep.run(sweep_args(spec, db)) == 0
    first = set(load_trials(db)["trial_id"])
    # comments and layout are not content: resuming is fine
    write_spec(spec, dataset, "flaky_trial", seeds="[0]", negatives="[4, 8]", comment="reworded")
    assert sweep.run(sweep_args(spec, db, "--resume")) == 0
    # a changed axis and a changed setting: refused, saying what changed, nothing run or recorded
    write_spec(spec, dataset, "flaky_trial", seeds="[0]", negatives="[4, 16]", epochs=2)
    with pytest.raises(ValueError) as refused:
        sweep.run(sweep_args(spec, db, "--resume"))
    message = str(refused.value)
    assert "\n" not in message and "spec version 1" in message and "--new-spec-version" in message
    assert "axes.num_negatives: [4, 8] -> [4, 16]" in message and "trial.epochs: 1 -> 2" in message
    assert set(load_trials(db, spec_version="all")["trial_id"]) == first
    # only the axis changes: the unchanged configuration (K=4) is kept, K=16 runs as version 2
    write_spec(spec, dataset, "flaky_trial", seeds="[0]", negatives="[4, 16]")
    runs_before = len(runs(dataset))
    assert sweep.run(sweep_args(spec, db, "--resume", "--new-spec-version")) == 0
    assert len(runs(dataset)) == runs_before + 1
    latest = load_trials(db).set_index("trial_id")
    assert sorted(latest["num_negatives"]) == [4, 16]
    assert list(latest["spec_version"].sort_values()) == [1, 2]  # K=4 recorded by version 1, kept
    assert sorted(load_trials(db, spec_version=1)["num_negatives"]) == [4, 8]
    versions = load_spec_versions(db, sweep="drv")
    assert [v.version for v in versions] == [1, 2]
    assert versions[1].content["axes"]["num_negatives"] == [4, 16]
    # the new version is now the one a resume compares against
    assert sweep.run(sweep_args(spec, db, "--resume")) == 0


def test_a_database_from_before_spec_versions_with_other_trials_is_refused(local_ray: str,
                                                                           tmp_path: Path) -> None:
    dataset = dataset_file(tmp_path)
    spec = write_spec(tmp_path / "s.toml", dataset, "flaky_trial", seeds="[0]")
    db = tmp_path / "r.sqlite"
    assert sweep.run(sweep_args(spec, db)) == 0
    with ResultsDB(db) as writer:  # as if recorded before spec versions were kept, by another spec
        writer._connection.execute("DELETE FROM spec_versions")
        writer._connection.execute("UPDATE trials SET trial_id = 'drv-from-an-older-spec'")
        writer._connection.commit()
    with pytest.raises(ValueError, match="1 recorded trial.*not in the plan.*drv-from-an-older-spec"):
        sweep.run(sweep_args(spec, db, "--resume"))
    assert sweep.run(sweep_args(spec, db, "--resume", "--new-spec-version")) == 0
    assert len(load_trials(db)) == 1 and len(load_trials(db, spec_version="all")) == 2


@contextlib.contextmanager
def lock_on_request(dataset: Path, db: Path, *, seconds: float, seed: int = 0) -> Iterator[list[Any]]:
    """While in the block, lock `db` for `seconds` from another process when the trial of `seed` asks
    (sweep_faults.locking_trial); yields the list the holder process is put in."""
    Path(f"{dataset}.lock.json").write_text(json.dumps({"seed": seed}))
    request, holder_file = Path(f"{dataset}.lock-request"), Path(f"{dataset}.holder")
    holders: list[Any] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set() and not request.exists():
            time.sleep(0.05)
        if request.exists():
            holders.append(hold_write_lock(db, seconds))
            holder_file.write_text(str(holders[0].pid))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield holders
    finally:
        stop.set()
        watcher.join(timeout=10)
        for holder in holders:
            holder.kill()
            holder.wait()


def test_a_lock_held_for_a_while_is_waited_out_without_losing_a_trial(
        local_ray: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dataset = dataset_file(tmp_path)
    spec = write_spec(tmp_path / "s.toml", dataset, "locking_trial")
    db = tmp_path / "r.sqlite"
    # longer than one attempt's own 5 s wait, shorter than the busy timeout
    with lock_on_request(dataset, db, seconds=8) as holders:
        assert sweep.run(sweep_args(spec, db, "--db-busy-timeout", "60")) == 0
        assert holders and holders[0].poll() is not None  # the holder had finished: the sweep waited
    trials = load_trials(db)
    assert sorted(trials["seed"]) == [0, 1, 2] and set(trials["status"]) == {"ok"}
    assert sorted(runs(dataset)) == [0, 1, 2]
    assert "is locked by another process" in capsys.readouterr().err
    assert not db_spool.spool_path(db).exists()


def test_a_lock_held_past_the_timeout_stops_the_sweep_and_resume_loses_nothing(
        local_ray: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dataset = dataset_file(tmp_path)
    spec = write_spec(tmp_path / "s.toml", dataset, "locking_trial")
    db = tmp_path / "r.sqlite"
    spool = db_spool.spool_path(db)
    with lock_on_request(dataset, db, seconds=60) as holders:
        assert sweep.run(sweep_args(spec, db, "--db-busy-timeout", "3")) == 1
        assert holders and holders[0].poll() is None  # still held when the sweep gave up
        err = capsys.readouterr().err
        spooled, unreadable = db_spool.read(spool)
        assert spooled and unreadable == 0, err
        assert "stopped:" in err and "stayed locked" in err and str(spool) in err
        assert all(trial.trial_id in err for trial in spooled)  # the unwritten trials are listed
        assert 0 in {trial.record.config["seed"] for trial in spooled}
        assert set(load_trials(db)["trial_id"]).isdisjoint(t.trial_id for t in spooled)
        assert len(load_trials(db)) < 3  # it stopped: not every trial ran
    runs_before_resume = runs(dataset)
    assert sweep.run(sweep_args(spec, db, "--resume")) == 0
    trials = load_trials(db)
    assert sorted(trials["seed"]) == [0, 1, 2] and set(trials["status"]) == {"ok"}
    spooled_seeds = {trial.record.config["seed"] for trial in spooled}
    ran_after = runs(dataset)[len(runs_before_resume):]
    assert spooled_seeds.isdisjoint(ran_after), "a trial kept in the spool ran again"
    assert sorted(set(runs(dataset))) == [0, 1, 2] and not spool.exists()
