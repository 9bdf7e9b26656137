"""The SQLite results database: one row per trial, one row per (trial, epoch), one row per version of
each sweep's specification.

Written only by the sweep driver (a single writer, WAL mode so readers never block it); read by the
analysis side through `load_trials` / `load_epochs`, which open the file read-only. A write that finds
the database locked by another process is retried with backoff for up to `busy_timeout_s`, then raises
`DatabaseBusyError`. The schema is documented in docs/database.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import pandas as pd

from study.config import FIELDS_ADDED_LATER, METRIC_KS, TrainConfig, field_type
from study.database.sqlite_readonly import open_readonly
from study.record import DRAWN_NEGATIVES_KEY, TrialRecord, steady_state_seconds

T = TypeVar("T")
# How long a write waits, in all, for another process's lock on the database before giving up.
DEFAULT_BUSY_TIMEOUT_S = 600.0
# Each attempt lets SQLite itself wait this long for the lock; between attempts the wait doubles.
_ATTEMPT_TIMEOUT_S = 5.0
_MAX_BACKOFF_S = 30.0
# Which rows of a sweep `load_trials` returns: its latest spec version's, every row, or version N's.
SpecVersionChoice = Literal["latest", "all"] | int

METRIC_NAMES: tuple[str, ...] = ("ndcg", "hit", "mrr", "coverage")
METRIC_SPLITS: tuple[str, ...] = ("val", "test")
STEADY_COLUMN = "steady_epoch_seconds"


def metric_column(metric: str, split: str = "val") -> str:
    """Database column of a metric: `metric_column("ndcg@10")` -> "val_ndcg_10"."""
    name, sep, k = metric.partition("@")
    if not sep or name not in METRIC_NAMES or not k.isdigit():
        raise ValueError(
            f"metric: {metric!r} is not of the form <name>@<k> with name in {', '.join(METRIC_NAMES)}"
        )
    if split not in (*METRIC_SPLITS, "pop_val", "pop_test"):
        raise ValueError(f"split: {split!r} is not one of val, test, pop_val, pop_test")
    return f"{split}_{name}_{int(k)}"


def _metric_columns(split: str) -> list[str]:
    return [metric_column(f"{name}@{k}", split) for name in METRIC_NAMES for k in METRIC_KS]


def _sql_type(field: str) -> str:
    base = field_type(field).base
    if base is bool or base is int:
        return "INTEGER"
    if base is float:
        return "REAL"
    return "TEXT"


CONFIG_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrainConfig))
_BOOL_CONFIG_COLUMNS: tuple[str, ...] = tuple(
    name for name in CONFIG_COLUMNS if field_type(name).base is bool
)
_MEMORY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("peak_bytes", "INTEGER"),
    ("torch_max_allocated", "INTEGER"),
    ("torch_max_reserved", "INTEGER"),
    ("nvml_process_peak", "INTEGER"),
    ("cpu_peak_rss", "INTEGER"),
    ("gpu_name", "TEXT"),
    ("gpu_total", "INTEGER"),
    ("budget_bytes", "INTEGER"),
    ("predicted_peak_bytes", "INTEGER"),
    ("gpu_uuid", "TEXT"),
    ("gpu_index", "INTEGER"),
)
_RUN_COLUMNS: tuple[tuple[str, str], ...] = (
    ("best_epoch", "INTEGER"),
    ("epochs_run", "INTEGER"),
    ("mean_epoch_seconds", "REAL"),
    ("steady_epoch_seconds", "REAL"),
    ("sequences_per_second", "REAL"),
    ("total_seconds", "REAL"),
    ("num_users", "INTEGER"),
    ("num_items", "INTEGER"),
    ("num_interactions", "INTEGER"),
    ("versions_json", "TEXT"),
    ("git_commit", "TEXT"),
    ("started_at", "TEXT"),
    ("finished_at", "TEXT"),
    ("record_json", "TEXT"),  # the whole TrialRecord, for an exact round trip
    ("stop_reason", "TEXT"),
    ("host", "TEXT"),
    ("dataset_source", "TEXT"),
    ("dataset_sha256", "TEXT"),
    ("resumed_from_epoch", "INTEGER"),
    ("model_path", "TEXT"),
    ("checkpoint_seconds", "REAL"),
    ("checkpoint_bytes", "INTEGER"),
)

TRIAL_COLUMNS: dict[str, str] = {
    "trial_id": "TEXT PRIMARY KEY",
    "sweep": "TEXT NOT NULL",
    "status": "TEXT NOT NULL",
    "error": "TEXT",
    "spec_hash": "TEXT",  # content hash of the sweep specification that recorded the row
    "spec_version": "INTEGER",  # that specification's version number within the sweep (1, 2, ...)
    **{name: _sql_type(name) for name in CONFIG_COLUMNS},
    "config_json": "TEXT NOT NULL",
    "loss_impl_used": "TEXT",
    **{column: "REAL" for split in METRIC_SPLITS for column in _metric_columns(split)},
    **{column: "REAL" for split in ("pop_val", "pop_test") for column in _metric_columns(split)},
    **dict(_MEMORY_COLUMNS),
    **dict(_RUN_COLUMNS),
}
EPOCH_COLUMNS: dict[str, str] = {
    "trial_id": "TEXT NOT NULL",
    "epoch": "INTEGER NOT NULL",
    "train_loss": "REAL",
    "epoch_seconds": "REAL",
    "eval_seconds": "REAL",
    "sequences_per_second": "REAL",
    "steps": "INTEGER",
    **{column: "REAL" for column in _metric_columns("val")},
}


SPEC_VERSION_COLUMNS: dict[str, str] = {
    "sweep": "TEXT NOT NULL",
    "version": "INTEGER NOT NULL",
    "spec_hash": "TEXT NOT NULL",
    "spec_json": "TEXT NOT NULL",  # the parsed specification (study.sweep.spec.spec_content)
    "trial_ids_json": "TEXT NOT NULL",  # every trial id of its plan: the rows this version covers
    "created_at": "TEXT NOT NULL",
}


class DatabaseBusyError(RuntimeError):
    """The database stayed locked by another process for longer than the busy timeout."""


def _is_busy(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return True
    text = str(exc).lower()
    return "database is locked" in text or "database is busy" in text


@dataclass(frozen=True)
class SpecVersion:
    """One version of a sweep's specification as recorded in the database."""

    sweep: str
    version: int
    spec_hash: str
    content: dict[str, Any]
    trial_ids: frozenset[str]
    created_at: str


