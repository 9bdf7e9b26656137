"""Open a SQLite file for reading only, wherever it lies: a shared results folder the user cannot write,
a file checked out read-only, a database a sweep is writing right now.

A WAL database normally needs its `-shm` side file to be writable, even for reading. In order:

1. No `-wal` (nor rollback `-journal`) next to the file: nobody has it open for writing and every
   commit is in the main file, which is read `immutable=1`, creating no side files (a read-only
   connection would leave an empty `-wal` and a `-shm` behind, e.g. next to a committed database).
2. Else `mode=ro`: reads through the WAL (recent commits included) and never writes the database;
   works when the `-shm` can be created or already exists.
3. When that fails (the folder is not writable and there is no usable `-shm`), the database and its
   `-wal` are copied into a private temporary folder and read there, so no commit is lost.
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
    wal = db_path.with_name(db_path.name + "-wal")
    journal = db_path.with_name(db_path.name + "-journal")
    connection = None
    if not wal.exists() and not journal.exists():
        connection = _connect(db_path, "immutable=1")
    else:
        with contextlib.suppress(sqlite3.OperationalError):  # cannot create the -shm here
            connection = _connect(db_path, "mode=ro")
    if connection is not None:
        try:
            yield connection
        finally:
            connection.close()
        return
    with tempfile.TemporaryDirectory(prefix="cce-study-read-") as folder:
        copy = Path(folder) / db_path.name
        shutil.copyfile(db_path, copy)
        if wal.is_file():
            shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
        connection = _connect(copy, "mode=ro")
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
