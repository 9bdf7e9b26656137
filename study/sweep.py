"""`cce-study sweep`: run a sweep specification with Ray Tune under a memory budget into the results database.

Every trial runs in its own Ray worker process (function trainable, no actor reuse), so GPU memory is
returned between trials. The driver alone writes the database, from a Tune callback: the trainable
reports per-epoch progress and one final result that carries the serialised TrialRecord. Trials never
fail as far as Tune is concerned: the trainable turns every exception into a record (`failed`, `oom`,
`over_budget`). A worker that dies (killed, node lost) is restarted by Tune up to `[checkpoint]
max_retries` times, from the trial's last checkpoint; beyond that the callback records a `failed` row.
Configurations the memory model predicts over budget are recorded as `predicted_over_budget` without
launching.

Trial ids are a hash of the sweep name and the full configuration, so `--resume` skips exactly the trials
already recorded, after a crash, a SIGKILL of the driver, or Ctrl-C, and continues each unfinished trial
from the last checkpoint it saved under the sweep's storage (study.checkpoint_store).

Ray is imported lazily: `cce-study` builds every command's parser on start and Ray takes seconds to import.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import faulthandler
import importlib
import json
import logging
import math
import os
import shlex
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from study import db_spool
from study.checkpoint import Checkpointer, CheckpointPolicy, TrainingState, load_state, save_state
from study.checkpoint_store import CheckpointStore
from study.config import ConfigError, TrainConfig, check_for_catalogue
from study.db import (
    DEFAULT_BUSY_TIMEOUT_S,
    DatabaseBusyError,
    ResultsDB,
    check_database_path,
    load_trials,
    metric_column,
)
from study.driver_lock import DriverLock
from study.record import EpochRecord, MemoryReport, TrialRecord, TrialStatus
from study.run_folders import remove_stale_run_folders
from study.sweep_preflight import (
    DEFAULT_CONNECT_TIMEOUT_S,
    RETRYABLE_STATUSES,
    PreflightError,
    check_cluster_answers,
    check_fractional_budgets,
    default_db_path,
    parse_retry,
    parse_seconds,
    resolve_spec_version,
)
from study.sweep_spec import CheckpointSpec, SweepSpec, load_spec, trial_id
from study.units import GiB, format_bytes, parse_budget
from study.worker_death import describe_worker_death, session_dir_of

QUALITY_METRIC = "ndcg@10"
# Keys of the final result a trainable reports; the quality/memory pair are Optuna's objectives.
RECORD_KEY = "record_json"
TRIAL_ID_KEY = "cce_trial_id"
CHECKPOINT_EPOCH_KEY = "checkpoint_epoch"  # the report that carries a checkpoint: its epoch
QUALITY_KEY = "objective_val_ndcg_10"
MEMORY_KEY = "objective_peak_gib"
CONSTRAINT_KEY = "memory_over_budget_gib"
DEFERRED_KEY = "deferred_past_stop_after"
# Environment the driver passes to Ray workers (made absolute: workers do not share the driver's cwd).
PASS_THROUGH_PATH_VARIABLES = ("CCE_STUDY_DATA_PATH", "CCE_STUDY_CACHE")
PASS_THROUGH_VARIABLES = ("TRITON_INTERPRET",)
MAX_ERROR_CHARS = 8000


class SweepError(PreflightError):
    """A sweep cannot start or continue for a reason the user can fix; printed as one line by the CLI."""


# ----------------------------------------------------------------------------------------------------
# command line


# study.cli looks for `configure_sweep` / `run_sweep` before `configure` / `run`: no function here may
# take those names.


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", type=Path, help="sweep specification (TOML), e.g. sweeps/demo.toml")
    parser.add_argument("--db", type=Path, default=None,
                        help="results database (default: results/<sweep name>/results.sqlite)")
    parser.add_argument("--address", default=None,
                        help="join a running Ray cluster at this address (default: start a local one)")
    parser.add_argument("--connect-timeout", default=DEFAULT_CONNECT_TIMEOUT_S, metavar="SECONDS",
                        help="with --address: give up when the cluster does not answer within this time "
                             f"(default {DEFAULT_CONNECT_TIMEOUT_S:g})")
    parser.add_argument("--resume", action="store_true",
                        help="finish a sweep whose database already holds some of its trials (recorded "
                             "trials are not run again)")
    parser.add_argument("--retry", metavar="STATUSES", default=None,
                        help="with --resume: also run again the recorded trials with these statuses, "
                             f"comma-separated ({', '.join(RETRYABLE_STATUSES)}); grid searches only")
    parser.add_argument("--new-spec-version", action="store_true",
                        help="when the specification changed since the database's trials of the sweep were "
                             "recorded, run it as a new version of the sweep (trials of unchanged "
                             "configurations are kept) instead of refusing")
    parser.add_argument("--db-busy-timeout", default=DEFAULT_BUSY_TIMEOUT_S, metavar="SECONDS",
                        help="how long a write waits for another process's lock on the database before "
                             "the sweep stops, keeping unwritten trials for --resume "
                             f"(default {DEFAULT_BUSY_TIMEOUT_S:g})")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the trials with their predicted memory and exit")
    parser.add_argument("--stop-after", type=parse_duration, default=None, metavar="DURATION",
                        help="start no trial after this long (e.g. 3600, 45m, 2h); trials already running "
                             "finish, the rest are left for --resume (for time-limited jobs)")
    parser.add_argument("--storage", default=None,
                        help="where trials keep checkpoints and best models: a folder or a URI such as "
                             "s3://bucket/prefix (default: [checkpoint] storage of the spec, else "
                             "checkpoints/ beside the database)")


def run(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    retry = parse_retry(args.retry)
    busy_timeout = parse_seconds("--db-busy-timeout", args.db_busy_timeout)
    connect_timeout = parse_seconds("--connect-timeout", args.connect_timeout)
    if retry and spec.search.kind != "grid":
        raise SweepError("--retry: only a grid search retries trials (an optuna search draws new samples)")
    db_path = check_database_path(Path(args.db) if args.db is not None else default_db_path(spec),
                                  writable=not args.dry_run)
    storage = storage_root(spec, db_path, getattr(args, "storage", None))
    resolve_trial_function(spec.run.trial_function)  # fail now rather than in every worker
    card_bytes = spec.resources.gpu_memory_bytes or _local_card_bytes()
    budget_bytes = budget_of(spec.memory_budget, card_bytes, spec.name)
    if args.dry_run:  # planning a GPU sweep elsewhere is fine: a fractional budget only gets a note
        plan = plan_trials(spec, card_bytes)
        done = _recorded_ids(db_path, spec.name)
        print_plan(spec, plan, budget_bytes, done, file=sys.stdout)
        return 0
    check_fractional_budgets(spec, card_bytes, address=args.address)
    if args.address is not None:
        check_cluster_answers(args.address, connect_timeout)
    try:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SweepError(f"{db_path}: cannot create its folder ({exc.strerror or exc})") from exc
    with DriverLock(db_path):
        remove_stale_run_folders()  # Tune's scratch folders of drivers that were killed
        plan = plan_trials(spec, card_bytes)
        with ResultsDB(db_path, busy_timeout_s=busy_timeout) as db:
            try:
                db_spool.replay(db, lambda message: _note(spec.name, message))
            except DatabaseBusyError as exc:
                spool = db_spool.spool_path(db_path)
                raise SweepError(f"{exc}; the unwritten trials stay in {spool}") from exc
            done = db.trial_ids(spec.name)
            if done and not (args.resume or retry):
                raise SweepError(
                    f"{db_path} already holds {len(done)} trial(s) of sweep {spec.name!r}: pass --resume to "
                    f"finish that sweep, or --db to write a new database"
                )
            version = resolve_spec_version(db, spec, [t.trial_id for t in plan],
                                           new_version=args.new_spec_version)
            writer = db_spool.SpoolingWriter(db, spec_hash=version.spec_hash, spec_version=version.version)
            stop_after = getattr(args, "stop_after", None)  # callers building a Namespace may leave it out
            deadline = None if stop_after is None else time.time() + stop_after
            try:
                execute_sweep(spec, plan, db, card_bytes=card_bytes, address=args.address, writer=writer,
                              retry=retry, deadline=deadline, storage=storage)
            except KeyboardInterrupt:
                counts = db.status_counts(spec.name)
                print(f"[{spec.name}] interrupted: {sum(counts.values())} trial(s) recorded in {db_path}; "
                      f"run the same command with --resume to finish", file=sys.stderr, flush=True)
                raise
            if writer.stopped is not None:
                return _report_unwritten(spec, db, writer)
            print_summary(spec, db, db_path, budget_bytes, plan, file=sys.stdout,
                          store=CheckpointStore(storage, spec.name))
    return 0


def _report_unwritten(spec: SweepSpec, db: ResultsDB, writer: db_spool.SpoolingWriter) -> int:
    """The sweep stopped because the database stayed locked: write what was kept if the lock is gone by
    now, else say which trials wait in the spool. Exit code 1."""
    spooled = list(dict.fromkeys(writer.spooled))
    db.busy_timeout_s = min(db.busy_timeout_s, 5.0)  # one last short try: the sweep has waited already
    with contextlib.suppress(DatabaseBusyError):
        db_spool.replay(db, lambda message: _note(spec.name, message))
        spooled = []
    print(f"[{spec.name}] stopped: {writer.stopped}", file=sys.stderr, flush=True)
    if spooled:
        print(f"[{spec.name}] {len(spooled)} finished trial(s) could not be written: {', '.join(spooled)}; "
              f"they are kept in {writer.path} and the next run writes them first", file=sys.stderr)
    print(f"[{spec.name}] once the lock is released, run the same command with --resume to finish the sweep",
          file=sys.stderr, flush=True)
    return 1


def parse_duration(text: str) -> float:
    """Seconds from "90", "90s", "45m" or "2h" (argparse type: a bad value is one line, exit 2)."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    value = text.strip().lower()
    scale = units.get(value[-1:])
    number = value[:-1] if scale is not None else value
    try:
        seconds = float(number) * (scale or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 3600, 45m, 2h)") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive, finite duration")
    return seconds


