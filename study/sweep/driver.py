"""The Ray driver of a sweep: it runs the planned trials with Ray Tune and writes their records.

Every trial runs in its own Ray worker process (function trainable, no actor reuse), so GPU memory is
returned between trials. The driver alone writes the database, from a Tune callback: the trainable
reports per-epoch progress and one final result that carries the serialised TrialRecord. Trials never
fail as far as Tune is concerned: the trainable turns every exception into a record (`failed`, `oom`,
`over_budget`). A worker that dies (killed, node lost) is restarted by Tune up to `[checkpoint]
max_retries` times, from the trial's last checkpoint; beyond that the callback records a `failed` row.
Configurations the memory model predicts over budget are recorded as `predicted_over_budget` without
launching. A grid search runs the planned trials; an Optuna search draws from them (multi-objective,
the budget as a constraint).

Ray is imported lazily: `cce-study` builds every command's parser on start and Ray takes seconds to import.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from study.database.results_db import ResultsDB, load_trials, metric_column
from study.record import MemoryReport, TrialRecord
from study.sweep import db_spool
from study.sweep.checkpoint_store import CheckpointStore
from study.sweep.planning import PlannedTrial
from study.sweep.preflight import SweepError
from study.sweep.spec import SearchSpec, SweepSpec
from study.sweep.trial import (
    CONSTRAINT_KEY,
    DEFERRED_KEY,
    MEMORY_KEY,
    QUALITY_KEY,
    QUALITY_METRIC,
    RECORD_KEY,
    TRIAL_ID_KEY,
    TrialSettings,
    final_result,
    predicted_over_budget_record,
    sweep_trainable,
    trial_point,
    utc_now,
)
from study.sweep.worker_death import describe_worker_death, session_dir_of
from study.units import format_bytes

# Environment the driver passes to Ray workers (made absolute: workers do not share the driver's cwd).
PASS_THROUGH_PATH_VARIABLES = ("CCE_STUDY_DATA_PATH", "CCE_STUDY_CACHE")
PASS_THROUGH_VARIABLES = ("TRITON_INTERPRET",)


def storage_root(spec: SweepSpec, db_path: Path, option: str | None = None) -> str:
    """Where the sweep's checkpoints and models go: --storage, else the spec's [checkpoint] storage, else
    `checkpoints/` beside the database (a local folder made absolute, or a URI as given)."""
    from study.sweep.checkpoint_store import absolute_root

    return absolute_root(option or spec.checkpoint.storage or db_path.parent / "checkpoints")


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
    planned_ids = {t.trial_id for t in plan}

    def recorded() -> dict[str, str]:
        """Status of every recorded trial of this plan (a new spec version keeps unchanged trials)."""
        return {key: status for key, status in db.trial_statuses(spec.name).items() if key in planned_ids}

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
                    memory=MemoryReport(budget_bytes=trial.budget_bytes), finished_at=utc_now())
            elif trial.trial_id not in done and skip and trial.over_budget:
                assert trial.predicted_peak_bytes is not None and trial.budget_bytes is not None
                record = predicted_over_budget_record(
                    trial.config, trial.predicted_peak_bytes, trial.budget_bytes, trial.num_items)
            if record is not None:
                record.dataset_source, record.dataset_sha256 = trial.dataset_source, trial.dataset_sha256
                writer.write(trial.trial_id, spec.name, record)
        recorded_before = done
        done = done_ids() | set(writer.spooled)
        to_run = [t for t in plan if t.trial_id not in done]
        progress = Progress(spec.name, total=len(plan), statuses=Counter(
            status for key, status in recorded().items() if key in done), deadline=deadline)
        if not to_run or writer.stopped is not None:
            return
        again = len([t for t in to_run if t.trial_id in recorded()])
        not_run = len(done - recorded_before)  # rows this run wrote from the plan alone
        progress.line(f"{len(to_run)} trial(s) to run" + (f" ({again} again: --retry)" if again else "")
                      + (f", {len(recorded_before)} already recorded" if recorded_before else "")
                      + (f", {not_run} recorded without running (predicted over the budget, or invalid)"
                         if not_run else ""))
        settings = TrialSettings(spec.name, spec.run.trial_function, card_bytes,
                                 planned={t.trial_id: t for t in to_run}, skip_predicted_over_budget=skip,
                                 start_deadline=deadline, checkpoint=checkpoint)
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
    # every sample the search may draw is a planned candidate, predicted already
    settings = TrialSettings(spec.name, spec.run.trial_function, card_bytes,
                             base_settings=spec.base_settings(spec.datasets[0]),
                             planned={t.trial_id: t for t in plan}, skip_predicted_over_budget=skip,
                             start_deadline=deadline, checkpoint=checkpoint)
    with ray_session(address):
        param_space = optuna_param_space(spec)
        searcher = make_optuna_search(spec, load_trials(db.path, sweep=spec.name))
        _fit(spec, param_space, settings, writer, progress, num_samples=num_samples, search_alg=searcher)
    # The search is complete: checkpoints of samples it never recorded (their run was interrupted and
    # the sampler did not propose them again) can no longer be continued.
    store.delete_checkpoints(store.checkpointed_trials() - db.trial_ids(spec.name))
    store.remove_finished_runs()


GPU_SHARE_STEP = 16  # card shares are whole sixteenths: few distinct placement-group shapes
PACKING_HEADROOM = 1.10


def gpu_share(spec: SweepSpec, trial: PlannedTrial, card_bytes: int | None) -> float:
    """GPUs a trial asks Ray for (a grid point, or an Optuna sample of the same configuration):
    `resources.gpus`, or with `pack_by_predicted_memory` the larger of that and the share of the card its
    predicted peak needs with 10% headroom (at most one card)."""
    share = spec.resources.gpus
    if not spec.resources.pack_by_predicted_memory or not card_bytes or trial.predicted_peak_bytes is None:
        return share
    needed = math.ceil(trial.predicted_peak_bytes * PACKING_HEADROOM / card_bytes * GPU_SHARE_STEP)
    return min(1.0, max(share, needed / GPU_SHARE_STEP))


def trial_gpus(spec: SweepSpec, settings: TrialSettings, tune_config: dict[str, Any]) -> float:
    """GPUs a Tune trial asks for: a grid point carries its share; an Optuna sample gets the share its
    configuration's planned trial would (so `pack_by_predicted_memory` packs searches as it packs grids)."""
    if "point" in tune_config:
        return float(tune_config["point"].get("gpus", spec.resources.gpus))
    planned = settings.planned.get(trial_point(tune_config, settings)[0])
    return spec.resources.gpus if planned is None else gpu_share(spec, planned, settings.card_bytes)


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
    cpus = spec.resources.cpus

    def resources(tune_config: dict[str, Any]) -> Any:
        gpus = trial_gpus(spec, settings, tune_config)
        return PlacementGroupFactory([{"CPU": cpus, "GPU": gpus} if gpus else {"CPU": cpus}])

    trainable = tune.with_resources(tune.with_parameters(sweep_trainable, settings=settings), resources)
    # Tune's own result files are switched off; after fit it would warn that they are missing.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    assert settings.checkpoint is not None and settings.checkpoint.storage is not None
    store = CheckpointStore(settings.checkpoint.storage, spec.name)

    def trial_dirname(trial: Any) -> str:
        return store.trial_dirname(trial_point(trial.config, settings)[0], str(trial.trial_id))

    recording = make_recording_callback(writer, settings, progress, store)
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
                callbacks=[recording],
                failure_config=tune.FailureConfig(max_failures=spec.checkpoint.max_retries, fail_fast=False),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
        tuner.fit()
    finally:
        recording.prune()
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
            # ... of those, the ones whose record came from the trial: Tune's id -> the sweep's trial id
            self.reported: dict[str, str] = {}

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
            self.reported[trial.trial_id] = result[TRIAL_ID_KEY]

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self.finish(trial, "the trial ended without reporting its record")
            if trial.trial_id in self.reported and self.store is not None:
                self.store.delete_checkpoints({self.reported[trial.trial_id]})

        def prune(self) -> None:
            """Delete the checkpoints of every trial that reported its record. `on_trial_complete` does
            it trial by trial, but when a stopper ends the run (`--stop-after`: as soon as the last row is
            written) Tune stops the trials still finishing without calling it, which left one to three
            finished trials' checkpoints per device call on the H200."""
            if self.store is not None:
                self.store.delete_checkpoints(set(self.reported.values()))

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


