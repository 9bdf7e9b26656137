"""Validate the analytic memory model (study/memory/model.py) against measured GPU memory.

    python3 benchmarks/memory_validation.py --out DIR [--set base|catalogue|catalogue2|catalogue3|catalogue4]
        [--gpus 0,1] [--jobs N] [--deadline S] [--timeout S] [--only NAME,...] [--require-idle]
    python3 benchmarks/memory_validation.py --set catalogue --predict-only CSV   (no GPU; commit it first)
    python3 benchmarks/memory_validation.py --set catalogue --list                (cases, time estimates)

Sets of configurations, each a short real trial through `study.training.trainer.run_trial` (1 epoch of 5
steps, then evaluation) in its OWN process, because memory goes back to the card only at process
exit and each trial must start from an empty allocator:

- `base`: the 33 configurations of issue 4 (catalogues of 2,000 to 10^6 items, every loss).
- `catalogue`: issue 11's set at catalogue scale, 10^5, 10^6 and 10^7 items (synthetic logs): fused
  (every negative scope and full CE) and PyTorch (per position, drawn, batch-shared, per sequence,
  full CE where it fits one 139 GiB card), K up to 4096, batch up to 1024, length up to 512, d 64 to
  256, bf16 autocast; plus the two points issue 11 cites (in the model's sample: they were measured
  before the model was fixed).
- `catalogue2`: 36 more at those sizes on new logs (2,100 users), none of them a configuration of
  `catalogue`: out of the sample of the model fixed after `catalogue` was measured.
- `catalogue3`: 34 more on new logs (2,200 users), none of them a configuration of an earlier set, leaning
  on what `catalogue2` missed (the PyTorch losses' cache excess, the fused per-position loss at d=256): out
  of the sample of the model fixed after `catalogue2` was measured.
- `catalogue4`: 37 more on new logs (2,300 users), none of them a configuration of an earlier set: the first
  run by the trainer that makes its cuBLAS workspaces before anything else of a trial, predicted by the model
  that then charges no pinned transient; it leans on the trials a workspace pinned before (PyTorch per
  position, drawn and full CE at every catalogue, d 64/128/256).

Each catalogue is generated once per run (`--data-cache`, a pickled `Interactions`) and the trials
of the catalogue set evaluate at most `eval_users` users of each evaluation set: what evaluation
allocates depends on the catalogue and the chunk of users scored at once, not on how many chunks
run, and at 10^7 items every user is a chunk of its own (the evaluation of 1,100 users four times
took longer than the training). The memory model sees the full dataset's users either way.

Processes are spread over the cards of `--gpus` (CUDA_VISIBLE_DEVICES per process), at most
`--jobs` at a time, and a card only takes a configuration when the predicted peaks of what runs
there, with a margin, fit its memory: should a card fill up, the caching allocator would give memory
back and retry, and the measured peak would no longer be the trial's own. Each trial records how often
that happened (`alloc_retries`, torch's num_alloc_retries); rows where it did are left out of the
criterion. `--gpus` indices count among the cards this process was given (its CUDA_VISIBLE_DEVICES), and
the memory other processes use on each card at the start is recorded (a warning in summary.txt): the
cards must be the run's alone. NVML's per-process memory is measured by each trial itself
(`TrialRecord.memory.peak_bytes`, the peak the sweep records).

Output, rewritten after every configuration so that a cut-off run keeps what finished:

    DIR/memory_validation.csv   one row per configuration: num_items, loss, loss_impl, negative_scope,
                                num_negatives, batch_size, max_len, hidden, predicted_peak_bytes,
                                measured_peak_bytes (+ torch allocated/reserved, NVML, status, card, time)
    DIR/memory_validation.json  the same rows plus the cards, versions and the summary
    DIR/summary.txt             the criterion: median |error| <= 10%, none under-predicted by more than
                                10%, none over-predicted by more than 25% (error = predicted / measured - 1)
    DIR/trials/NAME.json|.log   each trial's record, prediction and output
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for folder in (REPO, REPO / "benchmarks"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from memory_cases import (  # noqa: E402  (after the path above)
    CASES,
    CATALOGUE_CASES,
    PREPARE_ROWS_PER_S,
    QUICK,
    SETS,
    estimate_seconds,
    nominal_size,
)

GiB = 2**30
__all__ = ["CASES", "CATALOGUE_CASES", "SETS", "main", "row_from_result", "summarise"]

MEASURES = (
    ("torch_max_allocated", "predicted_torch_max_allocated"),
    ("torch_max_reserved", "predicted_torch_max_reserved"),
    ("measured_peak_bytes", "predicted_peak_bytes"),
)
CRITERION_MEDIAN = 0.10
CRITERION_UNDER = -0.10
CRITERION_OVER = 0.25
INTEGER_COLUMNS = ("num_items", "num_users", "num_negatives", "batch_size", "max_len", "hidden", "blocks",
                   "torch_max_allocated", "torch_max_reserved", "nvml_process_peak",
                   "predicted_torch_max_allocated", "predicted_torch_max_reserved")
# The columns issue 11 asks for, first; the rest follow.
KEY_COLUMNS = ("name", "num_items", "loss", "loss_impl", "negative_scope", "num_negatives", "batch_size",
               "max_len", "hidden", "predicted_peak_bytes", "measured_peak_bytes")


# --- the worker: one trial in its own process --------------------------------------------------------


def run_worker(config_json: str, result_path: Path, data_path: Path | None, eval_users: int | None) -> int:
    """In the subprocess: one trial, then its record and the model's prediction as JSON."""
    import torch

    import study.data
    from study.config import TrainConfig
    from study.memory.model import DatasetSize, predict_trial_memory
    from study.training.trainer import run_trial

    threads = os.environ.get("OMP_NUM_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    config = TrainConfig.from_dict(json.loads(config_json))
    if data_path is not None:
        _use_prepared_dataset(study.data, config.dataset, data_path)
    if eval_users is not None:
        _cap_evaluation_users(study.data, eval_users)
    started = time.perf_counter()
    record = run_trial(config)
    allocator = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        stats = torch.cuda.memory_stats()
        allocator = {"num_alloc_retries": int(stats.get("num_alloc_retries", 0)),
                     "num_ooms": int(stats.get("num_ooms", 0))}
    prediction = None
    if record.num_items is not None and record.num_users is not None:
        prediction = predict_trial_memory(config, DatasetSize(record.num_items, record.num_users),
                                          gpu_total=record.memory.gpu_total)
    result = {
        "record": record.to_dict(),
        "seconds": time.perf_counter() - started,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        # How often a cudaMalloc failed and the caching allocator gave its cached segments back to retry:
        # then the card was full (other processes) and the reserved peak is not the trial's own.
        "allocator": allocator,
        "prediction": None if prediction is None else {
            "total_bytes": prediction.total_bytes,
            "torch_max_allocated": prediction.torch_max_allocated,
            "torch_max_reserved": prediction.torch_max_reserved,
            "peak_phase": prediction.peak_phase,
            "parts": prediction.parts,
            "phases": prediction.phases,
        },
    }
    result_path.write_text(json.dumps(result, default=str))
    return 0


def _use_prepared_dataset(data_module: Any, name: str, path: Path) -> None:
    """run_trial loads its dataset through `study.data.load_dataset`: hand it the log the driver prepared
    once (the same `Interactions` that load_dataset returns for `name`), instead of generating it again."""
    original = data_module.load_dataset
    with open(path, "rb") as handle:
        prepared = pickle.load(handle)

    def load_dataset(requested: str, *args: Any, **kwargs: Any) -> Any:
        if requested == name and not kwargs.get("kcore"):
            return prepared
        return original(requested, *args, **kwargs)

    data_module.load_dataset = load_dataset


def _cap_evaluation_users(data_module: Any, cap: int) -> None:
    """Evaluate the first `cap` users of each evaluation set (see the module docstring)."""
    import torch

    original = data_module.make_split

    def make_split(*args: Any, **kwargs: Any) -> Any:
        split = original(*args, **kwargs)
        for name in ("validation", "test"):
            evalset = getattr(split, name)
            if len(evalset) > cap:
                setattr(split, name, evalset.subset(torch.arange(cap)))
        return split

    data_module.make_split = make_split


def prepare_dataset(spec: str, path: Path) -> int:
    """In a subprocess: load (generate) a dataset once and pickle it for the trials of its catalogue."""
    from study.data import load_dataset

    data = load_dataset(spec, progress=False)
    partial = path.with_suffix(".partial")
    with open(partial, "wb") as handle:
        pickle.dump(data, handle, protocol=pickle.HIGHEST_PROTOCOL)
    partial.rename(path)
    return 0


# --- rows of the table -----------------------------------------------------------------------------


def _setting_columns(config: dict[str, Any]) -> dict[str, Any]:
    keys = ("loss", "loss_impl", "negative_scope", "num_negatives", "batch_size", "max_len", "hidden",
            "blocks", "sampling", "precision")
    defaults = {"loss": "ce", "loss_impl": "auto", "negative_scope": "batch", "num_negatives": 256,
                "hidden": 64, "blocks": 2, "sampling": "uniform", "precision": "auto"}
    row = {key: config.get(key, defaults.get(key)) for key in keys}
    if row["loss"] == "ce":
        row["negative_scope"], row["num_negatives"] = "full", None
    if row["loss"] in ("bce", "gbce"):
        row["loss_impl"] = "torch"
    return row


def row_from_result(case: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """A table row from a trial's result file (record + prediction)."""
    record, prediction = result["record"], result["prediction"]
    memory = record["memory"]
    row: dict[str, Any] = {"name": case["name"], **_setting_columns(case["config"])}
    row.update(status=record["status"], error=record.get("error"), num_items=record.get("num_items"),
               num_users=record.get("num_users"), git_commit=record.get("git_commit"),
               gpu=result.get("cuda_visible_devices"), gpu_name=memory.get("gpu_name"))
    if record.get("loss_impl"):
        row["loss_impl"] = record["loss_impl"]
    allocator = result.get("allocator") or {}
    row["alloc_retries"] = allocator.get("num_alloc_retries")
    row["torch_max_allocated"] = memory.get("torch_max_allocated")
    row["torch_max_reserved"] = memory.get("torch_max_reserved")
    row["nvml_process_peak"] = memory.get("nvml_process_peak")
    # The peak the sweep records (TrialRecord.memory.peak_bytes): NVML's process memory, else torch's
    # reserved memory (then without the CUDA context), else the host's RSS.
    for source in ("nvml_process_peak", "torch_max_reserved", "cpu_peak_rss"):
        if memory.get(source) is not None:
            row["measured_peak_bytes"], row["measured_source"] = memory[source], source
            break
    if prediction is not None:
        row["predicted_peak_bytes"] = prediction["total_bytes"]
        row["predicted_torch_max_allocated"] = prediction["torch_max_allocated"]
        row["predicted_torch_max_reserved"] = prediction["torch_max_reserved"]
        row["predicted_peak_phase"] = prediction["peak_phase"]
        for measured, predicted in MEASURES:
            if row.get(measured) and row.get(predicted) is not None:
                row[f"error_{measured}"] = (row[predicted] - row[measured]) / row[measured]
    return row


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per measure: trials compared, median |relative error|, worst under- and over-prediction; and the
    criterion on the measured peak, over the rows measured out of the model's sample. Rows whose allocator
    retried a failed cudaMalloc (alloc_retries > 0: the card was full) measured a peak that is not the
    trial's own; they are listed under "retried" and left out."""
    summary: dict[str, Any] = {"trials": len(rows), "compared": 0, "measures": {},
                               "retried": sorted(row["name"] for row in rows if row.get("alloc_retries"))}
    for measured, _ in MEASURES:
        errors = [row[f"error_{measured}"] for row in rows
                  if row.get("status") == "ok" and row.get(f"error_{measured}") is not None
                  and not row.get("in_sample") and not row.get("alloc_retries")]
        if not errors:
            continue
        summary["measures"][measured] = {
            "compared": len(errors),
            "median_abs_error": statistics.median(abs(e) for e in errors),
            "worst_under_prediction": min(errors),
            "worst_over_prediction": max(errors),
        }
    headline = summary["measures"].get("measured_peak_bytes")
    if headline:
        summary["compared"] = headline["compared"]
        summary["criterion_met"] = criterion_met(headline)
    else:
        summary["criterion_met"] = None
    return summary


def criterion_met(measure: dict[str, Any]) -> bool:
    return bool(measure["median_abs_error"] <= CRITERION_MEDIAN
                and measure["worst_under_prediction"] >= CRITERION_UNDER
                and measure["worst_over_prediction"] <= CRITERION_OVER)


def format_table(rows: list[dict[str, Any]]) -> str:
    import pandas as pd

    from study.units import format_bytes

    def gib(value: Any) -> str:
        return "-" if value is None or value != value else format_bytes(value)

    def pct(value: Any) -> str:
        return "-" if value is None or value != value else f"{100 * value:+.1f}%"

    table = pd.DataFrame([{
        "name": row["name"], "status": row.get("status"),
        "alloc meas": gib(row.get("torch_max_allocated")),
        "alloc pred": gib(row.get("predicted_torch_max_allocated")),
        "alloc err": pct(row.get("error_torch_max_allocated")),
        "reserved meas": gib(row.get("torch_max_reserved")),
        "reserved err": pct(row.get("error_torch_max_reserved")),
        "peak meas": gib(row.get("measured_peak_bytes")),
        "peak pred": gib(row.get("predicted_peak_bytes")),
        "peak err": pct(row.get("error_measured_peak_bytes")),
        "phase": row.get("predicted_peak_phase", "-"),
    } for row in rows])
    return table.to_string(index=False)


def format_summary(summary: dict[str, Any], env: dict[str, Any]) -> str:
    lines = [f"cards: {env.get('gpus')}; torch {env.get('torch')}, triton {env.get('triton')}, "
             f"CUDA {env.get('cuda')}, python {env.get('python')}; tree {env.get('git_commit')}"]
    for measure, values in summary["measures"].items():
        lines.append(f"{measure}: {values['compared']} trials, median |error| "
                     f"{100 * values['median_abs_error']:.1f}%, worst under-prediction "
                     f"{100 * values['worst_under_prediction']:+.1f}%, worst over-prediction "
                     f"{100 * values['worst_over_prediction']:+.1f}%")
    if summary.get("retried"):
        lines.append(f"left out (the allocator retried after a failed cudaMalloc: the card was full): "
                     f"{', '.join(summary['retried'])}")
    used_by_others = env.get("memory_used_by_others")
    for card, used in (used_by_others.items() if isinstance(used_by_others, dict) else ()):
        if used > GiB:
            lines.append(f"warning: card {card} had {used / GiB:.1f} GiB in use by other processes "
                         "at the start")
    verdicts = {True: "MET", False: "NOT MET", None: "not evaluated (no successful trial)"}
    lines.append("criterion (measured peak, out of sample: median |error| <= 10%, none more than 10% under, "
                 f"none more than 25% over): {verdicts[summary['criterion_met']]}")
    return "\n".join(lines)


def table_frame(rows: list[dict[str, Any]]) -> Any:
    """The rows as a DataFrame: issue 11's columns first, whole numbers as integers (empty where none)."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    for column in frame.columns:
        if column.endswith("_bytes") or column in INTEGER_COLUMNS:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").round().astype("Int64")
    ordered = [c for c in KEY_COLUMNS if c in frame.columns]
    return frame[ordered + [c for c in frame.columns if c not in KEY_COLUMNS]]


def write_outputs(out_dir: Path, rows: list[dict[str, Any]], env: dict[str, Any]) -> dict[str, Any]:
    summary = summarise(rows)
    partial = out_dir / "memory_validation.csv.partial"
    table_frame(rows).to_csv(partial, index=False)
    partial.replace(out_dir / "memory_validation.csv")
    (out_dir / "memory_validation.json").write_text(
        json.dumps({"environment": env, "summary": summary, "rows": rows}, indent=1, default=str)
    )
    (out_dir / "summary.txt").write_text(format_summary(summary, env) + "\n")
    return summary


# --- the driver: datasets once, then trials over the cards --------------------------------------------


@dataclass
class Job:
    case: dict[str, Any]
    reserve_bytes: int  # card memory held back for it while it runs
    host_bytes: int
    estimate_s: float
    dataset: str
    gpu: str | None = None
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0


@dataclass
class Card:
    name: str  # as CUDA_VISIBLE_DEVICES takes it
    total: int
    reserved: int = 0
    running: int = 0
    lowest_free: int | None = None
    nvml_handle: Any = None
    jobs_seen_low: set[str] = field(default_factory=set)


def _reserve_bytes(predicted: int) -> int:
    """Card memory to hold back for a trial: its prediction with the criterion's margin and more."""
    return int(1.35 * predicted) + GiB


def _host_bytes(case: dict[str, Any], num_items: int, num_interactions: int) -> int:
    d = case["config"].get("hidden", 64)
    return 120 * num_interactions + 4 * (num_items + 1) * d * 4 + 2 * GiB


class Driver:
    def __init__(self, cases: list[dict[str, Any]], out_dir: Path, cards: list[Card], *, jobs: int,
                 per_card: int, timeout_s: float, deadline: float, data_cache: Path,
                 host_budget: int) -> None:
        self.cases = cases
        self.out_dir = out_dir
        self.cards = cards
        self.jobs = jobs
        self.per_card = per_card
        self.timeout_s = timeout_s
        self.deadline = deadline
        self.data_cache = data_cache
        self.data_cache.mkdir(parents=True, exist_ok=True)
        self.host_budget = host_budget
        self.rows: dict[str, dict[str, Any]] = {}
        self.sizes: dict[str, tuple[int, int, int]] = {}
        self.preparing: dict[str, subprocess.Popen[bytes]] = {}
        self.threads = max(1, (os.cpu_count() or 2) // max(1, jobs))
        self.stop_monitor = threading.Event()

    def dataset_path(self, spec: str) -> Path:
        import hashlib

        return self.data_cache / (hashlib.sha256(spec.encode()).hexdigest()[:16] + ".pkl")

    def start_preparing(self) -> None:
        for spec in dict.fromkeys(case["config"]["dataset"] for case in self.cases):
            path = self.dataset_path(spec)
            if path.exists():
                continue
            with open(self.out_dir / "trials" / f"dataset-{path.stem}.log", "wb") as log:
                self.preparing[spec] = subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), "--prepare-dataset", spec,
                     "--result", str(path)],
                    stdout=log, stderr=subprocess.STDOUT, cwd=REPO)

    def dataset_ready(self, spec: str) -> bool | None:
        """True when prepared, None while preparing, False when preparing failed."""
        process = self.preparing.get(spec)
        if process is not None and process.poll() is None:
            return None
        if not self.dataset_path(spec).exists():
            return False
        if spec not in self.sizes:
            with open(self.dataset_path(spec), "rb") as handle:
                data = pickle.load(handle)
            self.sizes[spec] = (int(data.num_items), int(data.num_users), len(data))
        return True

    def make_job(self, case: dict[str, Any]) -> Job:
        from study.config import TrainConfig
        from study.memory.model import DatasetSize, predict_trial_memory

        spec = case["config"]["dataset"]
        num_items, num_users, interactions = self.sizes[spec]
        config = TrainConfig.from_dict(case["config"])
        predicted = predict_trial_memory(config, DatasetSize(num_items, num_users), device="cuda").total_bytes
        return Job(case, _reserve_bytes(predicted), _host_bytes(case, num_items, interactions),
                   estimate_seconds(case, num_items, num_users, interactions), spec)

    def monitor(self) -> None:
        """Every half second: each card's free memory (NVML), to flag trials that ran on a full card."""
        try:
            import pynvml
        except ImportError:
            return
        while not self.stop_monitor.wait(0.5):
            for card in self.cards:
                if card.nvml_handle is None:
                    continue
                try:
                    free = int(pynvml.nvmlDeviceGetMemoryInfo(card.nvml_handle).free)
                except Exception:
                    continue
                card.lowest_free = free if card.lowest_free is None else min(card.lowest_free, free)
                if free < 2 * GiB:
                    card.jobs_seen_low.update(job.case["name"] for job in self.running
                                              if job.gpu == card.name)

    def run(self, env: dict[str, Any]) -> list[dict[str, Any]]:
        self.start_preparing()
        pending = list(self.cases)
        self.running: list[Job] = []
        jobs: dict[str, Job] = {}
        monitor = threading.Thread(target=self.monitor, daemon=True)
        monitor.start()
        try:
            while pending or self.running:
                now = time.monotonic()
                for job in list(self.running):
                    self.poll(job, now, env)
                if now >= self.deadline:
                    for job in list(self.running):
                        self.finish(job, env, status="timeout", error="cut off at the run's deadline")
                    for case in pending:
                        self.record(case, env, status="not_run",
                                    error="not started before the run's deadline")
                    pending = []
                    break
                started = self.launch_ready(pending, jobs, env, now)
                if not started:
                    time.sleep(0.5)
        finally:
            self.stop_monitor.set()
            for job in self.running:
                if job.process is not None and job.process.poll() is None:
                    job.process.kill()
            for process in self.preparing.values():
                if process.poll() is None:
                    process.kill()
        return [self.rows[case["name"]] for case in self.cases if case["name"] in self.rows]

    def launch_ready(self, pending: list[dict[str, Any]], jobs: dict[str, Job], env: dict[str, Any],
                     now: float) -> bool:
        """Start the longest pending configurations that fit a card now; True when one started."""
        for case in list(pending):
            ready = self.dataset_ready(case["config"]["dataset"])
            if ready is False:
                pending.remove(case)
                self.record(case, env, status="failed",
                            error="its dataset could not be prepared (see trials/)")
            elif ready and case["name"] not in jobs:
                jobs[case["name"]] = self.make_job(case)
        candidates = sorted((jobs[c["name"]] for c in pending if c["name"] in jobs),
                            key=lambda job: -job.estimate_s)
        started = False
        host_used = sum(job.host_bytes for job in self.running)
        for job in candidates:
            if len(self.running) >= self.jobs:
                break
            if self.running and host_used + job.host_bytes > self.host_budget:
                continue
            fitting = [card for card in self.cards if card.running < self.per_card
                       and (card.running == 0 or card.reserved + job.reserve_bytes <= card.total)]
            if not fitting:
                continue
            card = max(fitting, key=lambda c: c.total - c.reserved)
            self.launch(job, card)
            pending.remove(job.case)
            host_used += job.host_bytes
            started = True
        return started

    def launch(self, job: Job, card: Card) -> None:
        case = job.case
        trials = self.out_dir / "trials"
        result_path = trials / f"{case['name']}.json"
        result_path.unlink(missing_ok=True)
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(case["config"]),
                   "--result", str(result_path), "--data", str(self.dataset_path(job.dataset))]
        if case.get("eval_users"):
            command += ["--eval-users", str(case["eval_users"])]
        environment = {**os.environ, "CUDA_VISIBLE_DEVICES": card.name, "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                       "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        with open(trials / f"{case['name']}.log", "wb") as log:
            job.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                           env=environment)
        job.gpu, job.started = card.name, time.monotonic()
        card.reserved += job.reserve_bytes
        card.running += 1
        self.running.append(job)
        print(f"start {case['name']} on GPU {card.name} (estimated {job.estimate_s:.0f} s, holds "
              f"{job.reserve_bytes / GiB:.1f} GiB of {card.total / GiB:.1f})", flush=True)

    def poll(self, job: Job, now: float, env: dict[str, Any]) -> None:
        assert job.process is not None
        if job.process.poll() is not None:
            self.finish(job, env)
        elif now - job.started > self.timeout_s:
            self.finish(job, env, status="timeout", error=f"no result within {self.timeout_s:.0f} s")

    def finish(self, job: Job, env: dict[str, Any], *, status: str | None = None,
               error: str | None = None) -> None:
        assert job.process is not None
        if job.process.poll() is None:
            job.process.kill()
            job.process.wait()
        self.running.remove(job)
        card = next(card for card in self.cards if card.name == job.gpu)
        card.reserved -= job.reserve_bytes
        card.running -= 1
        case = job.case
        result_path = self.out_dir / "trials" / f"{case['name']}.json"
        seconds = round(time.monotonic() - job.started, 1)
        if status is None and job.process.returncode == 0 and result_path.exists():
            row = row_from_result(case, json.loads(result_path.read_text()))
        else:
            row = {"name": case["name"], **_setting_columns(case["config"]),
                   "status": status or "crashed", "gpu": job.gpu}
            if error is None:
                tail = (self.out_dir / "trials" / f"{case['name']}.log").read_text(errors="replace")
                lines = tail.strip().splitlines()[-1:] or ["(no output)"]
                error = f"exit {job.process.returncode}: {lines[0]}"
            row["error"] = error
            num_items, num_users, _ = self.sizes[job.dataset]
            row.update(num_items=num_items, num_users=num_users)
        row.update(seconds=seconds, estimated_seconds=round(job.estimate_s, 1),
                   card_memory_low=case["name"] in card.jobs_seen_low, in_sample=bool(case.get("in_sample")),
                   set=case["set"])
        self.rows[case["name"]] = row
        self.write(env)
        error_value = row.get("error_measured_peak_bytes")
        detail = (f"peak error {100 * error_value:+.1f}%" if error_value is not None
                  else (row.get("error") or ""))
        print(f"[{len(self.rows)}/{len(self.cases)}] {case['name']}: {row.get('status')} in {seconds} s "
              f"(estimated {job.estimate_s:.0f}); {detail}", flush=True)

    def record(self, case: dict[str, Any], env: dict[str, Any], *, status: str, error: str) -> None:
        self.rows[case["name"]] = {"name": case["name"], **_setting_columns(case["config"]), "status": status,
                                   "error": error, "set": case["set"],
                                   "in_sample": bool(case.get("in_sample"))}
        self.write(env)

    def write(self, env: dict[str, Any]) -> dict[str, Any]:
        rows = [self.rows[case["name"]] for case in self.cases if case["name"] in self.rows]
        return write_outputs(self.out_dir, rows, env)


