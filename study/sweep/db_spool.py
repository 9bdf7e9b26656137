"""Finished trials the database would not take: kept in a side file next to it until it does.

When the results database stays locked by another process past the busy timeout, the sweep driver
appends each finished trial's record to `<database>.unwritten.jsonl` (one JSON object a line, flushed
and fsynced) and stops. The next run on the database (`--resume`) writes those records first and then
deletes the file, so a finished trial is never lost and never run again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study.database.results_db import DatabaseBusyError, ResultsDB
from study.record import TrialRecord


def spool_path(db_path: str | os.PathLike[str]) -> Path:
    path = Path(db_path)
    return path.with_name(path.name + ".unwritten.jsonl")


@dataclass(frozen=True)
class SpooledTrial:
    trial_id: str
    sweep: str
    record: TrialRecord
    spec_hash: str | None = None
    spec_version: int | None = None

    def to_json(self) -> str:
        return json.dumps({"trial_id": self.trial_id, "sweep": self.sweep, "spec_hash": self.spec_hash,
                           "spec_version": self.spec_version, "record": self.record.to_dict()},
                          sort_keys=True, allow_nan=True)

    @classmethod
    def from_json(cls, text: str) -> SpooledTrial:
        values: dict[str, Any] = json.loads(text)
        return cls(values["trial_id"], values["sweep"], TrialRecord.from_dict(values["record"]),
                   values.get("spec_hash"), values.get("spec_version"))


def append(path: Path, trial: SpooledTrial) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(trial.to_json() + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read(path: Path) -> tuple[list[SpooledTrial], int]:
    """The spooled trials, and how many lines could not be read (a line cut short by a kill)."""
    if not path.is_file():
        return [], 0
    trials, unreadable = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            trials.append(SpooledTrial.from_json(line))
        except (ValueError, KeyError, TypeError):
            unreadable += 1
    return trials, unreadable


def replay(db: ResultsDB, note: Callable[[str], None]) -> list[str]:
    """Write the trials spooled next to `db` into it (later lines win) and delete the spool; returns the
    trial ids written. DatabaseBusyError (spool kept) if the database is still locked."""
    path = spool_path(db.path)
    trials, unreadable = read(path)
    if not trials and not unreadable:
        return []
    for trial in trials:
        db.record_trial(trial.trial_id, trial.sweep, trial.record, spec_hash=trial.spec_hash,
                        spec_version=trial.spec_version)
    if unreadable:
        note(f"{path}: {unreadable} line(s) could not be read (cut short by a kill?); their trials "
             "will run again")
    path.unlink()
    if trials:
        note(f"wrote {len(trials)} trial(s) kept in {path} while the database was locked")
    return [trial.trial_id for trial in trials]


class SpoolingWriter:
    """Writes trials to the database; once the database has stayed locked past its busy timeout, every
    further trial goes to the spool without waiting again, and `stopped` asks the sweep to stop."""

    def __init__(self, db: ResultsDB, *, spec_hash: str | None = None,
                 spec_version: int | None = None) -> None:
        self.db = db
        self.spec_hash = spec_hash
        self.spec_version = spec_version
        self.path = spool_path(db.path)
        self.stopped: DatabaseBusyError | None = None
        self.spooled: list[str] = []

    def write(self, trial_id: str, sweep: str, record: TrialRecord) -> bool:
        """True when the trial is in the database, False when it was spooled."""
        if self.stopped is None:
            try:
                self.db.record_trial(trial_id, sweep, record, spec_hash=self.spec_hash,
                                     spec_version=self.spec_version)
                return True
            except DatabaseBusyError as exc:
                self.stopped = exc
        append(self.path, SpooledTrial(trial_id, sweep, record, self.spec_hash, self.spec_version))
        self.spooled.append(trial_id)
        return False


__all__ = ["SpoolingWriter", "SpooledTrial", "spool_path", "replay", "read", "append"]