def storage_root(spec: SweepSpec, db_path: Path, option: str | None = None) -> str:
    """Where the sweep's checkpoints and models go: --storage, else the spec's [checkpoint] storage, else
    `checkpoints/` beside the database (a local folder made absolute, or a URI as given)."""
    from study.checkpoint_store import absolute_root

    return absolute_root(option or spec.checkpoint.storage or db_path.parent / "checkpoints")


# ----------------------------------------------------------------------------------------------------
# planning: which trials, and which the memory model rules out


@dataclass(frozen=True)
class PlannedTrial:
    trial_id: str
    config: TrainConfig
    budget_bytes: int | None = None
    predicted_peak_bytes: int | None = None
    num_items: int | None = None
    num_users: int | None = None
    dataset_source: str | None = None  # what the driver read for this trial's dataset (file or spec)
    dataset_sha256: str | None = None

    @property
    def over_budget(self) -> bool:
        return (self.budget_bytes is not None and self.predicted_peak_bytes is not None
                and self.predicted_peak_bytes > self.budget_bytes)

    @property
    def invalid_reason(self) -> str | None:
        """Why the trial cannot run on its dataset (known once the catalogue size is), else None."""
        return None if self.num_items is None else catalogue_error(self.config, self.num_items)


def catalogue_error(config: TrainConfig, num_items: int) -> str | None:
    """Why `config` cannot run on a catalogue of `num_items` items (`check_for_catalogue`), else None."""
    try:
        check_for_catalogue(config, num_items)
    except ConfigError as exc:
        return f"{exc} of {config.dataset}; not launched"
    return None


_warned_fractions: set[str] = set()


def budget_of(memory_budget: str | None, card_bytes: int | None, sweep: str | None = None) -> int | None:
    """A budget in bytes as far as it can be known here: None without a budget, or for a fraction of
    an unknown card (workers still enforce it on their card; nothing is ruled out by prediction)."""
    if memory_budget is None:
        return None
    try:
        return parse_budget(memory_budget, card_bytes)
    except ValueError:
        if card_bytes is not None:
            raise
        if sweep is not None and memory_budget not in _warned_fractions:
            _warned_fractions.add(memory_budget)
            _note(sweep, f"memory_budget {memory_budget!r} is a fraction of an unknown card: set "
                         "resources.gpu_memory to rule out configurations predicted over it")
        return None


def _local_card_bytes() -> int | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.get_device_properties(0).total_memory)


def plan_trials(spec: SweepSpec, card_bytes: int | None) -> list[PlannedTrial]:
    """Every grid point (for Optuna: every candidate) with its budget and predicted peak memory. Loads each
    dataset once, on the driver, to know the catalogue size."""
    predictor = _MemoryPredictor(spec.name, card_bytes)
    plan = []
    for config in spec.grid():
        predicted, size = predictor.predict(config)
        budget = budget_of(config.memory_budget, card_bytes, spec.name)
        source, sha256 = predictor.identity.get((config.dataset, config.kcore), (None, None))
        plan.append(PlannedTrial(trial_id(spec.name, config), config, budget, predicted,
                                 size.num_items if size else None, size.num_users if size else None,
                                 dataset_source=source, dataset_sha256=sha256))
    return plan