def check_database_path(path: str | os.PathLike[str], *, writable: bool) -> Path:
    """The path of a results database, checked before anything is run: ValueError with one line when it
    names a folder or, for writing, a place where the file cannot be created or written."""
    db_path = Path(path)
    if db_path.is_dir():
        raise ValueError(f"{db_path}: is a folder, not a results database file "
                         f"(e.g. {db_path / 'results.sqlite'})")
    if db_path.exists() and not db_path.is_file():
        raise ValueError(f"{db_path}: is not a regular file")
    if not writable:
        return db_path
    parent = _nearest_existing_parent(db_path)
    if not parent.is_dir():
        raise ValueError(f"{db_path}: cannot create the database there ({parent} is not a folder)")
    folder = db_path.parent if db_path.parent.exists() else parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{db_path}: cannot write there (no write permission on {folder})")
    if db_path.exists() and not os.access(db_path, os.W_OK):
        raise ValueError(f"{db_path}: the database file is not writable")
    return db_path


def _nearest_existing_parent(path: Path) -> Path:
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


def _create_table_sql(table: str, columns: dict[str, str], extra: str = "") -> str:
    body = ",\n  ".join(f'"{name}" {sql_type}' for name, sql_type in columns.items())
    return f"CREATE TABLE IF NOT EXISTS {table} (\n  {body}{extra}\n)"


