"""The sweep driver with real Ray on CPU: rows for every trial and fault, resume after SIGKILL, clusters.

In-process tests share one local Ray instance (module fixture); the SIGKILL/resume test runs the
command in subprocesses and resumes against a `ray start` cluster through --address. Every Ray instance
gets its own short temp dir, so the test can check that none of its processes outlive it.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from sweep_faults import DYING_WORDS, FAULTS, ray_processes, stop_ray, wait_for_ray_gone

from study import cli, sweep
from study.config import TrainConfig
from study.database.results_db import ResultsDB, load_epochs, load_trials
from study.memory.model import MemoryPrediction
from study.record import MemoryReport, TrialRecord
from study.sweep.spec import load_spec, parse_spec

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
RAY = str(Path(sys.executable).with_name("ray"))


def write_spec(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def sweep_args(spec: Path, db: Path, **options: object) -> argparse.Namespace:
    """The parsed command line `cce-study sweep SPEC --db DB`, with `options` set on it."""
    parser = argparse.ArgumentParser()
    sweep.configure(parser)
    args = parser.parse_args([str(spec), "--db", str(db)])
    for name, value in options.items():
        assert hasattr(args, name), name
        setattr(args, name, value)
    return args


@pytest.mark.slow  # starts Ray
def test_grid_sweep_of_real_trials_writes_one_row_each(local_ray: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(tmp_path / "grid.toml", """
        name = "grid4"
        datasets = ["synthetic:users=40,items=60,mean_len=8,seed=3"]
        memory_budget = "2GiB"
        [trial]
        loss = "ce-neg"
        hidden = 16
        epochs = 1
        max_steps_per_epoch = 2
        device = "cpu"
        [axes]
        num_negatives = [4, 8]
        batch_size = [8, 16]
        max_len = [10]
    """)
    db = tmp_path / "results.sqlite"
    assert sweep.run(sweep_args(spec, db)) == 0
    trials = load_trials(db, sweep="grid4").set_index("trial_id")
    expected = {c.num_negatives: c for c in load_spec(spec).grid()}
    assert len(trials) == 4 and set(trials["status"]) == {"ok"}, trials[["status", "error"]]
    assert sorted(zip(trials["num_negatives"], trials["batch_size"])) == [(4, 8), (4, 16), (8, 8), (8, 16)]
    assert set(trials.index) == {sweep.trial_id("grid4", c) for c in load_spec(spec).grid()}
    assert expected  # the spec expands as the rows say
    assert trials["val_ndcg_10"].between(0, 1).all() and trials["test_hit_10"].between(0, 1).all()
    assert (trials["budget_bytes"] == 2 * 2**30).all()
    assert (trials["peak_bytes"] > 0).all() and (trials["loss_impl_used"] == "torch").all()
    assert trials["predicted_peak_bytes"].notna().all()
    epochs = load_epochs(db, sweep="grid4")
    assert len(epochs) == 4 and epochs["train_loss"].map(math.isfinite).all()
    out, err = capsys.readouterr()
    assert "sweep grid4: 4 trial(s) recorded" in out and "ok 4" in out
    assert "4/4 done" in err
    assert "4 trial(s) to run" in err and "recorded" not in err.split("to run", 1)[1].split("\n", 1)[0]
    # the figures command it prints runs as printed
    printed = next(line for line in out.splitlines() if "figures:" in line).split("figures:", 1)[1]
    argv = shlex.split(printed)
    assert argv[0] == "cce-study"
    assert cli.main(argv[1:]) == 0
    assert (db.parent / "figures" / "pareto_synthetic-users-40-items-60-mean_len-8-seed-3_loo.png").is_file()


@pytest.mark.slow  # starts Ray
def test_faults_become_rows_and_the_sweep_goes_on(local_ray: str, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "faults.toml", """
        name = "faults"
        datasets = ["synthetic:users=30,items=40,seed=1"]
        memory_budget = "8GiB"
        [axes]
        num_negatives = [16]
        batch_size = [8]
        max_len = [20]
        seed = [1, 3, 4, 6, 7]  # raise, out of memory beyond the budget, NaN loss, worker killed, crashed
        [[extra_trials]]
        num_negatives = 16
        batch_size = 8
        max_len = 20
        seed = 0
        memory_budget = "100MiB"  # far below any prediction: recorded without running
        [resources]
        max_concurrent = 2
        [run]
        trial_function = "tests.sweep_faults:faulty_trial"
    """)
    db = tmp_path / "results.sqlite"
    assert sweep.run(sweep_args(spec, db)) == 0
    trials = load_trials(db, sweep="faults")
    by_fault = {FAULTS[seed]: row for seed, row in zip(trials["seed"], trials.itertuples())
                if row.memory_budget == "8GiB"}
    assert len(trials) == 6
    assert by_fault["raise"].status == "failed" and "injected failure for seed 1" in by_fault["raise"].error
    assert "Traceback" in by_fault["raise"].error
    assert by_fault["budget_oom"].status == "over_budget" and by_fault["budget_oom"].budget_bytes == 8 * 2**30
    assert by_fault["nan_loss"].status == "failed" and "non-finite" in by_fault["nan_loss"].error
    # a dead worker: what is known (pid, how it died, the end of its log), not "unknown error"
    for fault, cause in (("worker_dies", "SIGKILL"), ("worker_crashes", "SIGSEGV")):
        error = by_fault[fault].error
        first_line = error.splitlines()[0]
        assert by_fault[fault].status == "failed" and "worker process died (pid " in first_line, error
        assert cause in first_line, error
        seed = next(s for s, f in FAULTS.items() if f == fault)
        assert f"{DYING_WORDS} {seed}" in error and "unknown error" not in error
        assert by_fault[fault].budget_bytes == 8 * 2**30
    skipped = trials[trials["memory_budget"] == "100MiB"].iloc[0]
    assert skipped["status"] == "predicted_over_budget"
    assert skipped["predicted_peak_bytes"] > skipped["budget_bytes"] == 100 * 2**20
    nan_epochs = load_epochs(db, sweep="faults")
    assert nan_epochs[nan_epochs["trial_id"] == by_fault["nan_loss"].trial_id]["train_loss"].isna().all()

    # the same command again refuses to mix sweeps; with --resume there is nothing left to run
    with pytest.raises(sweep.SweepError, match="--resume"):
        sweep.run(sweep_args(spec, db))
    assert sweep.run(sweep_args(spec, db, resume=True)) == 0
    assert len(load_trials(db, sweep="faults")) == 6


@pytest.mark.slow  # starts Ray
def test_a_trial_that_asks_for_no_gpu_sees_none(local_ray: str) -> None:
    # Ray leaves CUDA_VISIBLE_DEVICES unset for a worker that requested 0 GPUs, so on a GPU node a
    # `resources.gpus = 0` trial with device "auto" would train on GPU 0 behind the scheduler's back
    # (every such trial at once, on the same card). The sweep's workers must see no GPU instead.
    import ray

    @ray.remote(num_gpus=0, num_cpus=1)
    def visible_devices() -> str | None:
        return os.environ.get("CUDA_VISIBLE_DEVICES")

    assert ray.get(visible_devices.remote(), timeout=60) == ""


def test_each_trial_is_predicted_once_on_the_driver_and_its_worker_uses_that(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An Optuna sample in its worker: the catalogue and the prediction come from the driver's plan, which
    predicted each candidate once; the trial function is handed that prediction."""
    from study.memory import model as memory_model
    from study.sweep import trial as sweep_trial

    predicted: list[TrainConfig] = []
    predict = memory_model.predict_trial_memory
    monkeypatch.setattr(memory_model, "predict_trial_memory",
                        lambda config, *args, **kw: predicted.append(config) or predict(config, *args, **kw))
    dataset = "synthetic:users=30,items=40,seed=1"
    spec = parse_spec({"name": "once", "datasets": [dataset], "memory_budget": "1GiB",
                       "trial": {"epochs": 1, "loss": "ce-neg", "negative_scope": "batch"},
                       "axes": {"num_negatives": [4, 41], "batch_size": [4], "max_len": [5],
                                "device": ["cpu", "auto"]},
                       "search": {"kind": "optuna", "num_samples": 3}})
    plan = sweep.plan_trials(spec, None)
    assert len(predicted) == len(plan) == 4
    handed: list[object] = []

    def trial_function(config: TrainConfig, *, on_epoch: object = None,
                       prediction: object = None) -> TrialRecord:
        handed.append(prediction)
        return TrialRecord(status="ok", config=config.to_dict())

    monkeypatch.setattr(sweep_trial, "resolve_trial_function", lambda reference: trial_function)
    settings = sweep.TrialSettings("once", "any:function", card_bytes=None,
                                   base_settings=spec.base_settings(dataset),
                                   planned={t.trial_id: t for t in plan})
    planned_by_id = {t.trial_id: t for t in plan}
    records = {}
    for negatives, device in ((4, "cpu"), (41, "cpu"), (4, "auto")):
        axes = {"num_negatives": negatives, "batch_size": 4, "max_len": 5, "device": device}
        trial, values = sweep.trial_point({"axes": axes}, settings)
        records[trial] = sweep.execute_trial(values, settings)
    fits, too_many, over = (planned_by_id[trial] for trial in records)
    assert records[fits.trial_id].status == "ok" and handed == [fits.prediction]
    assert records[fits.trial_id].predicted_peak_bytes == fits.predicted_peak_bytes
    assert records[too_many.trial_id].status == "failed"  # 41 negatives of 40 items, as the plan says
    assert records[too_many.trial_id].error == too_many.invalid_reason
    # predicted for CUDA with its context, over the 1 GiB budget: recorded without running
    assert over.over_budget and records[over.trial_id].status == "predicted_over_budget"
    assert records[over.trial_id].predicted_peak_bytes == over.predicted_peak_bytes
    assert len(predicted) == 4  # the worker predicted nothing


