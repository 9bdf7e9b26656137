"""Checkpoints under real Ray (CPU): a trial whose worker is killed continues from its last checkpoint
and ends exactly as if never killed; a sweep whose driver was killed continues its running trials from
their checkpoints on --resume; a worker that dies every time ends as a `failed` row after its retries;
the kept model of a sweep, exported, reproduces the trial's test NDCG@10.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import torch
from checkpoint_faults import KILL_AFTER_EPOCH
from sweep_faults import wait_for_ray_gone
from test_sweep import sweep_args, write_spec

from study import cli, sweep
from study.checkpoint_store import CheckpointStore
from study.config import TrainConfig
from study.data import load_dataset, make_split
from study.db import ResultsDB, load_trials
from study.evaluate import evaluate_model
from study.export import load_model
from study.record import TrialRecord
from study.sweep_spec import load_spec
from study.train import run_trial

pytestmark = pytest.mark.slow  # every test here starts Ray

REPO_ROOT = Path(__file__).resolve().parents[1]



def training_spec(name: str, *, lrs: str = "[0.005]", extra: str = "") -> str:
    """A sweep of real (small, CPU) trials of 6 epochs with dropout, one per learning rate."""
    return f"""
        name = "{name}"
        datasets = ["synthetic:users=80,items=60,mean_len=8,seed=5"]
        memory_budget = "8GiB"
        [trial]
        loss = "ce-neg"
        negative_scope = "position"
        hidden = 16
        blocks = 1
        dropout = 0.3
        epochs = 6
        patience = 6
        device = "cpu"
        [axes]
        num_negatives = [8]
        batch_size = [16]
        max_len = [10]
        lr = {lrs}
        {extra}
    """


def uninterrupted(config: TrainConfig) -> TrialRecord:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as the trial functions under Ray
    try:
        return run_trial(config)
    finally:
        torch.set_num_threads(previous)


def assert_same_training(record: TrialRecord, reference: TrialRecord) -> None:
    assert [e.epoch for e in record.epochs] == [e.epoch for e in reference.epochs]
    assert [e.train_loss for e in record.epochs] == [e.train_loss for e in reference.epochs]
    assert [e.val_metrics for e in record.epochs] == [e.val_metrics for e in reference.epochs]
    assert record.val_metrics == reference.val_metrics and record.test_metrics == reference.test_metrics


def test_a_killed_worker_resumes_after_its_checkpoint_and_ends_as_if_never_killed(
        local_ray: str, tmp_path: Path) -> None:  # noqa: F811
    spec = write_spec(tmp_path / "killed.toml", training_spec("killed", extra="""
        [checkpoint]
        every_minutes = 0
        [run]
        trial_function = "tests.checkpoint_faults:killed_after_checkpoint"
    """))
    db = tmp_path / "results.sqlite"
    storage = tmp_path / "storage"  # given as a URI, as for object storage on a cluster
    assert sweep.run(sweep_args(spec, db, storage=f"file://{storage}")) == 0
    row = load_trials(db).iloc[0]
    assert row["status"] == "ok", row["error"]
    marker = storage / "killed" / f"killed-{row['trial_id']}"
    assert marker.is_file(), "the worker was never killed"
    marker.unlink()
    assert row["resumed_from_epoch"] == KILL_AFTER_EPOCH == 3 and row["epochs_run"] == 6
    with ResultsDB(db) as reader:
        record = reader.load_record(row["trial_id"])
    config = load_spec(spec).grid()[0]
    assert_same_training(record, uninterrupted(config))
    # finished: its checkpoints are gone with Tune's run folder, its best model stays
    usage = CheckpointStore(f"file://{storage}", "killed").disk_usage()
    assert usage.checkpoint_bytes == 0 and usage.models == 1
    assert sorted(p.name for p in (storage / "killed").iterdir()) == ["models"]
    assert row["model_path"] == f"file://{storage}/killed/models/{row['trial_id']}/model.pt"

    # the best trial under a budget, exported, scores its test set as the trial did
    out = tmp_path / "exported" / "model.pt"
    assert cli.main(["export", "--db", str(db), "--budget", "8GiB", "--out", str(out)]) == 0
    model, loaded_config, item_ids = load_model(out)
    assert loaded_config == config
    data = load_dataset(config.dataset)
    assert item_ids == list(data.item_labels)
    split = make_split(data, config.split, seed=config.seed)
    test = evaluate_model(model, split.test, num_items=split.num_items, max_len=config.max_len,
                          batch_size=config.eval_batch_size, device="cpu", exclude_seen=config.exclude_seen)
    assert test["ndcg@10"] == row["test_ndcg_10"] and test == record.test_metrics


def test_a_worker_that_dies_every_time_ends_as_a_failed_row_after_its_retries(
        local_ray: str, tmp_path: Path) -> None:  # noqa: F811
    spec = write_spec(tmp_path / "dies.toml", """
        name = "dies"
        datasets = ["synthetic:users=30,items=40,seed=1"]
        [axes]
        num_negatives = [16]
        batch_size = [8]
        max_len = [20]
        seed = [6]  # tests.sweep_faults.FAULTS: the worker kills itself
        [checkpoint]
        max_retries = 1
        [run]
        trial_function = "tests.sweep_faults:faulty_trial"
    """)
    db = tmp_path / "results.sqlite"
    assert sweep.run(sweep_args(spec, db)) == 0
    row = load_trials(db).iloc[0]
    assert row["status"] == "failed"
    assert row["error"].startswith("2 attempt(s), the last: the trial's worker process died")


def test_a_killed_driver_resumes_its_running_trials_from_their_checkpoints(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "slow.toml", training_spec("slowck", lrs="[0.005, 0.01]", extra="""
        [resources]
        max_concurrent = 2
        [checkpoint]
        every_minutes = 0
        [run]
        trial_function = "tests.checkpoint_faults:slow_trial"
    """))
    configs = load_spec(spec).grid()
    assert len(configs) == 2
    trial_ids = [sweep.trial_id("slowck", c) for c in configs]
    db = tmp_path / "results.sqlite"
    store = CheckpointStore(tmp_path / "checkpoints", "slowck")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "study.sweep", str(spec), "--db", str(db)]
    first_ray = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    driver = subprocess.Popen(command, cwd=REPO_ROOT, env={**env, "RAY_TMPDIR": first_ray},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert driver.poll() is None, driver.communicate()
            assert time.monotonic() < deadline, "no trial saved two epochs in time"
            found = [store.latest_checkpoint(t) for t in trial_ids]
            if all(f is not None and f.epoch >= 2 for f in found):
                break
            time.sleep(0.3)
        # The driver's Ray and the trials' workers would outlive it for a while, and the workers go on
        # saving checkpoints; the driver dies with its whole local cluster, as when its node is lost.
        family = psutil.Process(driver.pid).children(recursive=True)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        for process in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)
        psutil.wait_procs(family, timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    wait_for_ray_gone(first_ray, timeout=60, kill_after=3)
    assert not db.exists() or not load_trials(db, sweep="slowck").shape[0]
    saved = {t: store.latest_checkpoint(t) for t in trial_ids}
    assert all(found is not None and 2 <= found.epoch < 6 for found in saved.values())

    second_ray = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    resumed = subprocess.run([*command, "--resume"], cwd=REPO_ROOT, env={**env, "RAY_TMPDIR": second_ray},
                             capture_output=True, text=True, timeout=240)
    wait_for_ray_gone(second_ray, timeout=60, kill_after=30)
    assert resumed.returncode == 0, resumed.stderr
    trials = load_trials(db, sweep="slowck").set_index("trial_id")
    assert set(trials["status"]) == {"ok"} and len(trials) == 2
    for trial, config in zip(trial_ids, configs):
        found = saved[trial]
        assert found is not None
        assert trials.loc[trial, "resumed_from_epoch"] == found.epoch and trials.loc[trial, "epochs_run"] == 6
        with ResultsDB(db) as reader:
            assert_same_training(reader.load_record(trial), uninterrupted(config))
    assert "storage " in resumed.stdout and "checkpoints of 0 unfinished trial(s) 0 B" in resumed.stdout
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "slowck").iterdir()) == ["models"]