# The objectives every Optuna search of a sweep optimises, in the order Optuna is told them: the final
# result's key of each and its direction. The memory budget is the constraint `CONSTRAINT_KEY` (<= 0 is
# feasible).
OPTUNA_OBJECTIVES: tuple[tuple[str, str], ...] = ((QUALITY_KEY, "max"), (MEMORY_KEY, "min"))


# Draws of already-recorded configurations an Optuna search answers from the record in a row before it trains
# one again (the sampler has converged on configurations it knows; more draws would only cost time).
OPTUNA_KNOWN_DRAWS = 200


def optuna_sampler(search: SearchSpec) -> Any:
    """The sampler of an Optuna search, from the spec's [search] `sampler` and `seed`: NSGA-II, or TPE
    (multivariate). Made fresh for each search; the sweep and `benchmarks/optuna_replay.py` both use it."""
    import optuna

    if search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=search.seed)
    return optuna.samplers.TPESampler(seed=search.seed, multivariate=True)


def optuna_param_space(spec: SweepSpec) -> dict[str, Any]:
    """The Tune param space of an Optuna search: one `tune.choice` per axis, under "axes"."""
    from ray import tune

    return {"axes": {name: tune.choice(list(values)) for name, values in spec.axes}}


def optuna_distributions(spec: SweepSpec) -> dict[str, Any]:
    """The Optuna distributions the sampler draws from: `optuna_param_space` as Ray Tune's OptunaSearch
    converts it (a categorical distribution per axis, named `axes/<axis>`, in the spec's order), made
    without Ray (tests/test_optuna_replay.py checks that both agree)."""
    import optuna

    return {f"axes/{name}": optuna.distributions.CategoricalDistribution(list(values))
            for name, values in spec.axes}