class _MemoryPredictor:
    """The memory model's prediction (`predict_trial_memory`, as `cce-study plan` makes it) for each
    planned trial; each dataset is loaded once, for its catalogue and its users."""

    def __init__(self, sweep_name: str, card_bytes: int | None) -> None:
        self.sweep_name = sweep_name
        self.card_bytes = card_bytes
        self.sizes: dict[tuple[str, int], Any] = {}
        self.identity: dict[tuple[str, int], tuple[str, str]] = {}  # (source, sha256) of what was read
        self.loaded: dict[tuple[str, int], Any] = {}  # the datasets, while planning

    def predict(self, config: TrainConfig) -> tuple[int, Any]:
        """(predicted peak bytes, the dataset's DatasetSize). Each dataset is loaded once; a split it
        cannot support (a temporal split of positional time stamps) is refused here, before any worker
        starts."""
        from study.data import check_split, load_dataset
        from study.memory_model import DatasetSize, predict_trial_memory

        key = (config.dataset, config.kcore)
        if key not in self.sizes:
            data = load_dataset(config.dataset, kcore=config.kcore, progress=False)
            self.sizes[key] = DatasetSize.of(data)
            self.identity[key] = (data.source, data.sha256)
            self.loaded[key] = data
        check_split(self.loaded[key], config.split)
        size = self.sizes[key]
        return int(predict_trial_memory(config, size, gpu_total=self.card_bytes).total_bytes), size


def _recorded_ids(db_path: Path, sweep: str) -> set[str]:
    if not db_path.is_file():
        return set()
    return set(load_trials(db_path, sweep=sweep, spec_version="all")["trial_id"])


def axis_names(spec: SweepSpec) -> list[str]:
    names = ["dataset"] if len(spec.datasets) > 1 else []
    names += [name for name, _ in spec.axes]
    for extra in spec.extra_trials:
        names += [name for name in extra if name not in names]
    if spec.repeats > 1 and "seed" not in names:
        names.append("seed")
    return names


def print_plan(spec: SweepSpec, plan: Sequence[PlannedTrial], budget_bytes: int | None, done: set[str],
               *, file: Any) -> None:
    names = axis_names(spec)
    budget_text = format_bytes(budget_bytes) if budget_bytes is not None else (spec.memory_budget or "none")
    kind = ("grid" if spec.search.kind == "grid"
            else f"optuna, {spec.search.num_samples} samples drawn from these candidates")
    print(f"sweep {spec.name}: {len(plan)} trial(s) ({kind}); budget {budget_text}; "
          f"trial function {spec.run.trial_function}", file=file)
    header = ["trial_id", *names, "predicted", "action"]
    rows = []
    for trial in plan:
        if trial.trial_id in done:
            action = "recorded"
        elif trial.invalid_reason is not None:
            action = "failed (num_negatives > items)"
        elif trial.over_budget and spec.run.skip_predicted_over_budget:
            action = "predicted_over_budget"
        elif trial.over_budget:
            action = "run (predicted over budget)"
        else:
            action = "run"
        values = [_config_text(trial.config, name) for name in names]
        predicted = format_bytes(trial.predicted_peak_bytes)
        rows.append([trial.trial_id, *values, predicted, action])
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip(), file=file)
    actions = Counter(row[-1] for row in rows)
    print("  " + ", ".join(f"{action}: {count}" for action, count in sorted(actions.items())), file=file)


# ----------------------------------------------------------------------------------------------------
# the trial, as it runs in a Ray worker


@dataclass(frozen=True)
class TrialSettings:
    """What a worker needs besides its configuration; sent once through `tune.with_parameters`."""

    sweep: str
    trial_function: str
    card_bytes: int | None  # memory of one card as the driver knows it (for fractional budgets)
    # Optuna only: the fixed settings the sampled axes are merged into, and catalogue sizes by
    # (dataset, kcore) so the worker can rule out a sample predicted over budget.
    base_settings: dict[str, Any] | None = None
    num_items: dict[tuple[str, int], int] = field(default_factory=dict)
    num_users: dict[tuple[str, int], int] = field(default_factory=dict)
    skip_predicted_over_budget: bool = True
    # --stop-after: a trial whose worker starts after this time.time() runs nothing and leaves no row
    start_deadline: float | None = None
    # checkpoint settings with `storage` resolved to the absolute root; None or not enabled: none
    checkpoint: CheckpointSpec | None = None

    @property
    def checkpoints(self) -> CheckpointSpec | None:
        return self.checkpoint if self.checkpoint is not None and self.checkpoint.enabled else None

    def budget_bytes(self, config_values: dict[str, Any]) -> int | None:
        budget = config_values.get("memory_budget")
        try:
            return budget_of(budget, self.card_bytes or _local_card_bytes())
        except ValueError:
            return None


def resolve_trial_function(reference: str) -> Callable[..., Any]:
    """Import "package.module:function" (the driver's working directory is importable, as for workers)."""
    module_name, _, attribute = reference.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SweepError(f"run.trial_function: cannot import {module_name!r} ({exc})") from exc
    function = getattr(module, attribute, None)
    if not callable(function):
        raise SweepError(f"run.trial_function: {module_name!r} has no function {attribute!r}")
    return function


def trial_point(tune_config: dict[str, Any], settings: TrialSettings) -> tuple[str, dict[str, Any]]:
    """(trial id, TrainConfig dict) of a Tune trial: a grid point carries both, an Optuna sample
    carries the sampled axes only."""
    if "point" in tune_config:
        point = tune_config["point"]
        return point["trial_id"], dict(point["config"])
    if settings.base_settings is None:
        raise ValueError("tune_config: neither a grid point nor sampled axes with base settings")
    values = {**settings.base_settings, **tune_config.get("axes", {})}
    # every combination of the axes was validated with the spec, so this config is valid
    return trial_id(settings.sweep, TrainConfig.from_dict(values)), values