def physical_cards(names: list[str], inherited: str | None) -> list[str]:
    """--gpus as the trials' CUDA_VISIBLE_DEVICES must give them: an index counts among the cards this
    process was given (its own CUDA_VISIBLE_DEVICES, as torch numbers them), not among all of the host's.
    Overriding a child's CUDA_VISIBLE_DEVICES with the bare index put the run of 2026-11-28, given card 3,
    on card 0, which another benchmark was using (a trial ran out of memory there)."""
    visible = [entry.strip() for entry in (inherited or "").split(",") if entry.strip()]
    if not visible:
        return list(names)
    out = []
    for name in names:
        if name.isdigit():
            if int(name) >= len(visible):
                raise ValueError(f"card {name}: this process sees {len(visible)} card(s) "
                                 f"(CUDA_VISIBLE_DEVICES={inherited})")
            out.append(visible[int(name)])
        else:
            out.append(name)
    return out


def discover_cards(names: list[str]) -> list[Card]:
    """The cards of --gpus with their memory, through NVML (the driver makes no CUDA context)."""
    import pynvml

    pynvml.nvmlInit()
    cards = []
    for name in physical_cards(names, os.environ.get("CUDA_VISIBLE_DEVICES")):
        handle = (pynvml.nvmlDeviceGetHandleByUUID(name) if name.startswith(("GPU-", "MIG-"))
                  else pynvml.nvmlDeviceGetHandleByIndex(int(name)))
        total = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
        cards.append(Card(name, total - 3 * GiB, nvml_handle=handle))
    return cards