def _metric_values(metrics: dict[str, float], split: str) -> dict[str, float | None]:
    known = set(_metric_columns(split))
    values: dict[str, float | None] = {}
    for metric, value in metrics.items():
        try:
            column = metric_column(metric, split)
        except ValueError:
            continue  # a metric outside the schema stays in record_json only
        if column in known:
            values[column] = None if value is None else float(value)
    return values


def trial_row(trial_id: str, sweep: str, record: TrialRecord, *, spec_hash: str | None = None,
              spec_version: int | None = None) -> dict[str, Any]:
    """The `trials` row of one record (every column present, None where unknown)."""
    row: dict[str, Any] = dict.fromkeys(TRIAL_COLUMNS)
    config = dict(record.config)
    row.update(trial_id=trial_id, sweep=sweep, status=record.status, error=record.error,
               spec_hash=spec_hash, spec_version=spec_version)
    for name in CONFIG_COLUMNS:
        value = config.get(name)
        row[name] = int(value) if isinstance(value, bool) else value
    if config.get("loss") == "ce":
        # Full CE scores the whole catalogue: the config's num_negatives (its default) means nothing.
        # config_json keeps it, so the TrainConfig (and the trial id) round-trips exactly.
        row["num_negatives"] = None
    row["config_json"] = json.dumps(config, sort_keys=True)
    row["loss_impl_used"] = record.loss_impl
    row.update(_metric_values(record.val_metrics, "val"))
    row.update(_metric_values(record.test_metrics, "test"))
    row.update(_metric_values(record.popularity_val_metrics, "pop_val"))
    row.update(_metric_values(record.popularity_test_metrics, "pop_test"))
    memory = record.memory
    row.update(
        peak_bytes=memory.peak_bytes,
        torch_max_allocated=memory.torch_max_allocated,
        torch_max_reserved=memory.torch_max_reserved,
        nvml_process_peak=memory.nvml_process_peak,
        cpu_peak_rss=memory.cpu_peak_rss,
        gpu_name=memory.gpu_name,
        gpu_total=memory.gpu_total,
        budget_bytes=memory.budget_bytes,
        predicted_peak_bytes=record.predicted_peak_bytes,
        gpu_uuid=memory.gpu_uuid,
        gpu_index=memory.gpu_index,
        best_epoch=record.best_epoch,
        epochs_run=len(record.epochs),
        mean_epoch_seconds=record.mean_epoch_seconds,
        steady_epoch_seconds=record.steady_epoch_seconds,
        sequences_per_second=record.sequences_per_second,
        total_seconds=record.total_seconds,
        num_users=record.num_users,
        num_items=record.num_items,
        num_interactions=record.num_interactions,
        versions_json=json.dumps(record.versions, sort_keys=True),
        git_commit=record.git_commit,
        started_at=record.started_at,
        finished_at=record.finished_at,
        record_json=json.dumps(record.to_dict(), sort_keys=True, allow_nan=True),
        stop_reason=record.stop_reason,
        host=record.host,
        dataset_source=record.dataset_source,
        dataset_sha256=record.dataset_sha256,
        resumed_from_epoch=record.resumed_from_epoch,
        model_path=record.model_path,
        checkpoint_seconds=record.checkpoint_seconds,
        checkpoint_bytes=record.checkpoint_bytes,
    )
    if record.device is not None:
        row["device"] = record.device  # what actually ran ("cuda:0"), rather than the requested "auto"
    return row


def epoch_rows(trial_id: str, record: TrialRecord) -> list[dict[str, Any]]:
    rows = []
    for epoch in record.epochs:
        row: dict[str, Any] = dict.fromkeys(EPOCH_COLUMNS)
        row.update(
            trial_id=trial_id,
            epoch=epoch.epoch,
            train_loss=epoch.train_loss,
            epoch_seconds=epoch.epoch_seconds,
            eval_seconds=epoch.eval_seconds,
            sequences_per_second=epoch.sequences_per_second,
            steps=epoch.steps,
        )
        row.update(_metric_values(epoch.val_metrics, "val"))
        rows.append(row)
    return rows


