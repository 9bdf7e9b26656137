"""The SQLite results database: one row per trial, one row per (trial, epoch).

Written only by the sweep driver (a single writer, WAL mode so readers never block it); read by the
analysis side through `load_trials` / `load_epochs`. The schema is documented in docs/database.md.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sqlite3
import types
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from study.config import METRIC_KS, TrainConfig
from study.record import TrialRecord, steady_state_seconds

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


def _sql_type(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    if typing.get_origin(hint) is typing.Literal:
        hint = type(typing.get_args(hint)[0])
    if hint is bool or hint is int:
        return "INTEGER"
    if hint is float:
        return "REAL"
    return "TEXT"


_CONFIG_HINTS: dict[str, Any] = typing.get_type_hints(TrainConfig)
CONFIG_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrainConfig))
_BOOL_CONFIG_COLUMNS: tuple[str, ...] = tuple(
    name for name in CONFIG_COLUMNS if _CONFIG_HINTS[name] is bool
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
    **{name: _sql_type(_CONFIG_HINTS[name]) for name in CONFIG_COLUMNS},
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


def trial_row(trial_id: str, sweep: str, record: TrialRecord) -> dict[str, Any]:
    """The `trials` row of one record (every column present, None where unknown)."""
    row: dict[str, Any] = dict.fromkeys(TRIAL_COLUMNS)
    config = dict(record.config)
    row.update(trial_id=trial_id, sweep=sweep, status=record.status, error=record.error)
    for name in CONFIG_COLUMNS:
        value = config.get(name)
        row[name] = int(value) if isinstance(value, bool) else value
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
    """Writer of the results database (one per process; the sweep driver is the only writer)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(self.path, timeout=30.0)
        try:
            mode = self._connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            self._connection.close()
            raise ValueError(f"{self.path}: not a SQLite results database ({exc})") from exc
        if str(mode).lower() != "wal":
            self._connection.close()
            raise ValueError(f"{self.path}: could not switch the database to WAL mode (got {mode!r})")
        # NORMAL in WAL mode survives a crash or SIGKILL of the writer; only power loss can lose the
        # last commits, which a resumed sweep then simply re-runs.
        self._connection.execute("PRAGMA synchronous=NORMAL")
        self._create_schema()

    def _create_schema(self) -> None:
        with self._connection:
            self._connection.execute(_create_table_sql("trials", TRIAL_COLUMNS))
            self._connection.execute(
                _create_table_sql("epochs", EPOCH_COLUMNS, ",\n  PRIMARY KEY (trial_id, epoch)")
            )
            self._connection.execute("CREATE INDEX IF NOT EXISTS trials_by_sweep ON trials (sweep)")
            # A database written by an older version lacks columns added since (e.g. a new
            # TrainConfig field): add them so old and new trials live in one table.
            for table, columns in (("trials", TRIAL_COLUMNS), ("epochs", EPOCH_COLUMNS)):
                present = {row[1] for row in self._connection.execute(f"PRAGMA table_info({table})")}
                for name, sql_type in columns.items():
                    if name not in present:
                        plain_type = sql_type.split()[0]
                        self._connection.execute(f'ALTER TABLE {table} ADD COLUMN "{name}" {plain_type}')

    def record_trial(self, trial_id: str, sweep: str, record: TrialRecord) -> None:
        """Insert or replace the trial's row and all its epoch rows, atomically."""
        if not trial_id:
            raise ValueError("trial_id: must be a non-empty string")
        if not sweep:
            raise ValueError("sweep: must be a non-empty string")
        row = trial_row(trial_id, sweep, record)
        epochs = epoch_rows(trial_id, record)
        with self._connection:
            self._connection.execute(
                _insert_sql("trials", list(row), replace=True), [row[c] for c in row]
            )
            self._connection.execute("DELETE FROM epochs WHERE trial_id = ?", (trial_id,))
            if epochs:
                columns = list(EPOCH_COLUMNS)
                self._connection.executemany(
                    _insert_sql("epochs", columns, replace=False), [[e[c] for c in columns] for e in epochs]
                )

    def trial_ids(self, sweep: str | None = None) -> set[str]:
        if sweep is None:
            cursor = self._connection.execute("SELECT trial_id FROM trials")
        else:
            cursor = self._connection.execute("SELECT trial_id FROM trials WHERE sweep = ?", (sweep,))
        return {row[0] for row in cursor}

    def status_counts(self, sweep: str | None = None) -> dict[str, int]:
        query = "SELECT status, COUNT(*) FROM trials"
        params: tuple[str, ...] = ()
        if sweep is not None:
            query += " WHERE sweep = ?"
            params = (sweep,)
        rows = self._connection.execute(query + " GROUP BY status", params)
        return {status: count for status, count in rows}

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