def environment(cards: list[Card]) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cuda": torch.version.cuda, "host": platform.node()}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    try:
        import pynvml

        env["gpus"] = [f"{card.name}: {pynvml.nvmlDeviceGetName(card.nvml_handle)} "
                       f"({int(pynvml.nvmlDeviceGetMemoryInfo(card.nvml_handle).total)} bytes)"
                       for card in cards]
    except Exception as exc:
        env["gpus"] = f"unknown ({exc})"
    try:  # before any trial starts: whatever runs on the cards is another process's
        import pynvml

        processes = {card.name: pynvml.nvmlDeviceGetComputeRunningProcesses(card.nvml_handle)
                     for card in cards}
        env["memory_used_by_others"] = {name: sum(int(process.usedGpuMemory or 0) for process in running)
                                        for name, running in processes.items()}
        env["processes_of_others"] = {name: len(running) for name, running in processes.items()}
    except Exception as exc:
        env["memory_used_by_others"] = f"unknown ({exc})"
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                            check=False)
    env["git_commit"] = result.stdout.strip() or None
    return env


def write_predictions(cases: list[dict[str, Any]], path: Path) -> None:
    """The model's predictions from the configurations and their datasets alone, before any measurement."""

    from study.config import TrainConfig
    from study.data.registry import load_dataset
    from study.memory.model import DatasetSize, predict_trial_memory

    sizes: dict[tuple[str, int], tuple[DatasetSize, int]] = {}
    rows = []
    for case in cases:
        config = TrainConfig.from_dict(case["config"])
        key = (config.dataset, config.kcore)
        if key not in sizes:
            print(f"loading {config.dataset}...", file=sys.stderr, flush=True)
            interactions = load_dataset(config.dataset, kcore=config.kcore, progress=False)
            sizes[key] = (DatasetSize.of(interactions), len(interactions))
        size, num_interactions = sizes[key]
        prediction = predict_trial_memory(config, size, device="cuda")
        rows.append({"name": case["name"], "num_items": size.num_items, "num_users": size.num_users,
                     **_setting_columns(case["config"]),
                     "predicted_peak_bytes": prediction.total_bytes,
                     "predicted_torch_max_allocated": prediction.torch_max_allocated,
                     "predicted_torch_max_reserved": prediction.torch_max_reserved,
                     "predicted_peak_phase": prediction.peak_phase,
                     "in_sample": bool(case.get("in_sample")),
                     "estimated_seconds": round(estimate_seconds(case, size.num_items, size.num_users or 0,
                                                                 num_interactions), 1)})
    path.parent.mkdir(parents=True, exist_ok=True)
    table_frame(rows).to_csv(path, index=False)
    print(f"wrote {len(rows)} predictions to {path}")


