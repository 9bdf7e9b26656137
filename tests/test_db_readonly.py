"""Results databases the user cannot write (a shared results folder, a file checked out read-only) are
read by every analysis command, recent commits still in the WAL included, and never modified.

The commands run in a subprocess as a user that file permissions apply to: uid 65534 (nobody) when this
runs as root and nobody can run this Python, else root without the capabilities that bypass file
permissions (`setpriv`), else this user when it is not root."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from analysis_fixtures import build_database, synthetic_sweep, to_record

from study.database.results_db import load_epochs, load_trials

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
NOBODY = 65534


def write_with_unchecked_wal(path: Path, *, checkpointed: int, in_wal: int) -> list[str]:
    """A database whose first `checkpointed` trials are in the main file and the next `in_wal` only in
    its -wal (the writer is SIGKILLed before any checkpoint). Returns all the trial ids."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        import numpy as np
        sys.path[:0] = [{str(REPO_ROOT)!r}, {str(TESTS)!r}]
        from analysis_fixtures import synthetic_sweep, to_record
        from study.database.results_db import ResultsDB
        trials = synthetic_sweep(np.random.default_rng(8), negatives=(64, 4096), batch_sizes=(64, 256),
                                 max_lens=(50,))[:{checkpointed + in_wal}]
        db = ResultsDB({str(path)!r})
        for trial in trials[:{checkpointed}]:
            db.record_trial(trial.trial_id, "ro", to_record(trial))
        db._connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db._connection.execute("PRAGMA wal_autocheckpoint=0")
        for trial in trials[{checkpointed}:]:
            db.record_trial(trial.trial_id, "ro", to_record(trial))
        print(" ".join(t.trial_id for t in trials), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    return done.stdout.split()


READER = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from study import cli
    from study.database.results_db import load_epochs, load_trials
    results = {}
    for db, out in zip(sys.argv[2::2], sys.argv[3::2]):
        trials = load_trials(db)
        epochs = load_epochs(db)
        codes = [cli.main(["best", "--db", db, "--budget", "40GiB", "--json"]),
                 cli.main(["best", "--db", db, "--budgets", "2GiB,40GiB"]),
                 cli.main(["pareto", "--db", db, "--out", out + "/figures"]),
                 cli.main(["report", "--db", db, "--out", out + "/report"])]
        results[db] = {"trial_ids": sorted(trials["trial_id"]), "epoch_trials": len(set(epochs["trial_id"])),
                       "codes": codes}
    print("RESULT " + json.dumps(results))
""")


def _as_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def unprivileged_runners(probe_folder: Path) -> Iterator[tuple[str, list[str], Callable[[], None] | None]]:
    """(description, command prefix, preexec_fn) of the ways to run a command here as a user that file
    permissions apply to."""
    if os.geteuid() != 0:
        yield f"uid {os.geteuid()} (not root)", [], None
        return
    yield f"uid {NOBODY} (nobody)", [], _as_nobody
    setpriv = shutil.which("setpriv")
    if setpriv:
        yield ("root without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH",
               [setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", "--"], None)


def find_unprivileged_runner(probe_folder: Path) -> tuple[str, list[str], Callable[[], None] | None]:
    """The first runner that can run this Python with the project and cannot write into the read-only
    `probe_folder`; skips the test (with the reasons) when there is none."""
    reasons = []
    probe = (f"import sys; sys.path.insert(0, {str(REPO_ROOT)!r}); import study.database.results_db\n"
             f"try:\n open({str(probe_folder / 'probe')!r}, 'w')\nexcept PermissionError:\n print('refused')")
    for description, prefix, preexec in unprivileged_runners(probe_folder):
        try:
            done = subprocess.run([*prefix, sys.executable, "-c", probe], capture_output=True, text=True,
                                  timeout=120, preexec_fn=preexec, cwd="/")
        except (OSError, subprocess.SubprocessError) as exc:
            reasons.append(f"{description}: {exc}")
            continue
        if done.returncode == 0 and done.stdout.strip() == "refused":
            return description, prefix, preexec
        reasons.append(f"{description}: {(done.stderr.strip().splitlines() or ['could write'])[-1]}")
    pytest.skip("no way to run as a user that file permissions apply to: " + "; ".join(reasons))


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    """A world-readable scratch folder (pytest's tmp_path is private to this user)."""
    folder = Path(tempfile.mkdtemp(prefix="cce-ro-test-", dir="/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        for path in [folder, *folder.rglob("*")]:
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(folder, ignore_errors=True)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_analysis_reads_databases_in_a_folder_the_user_cannot_write(shared_folder: Path) -> None:
    results_dir = shared_folder / "results"
    results_dir.mkdir()
    # 1: WAL with un-checkpointed commits and its -shm; 2: the same without the -shm (it cannot be
    # created in the folder); 3: a cleanly closed database (no side files at all).
    wal_shm = results_dir / "wal-shm.sqlite"
    expected = {wal_shm: write_with_unchecked_wal(wal_shm, checkpointed=3, in_wal=5)}
    wal_only = results_dir / "wal-only.sqlite"
    expected[wal_only] = write_with_unchecked_wal(wal_only, checkpointed=3, in_wal=5)
    Path(f"{wal_only}-shm").unlink()
    clean = results_dir / "clean.sqlite"
    trials = synthetic_sweep(np.random.default_rng(8), negatives=(64, 4096), batch_sizes=(64, 256),
                             max_lens=(50,))
    build_database(clean, trials, sweep="ro")
    expected[clean] = [t.trial_id for t in trials]
    assert Path(f"{wal_shm}-wal").stat().st_size > 0 and Path(f"{wal_shm}-shm").exists()
    assert not Path(f"{clean}-wal").exists()
    with sqlite3.connect(f"file:{wal_shm}?immutable=1", uri=True) as main_file_only:
        in_main_file = main_file_only.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
    main_file_only.close()
    assert in_main_file == 3  # the other five trials exist only in the WAL

    for path in results_dir.iterdir():
        path.chmod(0o444)
    results_dir.chmod(0o555)
    before = snapshot(results_dir)
    description, prefix, preexec = find_unprivileged_runner(results_dir)
    outputs = []
    for path in expected:
        out = shared_folder / f"out-{path.stem}"
        out.mkdir(mode=0o777)
        out.chmod(0o777)
        outputs += [str(path), str(out)]
    env = {**os.environ, "MPLCONFIGDIR": str(shared_folder / "mpl"), "HOME": str(shared_folder)}
    env.pop("CCE_STUDY_DEBUG", None)
    (shared_folder / "mpl").mkdir(mode=0o777)
    (shared_folder / "mpl").chmod(0o777)
    done = subprocess.run([*prefix, sys.executable, "-c", READER, str(REPO_ROOT), *outputs],
                          capture_output=True, text=True, timeout=300, preexec_fn=preexec, env=env, cwd="/")
    assert done.returncode == 0, f"as {description}:\n{done.stderr[-3000:]}"
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    results = json.loads(line.removeprefix("RESULT "))
    for path, trial_ids in expected.items():
        got = results[str(path)]
        assert got["trial_ids"] == sorted(trial_ids), f"{path.name} as {description}"
        assert got["codes"] == [0, 0, 0, 0], f"{path.name} as {description}: {done.stderr[-2000:]}"
        with_epochs = {t.trial_id for t in trials if to_record(t).epochs}
        assert got["epoch_trials"] == len(with_epochs & set(trial_ids)) > 0
        assert (shared_folder / f"out-{path.stem}" / "report" / "report.md").is_file()
    assert snapshot(results_dir) == before, "reading changed the read-only folder"
    print(f"read as {description}")
    assert stat.S_IMODE(results_dir.stat().st_mode) == 0o555


def test_readers_use_the_wal_copy_or_immutable_fallbacks_in_process(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallbacks themselves, forced by making the first (mode=ro) open fail."""
    import study.database.sqlite_readonly as readonly

    db = tmp_path / "r.sqlite"
    ids = write_with_unchecked_wal(db, checkpointed=2, in_wal=3)
    real_connect = readonly._connect

    def no_shm(path: Path, options: str) -> sqlite3.Connection:
        if options == "mode=ro" and path == db.resolve():
            raise sqlite3.OperationalError("unable to open database file")
        return real_connect(path, options)

    monkeypatch.setattr(readonly, "_connect", no_shm)
    assert sorted(load_trials(db)["trial_id"]) == sorted(ids)  # the WAL copy: all five
    assert len(load_epochs(db)) > 0
    Path(f"{db}-wal").unlink()
    Path(f"{db}-shm").unlink()
    assert len(load_trials(db)) == 2  # immutable: what the main file holds
    assert not Path(f"{db}-wal").exists() and not Path(f"{db}-shm").exists()


def test_load_trials_never_writes_the_file(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    trials = synthetic_sweep(np.random.default_rng(2), negatives=(64,), batch_sizes=(64,), max_lens=(50,))
    build_database(db, trials)
    before = db.stat().st_mtime_ns, db.read_bytes()
    load_trials(db)
    load_epochs(db)
    assert (db.stat().st_mtime_ns, db.read_bytes()) == before
    # and leaves no side files next to it (a committed database stays a clean checkout)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["r.sqlite"]
