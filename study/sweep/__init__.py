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
    "CHECKPOINT_EPOCH_KEY": "driver",
    "CONSTRAINT_KEY": "driver",
    "DEFAULT_BUSY_TIMEOUT_S": "driver",
    "DEFAULT_CONNECT_TIMEOUT_S": "driver",
    "DEFERRED_KEY": "driver",
    "GPU_SHARE_STEP": "driver",
    "MAX_ERROR_CHARS": "driver",
    "MEMORY_KEY": "driver",
    "PACKING_HEADROOM": "driver",
    "PASS_THROUGH_PATH_VARIABLES": "driver",
    "PASS_THROUGH_VARIABLES": "driver",
    "QUALITY_KEY": "driver",
    "QUALITY_METRIC": "driver",
    "RECORD_KEY": "driver",
    "RETRYABLE_STATUSES": "driver",
    "TRIAL_ID_KEY": "driver",
    "PlannedTrial": "driver",
    "Progress": "driver",
    "SweepError": "driver",
    "TrialSettings": "driver",
    "TuneCheckpointer": "driver",
    "axis_names": "driver",
    "budget_of": "driver",
    "catalogue_error": "driver",
    "configure": "driver",
    "configure_ray_environment": "driver",
    "describe_record": "driver",
    "epoch_result": "driver",
    "execute_sweep": "driver",
    "execute_trial": "driver",
    "final_result": "driver",
    "gpu_share": "driver",
    "main": "driver",
    "make_deadline_stopper": "driver",
    "make_optuna_search": "driver",
    "make_recording_callback": "driver",
    "make_stopper": "driver",
    "parse_duration": "driver",
    "plan_trials": "driver",
    "predicted_over_budget_record": "driver",
    "print_plan": "driver",
    "print_summary": "driver",
    "ray_session": "driver",
    "record_from_exception": "driver",
    "resolve_trial_function": "driver",
    "run": "driver",
    "start_ray": "driver",
    "storage_root": "driver",
    "sweep_trainable": "driver",
    "trial_point": "driver",
    "worker_environment": "driver",
    "trial_id": "spec",
}

if TYPE_CHECKING:  # the names type checkers see (__all__ lists them: MOVED_NAMES)
    from study.sweep.driver import (
        CHECKPOINT_EPOCH_KEY,
        CONSTRAINT_KEY,
        DEFAULT_BUSY_TIMEOUT_S,
        DEFAULT_CONNECT_TIMEOUT_S,
        DEFERRED_KEY,
        GPU_SHARE_STEP,
        MAX_ERROR_CHARS,
        MEMORY_KEY,
        PACKING_HEADROOM,
        PASS_THROUGH_PATH_VARIABLES,
        PASS_THROUGH_VARIABLES,
        QUALITY_KEY,
        QUALITY_METRIC,
        RECORD_KEY,
        RETRYABLE_STATUSES,
        TRIAL_ID_KEY,
        PlannedTrial,
        Progress,
        SweepError,
        TrialSettings,
        TuneCheckpointer,
        axis_names,
        budget_of,
        catalogue_error,
        configure,
        configure_ray_environment,
        describe_record,
        epoch_result,
        execute_sweep,
        execute_trial,
        final_result,
        gpu_share,
        main,
        make_deadline_stopper,
        make_optuna_search,
        make_recording_callback,
        make_stopper,
        parse_duration,
        plan_trials,
        predicted_over_budget_record,
        print_plan,
        print_summary,
        ray_session,
        record_from_exception,
        resolve_trial_function,
        run,
        start_ray,
        storage_root,
        sweep_trainable,
        trial_point,
        worker_environment,
    )
    from study.sweep.spec import (
        trial_id,
    )

__all__ = list(MOVED_NAMES)


def __getattr__(name: str) -> Any:
    module = MOVED_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
