"""One sweep driver per results database: an exclusive lock on a side file next to the database.

The lock is the operating system's (`flock` on `<database>.lock`), so it ends with the process that
holds it, however it ends (kill -9 included): nothing is left to clean up by hand. The file itself
stays (deleting it would race with a driver about to lock it); it holds the last driver's pid, host,
start time and command, which a refused driver prints.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# flock failing with these means the filesystem does not do locks (some network or FUSE filesystems).
_LOCKS_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


class DriverLockError(ValueError):
    """Another driver holds the database, or the lock file cannot be created; one line (a ValueError so
    that the CLI prints it as such, with exit code 2)."""


def lock_path(db_path: str | os.PathLike[str]) -> Path:
    path = Path(db_path)
    return path.with_name(path.name + ".lock")


class DriverLock:
    """`with DriverLock(db_path):` holds the database for this process; DriverLockError at once (never
    waits) when another live process holds it."""

    def __init__(self, db_path: str | os.PathLike[str]) -> None:
        self.db_path = Path(db_path)
        self.path = lock_path(self.db_path)
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DriverLockError(f"{self.db_path}: cannot create the driver lock {self.path} "
                                  f"({exc.strerror or exc})") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read_holder(fd))
            os.close(fd)
            raise DriverLockError(f"{self.db_path}: another sweep driver is writing this database "
                                  f"({holder}); wait for it to end or stop it, then run again") from None
        except OSError as exc:
            os.close(fd)
            if exc.errno not in _LOCKS_UNSUPPORTED:
                reason = exc.strerror or str(exc)
                raise DriverLockError(f"{self.db_path}: cannot lock {self.path} ({reason})") from exc
            print(f"note: {self.path}: this filesystem has no file locks ({exc.strerror or exc}); a second "
                  "driver on this database would not be refused", file=sys.stderr, flush=True)
            return
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "command": shlex.join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None

    def __enter__(self) -> DriverLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        values = json.loads(text)
    except (OSError, ValueError):
        return {}
    return values if isinstance(values, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "its pid is not recorded yet"
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started_at')}: "
            f"{holder.get('command')}")


__all__ = ["DriverLock", "DriverLockError", "lock_path"]
