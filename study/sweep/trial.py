"""The trial as it runs in a Ray worker: `sweep_trainable` calls the trial function
(`run.trial_function`, by default `study.train:run_trial`) through `execute_trial`, which turns every
exception into a TrialRecord, and reports per-epoch progress, checkpoints (`TuneCheckpointer`) and one
final result carrying the serialised record, which the driver writes to the database.
"""

from __future__ import annotations

import contextlib
import faulthandler
import importlib
import json
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from study.config import TrainConfig
from study.database.results_db import metric_column
from study.record import EpochRecord, MemoryReport, TrialRecord, TrialStatus
from study.sweep.checkpoint_store import CheckpointStore
from study.sweep.planning import PlannedTrial, budget_of, local_card_bytes
from study.sweep.preflight import SweepError
from study.sweep.spec import CheckpointSpec, trial_id
from study.training.checkpoint import Checkpointer, CheckpointPolicy, TrainingState, load_state, save_state
from study.units import GiB, format_bytes

QUALITY_METRIC = "ndcg@10"
# Keys of the final result a trainable reports; the quality/memory pair are Optuna's objectives.
RECORD_KEY = "record_json"
TRIAL_ID_KEY = "cce_trial_id"
CHECKPOINT_EPOCH_KEY = "checkpoint_epoch"  # the report that carries a checkpoint: its epoch
QUALITY_KEY = "objective_val_ndcg_10"
MEMORY_KEY = "objective_peak_gib"
CONSTRAINT_KEY = "memory_over_budget_gib"
DEFERRED_KEY = "deferred_past_stop_after"
MAX_ERROR_CHARS = 8000


@dataclass(frozen=True)
class TrialSettings:
    """What a worker needs besides its configuration; sent once through `tune.with_parameters`."""

    sweep: str
    trial_function: str
    card_bytes: int | None  # memory of one card as the driver knows it (for fractional budgets)
    # Optuna only: the fixed settings the sampled axes are merged into
    base_settings: dict[str, Any] | None = None
    # the planned trials this run may launch, by trial id (for Optuna every candidate): each one's
    # catalogue and the prediction the driver made, which the worker uses instead of predicting again
    planned: dict[str, PlannedTrial] = field(default_factory=dict)
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
            return budget_of(budget, self.card_bytes or local_card_bytes())
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
    The checkpointer goes to trial functions that take a `checkpointer` argument (run_trial does), the
    plan's memory prediction to those that take a `prediction` argument (run_trial does)."""
    try:
        config = TrainConfig.from_dict(config_values)
    except Exception as exc:
        return TrialRecord(status="failed", config=config_values, error=_error_text(exc))
    budget_bytes = settings.budget_bytes(config_values)
    planned = settings.planned.get(trial_id(settings.sweep, config))
    num_items = planned.num_items if planned is not None else None
    invalid = planned.invalid_reason if planned is not None else None
    if invalid is not None:  # an Optuna sample (grid trials like it are recorded by the driver)
        return TrialRecord(status="failed", config=config.to_dict(), error=invalid, num_items=num_items,
                           memory=MemoryReport(budget_bytes=budget_bytes), finished_at=utc_now())
    prediction = planned.prediction if planned is not None else None
    predicted = prediction.total_bytes if prediction is not None else None
    if (settings.skip_predicted_over_budget and predicted is not None and budget_bytes is not None
            and predicted > budget_bytes):
        return predicted_over_budget_record(config, predicted, budget_bytes, num_items)
    try:
        function = resolve_trial_function(settings.trial_function)
        options: dict[str, Any] = {"on_epoch": on_epoch}
        if checkpointer is not None and _takes_argument(function, "checkpointer"):
            options["checkpointer"] = checkpointer
        if prediction is not None and _takes_argument(function, "prediction"):
            options["prediction"] = prediction
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


def record_from_exception(config: TrainConfig, exc: BaseException, budget_bytes: int | None) -> TrialRecord:
    """An escaped exception as a record: out-of-memory as `oom`/`over_budget`, anything else `failed`."""
    from study.memory.probes import classify_out_of_memory, is_out_of_memory

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
        finished_at=utc_now(),
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
    # worker's log, which the driver quotes in the trial's error (study.sweep.worker_death).
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


def utc_now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


__all__ = ["TrialSettings", "resolve_trial_function", "trial_point", "execute_trial",
           "record_from_exception", "predicted_over_budget_record", "final_result", "epoch_result",
           "sweep_trainable", "TuneCheckpointer", "utc_now"]
