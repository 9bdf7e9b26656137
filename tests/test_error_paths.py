"""Every error path a user can hit with bad input or a bad environment is one line on stderr naming
what is wrong, and exit code 2 (no traceback), through the real `cce-study` entry point."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from study import cli
from study.data.registry import CACHE_VARIABLE, DATA_PATH_VARIABLE
from study.data.sources import SOURCES

REPO_ROOT = Path(__file__).resolve().parents[1]
FAST_TRAIN = ["--max-len", "6", "--hidden", "8", "--blocks", "1", "--batch-size", "16", "--epochs", "1",
              "--device", "cpu", "--no-progress"]


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], *expected: str) -> str:
    """Run `cce-study ARGV` in this process; it must exit 2 with one line on stderr holding `expected`."""
    code = cli.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("[")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CCE_STUDY_DEBUG", raising=False)
    monkeypatch.delenv(DATA_PATH_VARIABLE, raising=False)
    monkeypatch.setenv(CACHE_VARIABLE, str(tmp_path / "cache"))


def write_spec(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def small_spec(path: Path, dataset: str = "synthetic:users=30,items=40,seed=1", extra: str = "") -> Path:
    return write_spec(path, f"""
        name = "errs"
        datasets = [{dataset!r}]
        {extra}
        [axes]
        num_negatives = [4]
        batch_size = [8]
        max_len = [10]
    """)


@pytest.fixture(scope="module")
def truncated_gz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A .csv.gz cut off in the middle of its compressed stream (as by an interrupted copy)."""
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"user_id": rng.integers(1, 500, 20000), "item_id": rng.integers(1, 900, 20000),
                          "timestamp": np.arange(20000)})
    folder = tmp_path_factory.mktemp("gz")
    whole = folder / "whole.csv.gz"
    frame.to_csv(whole, index=False)
    data = whole.read_bytes()
    cut = folder / "interactions.csv.gz"
    cut.write_bytes(data[: len(data) // 2])
    return cut


def test_truncated_gzip_dataset_in_train(capsys: pytest.CaptureFixture[str], truncated_gz: Path) -> None:
    one_line_error(capsys, ["train", "--dataset", str(truncated_gz), *FAST_TRAIN],
                   str(truncated_gz), "truncated")


@pytest.mark.parametrize("dry_run", [True, False])
def test_truncated_gzip_dataset_in_sweep(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                         truncated_gz: Path, dry_run: bool) -> None:
    spec = small_spec(tmp_path / "s.toml", dataset=str(truncated_gz))
    argv = ["sweep", str(spec), "--db", str(tmp_path / "r.sqlite")] + (["--dry-run"] if dry_run else [])
    one_line_error(capsys, argv, str(truncated_gz), "truncated")


def test_db_that_is_a_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    spec = small_spec(tmp_path / "s.toml")
    for extra in ([], ["--dry-run"]):
        one_line_error(capsys, ["sweep", str(spec), "--db", str(tmp_path), *extra], str(tmp_path), "folder")


def test_db_where_nothing_can_be_written(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    spec = small_spec(tmp_path / "s.toml")
    a_file = tmp_path / "plain.txt"
    a_file.write_text("not a folder")
    one_line_error(capsys, ["sweep", str(spec), "--db", str(a_file / "results.sqlite")], "plain.txt")
    # /proc refuses new files even to root
    in_proc = "/proc/cce-study-test.sqlite"
    one_line_error(capsys, ["sweep", str(spec), "--db", in_proc], in_proc)


def test_fractional_budget_without_a_gpu_is_refused_up_front(capsys: pytest.CaptureFixture[str],
                                                             tmp_path: Path) -> None:
    spec = small_spec(tmp_path / "s.toml", extra='memory_budget = "0.5"')
    db = tmp_path / "r.sqlite"
    one_line_error(capsys, ["sweep", str(spec), "--db", str(db)], "memory_budget", "'0.5'", "every trial")
    assert not db.exists()
    assert cli.main(["sweep", str(spec), "--db", str(db), "--dry-run"]) == 0  # planning it is fine
    assert "budget 0.5" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["nan", "inf", "-5", "-inf"])
def test_time_limit_must_be_a_positive_finite_number(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                     value: str) -> None:
    spec = small_spec(tmp_path / "s.toml", extra=f"time_limit_s = {value}")
    one_line_error(capsys, ["sweep", str(spec), "--dry-run"], "time_limit_s", str(spec))


def test_non_utf8_spec_names_the_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    spec = tmp_path / "latin1.toml"
    spec.write_bytes('name = "caf\u00e9"\n'.encode("latin-1"))
    one_line_error(capsys, ["sweep", str(spec), "--dry-run"], str(spec), "line 1", "UTF-8")


def test_missing_dataset_says_where_it_looked_and_how_to_point_at_local_data(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # no network: the source URL leads nowhere
    monkeypatch.setitem(SOURCES, "ml-100k", SOURCES["ml-100k"].__class__(
        "ml-100k", (tmp_path / "offline" / "ml-100k.zip").as_uri(), None, "movielens-100k"))
    line = one_line_error(capsys, ["train", "--dataset", "ml-100k", *FAST_TRAIN],
                          "ml-100k", "download failed", DATA_PATH_VARIABLE, str(tmp_path / "cache"))
    assert "is not set" in line


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never says anything (e.g. a wrong port of another service)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in accepted:
            connection.close()
        server.close()


@pytest.mark.slow  # waits for a Ray cluster
@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_address_of_a_cluster_that_does_not_answer(tmp_path: Path, kind: str,
                                                   request: pytest.FixtureRequest) -> None:
    port = free_port() if kind == "refused" else request.getfixturevalue("silent_server")
    address = f"127.0.0.1:{port}"
    spec = small_spec(tmp_path / "s.toml")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("CCE_STUDY_DEBUG", None)
    started = time.monotonic()
    # refused: found at once, whatever the timeout (default 30 s); silent: the timeout given bounds it
    timeout = ["--connect-timeout", "4"] if kind == "silent" else []
    completed = subprocess.run(
        [sys.executable, "-m", "study.cli", "sweep", str(spec), "--db", str(tmp_path / "r.sqlite"),
         "--address", address, *timeout],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - started
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert completed.returncode == 2, completed.stderr
    assert len(lines) == 1 and address in lines[0], completed.stderr
    assert took < 30, f"took {took:.0f} s"


def test_output_cut_short_by_the_reader_is_not_a_traceback() -> None:
    """`cce-study ... | head` (here `| true`, a reader gone before the first write)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("CCE_STUDY_DEBUG", None)
    command = (f"{sys.executable} -m study.cli plan --budget 40GiB --num-items 1000000 --loss ce-neg "
               "--negatives 64,256 --batch-size 64,256 | true")
    done = subprocess.run(["bash", "-c", command], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