def execute_trial(config_values: dict[str, Any], settings: TrialSettings,
                  on_epoch: Callable[[EpochRecord], None] | None = None,
                  checkpointer: Checkpointer | None = None) -> TrialRecord:
    """Run one trial through the trial function; never raises (but KeyboardInterrupt / SystemExit).
    The checkpointer goes to trial functions that take a `checkpointer` argument (run_trial does)."""
    try:
        config = TrainConfig.from_dict(config_values)
    except Exception as exc:
        return TrialRecord(status="failed", config=config_values, error=_error_text(exc))
    budget_bytes = settings.budget_bytes(config_values)
    num_items = settings.num_items.get((config.dataset, config.kcore))
    invalid = None if num_items is None else catalogue_error(config, num_items)
    if invalid is not None:  # an Optuna sample (grid trials like it are recorded by the driver)
        return TrialRecord(status="failed", config=config.to_dict(), error=invalid, num_items=num_items,
                           memory=MemoryReport(budget_bytes=budget_bytes), finished_at=_utc_now())
    predicted = _worker_prediction(config, settings)
    if (settings.skip_predicted_over_budget and predicted is not None and budget_bytes is not None
            and predicted > budget_bytes):
        return predicted_over_budget_record(config, predicted, budget_bytes,
                                            settings.num_items.get((config.dataset, config.kcore)))
    try:
        function = resolve_trial_function(settings.trial_function)
        options: dict[str, Any] = {"on_epoch": on_epoch}
        if checkpointer is not None and _takes_argument(function, "checkpointer"):
            options["checkpointer"] = checkpointer
        result = function(config, **options)
        if not isinstance(result, TrialRecord):
            raise TypeError(f"{settings.trial_function} returned {type(result).__name__}, not a TrialRecord")
        record = result
    except Exception as exc:
        record = record_from_exception(config, exc, budget_bytes)
    if record.predicted_peak_bytes is None:
        record.predicted_peak_bytes = predicted
    if record.memory.budget_bytes is None:
        record.memory.budget_bytes = budget_bytes
    return record


def _takes_argument(function: Callable[..., Any], name: str) -> bool:
    import inspect

    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def _worker_prediction(config: TrainConfig, settings: TrialSettings) -> int | None:
    key = (config.dataset, config.kcore)
    num_items = settings.num_items.get(key)
    if num_items is None:
        return None
    from study.memory_model import DatasetSize, predict_trial_memory

    size = DatasetSize(num_items, settings.num_users.get(key))
    return int(predict_trial_memory(config, size, gpu_total=settings.card_bytes).total_bytes)


def record_from_exception(config: TrainConfig, exc: BaseException, budget_bytes: int | None) -> TrialRecord:
    """An escaped exception as a record: out-of-memory as `oom`/`over_budget`, anything else `failed`."""
    from study.memory import classify_out_of_memory, is_out_of_memory

    status: TrialStatus = "failed"
    if is_out_of_memory(exc):
        status = classify_out_of_memory(exc, budget_bytes)
    return TrialRecord(status=status, config=config.to_dict(), error=_error_text(exc),
                       memory=MemoryReport(budget_bytes=budget_bytes))


def predicted_over_budget_record(config: TrainConfig, predicted: int, budget_bytes: int,
                                 num_items: int | None) -> TrialRecord:
    return TrialRecord(
        status="predicted_over_budget", config=config.to_dict(),
        error=(f"predicted peak {format_bytes(predicted)} exceeds the budget of "
               f"{format_bytes(budget_bytes)}; not launched"),
        predicted_peak_bytes=predicted, memory=MemoryReport(budget_bytes=budget_bytes), num_items=num_items,
        finished_at=_utc_now(),
    )


def _error_text(exc: BaseException) -> str:
    """The exception on the first line (what summaries show), then the end of its traceback."""
    trace = "".join(traceback.format_exception(exc)).strip()
    return f"{type(exc).__name__}: {exc}\n{trace[-MAX_ERROR_CHARS:]}"


def final_result(trial: str, record: TrialRecord) -> dict[str, Any]:
    """The last result a trainable reports: the record, and the objectives and constraint for Optuna
    (finite numbers for every status: a trial that did not finish counts as quality 0, infeasible)."""
    budget_bytes = record.memory.budget_bytes
    peak = record.memory.peak_bytes or record.predicted_peak_bytes or budget_bytes or 0
    quality = record.val_metrics.get(QUALITY_METRIC) if record.status == "ok" else None
    if quality is None or not math.isfinite(quality):
        quality = 0.0
    if record.status != "ok":
        over = 1.0 + max(0.0, (peak - (budget_bytes or 0)) / GiB)
    elif budget_bytes is not None:
        over = (peak - budget_bytes) / GiB
    else:
        over = -1.0
    return {
        TRIAL_ID_KEY: trial,
        RECORD_KEY: json.dumps(record.to_dict(), sort_keys=True),
        "status": record.status,
        QUALITY_KEY: float(quality),
        MEMORY_KEY: peak / GiB,
        CONSTRAINT_KEY: float(over),
    }


def epoch_result(trial: str, epoch: EpochRecord) -> dict[str, Any]:
    result: dict[str, Any] = {TRIAL_ID_KEY: trial, "epoch": epoch.epoch, "train_loss": epoch.train_loss,
                              "epoch_seconds": epoch.epoch_seconds}
    for metric, value in epoch.val_metrics.items():
        with contextlib.suppress(ValueError):
            result[metric_column(metric, "val")] = value
    return result


def sweep_trainable(tune_config: dict[str, Any], settings: TrialSettings) -> None:
    """The Ray Tune function trainable: one trial, per-epoch reports, checkpoints (each its own report),
    one final report with the record."""
    from ray import tune

    # A crash by a fatal signal (SIGSEGV, SIGABRT, ...) then leaves its name and a traceback in the
    # worker's log, which the driver quotes in the trial's error (study.worker_death).
    faulthandler.enable()
    trial, config_values = trial_point(tune_config, settings)
    if settings.start_deadline is not None and time.time() > settings.start_deadline:
        tune.report({TRIAL_ID_KEY: trial, DEFERRED_KEY: True})  # no row: --resume runs it
        return

    def report_epoch(epoch: EpochRecord) -> None:
        tune.report(epoch_result(trial, epoch))

    checkpoints = settings.checkpoints
    checkpointer = TuneCheckpointer(trial, settings.sweep, checkpoints) if checkpoints is not None else None
    record = execute_trial(config_values, settings, on_epoch=report_epoch, checkpointer=checkpointer)
    tune.report(final_result(trial, record))