def optuna_params(spec: SweepSpec, config: dict[str, Any]) -> dict[str, Any] | None:
    """A configuration as Optuna parameters (`axes/<axis>`), or None where a value lies outside the
    spec's axes (recorded under an older version of them)."""
    axes = dict(spec.axes)
    params = {f"axes/{name}": config.get(name) for name in axes}
    if any(value not in axes[key.split("/", 1)[1]] for key, value in params.items()):
        return None
    return params


def optuna_params_key(params: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A configuration's Optuna parameters as a hashable key (the same configuration, the same key)."""
    return tuple(sorted(params.items()))


def optuna_values(result: dict[str, Any]) -> list[float]:
    """The objective values Optuna is told for a trial's final result, in `OPTUNA_OBJECTIVES` order."""
    return [float(result[key]) for key, _ in OPTUNA_OBJECTIVES]


def set_optuna_constraint(ot_trial: Any, result: dict[str, Any]) -> None:
    """Sets the memory constraint of an Optuna trial from its final result (before it is told)."""
    ot_trial.set_constraint(CONSTRAINT_KEY, float(result[CONSTRAINT_KEY]))


def make_optuna_search(spec: SweepSpec, recorded: Any) -> Any:
    """Multi-objective OptunaSearch (max val ndcg@10, min peak memory) with the budget as a constraint.

    Ray's OptunaSearch does not expose Optuna constraints, so a subclass sets `trial.set_constraint`
    (<= 0 is feasible) before telling Optuna the result. On --resume the recorded trials of the sweep
    are added to the Optuna study first, so the search continues from what it has already seen.
    A configuration drawn again is not trained again: the sampler is told the result already recorded
    for it (by this sweep, earlier or in this run) and draws anew, so each of `num_samples` trains a
    configuration not seen before (the axes are categorical, so the sampler repeats itself often: on the
    study's 24-configuration grids TPE drew 17 distinct ones in its first 24 draws,
    results/study/optuna-replay/). Once every configuration of the axes is recorded the search ends early;
    after `OPTUNA_KNOWN_DRAWS` known draws in a row the last one is trained again rather than wait.
    """
    import optuna
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

    space_size = math.prod(len(values) for _, values in spec.axes)

    class ConstrainedOptunaSearch(OptunaSearch):  # type: ignore[misc]
        def _setup_study(self, mode: Any) -> None:
            super()._setup_study(mode)
            self._known: dict[tuple[tuple[str, Any], ...], dict[str, Any]] = {}
            space: Any = self._space  # a dict of Optuna distributions, converted from the param space
            for _, row in recorded.iterrows():
                # the columns may differ (full CE: no negatives)
                params = optuna_params(spec, json.loads(row["config_json"]))
                if params is None:
                    continue  # recorded under an older version of the spec's axes
                record = TrialRecord.from_dict(json.loads(row["record_json"]))
                result = final_result(row["trial_id"], record)
                self._known[optuna_params_key(params)] = result
                study: Any = self._ot_study
                study.add_trial(optuna.trial.create_trial(
                    values=optuna_values(result), params=params,
                    distributions=space, constraints={CONSTRAINT_KEY: result[CONSTRAINT_KEY]},
                ))

        def suggest(self, trial_id: str) -> Any:
            for attempt in range(OPTUNA_KNOWN_DRAWS):
                if len(self._known) >= space_size:
                    return Searcher.FINISHED  # every configuration of the axes has a result
                config = super().suggest(trial_id)
                if not isinstance(config, dict):
                    return config
                known = self._known.get(optuna_params_key(self._ot_trials[trial_id].params))
                if known is None or attempt == OPTUNA_KNOWN_DRAWS - 1:
                    return config
                # Told, not trained; then draw again under the same Tune trial id. Told here rather than
                # through on_trial_complete, which marks the trial id completed for good.
                ot_trial = self._ot_trials.pop(trial_id)
                set_optuna_constraint(ot_trial, known)
                study: Any = self._ot_study  # typed Optional by Ray; set up before any suggest
                study.tell(ot_trial, optuna_values(known))
            raise AssertionError("unreachable")

        def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                              error: bool = False) -> None:
            ot_trial = self._ot_trials.get(trial_id)
            if result and result.get(DEFERRED_KEY):
                super().on_trial_complete(trial_id, None, error=True)  # not run: no values for Optuna
                return
            if ot_trial is not None and result and CONSTRAINT_KEY in result:
                set_optuna_constraint(ot_trial, result)
                if not error:
                    self._known[optuna_params_key(ot_trial.params)] = result
            super().on_trial_complete(trial_id, result, error)

    return ConstrainedOptunaSearch(metric=[key for key, _ in OPTUNA_OBJECTIVES],
                                   mode=[mode for _, mode in OPTUNA_OBJECTIVES],
                                   sampler=optuna_sampler(spec.search))


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


__all__ = ["execute_sweep", "storage_root", "gpu_share", "trial_gpus", "make_optuna_search",
           "OPTUNA_OBJECTIVES",
           "optuna_sampler", "optuna_param_space", "optuna_distributions", "optuna_params",
           "optuna_params_key", "optuna_values", "OPTUNA_KNOWN_DRAWS",
           "set_optuna_constraint", "make_recording_callback",
           "make_stopper", "make_deadline_stopper", "describe_record", "Progress", "worker_environment",
           "configure_ray_environment", "start_ray", "ray_session"]