def test_every_fault_becomes_a_record_with_its_status() -> None:
    settings = sweep.TrialSettings("f", "tests.sweep_faults:faulty_trial", card_bytes=None)
    epochs_seen: list[float] = []
    records = {}
    for seed, fault in FAULTS.items():
        if fault in ("worker_dies", "worker_crashes"):
            continue  # it would kill this process; tested under Ray above
        config = TrainConfig(dataset="synthetic:users=30,items=40", seed=seed, memory_budget="8GiB")
        records[fault] = sweep.execute_trial(config.to_dict(), settings,
                                             on_epoch=lambda e: epochs_seen.append(e.train_loss))
    assert {fault: r.status for fault, r in records.items()} == {
        "ok": "ok", "raise": "failed", "device_oom": "oom", "budget_oom": "over_budget",
        "nan_loss": "failed", "wrong_type": "failed"}
    assert "not a TrialRecord" in (records["wrong_type"].error or "")
    assert all(r.memory.budget_bytes == 8 * 2**30 for r in records.values())
    assert all(r.config["seed"] == seed for r, seed in zip(records.values(), FAULTS))
    assert any(math.isnan(loss) for loss in epochs_seen) and 2.5 in epochs_seen
    bad = sweep.execute_trial({"batch_size": -1}, settings)
    assert bad.status == "failed" and "batch_size" in (bad.error or "")
    # the final report always carries finite objectives, whatever the status
    for record in records.values():
        result = sweep.final_result("t", record)
        objectives = (sweep.QUALITY_KEY, sweep.MEMORY_KEY, sweep.CONSTRAINT_KEY)
        assert all(math.isfinite(result[key]) for key in objectives)
        assert (result[sweep.CONSTRAINT_KEY] > 0) == (record.status != "ok")


