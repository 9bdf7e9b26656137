"""Scratch folders of running sweep drivers (`<temp>/cce-study-<sweep>-XXXX`, Ray Tune's storage),
and the removal of those whose driver is gone.

A driver holds an OS lock (`flock`) on `.driver.lock` inside its folder for as long as it lives, so a
folder whose lock anyone can take belongs to a driver that ended without cleaning up (kill -9, power
loss) and nobody needs it any more. Folders without that file (another program's, or made by a version
before the lock existed) are left alone. `root` is a parameter so that a caller keeping run folders
elsewhere can reuse both functions.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

PREFIX = "cce-study-"
LOCK_NAME = ".driver.lock"


@contextlib.contextmanager
def run_folder(sweep: str, *, root: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """A fresh folder for this driver, held locked while in use and removed afterwards; stale folders
    of dead drivers under the same root are removed first."""
    remove_stale_run_folders(root)
    folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{sweep}-", dir=root))
    # Lock a file under a temporary name, then rename it: a cleaner never sees an unlocked lock file.
    pending = folder / f"{LOCK_NAME}.{os.getpid()}"
    fd = os.open(pending, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.replace(pending, folder / LOCK_NAME)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)


def remove_stale_run_folders(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove the run folders under `root` (default: the temp folder) whose driver is gone."""
    removed = []
    for folder in sorted(Path(root or tempfile.gettempdir()).glob(f"{PREFIX}*")):
        lock = folder / LOCK_NAME
        if not folder.is_dir() or folder.is_symlink() or not lock.is_file():
            continue
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue  # another user's folder, or gone meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # its driver is alive
        try:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        finally:
            os.close(fd)
    return removed


__all__ = ["run_folder", "remove_stale_run_folders", "PREFIX", "LOCK_NAME"]