def _insert_sql(table: str, columns: Sequence[str], *, replace: bool) -> str:
    names = ", ".join(f'"{c}"' for c in columns)
    marks = ", ".join("?" for _ in columns)
    verb = "INSERT OR REPLACE" if replace else "INSERT"
    return f"{verb} INTO {table} ({names}) VALUES ({marks})"


class ResultsDB:
    """Writer of the results database (one per process; the sweep driver is the only writer).

    Every write waits for another process's lock (a notebook, `sqlite3`) with backoff for up to
    `busy_timeout_s` seconds in all, then raises `DatabaseBusyError`; nothing is written half.
    """

    def __init__(self, path: str | os.PathLike[str], *,
                 busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S) -> None:
        self.path = check_database_path(path, writable=True)
        self.busy_timeout_s = float(busy_timeout_s)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"{self.path}: cannot create its folder ({exc.strerror or exc})") from exc
        try:
            self._connection = sqlite3.connect(self.path,
                                               timeout=min(_ATTEMPT_TIMEOUT_S, self.busy_timeout_s))
        except sqlite3.Error as exc:
            raise ValueError(f"{self.path}: cannot open the results database ({exc})") from exc
        try:
            mode = self._retry_busy(lambda: self._connection.execute("PRAGMA journal_mode=WAL").fetchone()[0])
            if str(mode).lower() != "wal":
                raise ValueError(f"{self.path}: could not switch the database to WAL mode (got {mode!r})")
            # NORMAL in WAL mode survives a crash or SIGKILL of the writer; only power loss can lose the
            # last commits, which a resumed sweep then simply re-runs.
            self._connection.execute("PRAGMA synchronous=NORMAL")
            self._retry_busy(self._create_schema)
        except sqlite3.DatabaseError as exc:
            self._connection.close()
            if isinstance(exc, sqlite3.OperationalError) and not _is_busy(exc):
                raise ValueError(f"{self.path}: cannot write the results database ({exc})") from exc
            raise ValueError(f"{self.path}: not a SQLite results database ({exc})") from exc
        except BaseException:
            self._connection.close()
            raise

    def _create_schema(self) -> None:
        """Create or migrate the schema; writes nothing when it is up to date, so that opening a
        database another process holds locked does not wait for the lock."""
        connection = self._connection
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        statements = []
        if "trials" not in tables:
            statements.append(_create_table_sql("trials", TRIAL_COLUMNS))
            statements.append("CREATE INDEX IF NOT EXISTS trials_by_sweep ON trials (sweep)")
        if "epochs" not in tables:
            statements.append(_create_table_sql("epochs", EPOCH_COLUMNS,
                                                ",\n  PRIMARY KEY (trial_id, epoch)"))
        if "spec_versions" not in tables:
            statements.append(_create_table_sql("spec_versions", SPEC_VERSION_COLUMNS,
                                                ",\n  PRIMARY KEY (sweep, version)"))
        # A database written by an older version lacks columns added since (e.g. a new TrainConfig
        # field): add them so old and new trials live in one table.
        for table, columns in (("trials", TRIAL_COLUMNS), ("epochs", EPOCH_COLUMNS)):
            if table not in tables:
                continue
            present = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
            for name, sql_type in columns.items():
                if name not in present:
                    plain_type = sql_type.split()[0]
                    statements.append(f'ALTER TABLE {table} ADD COLUMN "{name}" {plain_type}')
        full_ce_with_negatives = "trials" in tables and "loss" in {
            row[1] for row in connection.execute("PRAGMA table_info(trials)")} and connection.execute(
            "SELECT 1 FROM trials WHERE loss = 'ce' AND num_negatives IS NOT NULL LIMIT 1").fetchone()
        if full_ce_with_negatives:  # rows written before full CE stored NULL there
            statements.append("UPDATE trials SET num_negatives = NULL WHERE loss = 'ce'")
        if not statements:
            return
        with connection:
            for statement in statements:
                connection.execute(statement)

    def _retry_busy(self, action: Callable[[], T]) -> T:
        """Run `action` (one transaction), retrying while another process holds the database locked."""
        deadline = time.monotonic() + self.busy_timeout_s
        delay = 0.25
        warned = False
        while True:
            try:
                return action()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DatabaseBusyError(
                        f"{self.path}: the database stayed locked by another process for more than "
                        f"{self.busy_timeout_s:g} s ({exc})") from exc
                if not warned:
                    print(f"note: {self.path} is locked by another process (an open transaction in a "
                          f"notebook or sqlite3?); retrying for up to {self.busy_timeout_s:g} s",
                          file=sys.stderr, flush=True)
                    warned = True
                time.sleep(min(delay, left))
                delay = min(delay * 2, _MAX_BACKOFF_S)

    def record_trial(self, trial_id: str, sweep: str, record: TrialRecord, *, spec_hash: str | None = None,
                     spec_version: int | None = None) -> None:
        """Insert or replace the trial's row and all its epoch rows, atomically (DatabaseBusyError when
        the database stays locked past the busy timeout; then nothing of the trial is written)."""
        if not trial_id:
            raise ValueError("trial_id: must be a non-empty string")
        if not sweep:
            raise ValueError("sweep: must be a non-empty string")
        row = trial_row(trial_id, sweep, record, spec_hash=spec_hash, spec_version=spec_version)
        epochs = epoch_rows(trial_id, record)

        def write() -> None:
            with self._connection:
                self._connection.execute(
                    _insert_sql("trials", list(row), replace=True), [row[c] for c in row]
                )
                self._connection.execute("DELETE FROM epochs WHERE trial_id = ?", (trial_id,))
                if epochs:
                    columns = list(EPOCH_COLUMNS)
                    self._connection.executemany(
                        _insert_sql("epochs", columns, replace=False),
                        [[e[c] for c in columns] for e in epochs]
                    )

        self._retry_busy(write)

    def trial_ids(self, sweep: str | None = None) -> set[str]:
        return set(self.trial_statuses(sweep))

    def trial_statuses(self, sweep: str | None = None) -> dict[str, str]:
        """trial id -> status of every recorded trial (of one sweep)."""
        if sweep is None:
            cursor = self._connection.execute("SELECT trial_id, status FROM trials")
        else:
            cursor = self._connection.execute("SELECT trial_id, status FROM trials WHERE sweep = ?", (sweep,))
        return {trial_id: status for trial_id, status in cursor}

    def status_counts(self, sweep: str | None = None) -> dict[str, int]:
        query = "SELECT status, COUNT(*) FROM trials"
        params: tuple[str, ...] = ()
        if sweep is not None:
            query += " WHERE sweep = ?"
            params = (sweep,)
        rows = self._connection.execute(query + " GROUP BY status", params)
        return {status: count for status, count in rows}

    def spec_versions(self, sweep: str) -> list[SpecVersion]:
        """The recorded versions of a sweep's specification, oldest first."""
        return _spec_versions(self._connection, sweep)

    def add_spec_version(self, sweep: str, spec_hash: str, content: dict[str, Any],
                         trial_ids: Iterable[str]) -> SpecVersion:
        """Record a new version of the sweep's specification (numbered after the last one)."""
        def insert() -> SpecVersion:
            with self._connection:
                last = self._connection.execute(
                    "SELECT MAX(version) FROM spec_versions WHERE sweep = ?", (sweep,)).fetchone()[0]
                version = SpecVersion(sweep, int(last or 0) + 1, spec_hash, content, frozenset(trial_ids),
                                      datetime.now(UTC).isoformat(timespec="seconds"))
                self._connection.execute(
                    _insert_sql("spec_versions", list(SPEC_VERSION_COLUMNS), replace=False),
                    (sweep, version.version, spec_hash, json.dumps(content, sort_keys=True),
                     json.dumps(sorted(version.trial_ids)), version.created_at))
                return version

        return self._retry_busy(insert)

    def load_record(self, trial_id: str) -> TrialRecord:
        """The TrialRecord exactly as recorded (KeyError if the trial is not in the database)."""
        found = self._connection.execute(
            "SELECT record_json FROM trials WHERE trial_id = ?", (trial_id,)
        ).fetchone()
        if found is None:
            raise KeyError(f"trial_id: {trial_id!r} is not in {self.path}")
        return TrialRecord.from_dict(json.loads(found[0]))

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> ResultsDB:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _spec_versions(connection: sqlite3.Connection, sweep: str | None) -> list[SpecVersion]:
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "spec_versions" not in tables:
        return []
    query = "SELECT sweep, version, spec_hash, spec_json, trial_ids_json, created_at FROM spec_versions"
    params: tuple[str, ...] = ()
    if sweep is not None:
        query, params = query + " WHERE sweep = ?", (sweep,)
    rows = connection.execute(query + " ORDER BY sweep, version", params)
    return [SpecVersion(name, int(version), spec_hash, json.loads(content), frozenset(json.loads(ids)),
                        created) for name, version, spec_hash, content, ids, created in rows]