def plan_schedule(cases: list[dict[str, Any]], num_cards: int, card_bytes: int, per_card: int,
                  jobs: int) -> tuple[list[tuple[dict[str, Any], float, int, float, int]], float]:
    """What the driver would do with estimated times and nominal sizes: [(case, estimated s, reserved
    bytes, start s, card)] and the estimated wall time. Datasets become ready after their generation."""
    import heapq

    from study.config import TrainConfig
    from study.memory.model import DatasetSize, predict_trial_memory

    ready: dict[str, float] = {}
    entries: list[tuple[dict[str, Any], float, int]] = []
    for case in cases:
        spec = case["config"]["dataset"]
        items, users, interactions = nominal_size(spec)
        ready.setdefault(spec, interactions / PREPARE_ROWS_PER_S)
        predicted = predict_trial_memory(TrainConfig.from_dict(case["config"]), DatasetSize(items, users),
                                         device="cuda").total_bytes
        entries.append((case, estimate_seconds(case, items, users, interactions), _reserve_bytes(predicted)))
    pending = sorted(entries, key=lambda entry: -entry[1])
    running: list[tuple[float, int, int]] = []  # (end, card, reserved)
    used = [0] * num_cards
    count = [0] * num_cards
    now = 0.0
    schedule: list[tuple[dict[str, Any], float, int, float, int]] = []
    while pending:
        for entry in list(pending):
            case, seconds, reserve = entry
            if ready[case["config"]["dataset"]] > now or len(running) >= jobs:
                continue
            fitting = [c for c in range(num_cards) if count[c] < per_card
                       and (count[c] == 0 or used[c] + reserve <= card_bytes)]
            if not fitting:
                continue
            card = min(fitting, key=lambda c: used[c])
            used[card] += reserve
            count[card] += 1
            heapq.heappush(running, (now + seconds, card, reserve))
            schedule.append((case, seconds, reserve, now, card))
            pending.remove(entry)
        next_ready = [t for t in ready.values() if t > now]
        if running:
            end, card, reserve = heapq.heappop(running)
            now = max(now, end) if not next_ready else min(max(now, end), min(next_ready))
            if end <= now:
                used[card] -= reserve
                count[card] -= 1
            else:
                heapq.heappush(running, (end, card, reserve))
        elif next_ready:
            now = min(next_ready)
    makespan = max((start + seconds for _, seconds, _, start, _ in schedule), default=0.0)
    return schedule, makespan