class TuneCheckpointer(Checkpointer):
    """A trial's checkpoints through Ray Tune's own mechanism.

    Saved with `tune.report(..., checkpoint=...)` into the trial's folder of this run under the sweep's
    storage (Tune keeps the latest only). Loaded from `tune.get_checkpoint()` when Tune restarted the
    trial after its worker died, else from the trial's latest checkpoint of an earlier run of the sweep
    (found by trial id: the sweep was resumed after its driver died). The best model goes to
    `<storage>/<sweep>/models/<trial id>/model.pt`. Pruning is the driver's job (`RecordingCallback`).
    """

    def __init__(self, trial: str, sweep: str, settings: CheckpointSpec) -> None:
        super().__init__(CheckpointPolicy(settings.every_epochs, settings.every_minutes),
                         keep_model=settings.keep_best_model)
        assert settings.storage is not None, "the driver resolves the storage root"
        self.trial = trial
        self.store = CheckpointStore(settings.storage, sweep)

    def load(self) -> TrainingState | None:
        from ray import tune

        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                return load_state(folder)
        found = self.store.latest_checkpoint(self.trial)
        if found is None:
            return None
        with tempfile.TemporaryDirectory(prefix="cce-study-checkpoint-") as folder:
            self.store.download(found, folder)
            return load_state(folder)

    def _write(self, state: TrainingState) -> int:
        from ray import tune

        with tempfile.TemporaryDirectory(prefix="cce-study-checkpoint-") as folder:
            size = save_state(state, folder)
            # the report copies the folder into the trial's storage before it returns
            tune.report({TRIAL_ID_KEY: self.trial, CHECKPOINT_EPOCH_KEY: state.epoch},
                        checkpoint=tune.Checkpoint.from_directory(folder))
        return size

    def _keep(self, payload: dict[str, Any]) -> str:
        return self.store.put_model(payload, self.trial)


# ----------------------------------------------------------------------------------------------------
# the driver


@dataclass
class Progress:
    """Counts for the progress lines on stderr."""

    sweep: str
    total: int
    statuses: Counter[str] = field(default_factory=Counter)
    running_trials: set[str] = field(default_factory=set)  # Tune's ids of trials started, not recorded
    started: float = field(default_factory=time.monotonic)
    # --stop-after: Tune's ids of trials that started past the deadline and will leave no row
    deferred_trials: set[str] = field(default_factory=set)
    deadline: float | None = None  # time.time() after which no trial starts

    def past_deadline(self) -> bool:
        return self.deadline is not None and time.time() > self.deadline

    def drained(self) -> bool:
        """Past the deadline with every trial that still runs one that will leave no row."""
        return self.past_deadline() and self.running_trials <= self.deferred_trials

    @property
    def running(self) -> int:
        return len(self.running_trials)

    def line(self, event: str) -> None:
        done = sum(self.statuses.values())
        by_status = ", ".join(f"{s} {n}" for s, n in sorted(self.statuses.items()))
        elapsed = time.monotonic() - self.started
        print(f"[{self.sweep} {elapsed:6.0f}s] {done}/{self.total} done ({by_status or 'none'}), "
              f"{self.running} running, {self.statuses.get('failed', 0)} failed | {event}",
              file=sys.stderr, flush=True)


def execute_sweep(spec: SweepSpec, plan: Sequence[PlannedTrial], db: ResultsDB, *,
                  card_bytes: int | None, address: str | None,
                  writer: db_spool.SpoolingWriter | None = None, retry: frozenset[str] = frozenset(),
                  deadline: float | None = None, storage: str | None = None) -> None:
    """Record predicted-over-budget trials, then run the rest with Ray Tune (skipping recorded ones, but
    those whose status is in `retry`). Trials are written through `writer` (default: straight to `db`);
    once it has stopped (the database stayed locked), nothing more is launched. With a `deadline`
    (time.time()), trials not started by then are left unrecorded for --resume. Checkpoints and models go
    under `storage` (default: `checkpoints/` beside the database)."""
    writer = writer or db_spool.SpoolingWriter(db)
    planned = {t.trial_id for t in plan}

    def recorded() -> dict[str, str]:
        """Status of every recorded trial of this plan (a new spec version keeps unchanged trials)."""
        return {key: status for key, status in db.trial_statuses(spec.name).items() if key in planned}

    def done_ids() -> set[str]:
        return {key for key, status in recorded().items() if status not in retry}

    done = done_ids()
    skip = spec.run.skip_predicted_over_budget
    root = storage_root(spec, db.path, storage)
    checkpoint = dataclasses.replace(spec.checkpoint, storage=root)
    store = CheckpointStore(root, spec.name)
    # what an earlier run left of trials recorded since (a driver killed after the row, before pruning)
    store.delete_checkpoints(done)
    store.remove_finished_runs()
    if spec.search.kind == "grid":
        for trial in plan:
            record = None
            if trial.trial_id not in done and trial.invalid_reason is not None:
                record = TrialRecord(
                    status="failed", config=trial.config.to_dict(), error=trial.invalid_reason,
                    num_items=trial.num_items, predicted_peak_bytes=trial.predicted_peak_bytes,
                    memory=MemoryReport(budget_bytes=trial.budget_bytes), finished_at=_utc_now())
            elif trial.trial_id not in done and skip and trial.over_budget:
                assert trial.predicted_peak_bytes is not None and trial.budget_bytes is not None
                record = predicted_over_budget_record(
                    trial.config, trial.predicted_peak_bytes, trial.budget_bytes, trial.num_items)
            if record is not None:
                record.dataset_source, record.dataset_sha256 = trial.dataset_source, trial.dataset_sha256
                writer.write(trial.trial_id, spec.name, record)
        done = done_ids() | set(writer.spooled)
        to_run = [t for t in plan if t.trial_id not in done]
        progress = Progress(spec.name, total=len(plan), statuses=Counter(
            status for key, status in recorded().items() if key in done), deadline=deadline)
        if not to_run or writer.stopped is not None:
            return
        again = len([t for t in to_run if t.trial_id in recorded()])
        progress.line(f"{len(to_run)} trial(s) to run" + (f" ({again} again: --retry)" if again else "")
                      + f", {len(done)} already recorded")
        settings = TrialSettings(spec.name, spec.run.trial_function, card_bytes,
                                 skip_predicted_over_budget=skip, start_deadline=deadline,
                                 checkpoint=checkpoint)
        param_space = {"point": _grid_search([
            {"trial_id": t.trial_id, "config": t.config.to_dict(), "gpus": gpu_share(spec, t, card_bytes)}
            for t in to_run])}
        with ray_session(address):
            _fit(spec, param_space, settings, writer, progress, num_samples=1, search_alg=None)
        return

    num_samples = (spec.search.num_samples or 0) - len(done)
    progress = Progress(spec.name, total=spec.search.num_samples or 0, statuses=Counter(recorded().values()),
                        deadline=deadline)
    if num_samples <= 0:
        return
    progress.line(f"{num_samples} sample(s) to run, {len(done)} already recorded")
    num_items = {(t.config.dataset, t.config.kcore): t.num_items for t in plan if t.num_items is not None}
    num_users = {(t.config.dataset, t.config.kcore): t.num_users for t in plan if t.num_users is not None}
    settings = TrialSettings(spec.name, spec.run.trial_function, card_bytes,
                             base_settings=spec.base_settings(spec.datasets[0]), num_items=num_items,
                             num_users=num_users, skip_predicted_over_budget=skip, start_deadline=deadline,
                             checkpoint=checkpoint)
    with ray_session(address):
        from ray import tune

        param_space = {"axes": {name: tune.choice(list(values)) for name, values in spec.axes}}
        searcher = make_optuna_search(spec, load_trials(db.path, sweep=spec.name))
        _fit(spec, param_space, settings, writer, progress, num_samples=num_samples, search_alg=searcher)
    # The search is complete: checkpoints of samples it never recorded (their run was interrupted and
    # the sampler did not propose them again) can no longer be continued.
    store.delete_checkpoints(store.checkpointed_trials() - db.trial_ids(spec.name))
    store.remove_finished_runs()


