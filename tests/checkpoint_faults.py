"""Trial functions for the checkpoint tests under Ray (same signature as `study.training.trainer.run_trial`).

`killed_after_checkpoint` runs the real trainer and SIGKILLs its own worker right after saving the
checkpoint of epoch KILL_AFTER_EPOCH, the first time only: a marker file in the sweep's storage folder
says it happened (a Ray worker started before the test cannot be handed an environment variable).
`slow_trial` is the real trainer with SLOW_EPOCH_SECONDS of sleep after each epoch, so that a test can
kill the driver while a trial is in the middle of its epochs.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import torch

from study.config import TrainConfig
from study.record import EpochRecord, TrialRecord
from study.sweep.trial import TuneCheckpointer
from study.training.checkpoint import Checkpointer, TrainingState
from study.training.trainer import run_trial

KILL_AFTER_EPOCH = 3
SLOW_EPOCH_SECONDS = 0.5
OnEpoch = Callable[[EpochRecord], None] | None


def kill_marker(checkpointer: TuneCheckpointer) -> Path:
    """In the sweep's folder of the storage (local in the tests, also when given as a file:// URI)."""
    return Path(checkpointer.store.path) / f"killed-{checkpointer.trial}"


def killed_after_checkpoint(config: TrainConfig, *, on_epoch: OnEpoch = None,
                            checkpointer: Checkpointer | None = None) -> TrialRecord:
    torch.set_num_threads(1)  # as the uninterrupted run it is compared with
    if checkpointer is not None:
        assert isinstance(checkpointer, TuneCheckpointer), "a trial function for sweeps"
        marker = kill_marker(checkpointer)
        save = checkpointer.save

        def save_then_die(state: TrainingState) -> int:
            size = save(state)
            if state.epoch == KILL_AFTER_EPOCH and not marker.exists():
                marker.write_text(f"{os.getpid()}\n")
                os.kill(os.getpid(), signal.SIGKILL)
            return size

        checkpointer.save = save_then_die  # type: ignore[method-assign]
    return run_trial(config, on_epoch=on_epoch, checkpointer=checkpointer)


def slow_trial(config: TrainConfig, *, on_epoch: OnEpoch = None,
               checkpointer: Checkpointer | None = None) -> TrialRecord:
    torch.set_num_threads(1)

    def report_slowly(epoch: EpochRecord) -> None:
        if on_epoch is not None:
            on_epoch(epoch)
        time.sleep(SLOW_EPOCH_SECONDS)

    return run_trial(config, on_epoch=report_slowly, checkpointer=checkpointer)
