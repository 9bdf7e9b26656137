"""The sweep driver's side files: the database lock and Tune's run folders, against real processes
killed with SIGKILL (no Ray needed)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from study.sweep.driver_lock import DriverLock, DriverLockError, lock_path
from study.sweep.run_folders import LOCK_NAME, remove_stale_run_folders, run_folder

REPO_ROOT = Path(__file__).resolve().parents[1]


def holding(code: str) -> subprocess.Popen[str]:
    """A Python process that runs `code` (which must print "ready" once it holds what it takes) and
    then waits to be killed."""
    script = f"import sys, time\nsys.path.insert(0, {str(REPO_ROOT)!r})\n{textwrap.dedent(code)}\n" \
             "print('ready', flush=True)\ntime.sleep(600)\n"
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def kill(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def test_a_second_driver_is_refused_until_the_first_is_killed(tmp_path: Path) -> None:
    db = tmp_path / "results.sqlite"
    first = holding(f"""
        from study.sweep.driver_lock import DriverLock
        lock = DriverLock({str(db)!r})
        lock.acquire()
    """)
    try:
        with pytest.raises(DriverLockError) as refused:
            DriverLock(db).acquire()
        message = str(refused.value)
        assert str(db) in message and "another sweep driver" in message and "\n" not in message
        assert f"pid {first.pid} on {socket.gethostname()}, started 20" in message
    finally:
        kill(first)
    # the lock died with its process (nothing to clean up), and it still excludes, within one process too
    with DriverLock(db), pytest.raises(DriverLockError):
        DriverLock(db).acquire()
    assert lock_path(db).is_file()


def test_run_folders_of_killed_drivers_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    live = holding(f"""
        from study.sweep.run_folders import run_folder
        context = run_folder("alive", root={str(tmp_path)!r})
        context.__enter__()
    """)
    dead = holding(f"""
        from study.sweep.run_folders import run_folder
        context = run_folder("dead", root={str(tmp_path)!r})
        context.__enter__()
    """)
    foreign = tmp_path / "cce-study-not-ours"
    foreign.mkdir()  # no lock file: another program's folder, or an older version's
    try:
        kill(dead)
        (dead_folder,) = tmp_path.glob("cce-study-dead-*")
        (live_folder,) = tmp_path.glob("cce-study-alive-*")
        assert (dead_folder / LOCK_NAME).is_file()
        assert remove_stale_run_folders(tmp_path) == [dead_folder]
        assert not dead_folder.exists() and live_folder.exists() and foreign.exists()
        with run_folder("mine", root=tmp_path) as mine:
            assert mine.is_dir() and (mine / LOCK_NAME).is_file()
            assert remove_stale_run_folders(tmp_path) == []  # in use: kept
        assert not mine.exists()
    finally:
        kill(live)
    assert remove_stale_run_folders(tmp_path) == [live_folder]
    assert sorted(os.listdir(tmp_path)) == ["cce-study-not-ours"]


def test_a_filesystem_without_locks_gets_a_note_not_a_refusal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    import errno
    import fcntl

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with DriverLock(tmp_path / "r.sqlite"):
        pass
    assert "has no file locks" in capsys.readouterr().err