GPU_SHARE_STEP = 16  # card shares are whole sixteenths: few distinct placement-group shapes
PACKING_HEADROOM = 1.10


def gpu_share(spec: SweepSpec, trial: PlannedTrial, card_bytes: int | None) -> float:
    """GPUs a grid trial asks Ray for: `resources.gpus`, or with `pack_by_predicted_memory` the larger of
    that and the share of the card its predicted peak needs with 10% headroom (at most one card)."""
    share = spec.resources.gpus
    if not spec.resources.pack_by_predicted_memory or not card_bytes or trial.predicted_peak_bytes is None:
        return share
    needed = math.ceil(trial.predicted_peak_bytes * PACKING_HEADROOM / card_bytes * GPU_SHARE_STEP)
    return min(1.0, max(share, needed / GPU_SHARE_STEP))


def _grid_search(points: list[dict[str, Any]]) -> Any:
    from ray import tune

    return tune.grid_search(points)


def _fit(spec: SweepSpec, param_space: dict[str, Any], settings: TrialSettings,
         writer: db_spool.SpoolingWriter, progress: Progress, *, num_samples: int, search_alg: Any) -> None:
    """One Tune run: an experiment folder `run-<time>-<pid>` under `<storage>/<sweep>/`, one trial folder
    `<trial id>-<Tune's id>` each (so a later run finds a trial's checkpoints by its id)."""
    from ray import tune
    from ray.tune import PlacementGroupFactory
    from ray.tune.stopper import CombinedStopper

    _check_cluster_resources(spec)
    cpus, default_gpus = spec.resources.cpus, spec.resources.gpus

    def resources(tune_config: dict[str, Any]) -> Any:
        gpus = tune_config.get("point", {}).get("gpus", default_gpus)
        return PlacementGroupFactory([{"CPU": cpus, "GPU": gpus} if gpus else {"CPU": cpus}])

    trainable = tune.with_resources(tune.with_parameters(sweep_trainable, settings=settings), resources)
    # Tune's own result files are switched off; after fit it would warn that they are missing.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    assert settings.checkpoint is not None and settings.checkpoint.storage is not None
    store = CheckpointStore(settings.checkpoint.storage, spec.name)

    def trial_dirname(trial: Any) -> str:
        return store.trial_dirname(trial_point(trial.config, settings)[0], str(trial.trial_id))

    try:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                num_samples=num_samples, search_alg=search_alg, reuse_actors=False,
                max_concurrent_trials=spec.resources.max_concurrent,
                trial_name_creator=trial_dirname, trial_dirname_creator=trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=store.new_run_name(), storage_path=store.location, verbose=0,
                stop=CombinedStopper(make_deadline_stopper(progress), make_stopper(writer)),
                callbacks=[make_recording_callback(writer, settings, progress, store)],
                failure_config=tune.FailureConfig(max_failures=spec.checkpoint.max_retries, fail_fast=False),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
        tuner.fit()
    finally:
        # Tune's files of this run go when every trial of it has finished (no checkpoint left)
        store.remove_finished_runs()


def make_stopper(writer: db_spool.SpoolingWriter) -> Any:
    """A Tune stopper that ends the whole run once the database has stayed locked past its timeout."""
    from ray.tune.stopper import Stopper

    class DatabaseLockedStopper(Stopper):  # type: ignore[misc]
        def __init__(self, writer: db_spool.SpoolingWriter) -> None:
            self.writer: db_spool.SpoolingWriter | None = writer

        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            return False

        def stop_all(self) -> bool:
            return self.writer is not None and self.writer.stopped is not None

        def __getstate__(self) -> dict[str, Any]:
            # Pickled with the run config (for Tuner.restore, which sweeps never use); a database
            # connection cannot be pickled.
            return {"writer": None}

    return DatabaseLockedStopper(writer)


def _check_cluster_resources(spec: SweepSpec) -> None:
    import ray

    available = ray.cluster_resources()
    if spec.resources.gpus > available.get("GPU", 0):
        raise SweepError(f"resources.gpus: each trial asks for {spec.resources.gpus:g} GPU(s), the Ray "
                         f"cluster has {available.get('GPU', 0):g}")
    if spec.resources.cpus > available.get("CPU", 0):
        raise SweepError(f"resources.cpus: each trial asks for {spec.resources.cpus:g} CPU(s), the Ray "
                         f"cluster has {available.get('CPU', 0):g}")


def make_deadline_stopper(progress: Progress) -> Any:
    """Ends the Tune run once --stop-after has passed and only trials that will leave no row remain
    (without a deadline it never stops anything)."""
    from ray import tune

    class DeadlineStopper(tune.Stopper):  # type: ignore[misc]
        def __init__(self, progress: Progress) -> None:
            self.progress = progress
            self.announced = False

        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            return False

        def stop_all(self) -> bool:
            if not self.progress.drained():
                return False
            if not self.announced:
                self.announced = True
                self.progress.line("--stop-after reached and running trials finished: the trials not "
                                   "started are left for --resume")
            return True

    return DeadlineStopper(progress)


