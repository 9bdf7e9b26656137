# ruff: noqa: F401  (the imports below are for type checkers only; __all__ is MOVED_NAMES)
"""The sweep layer: it schedules trials, it does not train.

`study.sweep` was one module before study/ was grouped by stage; its names stay importable from here
(`from study.sweep import execute_trial, start_ray`), each from the module that holds it now, imported on
first use: parsing a specification (study.sweep.spec) must not import torch or Ray. `python -m study.sweep`
runs the command.
"""

import importlib
from typing import TYPE_CHECKING, Any

# name -> the module of study/sweep/ that holds it
MOVED_NAMES: dict[str, str] = {
    "DEFAULT_BUSY_TIMEOUT_S": "command",
    "configure": "command",
    "main": "command",
    "parse_duration": "command",
    "run": "command",
    "PlannedTrial": "planning",
    "axis_names": "planning",
    "budget_of": "planning",
    "catalogue_error": "planning",
    "plan_trials": "planning",
    "print_plan": "planning",
    "CHECKPOINT_EPOCH_KEY": "trial",
    "CONSTRAINT_KEY": "trial",
    "DEFERRED_KEY": "trial",
    "MAX_ERROR_CHARS": "trial",
    "MEMORY_KEY": "trial",
    "QUALITY_KEY": "trial",
    "QUALITY_METRIC": "trial",
    "RECORD_KEY": "trial",
    "TRIAL_ID_KEY": "trial",
    "TrialSettings": "trial",
    "TuneCheckpointer": "trial",
    "epoch_result": "trial",
    "execute_trial": "trial",
    "final_result": "trial",
    "predicted_over_budget_record": "trial",
    "record_from_exception": "trial",
    "resolve_trial_function": "trial",
    "sweep_trainable": "trial",
    "trial_point": "trial",
    "GPU_SHARE_STEP": "driver",
    "PACKING_HEADROOM": "driver",
    "PASS_THROUGH_PATH_VARIABLES": "driver",
    "PASS_THROUGH_VARIABLES": "driver",
    "Progress": "driver",
    "configure_ray_environment": "driver",
    "describe_record": "driver",
    "execute_sweep": "driver",
    "gpu_share": "driver",
    "make_deadline_stopper": "driver",
    "make_optuna_search": "driver",
    "make_recording_callback": "driver",
    "make_stopper": "driver",
    "ray_session": "driver",
    "start_ray": "driver",
    "storage_root": "driver",
    "worker_environment": "driver",
    "print_summary": "summary",
    "DEFAULT_CONNECT_TIMEOUT_S": "preflight",
    "RETRYABLE_STATUSES": "preflight",
    "SweepError": "preflight",
    "trial_id": "spec",
}

if TYPE_CHECKING:  # the names type checkers see (__all__ lists them: MOVED_NAMES)
    from study.sweep.command import DEFAULT_BUSY_TIMEOUT_S, configure, main, parse_duration, run
    from study.sweep.driver import (
        GPU_SHARE_STEP,
        PACKING_HEADROOM,
        PASS_THROUGH_PATH_VARIABLES,
        PASS_THROUGH_VARIABLES,
        Progress,
        configure_ray_environment,
        describe_record,
        execute_sweep,
        gpu_share,
        make_deadline_stopper,
        make_optuna_search,
        make_recording_callback,
        make_stopper,
        ray_session,
        start_ray,
        storage_root,
        worker_environment,
    )
    from study.sweep.planning import (
        PlannedTrial,
        axis_names,
        budget_of,
        catalogue_error,
        plan_trials,
        print_plan,
    )
    from study.sweep.preflight import DEFAULT_CONNECT_TIMEOUT_S, RETRYABLE_STATUSES, SweepError
    from study.sweep.spec import trial_id
    from study.sweep.summary import print_summary
    from study.sweep.trial import (
        CHECKPOINT_EPOCH_KEY,
        CONSTRAINT_KEY,
        DEFERRED_KEY,
        MAX_ERROR_CHARS,
        MEMORY_KEY,
        QUALITY_KEY,
        QUALITY_METRIC,
        RECORD_KEY,
        TRIAL_ID_KEY,
        TrialSettings,
        TuneCheckpointer,
        epoch_result,
        execute_trial,
        final_result,
        predicted_over_budget_record,
        record_from_exception,
        resolve_trial_function,
        sweep_trainable,
        trial_point,
    )

__all__ = list(MOVED_NAMES)


def __getattr__(name: str) -> Any:
    module = MOVED_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