def load_spec_versions(path: str | os.PathLike[str], *, sweep: str | None = None) -> list[SpecVersion]:
    """The recorded specification versions (of one sweep, or of all), read-only."""
    with _reading(path) as connection:
        return _spec_versions(connection, sweep)


@contextlib.contextmanager
def _reading(path: str | os.PathLike[str]) -> Iterator[sqlite3.Connection]:
    """`open_readonly` with SQLite's errors turned into ValueError naming the file."""
    db_path = Path(path)
    if db_path.is_dir():
        raise ValueError(f"{db_path}: is a folder, not a results database file")
    try:
        with open_readonly(db_path) as connection:
            yield connection
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"{db_path}: not a results database ({exc})") from exc


def _read_table(connection: sqlite3.Connection, db_path: Path, table: str, sweep: str | None,
                order: str) -> pd.DataFrame:
    params: tuple[str, ...] = ()
    if table == "trials":
        query = "SELECT * FROM trials"
        if sweep is not None:
            query, params = query + " WHERE sweep = ?", (sweep,)
    else:
        query = "SELECT epochs.* FROM epochs"
        if sweep is not None:
            query = query + " JOIN trials USING (trial_id) WHERE trials.sweep = ?"
            params = (sweep,)
    try:
        return pd.read_sql_query(f"{query} ORDER BY {order}", connection, params=params)
    except (pd.errors.DatabaseError, sqlite3.DatabaseError) as exc:
        raise ValueError(f"{db_path}: not a results database ({exc})") from exc