def select_cases(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[dict[str, Any]]:
    cases = SETS[args.set]
    if args.quick:
        if args.set != "base":
            parser.error("--quick: only for --set base")
        cases = [case for case in cases if case["name"] in QUICK]
    if args.only:
        wanted = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = sorted(set(wanted) - {case["name"] for case in cases})
        if unknown:
            parser.error(f"--only: unknown configuration(s) of set {args.set}: {', '.join(unknown)} "
                         "(see --list)")
        cases = [case for case in cases if case["name"] in wanted]
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, help="output folder")
    parser.add_argument("--set", choices=sorted(SETS), default="base",
                        help="which configurations: base (issue 4's 33), catalogue (issue 11's 41), "
                             "catalogue2 (36 more), catalogue3 (34 more, out of the sample of the model "
                             "fixed after catalogue2) or catalogue4 (37 more, the first with the trainer's "
                             "cuBLAS warm-up)")
    parser.add_argument("--quick", action="store_true", help=f"only {len(QUICK)} representative base cases")
    parser.add_argument("--only", help="comma list of configuration names to run")
    parser.add_argument("--gpus", default="0",
                        help="cards to spread the trials over, e.g. 0,1 (default 0): indices among the "
                             "cards this process sees (within its own CUDA_VISIBLE_DEVICES, if set; PCI "
                             "order otherwise), or GPU UUIDs")
    parser.add_argument("--jobs", type=int, default=None,
                        help="trials at once over all cards (default: 4 per card); a card also takes "
                             "one only "
                             "while the predicted peaks of its trials fit its memory")
    parser.add_argument("--per-card", type=int, default=4,
                        help="trials at once on one card (default 4: they time-share it)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds per configuration (default 600)")
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds after the start at which every unfinished trial is stopped and "
                             "recorded "
                             "(default: none)")
    parser.add_argument("--require-idle", action="store_true",
                        help="refuse to start (exit 2) when another process runs on one of the cards")
    parser.add_argument("--data-cache", type=Path, default=None,
                        help="folder for the prepared datasets (default: a temporary folder)")
    parser.add_argument("--list", action="store_true", help="list the configurations and exit")
    parser.add_argument("--predict-only", type=Path, metavar="CSV",
                        help="write the model's predictions for the configurations to CSV (no GPU needed; "
                             "commit it before measuring) and exit")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--prepare-dataset", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--eval-users", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        return run_worker(args.worker, args.result, args.data, args.eval_users)
    if args.prepare_dataset is not None:
        return prepare_dataset(args.prepare_dataset, args.result)
    cases = select_cases(parser, args)
    if args.list:
        num_cards = len([name for name in args.gpus.split(",") if name.strip()]) or 1
        jobs = args.jobs if args.jobs is not None else args.per_card * num_cards
        schedule, makespan = plan_schedule(cases, num_cards, 136 * GiB, args.per_card, jobs)
        for case, seconds, reserve, start, card in sorted(schedule, key=lambda entry: entry[3]):
            print(f"{case['name']:52s} card {card} at {start:5.0f} s: ~{seconds:4.0f} s, holds "
                  f"{reserve / GiB:6.1f} GiB  {json.dumps(case['config'])}")
        print(f"{len(cases)} configurations; estimated wall time {makespan:.0f} s on {num_cards} card(s) "
              f"of 139 GiB, {args.per_card} trial(s) per card (sizes nominal, see estimate_seconds)")
        return 0
    if args.predict_only is not None:
        write_predictions(cases, args.predict_only)
        return 0
    if args.out is None:
        parser.error("--out: required")
    gpus = [name.strip() for name in args.gpus.split(",") if name.strip()]
    if not gpus:
        parser.error("--gpus: give at least one card, e.g. 0 or 0,1")
    per_card = args.per_card
    jobs = args.jobs if args.jobs is not None else per_card * len(gpus)
    if jobs < 1 or per_card < 1:
        parser.error("--jobs/--per-card: must be at least 1")
    try:
        cards = discover_cards(gpus)
    except Exception as exc:
        print(f"memory_validation: --gpus {args.gpus}: no such card ({exc})", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "trials").mkdir(exist_ok=True)
    data_cache = args.data_cache or Path(tempfile.mkdtemp(prefix="memory-validation-data-"))
    data_cache.mkdir(parents=True, exist_ok=True)
    env = environment(cards)
    busy = {name: count for name, count in (env.get("processes_of_others") or {}).items() if count}
    if args.require_idle and busy:
        print(f"memory_validation: --require-idle: other processes run on card(s) {busy} (card: processes); "
              "a shared card fills up and its trials' allocators retry", file=sys.stderr)
        return 2
    import psutil

    started = time.monotonic()
    deadline = started + args.deadline if args.deadline else math.inf
    driver = Driver(cases, args.out, cards, jobs=jobs, per_card=per_card, timeout_s=args.timeout,
                    deadline=deadline, data_cache=data_cache,
                    host_budget=int(0.7 * psutil.virtual_memory().total))
    rows = driver.run(env)
    summary = driver.write(env)
    print()
    print(format_table(rows))
    print()
    print(format_summary(summary, env))
    print(f"wall time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