def make_recording_callback(writer: db_spool.SpoolingWriter, settings: TrialSettings, progress: Progress,
                            store: CheckpointStore | None = None) -> Any:
    """A Tune callback that writes every trial's row (built here: Ray is imported lazily) and deletes the
    checkpoints of trials that reported their record (a trial whose worker died keeps its last one)."""
    from ray import tune

    class RecordingCallback(tune.Callback):  # type: ignore[misc]
        def __init__(self, writer: db_spool.SpoolingWriter, settings: TrialSettings, progress: Progress,
                     store: CheckpointStore | None) -> None:
            self.writer: db_spool.SpoolingWriter | None = writer
            self.settings = settings
            self.progress = progress
            self.store = store
            self.recorded: set[str] = set()  # Tune's trial ids whose row is written
            self.reported: set[str] = set()  # ... of those, the ones whose record came from the trial

        def __getstate__(self) -> dict[str, Any]:
            # Tune pickles its run config for Tuner.restore, which sweeps never use (they resume from the
            # database); a database connection cannot be pickled.
            return {**self.__dict__, "writer": None}

        def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self.progress.running_trials.add(trial.trial_id)
            if self.progress.past_deadline():
                self.progress.deferred_trials.add(trial.trial_id)  # its worker will run nothing

        def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                            **info: Any) -> None:
            if result.get(DEFERRED_KEY):
                self.progress.deferred_trials.add(trial.trial_id)
                return
            if RECORD_KEY not in result:
                if "epoch" in result:
                    ndcg = result.get(metric_column(QUALITY_METRIC), float("nan"))
                    self.progress.line(f"{result.get(TRIAL_ID_KEY)} epoch {result['epoch']}: "
                                       f"loss {result.get('train_loss', float('nan')):.4f}, "
                                       f"val {QUALITY_METRIC} {ndcg:.4f}")
                return
            record = TrialRecord.from_dict(json.loads(result[RECORD_KEY]))
            self.write(trial, result[TRIAL_ID_KEY], record)
            self.reported.add(trial.trial_id)

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self.finish(trial, "the trial ended without reporting its record")
            if trial.trial_id in self.reported and self.store is not None:
                self.store.delete_checkpoints({trial_point(trial.config, self.settings)[0]})

        def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            failures = getattr(trial, "num_failures", "?")
            self.progress.line(f"{trial_point(trial.config, self.settings)[0]} worker died (failure "
                               f"{failures}): restarting the trial, from its last checkpoint if it has one")

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            attempts = getattr(trial, "num_failures", None)
            message = describe_worker_death(_trial_error_text(trial), _session_dir(trial))
            if attempts:  # Tune restarted the trial up to [checkpoint] max_retries times
                message = f"{attempts} attempt(s), the last: {message}"
            self.finish(trial, message)

        def finish(self, trial: Any, error: str) -> None:
            self.progress.running_trials.discard(trial.trial_id)
            if trial.trial_id in self.recorded or trial.trial_id in self.progress.deferred_trials:
                return
            if self.writer is not None and self.writer.stopped is not None:
                return  # stopped by the sweep (database locked), not failed: --resume runs it again
            trial_key, values = trial_point(trial.config, self.settings)
            budget = MemoryReport(budget_bytes=self.settings.budget_bytes(values))
            record = TrialRecord(status="failed", config=values, error=error, memory=budget)
            self.write(trial, trial_key, record)

        def write(self, trial: Any, trial_key: str, record: TrialRecord) -> None:
            if trial.trial_id in self.recorded:
                return
            assert self.writer is not None, "a restored callback has no database"
            written = self.writer.write(trial_key, self.settings.sweep, record)
            self.recorded.add(trial.trial_id)
            self.progress.running_trials.discard(trial.trial_id)
            self.progress.statuses[record.status] += 1
            where = "" if written else f" (database locked: kept in {self.writer.path})"
            self.progress.line(f"{trial_key} {describe_record(record)}{where}")

    return RecordingCallback(writer, settings, progress, store)


def _trial_error_text(trial: Any) -> str | None:
    """The error Tune saved for a failed trial (its error file on the driver's disk)."""
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        with contextlib.suppress(OSError):
            return Path(path).read_text(encoding="utf-8", errors="replace")
    with contextlib.suppress(Exception):
        return trial.get_error()  # type: ignore[no-any-return]
    return None


def _session_dir(trial: Any) -> Path | None:
    """The Ray session folder, where the workers' logs are: the trial's local folder lies in it."""
    found = session_dir_of(getattr(trial, "local_path", None))
    if found is None:
        with contextlib.suppress(Exception):
            import ray

            node = ray._private.worker.global_worker.node  # no public API names the session folder
            if node is not None:
                found = session_dir_of(node.get_session_dir_path())
    return found


def describe_record(record: TrialRecord) -> str:
    parts: list[str] = [record.status]
    quality = record.val_metrics.get(QUALITY_METRIC)
    if quality is not None:
        parts.append(f"val {QUALITY_METRIC} {quality:.4f}")
    if record.memory.peak_bytes is not None:
        parts.append(f"peak {format_bytes(record.memory.peak_bytes)}")
    elif record.predicted_peak_bytes is not None:
        parts.append(f"predicted {format_bytes(record.predicted_peak_bytes)}")
    if record.total_seconds is not None:
        parts.append(f"{record.total_seconds:.0f} s")
    if record.resumed_from_epoch is not None:
        parts.append(f"resumed after epoch {record.resumed_from_epoch}")
    if record.status != "ok" and record.error:
        parts.append(record.error.splitlines()[0][:200])
    return ", ".join(parts)


def make_optuna_search(spec: SweepSpec, recorded: Any) -> Any:
    """Multi-objective OptunaSearch (max val ndcg@10, min peak memory) with the budget as a constraint.

    Ray's OptunaSearch does not expose Optuna constraints, so a subclass sets `trial.set_constraint`
    (<= 0 is feasible) before telling Optuna the result. On --resume the recorded trials of the sweep
    are added to the Optuna study first, so the search continues from what it has already seen.
    """
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    seed = spec.search.seed
    sampler = (optuna.samplers.NSGAIISampler(seed=seed) if spec.search.sampler == "nsga2"
               else optuna.samplers.TPESampler(seed=seed, multivariate=True))
    axes = dict(spec.axes)

    class ConstrainedOptunaSearch(OptunaSearch):  # type: ignore[misc]
        def _setup_study(self, mode: Any) -> None:
            super()._setup_study(mode)
            space: Any = self._space  # a dict of Optuna distributions, converted from the param space
            for _, row in recorded.iterrows():
                config = json.loads(row["config_json"])  # the columns may differ (full CE: no negatives)
                params = {f"axes/{name}": config.get(name) for name in axes}
                if any(value not in axes[key.split("/", 1)[1]] for key, value in params.items()):
                    continue  # recorded under an older version of the spec's axes
                record = TrialRecord.from_dict(json.loads(row["record_json"]))
                result = final_result(row["trial_id"], record)
                study: Any = self._ot_study
                study.add_trial(optuna.trial.create_trial(
                    values=[result[QUALITY_KEY], result[MEMORY_KEY]], params=params,
                    distributions=space, constraints={CONSTRAINT_KEY: result[CONSTRAINT_KEY]},
                ))

        def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                              error: bool = False) -> None:
            ot_trial = self._ot_trials.get(trial_id)
            if result and result.get(DEFERRED_KEY):
                super().on_trial_complete(trial_id, None, error=True)  # not run: no values for Optuna
                return
            if ot_trial is not None and result and CONSTRAINT_KEY in result:
                ot_trial.set_constraint(CONSTRAINT_KEY, float(result[CONSTRAINT_KEY]))
            super().on_trial_complete(trial_id, result, error)

    return ConstrainedOptunaSearch(metric=[QUALITY_KEY, MEMORY_KEY], mode=["max", "min"], sampler=sampler)