def _selected_ids(connection: sqlite3.Connection, trials: pd.DataFrame,
                  spec_version: SpecVersionChoice) -> pd.Series:
    """Which rows of `trials` belong to the chosen spec version of their sweep (see `load_trials`)."""
    if spec_version == "all" or trials.empty or "sweep" not in trials.columns:
        return pd.Series(True, index=trials.index)
    if spec_version != "latest" and (isinstance(spec_version, bool) or not isinstance(spec_version, int)):
        raise ValueError(f"spec_version: {spec_version!r} is not 'latest', 'all' or a version number")
    versions: dict[str, list[SpecVersion]] = {}
    for version in _spec_versions(connection, None):
        versions.setdefault(version.sweep, []).append(version)
    keep = pd.Series(False, index=trials.index)
    found_any = False
    for sweep, rows in trials.groupby("sweep", sort=False):
        recorded = versions.get(str(sweep), [])
        if not recorded:  # a sweep recorded before spec versions existed: every row
            keep[rows.index] = spec_version == "latest"
            continue
        chosen = recorded[-1] if spec_version == "latest" else next(
            (v for v in recorded if v.version == spec_version), None)
        if chosen is None:
            continue
        found_any = True
        keep[rows.index] = rows["trial_id"].isin(chosen.trial_ids)
    if isinstance(spec_version, int) and not found_any:
        present = sorted({v.version for rows in versions.values() for v in rows})
        raise ValueError(f"spec_version: {spec_version} is not recorded for these trials "
                         f"(versions: {', '.join(map(str, present)) or 'none'})")
    return keep


