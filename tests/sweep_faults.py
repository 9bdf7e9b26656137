"""Trial functions and helpers for the sweep tests (same signature as `study.training.trainer.run_trial`).

`faulty_trial` picks its behaviour from `config.seed` (see FAULTS), so one grid over seeds exercises
every fault path; each returns instantly. `sleepy_trial` takes a while, for killing a sweep mid-way, and
appends every trial it starts to the file named by $CCE_TEST_RUN_LOG.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil
import torch

from study.config import METRIC_KS, TrainConfig
from study.record import EpochRecord, MemoryReport, TrialRecord

GIB = 2**30
# seed -> behaviour of faulty_trial
FAULTS = {
    0: "ok",
    1: "raise",  # an ordinary exception escapes the trial function
    2: "device_oom",  # torch.OutOfMemoryError well below the budget: the card itself ran out
    3: "budget_oom",  # torch.OutOfMemoryError beyond the budget
    4: "nan_loss",  # what run_trial returns for a non-finite loss
    5: "wrong_type",  # the trial function returns something that is not a TrialRecord
    6: "worker_dies",  # the worker process is killed (as by the kernel's OOM killer): only under Ray
    7: "worker_crashes",  # the worker process dies of a segmentation fault: only under Ray
}
# What a dying worker writes to its stderr first (Ray keeps it in the worker's log).
DYING_WORDS = "worker about to die for seed"
SLEEP_SECONDS = 1.5


def fake_metrics(config: TrainConfig) -> dict[str, float]:
    """Made-up but config-dependent quality, so rows differ and the best trial is well defined."""
    base = math.log2(config.num_negatives) * 0.01 + math.log2(config.batch_size) * 0.001
    names = ("ndcg", "hit", "mrr", "coverage")
    return {f"{name}@{k}": base * (1 + k / 100) for name in names for k in METRIC_KS}


def fake_record(config: TrainConfig, on_epoch: Callable[[EpochRecord], None] | None) -> TrialRecord:
    metrics = fake_metrics(config)
    epochs = []
    for epoch in (1, 2):
        record = EpochRecord(epoch=epoch, train_loss=5.0 / epoch, val_metrics=metrics, epoch_seconds=0.01,
                             eval_seconds=0.01, sequences_per_second=1000.0, steps=2)
        epochs.append(record)
        if on_epoch is not None:
            on_epoch(record)
    peak = config.batch_size * config.max_len * config.num_negatives * 4
    return TrialRecord(status="ok", config=config.to_dict(), val_metrics=metrics, test_metrics=metrics,
                       best_epoch=2, epochs=epochs, memory=MemoryReport(cpu_peak_rss=peak), device="cpu",
                       loss_impl="torch", total_seconds=0.02)


def _cuda_oom(requested_gib: float, allocated_gib: float) -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError(
        f"CUDA out of memory. Tried to allocate {requested_gib:.2f} GiB. GPU 0 has a total capacity of "
        f"79.19 GiB of which 20.00 MiB is free. Of the allocated memory {allocated_gib:.2f} GiB is allocated "
        f"by PyTorch, and 0.10 GiB is reserved by PyTorch but unallocated."
    )


OnEpoch = Callable[[EpochRecord], None] | None


def faulty_trial(config: TrainConfig, *, on_epoch: OnEpoch = None) -> TrialRecord:
    fault = FAULTS[config.seed]
    if fault == "raise":
        raise RuntimeError(f"injected failure for seed {config.seed}")
    if fault == "device_oom":
        raise _cuda_oom(requested_gib=0.5, allocated_gib=1.0)  # far below an 8 GiB budget
    if fault == "budget_oom":
        raise _cuda_oom(requested_gib=4.0, allocated_gib=7.0)  # 7 + 4 > 8 GiB
    if fault == "nan_loss":
        nan_epoch = EpochRecord(epoch=1, train_loss=float("nan"), val_metrics={}, epoch_seconds=0.01,
                                eval_seconds=0.0, sequences_per_second=100.0, steps=1)
        if on_epoch is not None:
            on_epoch(nan_epoch)
        return TrialRecord(status="failed", config=config.to_dict(), error="non-finite loss nan at step 1",
                           epochs=[nan_epoch])
    if fault == "wrong_type":
        return {"status": "ok"}  # type: ignore[return-value]
    if fault in ("worker_dies", "worker_crashes"):
        print(f"{DYING_WORDS} {config.seed}", file=sys.stderr, flush=True)
        if fault == "worker_dies":
            os.kill(os.getpid(), signal.SIGKILL)
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    return fake_record(config, on_epoch)


def sleepy_trial(config: TrainConfig, *, on_epoch: OnEpoch = None) -> TrialRecord:
    log = os.environ.get("CCE_TEST_RUN_LOG")
    if log:
        with open(log, "a") as handle:
            handle.write(f"{config.seed}\n")
    time.sleep(SLEEP_SECONDS)
    return fake_record(config, on_epoch)


def ray_processes(temp_dir: str | Path) -> list[psutil.Process]:
    """Processes of the Ray instance whose temp dir (RAY_TMPDIR / --temp-dir) is `temp_dir`."""
    marker = str(temp_dir)
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in process.info["cmdline"] or ()):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def wait_for_ray_gone(temp_dir: str | Path, *, timeout: float = 40.0,
                      kill_after: float | None = None) -> None:
    """Wait until no process of that Ray instance is left; after `kill_after` seconds SIGKILL the
    stragglers (they are this test's own: the temp dir is unique to it). Fails if any survive."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        left = ray_processes(temp_dir)
        if not left:
            return
        if kill_after is not None and time.monotonic() - started > kill_after:
            _kill(left)
        time.sleep(0.5)
    raise AssertionError(f"Ray processes still running: {[p.pid for p in ray_processes(temp_dir)]}")


def _kill(processes: Iterable[psutil.Process]) -> None:
    for process in processes:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            continue


def stop_ray(temp_dir: str | Path, *, grace: float = 10.0) -> None:
    """Stop the Ray instance started with this temp dir (SIGTERM, then SIGKILL after `grace` seconds).
    Unlike `ray stop`, which ends every Ray instance of the user, this touches only that one."""
    for process in ray_processes(temp_dir):
        try:
            process.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            continue
    wait_for_ray_gone(temp_dir, timeout=grace + 20, kill_after=grace)


def _note_run(config: TrainConfig) -> int:
    """Append this trial's seed to `<dataset>.runs` (the dataset is a file the test wrote); returns how
    many times this seed has run, this time included. The dataset's path is the one place a trial
    function and its test share without Ray's help."""
    runs = Path(f"{config.dataset}.runs")
    with open(runs, "a") as handle:
        handle.write(f"{config.seed}\n")
    return runs.read_text().split().count(str(config.seed))


def flaky_trial(config: TrainConfig, *, on_epoch: OnEpoch = None) -> TrialRecord:
    """Fails the first time each configuration runs, succeeds after (a transient fault)."""
    if _note_run(config) == 1:
        raise RuntimeError(f"transient failure of seed {config.seed}")
    return fake_record(config, on_epoch)


HOLD_LOCK = textwrap.dedent("""
    import sqlite3, sys, time
    connection = sqlite3.connect(sys.argv[1], isolation_level=None)
    connection.execute("BEGIN IMMEDIATE")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    connection.rollback()
""")


def hold_write_lock(db: str | Path, seconds: float) -> subprocess.Popen[str]:
    """Another process holding the database's write lock for `seconds` (as a notebook with an open
    transaction would); returns once the lock is held."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(db), str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def locking_trial(config: TrainConfig, *, on_epoch: OnEpoch = None) -> TrialRecord:
    """A quick ok trial; the one whose seed `<dataset>.lock.json` names asks the test for a lock on the
    results database (it creates `<dataset>.lock-request`) and returns once another process holds it
    (`<dataset>.holder` names the holder), so that the driver finds the database locked when it
    records the trial. The test starts the holder: Ray ends a worker's child processes with it."""
    _note_run(config)
    instructions = json.loads(Path(f"{config.dataset}.lock.json").read_text())
    holder = Path(f"{config.dataset}.holder")
    if config.seed == instructions["seed"] and not holder.exists():
        Path(f"{config.dataset}.lock-request").touch()
        deadline = time.monotonic() + 60
        while not holder.exists():
            if time.monotonic() > deadline:
                raise TimeoutError("nobody took the lock")
            time.sleep(0.05)
    return fake_record(config, on_epoch)