def _python_value(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


# ----------------------------------------------------------------------------------------------------
# Ray


def worker_environment() -> dict[str, str]:
    """Environment variables for Ray workers: the project and the driver's cwd importable, data paths."""
    import study

    paths = [os.getcwd(), str(Path(study.__file__).resolve().parents[1])]
    paths += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), "RAY_CHDIR_TO_TRIAL_DIR": "0",
           # Ray leaves CUDA_VISIBLE_DEVICES unset for a worker given no GPU, which then sees every
           # card: a `resources.gpus = 0` trial on device "auto" would train on GPU 0, unscheduled.
           # With this Ray sets it to "" for such workers, so they see no GPU.
           "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1"}
    for name in PASS_THROUGH_PATH_VARIABLES:
        if os.environ.get(name):
            parts = [str(Path(p).expanduser().resolve()) for p in os.environ[name].split(os.pathsep) if p]
            env[name] = os.pathsep.join(parts)
    for name in PASS_THROUGH_VARIABLES:
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def configure_ray_environment(*, local: bool) -> None:
    """Settings that must be in place before Ray starts
    (docs/design.md#pitfalls-seen-with-ray-optuna-and-nvml)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # the database is the record
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C: KeyboardInterrupt, then shutdown
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter is silent at verbose=0
    # per-epoch reports carry no objectives (Optuna only reads the final one of a multi-objective trial)
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # Tune snapshots its experiment state at each checkpoint (num_to_keep is set) and warns when that
    # happens often; sweeps never restore from that state (they resume from the database)
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if local:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def start_ray(address: str | None, *, num_cpus: int | None = None) -> None:
    """Start a local Ray instance (address None) or join a cluster, with the workers' environment."""
    configure_ray_environment(local=address is None)
    import ray

    options: dict[str, Any] = {
        "runtime_env": {"env_vars": worker_environment()},
        "log_to_driver": False,
        "logging_level": logging.WARNING,
    }
    if address is None:
        # "local" rather than None: None would join any cluster found on this machine.
        ray.init(address="local", include_dashboard=False, num_cpus=num_cpus, **options)
    else:
        ray.init(address=address, **options)


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Ray for the duration of a sweep; an already initialised Ray (tests, notebooks) is used and kept."""
    configure_ray_environment(local=address is None)
    import ray

    if ray.is_initialized():
        yield
        return
    start_ray(address)
    try:
        yield
    finally:
        ray.shutdown()


# ----------------------------------------------------------------------------------------------------
# summary


def print_summary(spec: SweepSpec, db: ResultsDB, db_path: Path, budget_bytes: int | None,
                  plan: Sequence[PlannedTrial], *, file: Any, store: CheckpointStore | None = None) -> None:
    planned = {t.trial_id for t in plan}
    statuses = db.trial_statuses(spec.name)
    counts = Counter(status for key, status in statuses.items() if key in planned)
    total = sum(counts.values())
    by_status = ", ".join(f"{status} {count}" for status, count in sorted(counts.items()))
    print(f"sweep {spec.name}: {total} trial(s) recorded in {db_path} ({by_status})", file=file)
    if spec.search.kind == "grid" and total < len(plan):
        print(f"  {len(plan) - total} trial(s) have no row yet: run again with --resume", file=file)
    if store is not None:
        usage = store.disk_usage()
        print(f"  storage {store.location}: {format_bytes(usage.total_bytes)} (best models of "
              f"{usage.models} trial(s) {format_bytes(usage.model_bytes)}, checkpoints of "
              f"{usage.trials_with_checkpoints} unfinished trial(s) {format_bytes(usage.checkpoint_bytes)})",
              file=file)
    if budget_bytes is None:
        return
    from study.analysis import best_under_budget

    trials = load_trials(db_path, sweep=spec.name)
    for dataset in spec.datasets:
        best, _ = best_under_budget(trials, budget_bytes, QUALITY_METRIC, dataset=dataset, split=spec.split)
        if best is None:
            print(f"  {dataset}: no ok trial under {format_bytes(budget_bytes)}", file=file)
            continue
        names = [n for n in axis_names(spec) if n != "dataset"]
        setting = ", ".join(f"{n}={_setting_text(best, n)}" for n in names if n in best.index)
        print(f"  best under {format_bytes(budget_bytes)} on {dataset}: {best['trial_id']} ({setting}): "
              f"val {QUALITY_METRIC} {best[metric_column(QUALITY_METRIC)]:.4f}, "
              f"peak {format_bytes(best['peak_bytes'])}", file=file)
    command = ["cce-study", "pareto", "--db", str(db_path), "--out", str(db_path.parent / "figures")]
    if spec.memory_budget is not None:
        command += ["--budgets", spec.memory_budget]
    print(f"  figures: {shlex.join(command)}", file=file)


def _config_text(config: TrainConfig, name: str) -> str:
    if name == "num_negatives" and config.loss == "ce":
        return "full"  # full-catalogue CE has no number of negatives
    return str(getattr(config, name))


def _setting_text(row: Any, name: str) -> str:
    value = _python_value(row[name])
    if name == "num_negatives" and row.get("loss") == "ce":
        return "full"  # full-catalogue CE has no number of negatives
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # an integer column with NULLs (full CE's negatives) reads as floats
    return str(value)


def _note(sweep: str, message: str) -> None:
    print(f"[{sweep}] note: {message}", file=sys.stderr, flush=True)


def _utc_now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


__all__ = [
    "configure", "run", "execute_sweep", "plan_trials", "PlannedTrial", "TrialSettings", "execute_trial",
    "record_from_exception", "final_result", "sweep_trainable", "start_ray", "ray_session",
    "worker_environment", "make_optuna_search", "resolve_trial_function", "SweepError", "main",
]


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m study.sweep ...`: the sweep command alone (same arguments and exit codes)."""
    from study.cli import main_for

    return main_for("sweep", None if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(main())
