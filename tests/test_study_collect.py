"""benchmarks/study_collect.py: a device call's databases and logs brought into the tree, refusing a database
that lost rows against the tree's copy (the call was given an older copy)."""

from __future__ import annotations

import io
import sqlite3
import tarfile
from pathlib import Path

import pytest
from repo_scripts import load_script

collect = load_script("benchmarks/study_collect.py")

Rows = dict[str, tuple[str, str | None]]


def write_db(path: Path, rows: Rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE trials (trial_id TEXT PRIMARY KEY, status TEXT, started_at TEXT)")
        connection.executemany("INSERT INTO trials VALUES (?, ?, ?)",
                               [(trial_id, status, started) for trial_id, (status, started) in rows.items()])
    connection.close()
    return path


def write_logs(folder: Path, environment: str) -> None:
    data = environment.encode()
    with tarfile.open(folder / "logs.tgz", "w:gz") as tar:
        info = tarfile.TarInfo("./environment.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


TREE: Rows = {"a": ("ok", "2026-11-29T10:00"), "b": ("predicted_over_budget", None),
              "c": ("ok", "2026-11-29T10:01")}


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    results, files_at = tmp_path / "results", tmp_path / "out"
    write_db(results / "study-x.sqlite", TREE)
    files_at.mkdir()
    write_logs(files_at, "tree abc123; started 2026-11-29T11:00Z\n0, NVIDIA H200, GPU-1\ntorch 2.11\n")
    return results, files_at


def run(results: Path, files_at: Path, *extra: str) -> int:
    return collect.main([str(files_at), "--call", "7", "--results", str(results), *extra])


def rows_of(path: Path) -> Rows:
    return collect.trial_rows(path)


def test_a_call_that_added_rows_is_copied_with_its_logs(layout: tuple[Path, Path],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    results, files_at = layout
    returned = {**TREE, "b": ("ok", "2026-11-29T11:02"), "d": ("ok", "2026-11-29T11:03")}  # b retried, d new
    write_db(files_at / "study-x.sqlite", returned)
    write_db(files_at / "study-new.sqlite", {"e": ("ok", "2026-11-29T11:04")})
    assert run(results, files_at) == 0
    assert rows_of(results / "study-x.sqlite") == returned
    assert rows_of(results / "study-new.sqlite") == {"e": ("ok", "2026-11-29T11:04")}
    assert (results / "call7" / "logs.tgz").read_bytes() == (files_at / "logs.tgz").read_bytes()
    assert (results / "call7" / "environment.txt").read_text().startswith("tree abc123")
    out = capsys.readouterr().out
    assert "study-x.sqlite: ok 2, predicted_over_budget 1 -> ok 4 (1 new row(s), 1 retried)" in out
    assert "call7: tree abc123" in out


@pytest.mark.parametrize("returned, reason", [
    ({"a": TREE["a"], "b": TREE["b"]}, "1 row(s) of the tree's copy are missing: c"),
    ({**TREE, "c": ("predicted_over_budget", None)}, "1 ok row(s) of the tree's copy are not ok here: c"),
    ({**TREE, "c": ("ok", "2026-11-29T11:30")}, "1 ok row(s) of the tree's copy were run again: c"),
], ids=["lost", "demoted", "rerun"])
def test_a_database_from_an_older_copy_is_refused_and_the_tree_kept(
        layout: tuple[Path, Path], capsys: pytest.CaptureFixture[str], returned: Rows, reason: str) -> None:
    results, files_at = layout
    write_db(files_at / "study-x.sqlite", {**returned, "d": ("ok", "2026-11-29T11:03")})
    before = (results / "study-x.sqlite").read_bytes()
    assert run(results, files_at) == 1
    assert (results / "study-x.sqlite").read_bytes() == before
    out = capsys.readouterr().out
    assert reason in out and "refused: this call was given an older copy" in out
    assert (results / "call7" / "environment.txt").exists()  # the logs are the call's either way

    assert run(results, files_at, "--allow-lost-rows") == 0
    assert rows_of(results / "study-x.sqlite") == {**returned, "d": ("ok", "2026-11-29T11:03")}


def test_dry_run_copies_nothing(layout: tuple[Path, Path]) -> None:
    results, files_at = layout
    write_db(files_at / "study-x.sqlite", {**TREE, "d": ("ok", "2026-11-29T11:03")})
    assert run(results, files_at, "--dry-run") == 0
    assert rows_of(results / "study-x.sqlite") == TREE
    assert not (results / "call7").exists()


def test_a_folder_without_databases_is_an_error_naming_it(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        collect.main([str(tmp_path), "--call", "1", "--results", str(tmp_path / "r")])
    assert f"files_at: {tmp_path} holds no *.sqlite" in capsys.readouterr().err


def test_snapshot_copies_a_database_in_use_with_its_wal_and_skips_a_missing_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What study_session.sh runs on the device before $OUT goes back: rows still in the WAL of an open
    connection are in the copy, which is a single file (journal mode DELETE)."""
    live = sqlite3.connect(tmp_path / "sweep.sqlite")
    live.execute("PRAGMA journal_mode=WAL")
    live.execute("PRAGMA wal_autocheckpoint=0")  # every row below stays in the WAL
    live.execute("CREATE TABLE trials (trial_id TEXT PRIMARY KEY, status TEXT, started_at TEXT)")
    live.executemany("INSERT INTO trials VALUES (?, ?, ?)",
                     [(trial_id, status, started) for trial_id, (status, started) in TREE.items()])
    live.commit()
    assert (tmp_path / "sweep.sqlite-wal").stat().st_size > 0
    out = tmp_path / "out"
    databases = [str(tmp_path / "sweep.sqlite"), str(tmp_path / "none.sqlite")]
    assert collect.main(["snapshot", str(out), *databases]) == 0
    live.close()
    assert collect.trial_rows(out / "sweep.sqlite") == TREE
    assert sorted(p.name for p in out.iterdir()) == ["sweep.sqlite"]
    with sqlite3.connect(out / "sweep.sqlite") as copy:
        assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    copy.close()
    printed = capsys.readouterr().out
    assert "sweep.sqlite: ok 2, predicted_over_budget 1" in printed
    assert "none.sqlite: no database (the sweep recorded nothing)" in printed
