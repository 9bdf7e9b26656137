"""Open a SQLite file for reading only, wherever it lies: a shared results folder the user cannot write,
a file checked out read-only, a database a sweep is writing right now.

A WAL database normally needs its `-shm` side file to be writable, even for reading. In order:

1. `mode=ro`: reads through the WAL (recent commits included) and never writes the database; works
   when the `-shm` can be created or already exists.
2. When that fails (the folder is not writable and there is no usable `-shm`):
   - a `-wal` with content (commits not yet checkpointed into the main file) is copied with the
     database into a private temporary folder and read there, so those commits are not lost;
   - otherwise `immutable=1`: SQLite reads the main file as it is, with no side files at all.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

_OPEN_PROBE = "SELECT COUNT(*) FROM sqlite_master"


@contextlib.contextmanager
def open_readonly(path: str | Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the SQLite file at `path` (FileNotFoundError if there is none;
    sqlite3.DatabaseError if it is not a database)."""
    db_path = Path(path).resolve()
    if not db_path.is_file():
        raise FileNotFoundError(f"{path}: no results database there")
    try:
        connection = _connect(db_path, "mode=ro")
    except sqlite3.OperationalError:
        connection = None
    if connection is not None:
        try:
            yield connection
        finally:
            connection.close()
        return
    wal = db_path.with_name(db_path.name + "-wal")
    if wal.is_file() and wal.stat().st_size > 0:
        with tempfile.TemporaryDirectory(prefix="cce-study-read-") as folder:
            copy = Path(folder) / db_path.name
            shutil.copyfile(db_path, copy)
            shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
            connection = _connect(copy, "mode=ro")
            try:
                yield connection
            finally:
                connection.close()
        return
    connection = _connect(db_path, "immutable=1")
    try:
        yield connection
    finally:
        connection.close()


def _connect(path: Path, options: str) -> sqlite3.Connection:
    connection = sqlite3.connect(f"{path.as_uri()}?{options}", uri=True, timeout=30.0)
    try:
        connection.execute(_OPEN_PROBE).fetchone()  # SQLite opens lazily: fail here, not on first query
    except sqlite3.Error:
        connection.close()
        raise
    return connection


__all__ = ["open_readonly"]