def _with_bools(frame: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
    for column in columns:
        if column in frame:
            frame[column] = frame[column].astype("boolean")
    return frame


def load_trials(path: str | os.PathLike[str], *, sweep: str | None = None,
                spec_version: SpecVersionChoice = "latest") -> pd.DataFrame:
    """One row per trial (columns as in docs/database.md); booleans as pandas' nullable boolean.

    `spec_version`: "latest" (default) keeps, for each sweep, the trials its latest specification
    version covers (every trial of its plan that is recorded, whichever version ran it), so rows of an
    edited-away configuration do not mix with the current ones; sweeps recorded before spec versions
    existed keep every row. "all": every row. An integer N: the trials version N of each sweep covers.

    `num_negatives` is NULL (NaN) for full-catalogue CE (`loss == "ce"`), also in rows written before it
    was stored that way. A TrainConfig field added after a row was written
    (`study.config.FIELDS_ADDED_LATER`) reads as the default that reproduces how that trial ran.
    `steady_epoch_seconds` is always a float column: trials recorded before it existed get it from their
    rows in `epochs` (same rule as `study.record.steady_state_seconds`), where they have a
    `mean_epoch_seconds` and complete epoch times; else it is NaN.

    The file is opened read-only (see `study.database.sqlite_readonly`): it is never written, and a
    database in a folder the user cannot write is read as well.
    """
    db_path = Path(path)
    with _reading(db_path) as connection:
        frame = _read_table(connection, db_path, "trials", sweep, "trial_id")
        frame = frame[_selected_ids(connection, frame, spec_version)].reset_index(drop=True)
        if {"loss", "num_negatives"} <= set(frame.columns):
            frame.loc[frame["loss"] == "ce", "num_negatives"] = None
        frame = _with_steady_epoch_seconds(frame, connection, db_path, sweep)
    frame = _with_fields_added_later(frame)
    frame = _with_dataset_identity(frame)
    return _with_bools(frame, _BOOL_CONFIG_COLUMNS)


def _with_fields_added_later(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows written before a TrainConfig field existed (no column, or NULL in it) get the field's
    behaviour-preserving default, so that they are the same configuration as newer rows at that default."""
    for name, default in FIELDS_ADDED_LATER.items():
        if name not in frame.columns:
            frame[name] = default
        elif frame[name].isna().any():
            frame[name] = frame[name].fillna(default)
    return frame


def _with_dataset_identity(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep rows of different copies of a dataset apart: where one `dataset` name was read with
    different contents (`dataset_sha256`), those rows' `dataset` becomes "<name>@<first 8 hex digits>".
    The name as configured stays in `dataset_name`. Rows without a hash (failed before loading, or
    recorded before the column existed) keep the plain name."""
    if "dataset" not in frame.columns:
        return frame
    frame.insert(list(frame.columns).index("dataset") + 1, "dataset_name", frame["dataset"])
    return name_dataset_copies(frame)


def name_dataset_copies(frame: pd.DataFrame) -> pd.DataFrame:
    """`dataset` named again from `dataset_name` and `dataset_sha256` over every row of `frame`, as
    `load_trials` names it: call it on the trials of several databases read together, so that a name
    read with one content in one database and with two in another keeps its copies apart the same way
    in all of them."""
    if not {"dataset", "dataset_name", "dataset_sha256"} <= set(frame.columns):
        return frame
    frame = frame.assign(dataset=frame["dataset_name"])
    hashes = frame["dataset_sha256"]
    copies = hashes.groupby(frame["dataset"]).nunique()
    ambiguous = frame["dataset"].isin(copies.index[copies > 1]) & hashes.notna()
    frame.loc[ambiguous, "dataset"] = frame.loc[ambiguous, "dataset"] + "@" + hashes[ambiguous].str[:8]
    return frame


UNWEIGHTED_DRAWN_SCOPE = "drawn-unweighted"


def name_unweighted_draws(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of negatives drawn in the kernel before the loss gave each its stratum weight (docs/design.md:
    the trainer recorded its versions, and DRAWN_NEGATIVES_KEY is not among them) trained another loss than
    today's "drawn": analysis reads their `negative_scope` as "drawn-unweighted", so they never pool with
    rows of the weighted draw. Rows no trainer wrote (`versions_json` "{}": predicted over the budget,
    invalid, a dead worker) trained nothing and keep "drawn". The database keeps what was recorded; the
    sweep's resume and search read it unchanged."""
    if not {"negative_scope", "versions_json"} <= set(frame.columns):
        return frame
    drawn = frame["negative_scope"] == "drawn"
    if not drawn.any():
        return frame

    def unweighted(versions: object) -> bool:
        try:
            parsed = json.loads(versions) if isinstance(versions, str) else {}
        except json.JSONDecodeError:
            parsed = {}
        return isinstance(parsed, dict) and bool(parsed) and DRAWN_NEGATIVES_KEY not in parsed

    old = drawn & frame["versions_json"].map(unweighted).astype(bool)
    frame = frame.copy()
    frame.loc[old, "negative_scope"] = UNWEIGHTED_DRAWN_SCOPE
    return frame


def _with_steady_epoch_seconds(frame: pd.DataFrame, connection: sqlite3.Connection, db_path: Path,
                               sweep: str | None) -> pd.DataFrame:
    if STEADY_COLUMN not in frame.columns:  # a database no sweep has opened since the column came
        columns = list(frame.columns)
        at = columns.index("mean_epoch_seconds") + 1 if "mean_epoch_seconds" in columns else len(columns)
        frame.insert(at, STEADY_COLUMN, math.nan)
    frame[STEADY_COLUMN] = pd.to_numeric(frame[STEADY_COLUMN], errors="coerce").astype("float64")
    missing = frame[STEADY_COLUMN].isna()
    if "mean_epoch_seconds" in frame.columns:
        missing &= frame["mean_epoch_seconds"].notna()  # as run_trial: both times or neither
    if not missing.any():
        return frame
    try:
        epochs = _read_table(connection, db_path, "epochs", sweep, "epochs.trial_id, epochs.epoch")
    except ValueError:
        return frame  # no epochs table: nothing to fill from
    if not {"trial_id", "epoch_seconds"} <= set(epochs.columns):
        return frame
    times = pd.to_numeric(epochs["epoch_seconds"], errors="coerce")
    steady: dict[str, float] = {}
    for trial_id, trial_times in times.groupby(epochs["trial_id"], sort=False):
        if trial_times.notna().all():
            value = steady_state_seconds(trial_times.tolist())
            if value is not None:
                steady[str(trial_id)] = value
    filled = frame.loc[missing, "trial_id"].map(steady)
    frame.loc[missing, STEADY_COLUMN] = filled.astype("float64")
    return frame


def load_epochs(path: str | os.PathLike[str], *, sweep: str | None = None,
                spec_version: SpecVersionChoice = "latest") -> pd.DataFrame:
    """One row per (trial, epoch), ordered by trial then epoch, of the trials `load_trials` returns for
    the same `sweep` and `spec_version`; read-only like it."""
    db_path = Path(path)
    with _reading(db_path) as connection:
        epochs = _read_table(connection, db_path, "epochs", sweep, "epochs.trial_id, epochs.epoch")
        if spec_version == "all" or epochs.empty:
            return epochs
        trials = _read_table(connection, db_path, "trials", sweep, "trial_id")
        chosen = trials.loc[_selected_ids(connection, trials, spec_version), "trial_id"]
    return epochs[epochs["trial_id"].isin(chosen)].reset_index(drop=True)


__all__ = [
    "ResultsDB",
    "DatabaseBusyError",
    "SpecVersion",
    "check_database_path",
    "load_trials",
    "name_dataset_copies",
    "name_unweighted_draws",
    "load_epochs",
    "load_spec_versions",
    "DEFAULT_BUSY_TIMEOUT_S",
    "metric_column",
    "trial_row",
    "epoch_rows",
    "TRIAL_COLUMNS",
    "EPOCH_COLUMNS",
    "STEADY_COLUMN",
    "CONFIG_COLUMNS",
    "METRIC_NAMES",
]