def _read_table(path: str | os.PathLike[str], table: str, sweep: str | None, order: str) -> pd.DataFrame:
    db_path = Path(path)
    if not db_path.is_file():
        raise FileNotFoundError(f"{db_path}: no results database there")
    connection = sqlite3.connect(db_path, timeout=30.0)
    try:
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
        except pd.errors.DatabaseError as exc:
            raise ValueError(f"{db_path}: not a results database ({exc})") from exc
    finally:
        connection.close()


def _with_bools(frame: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
    for column in columns:
        if column in frame:
            frame[column] = frame[column].astype("boolean")
    return frame


def load_trials(path: str | os.PathLike[str], *, sweep: str | None = None) -> pd.DataFrame:
    """One row per trial (columns as in docs/database.md); booleans as pandas' nullable boolean.

    `steady_epoch_seconds` is always a float column: trials recorded before it existed get it from
    their rows in `epochs` (same rule as `study.record.steady_state_seconds`), where they have a
    `mean_epoch_seconds` and complete epoch times; else it is NaN. The file is never written.
    """
    frame = _read_table(path, "trials", sweep, "trial_id")
    frame = _with_steady_epoch_seconds(frame, path, sweep)
    frame = _with_dataset_identity(frame)
    return _with_bools(frame, _BOOL_CONFIG_COLUMNS)


def _with_dataset_identity(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep rows of different copies of a dataset apart: where one `dataset` name was read with
    different contents (`dataset_sha256`), those rows' `dataset` becomes "<name>@<first 8 hex digits>".
    The name as configured stays in `dataset_name`. Rows without a hash (failed before loading, or
    recorded before the column existed) keep the plain name."""
    if "dataset" not in frame.columns:
        return frame
    frame.insert(list(frame.columns).index("dataset") + 1, "dataset_name", frame["dataset"])
    if "dataset_sha256" not in frame.columns:
        return frame
    hashes = frame["dataset_sha256"]
    copies = hashes.groupby(frame["dataset"]).nunique()
    ambiguous = frame["dataset"].isin(copies.index[copies > 1]) & hashes.notna()
    frame.loc[ambiguous, "dataset"] = frame.loc[ambiguous, "dataset"] + "@" + hashes[ambiguous].str[:8]
    return frame


def _with_steady_epoch_seconds(
    frame: pd.DataFrame, path: str | os.PathLike[str], sweep: str | None
) -> pd.DataFrame:
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
        epochs = _read_table(path, "epochs", sweep, "epochs.trial_id, epochs.epoch")
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


def load_epochs(path: str | os.PathLike[str], *, sweep: str | None = None) -> pd.DataFrame:
    """One row per (trial, epoch), ordered by trial then epoch."""
    return _read_table(path, "epochs", sweep, "epochs.trial_id, epochs.epoch")


__all__ = [
    "ResultsDB",
    "load_trials",
    "load_epochs",
    "metric_column",
    "trial_row",
    "epoch_rows",
    "TRIAL_COLUMNS",
    "EPOCH_COLUMNS",
    "STEADY_COLUMN",
    "CONFIG_COLUMNS",
    "METRIC_NAMES",
]