def test_dry_run_lists_trials_and_predictions_without_running(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(tmp_path / "plan.toml", """
        name = "plan"
        datasets = ["synthetic:users=30,items=40,seed=1"]
        memory_budget = "100MiB"
        [trial]
        loss = "ce-neg"
        [axes]
        num_negatives = [16, 32, 1000]  # 1000: more than the catalogue
        batch_size = [8]
        max_len = [20]
    """)
    db = tmp_path / "results.sqlite"
    assert sweep.run(sweep_args(spec, db, dry_run=True)) == 0
    out = capsys.readouterr().out
    assert "sweep plan: 3 trial(s)" in out and out.count("predicted_over_budget") == 3  # 2 rows + total
    assert out.count("failed (num_negatives > items)") == 2
    assert not db.exists()


@pytest.mark.slow  # starts Ray
def test_past_stop_after_no_trial_starts_and_resume_runs_them(local_ray: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(tmp_path / "deadline.toml", """
        name = "deadline"
        datasets = ["synthetic:users=30,items=40,seed=1"]
        [trial]
        hidden = 8
        epochs = 1
        max_steps_per_epoch = 1
        device = "cpu"
        [axes]
        num_negatives = [4, 8, 16]
        batch_size = [8]
        max_len = [10]
        [resources]
        max_concurrent = 1
    """)
    db = tmp_path / "results.sqlite"
    assert sweep.run(sweep_args(spec, db, stop_after=1e-6)) == 0
    assert len(load_trials(db, sweep="deadline")) == 0  # deferred trials leave no row, not "failed" ones
    out, err = capsys.readouterr()
    assert "3 trial(s) have no row yet: run again with --resume" in out
    assert "--stop-after reached" in err
    assert sweep.run(sweep_args(spec, db, resume=True)) == 0
    trials = load_trials(db, sweep="deadline")
    assert len(trials) == 3 and set(trials["status"]) == {"ok"}


def test_stop_after_waits_for_trials_that_started_before_it() -> None:
    progress = sweep.Progress("s", total=3, deadline=time.time() + 60)
    progress.running_trials |= {"a", "b"}
    assert not progress.past_deadline() and not progress.drained()
    progress.deadline = time.time() - 1
    progress.deferred_trials.add("b")
    assert progress.past_deadline() and not progress.drained()  # "a" started in time: it finishes
    progress.running_trials.discard("a")
    assert progress.drained()
    assert sweep.Progress("s", total=1).drained() is False  # no deadline: never


def test_a_run_ended_by_its_stopper_still_prunes_the_checkpoints_of_recorded_trials(tmp_path: Path) -> None:
    """When --stop-after ends a run as the last rows are written, Tune stops the trials still finishing
    without calling on_trial_complete; their checkpoints must go anyway, as each trial's row is written."""
    from study.sweep import db_spool
    from study.sweep.checkpoint_store import CheckpointStore
    from study.sweep.trial import final_result

    store = CheckpointStore(tmp_path / "storage", "stopped")
    settings = sweep.TrialSettings("stopped", "any:function", card_bytes=None)

    def checkpointed(trial: str, tune_id: str) -> Path:
        folder = Path(store.path) / "run-1" / store.trial_dirname(trial, tune_id) / "checkpoint_000002"
        folder.mkdir(parents=True)
        (folder / "state.pt").write_bytes(os.urandom(64))
        return folder

    class TuneTrial:  # what the callback reads of Tune's trial
        def __init__(self, trial: str, tune_id: str) -> None:
            self.trial_id, self.config = tune_id, {"point": {"trial_id": trial, "config": {}}}

    finished, died = TuneTrial("stopped-a", "t_00000"), TuneTrial("stopped-b", "t_00001")
    finished_folder, died_folder = checkpointed("stopped-a", "t_00000"), checkpointed("stopped-b", "t_00001")
    db = ResultsDB(tmp_path / "results.sqlite")
    callback = sweep.make_recording_callback(db_spool.SpoolingWriter(db), settings,
                                             sweep.Progress("stopped", total=2), store)
    record = TrialRecord(status="ok", config=TrainConfig().to_dict())
    callback.on_trial_result(0, [], finished, final_result("stopped-a", record))  # its row, then the stop
    callback.on_trial_error(0, [], died)  # a dead worker's row: its checkpoint stays for --retry failed
    assert finished_folder.exists() and set(db.trial_statuses("stopped").values()) == {"ok", "failed"}
    callback.prune()
    assert not finished_folder.exists() and died_folder.exists()


@pytest.mark.parametrize(("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("45m", 2700.0), ("2h", 7200.0),
                                               ("1.5m", 90.0)])
def test_durations_parse(text: str, seconds: float) -> None:
    assert sweep.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "ten", "-5", "0", "nan", "inf"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        sweep.parse_duration(text)


@pytest.mark.slow  # starts Ray
def test_optuna_search_runs_its_samples_under_the_constraint(local_ray: str, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "optuna.toml", """
        name = "opt"
        datasets = ["synthetic:users=30,items=40,seed=1"]
        memory_budget = "8GiB"
        [axes]
        num_negatives = [8, 16, 32, 64]
        batch_size = [8, 16, 32, 64]
        max_len = [20]
        seed = [0, 3]
        [search]
        kind = "optuna"
        num_samples = 2
        seed = 7
        [run]
        trial_function = "tests.sweep_faults:faulty_trial"
    """)
    db = tmp_path / "results.sqlite"
    assert sweep.run(sweep_args(spec, db)) == 0
    trials = load_trials(db, sweep="opt")
    assert 1 <= len(trials) <= 2  # a sampler may repeat a configuration: same id, one row
    expected_status = {0: "ok", 3: "over_budget"}
    assert all(expected_status[s] == status for s, status in zip(trials["seed"], trials["status"]))


def test_optuna_searcher_sets_the_budget_constraint_and_warm_starts() -> None:
    from ray import tune
    from ray.tune.search import Searcher

    spec = parse_spec({"name": "c", "datasets": ["d"], "memory_budget": "8GiB",
                       "axes": {"num_negatives": [8, 16], "batch_size": [8], "max_len": [20]},
                       "search": {"kind": "optuna", "num_samples": 4, "seed": 1}})
    space = {"axes": {name: tune.choice(list(values)) for name, values in spec.axes}}
    config = spec.grid()[1]
    over = TrialRecord(status="over_budget", config=config.to_dict(),
                       memory=MemoryReport(torch_max_reserved=9 * 2**30, budget_bytes=8 * 2**30))
    fits = TrialRecord(status="ok", config=spec.grid()[0].to_dict(), val_metrics={"ndcg@10": 0.25},
                       memory=MemoryReport(torch_max_reserved=2**30, budget_bytes=8 * 2**30))

    searcher = sweep.make_optuna_search(spec, load_trials_frame([]))
    searcher.set_search_properties(None, None, space)
    first = searcher.suggest("t1")
    assert set(first["axes"]) == {"num_negatives", "batch_size", "max_len"}
    searcher.on_trial_complete("t1", sweep.final_result("x", over))
    # A configuration drawn again is answered from its result, not trained: t2 trains the other one.
    second = searcher.suggest("t2")
    assert second["axes"]["num_negatives"] != first["axes"]["num_negatives"]
    searcher.on_trial_complete("t2", sweep.final_result("y", fits))
    told = searcher._ot_study.trials
    assert told[0].constraints[sweep.CONSTRAINT_KEY] > 0  # over budget: infeasible
    assert all(t.constraints[sweep.CONSTRAINT_KEY] > 0 for t in told[1:-1])  # draws of t1's, answered
    assert told[-1].constraints[sweep.CONSTRAINT_KEY] == pytest.approx(-7.0)  # 1 GiB used of 8
    assert told[-1].values == [0.25, 1.0]
    assert [t.number for t in searcher._ot_study.best_trials] == [told[-1].number]  # only feasible: best
    assert searcher.suggest("t3") == Searcher.FINISHED  # both configurations have a result

    # resuming: recorded trials are told to the new study before it samples
    warm = sweep.make_optuna_search(spec, load_trials_frame([("c-over", over), ("c-fits", fits)]))
    warm.set_search_properties(None, None, space)
    assert len(warm._ot_study.trials) == 2
    assert sorted(t.constraints[sweep.CONSTRAINT_KEY] > 0 for t in warm._ot_study.trials) == [False, True]


def load_trials_frame(records: list[tuple[str, TrialRecord]]):  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "r.sqlite"
        with ResultsDB(path) as db:
            for key, record in records:
                db.record_trial(key, "c", record)
        return load_trials(path)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow  # starts Ray
def test_sigkilled_sweep_resumes_on_a_cluster_without_loss_or_duplicates(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "slow.toml", """
        name = "slow"
        datasets = ["synthetic:users=30,items=40,seed=1"]
        [axes]
        num_negatives = [16]
        batch_size = [8]
        max_len = [20]
        seed = [0, 1, 2, 3]
        [resources]
        max_concurrent = 2
        [run]
        trial_function = "tests.sweep_faults:sleepy_trial"
    """)
    db = tmp_path / "results.sqlite"
    run_log = tmp_path / "runs.log"
    first_ray = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    cluster_ray = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    scratch = tmp_path / "tmp"  # the drivers' temp folder, where each keeps its run folder
    scratch.mkdir()
    env = {**os.environ, "CCE_TEST_RUN_LOG": str(run_log), "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO_ROOT), "TMPDIR": str(scratch)}
    env.pop("CCE_STUDY_DEBUG", None)
    command = [PYTHON, "-m", "study.sweep", str(spec), "--db", str(db)]
    driver = subprocess.Popen(command, cwd=REPO_ROOT, env={**env, "RAY_TMPDIR": first_ray},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 150
        recorded: set[str] = set()
        while len(recorded) < 2:
            assert driver.poll() is None, driver.communicate()
            assert time.monotonic() < deadline, "the sweep recorded too few trials in time"
            time.sleep(0.3)
            if db.exists():
                with ResultsDB(db) as reader:
                    recorded = reader.trial_ids("slow")
        assert ray_processes(first_ray), "the driver's Ray processes should be findable by their temp dir"
        # a second driver on the same database is refused at once, naming the one that runs
        started = time.monotonic()
        second = subprocess.run([*command, "--resume"], cwd=REPO_ROOT, env={**env, "RAY_TMPDIR": first_ray},
                                capture_output=True, text=True, timeout=120)
        assert time.monotonic() - started < 60
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 2 and len(lines) == 1, second.stderr
        assert str(db) in lines[0] and "another sweep driver" in lines[0]
        assert f"pid {driver.pid} on {socket.gethostname()}" in lines[0]
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    with ResultsDB(db) as reader:
        recorded = reader.trial_ids("slow")
    runs_before_kill = run_log.read_text().split()
    # Ray's processes outlive a killed driver by 15-30 s; these are this test's own, so end them.
    wait_for_ray_gone(first_ray, timeout=60, kill_after=3)

    runs = tmp_path / "checkpoints" / "slow"  # Tune's run folders live in the sweep's storage
    left_behind = list(runs.glob("run-*"))
    assert left_behind, "the killed driver's run folder should still be there"
    refused = subprocess.run(command, cwd=REPO_ROOT, env={**env, "RAY_TMPDIR": first_ray},
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--resume" in refused.stderr  # the lock died with its driver

    port = free_port()
    started = subprocess.run(
        [RAY, "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1", "--num-cpus", "2",
         "--temp-dir", cluster_ray, "--include-dashboard", "false", "--disable-usage-stats"],
        env=env, capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, started.stderr
        resumed = subprocess.run([*command, "--resume", "--address", f"127.0.0.1:{port}"], cwd=REPO_ROOT,
                                 env=env, capture_output=True, text=True, timeout=240)
        assert resumed.returncode == 0, resumed.stderr
    finally:
        stop_ray(cluster_ray)
    trials = load_trials(db, sweep="slow")
    assert sorted(trials["seed"]) == [0, 1, 2, 3] and trials["trial_id"].is_unique
    assert set(trials["status"]) == {"ok"}
    runs_after_kill = run_log.read_text().split()[len(runs_before_kill):]
    seeds_recorded_before = {int(s) for s, i in zip(trials["seed"], trials["trial_id"]) if i in recorded}
    assert len(seeds_recorded_before) >= 2
    assert not seeds_recorded_before & {int(s) for s in runs_after_kill}, "a recorded trial ran again"
    assert {int(s) for s in runs_after_kill} | seeds_recorded_before == {0, 1, 2, 3}
    assert f"{len(recorded)} already recorded" in resumed.stderr
    assert not any(folder.exists() for folder in left_behind), "the resumed sweep removed the dead run folder"
    assert not list(runs.glob("run-*"))  # and its own
    assert not list(scratch.glob("cce-study-*"))  # nothing in the temp folder either
    wait_for_ray_gone(cluster_ray, timeout=30)


def prediction_of(total_bytes: int | None) -> MemoryPrediction | None:
    """A memory prediction of `total_bytes` in all (None: no prediction)."""
    if total_bytes is None:
        return None
    return MemoryPrediction(total_bytes=total_bytes, parts={"parameters": total_bytes},
                            torch_max_allocated=total_bytes, torch_max_reserved=total_bytes,
                            peak_phase="forward")


def test_packing_asks_for_the_share_of_a_card_the_prediction_needs() -> None:
    spec = parse_spec({"name": "p", "datasets": ["ml-1m"], "axes": {"num_negatives": [8], "batch_size": [8],
                       "max_len": [8]}, "resources": {"gpus": 0.125, "pack_by_predicted_memory": True}})
    config = spec.grid()[0]
    card = 160 * 2**30

    def share(predicted: int | None) -> float:
        return sweep.gpu_share(spec, sweep.PlannedTrial("t", config, None, prediction_of(predicted)), card)

    assert share(None) == 0.125  # no prediction: the spec's share
    assert share(2**30) == 0.125  # small trials keep the minimum share
    assert share(30 * 2**30) == 4 / 16  # 30 GiB x 1.1 = 33 GiB of 160: 3.3 sixteenths, rounded up
    assert share(150 * 2**30) == 1.0  # never more than one card
    plain = parse_spec({"name": "p", "datasets": ["ml-1m"], "axes": {"num_negatives": [8], "batch_size": [8],
                        "max_len": [8]}, "resources": {"gpus": 0.25}})
    huge = sweep.PlannedTrial("t", config, None, prediction_of(100 * 2**30))
    assert sweep.gpu_share(plain, huge, card) == 0.25


def test_an_optuna_sample_asks_for_the_share_its_grid_point_would() -> None:
    """pack_by_predicted_memory packs an Optuna search as it packs a grid: a sample gets its configuration's
    share of the card from the plan's prediction (before, every sample asked for `resources.gpus`)."""
    from study.sweep.driver import trial_gpus

    dataset = "synthetic:users=30,items=40,seed=1"
    spec = parse_spec({"name": "o", "datasets": [dataset], "memory_budget": "40GiB",
                       "axes": {"num_negatives": [8, 16], "batch_size": [8], "max_len": [8]},
                       "search": {"kind": "optuna", "num_samples": 2},
                       "resources": {"gpus": 0.125, "pack_by_predicted_memory": True}})
    card = 160 * 2**30
    small, large = spec.grid()
    planned = {sweep.trial_id("o", c): sweep.PlannedTrial(sweep.trial_id("o", c), c, None, prediction_of(gib))
               for c, gib in ((small, 2**30), (large, 30 * 2**30))}
    settings = sweep.TrialSettings("o", "any:function", card_bytes=card,
                                   base_settings=spec.base_settings(dataset), planned=planned)
    sample = {"axes": {"num_negatives": 16, "batch_size": 8, "max_len": 8}}
    assert trial_gpus(spec, settings, sample) == 4 / 16  # 30 GiB x 1.1 of 160, rounded up to sixteenths
    assert trial_gpus(spec, settings, {"axes": {"num_negatives": 8, "batch_size": 8, "max_len": 8}}) == 0.125
    assert trial_gpus(spec, settings, {"point": {"trial_id": "x", "config": {}, "gpus": 0.5}}) == 0.5


PACKED_SPEC = """
    name = "packed"
    datasets = ["synthetic:users=30,items=40,seed=1"]
    memory_budget = "2GiB"
    [trial]
    loss = "ce-neg"
    [axes]
    num_negatives = [16, 32]
    batch_size = [8]
    max_len = [20]
    [resources]
    gpus = 0.125
    cpus = 2
    max_concurrent = 8
    pack_by_predicted_memory = true
    gpu_memory = "80GiB"
"""


def test_packing_options_replace_the_spec_resources_for_one_run(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """--gpus-per-trial, --cpus-per-trial and --max-concurrent reach the driver in place of [resources],
    and change neither the trial ids nor the spec's hash (so --resume of a recorded sweep accepts them)."""
    from study.sweep import command
    from study.sweep.spec import spec_hash

    spec_path = write_spec(tmp_path / "packed.toml", PACKED_SPEC)
    seen: list[object] = []
    monkeypatch.setattr(command, "execute_sweep", lambda spec, plan, *a, **k: seen.append((spec, plan)))
    monkeypatch.setattr(command, "print_summary", lambda *a, **k: None)
    args = sweep_args(spec_path, tmp_path / "r.sqlite", gpus_per_trial=0.25, cpus_per_trial=4.0,
                      max_concurrent=3)
    assert sweep.run(args) == 0
    (spec, plan), = seen
    original = load_spec(spec_path)
    assert (spec.resources.gpus, spec.resources.cpus, spec.resources.max_concurrent) == (0.25, 4.0, 3)
    assert spec.resources.pack_by_predicted_memory and spec.resources.gpu_memory_bytes == 80 * 2**30
    assert spec_hash(spec) == spec_hash(original)
    assert [t.trial_id for t in plan] == [original.trial_id(c) for c in original.grid()]
    # Without the options the spec's own resources stand.
    assert command.with_packing(original, sweep_args(spec_path, tmp_path / "r.sqlite")) is original


@pytest.mark.parametrize(("argv", "message"), [
    (["--gpus-per-trial", "1.5"], "--gpus-per-trial: '1.5': above 1 must be a whole number of GPUs"),
    (["--gpus-per-trial", "-0.5"], "--gpus-per-trial: '-0.5' must be a non-negative finite number"),
    (["--cpus-per-trial", "0"], "--cpus-per-trial: '0' must be a positive finite number"),
    (["--max-concurrent", "two"], "--max-concurrent: 'two' is not a whole number"),
    (["--gpus-per-trial", "2"], "needs a share of one card in (0, 1], got 2"),
])
def test_bad_packing_options_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          argv: list[str], message: str) -> None:
    spec_path = write_spec(tmp_path / "packed.toml", PACKED_SPEC)
    try:
        code = cli.main(["sweep", str(spec_path), "--db", str(tmp_path / "r.sqlite"), *argv])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not (tmp_path / "r.sqlite").exists()
