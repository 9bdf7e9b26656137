"""One name, one dataset: what a trial read is recorded, copies never mix, positional time stamps refuse
a temporal split, and fields added to TrainConfig later keep old trial ids."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from study.config import TrainConfig
from study.data import DataError, load_dataset, make_split
from study.data.preprocess import timestamps_are_positions
from study.database.results_db import ResultsDB, load_trials, name_dataset_copies
from study.record import TrialRecord
from study.sweep.spec import trial_id

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_log(path: Path, rows: list[tuple[str, str, int]]) -> Path:
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(path, index=False)
    return path


def positional_rows(users: int = 6, length: int = 5, start: int = 0) -> list[tuple[str, str, int]]:
    rng = np.random.default_rng(1)
    return [(f"u{u}", f"i{int(rng.integers(0, 9))}", start + p) for u in range(users) for p in range(length)]


def test_positional_time_stamps_are_recognised_and_real_ones_are_not() -> None:
    users = np.array([0, 0, 0, 1, 1, 2])
    assert timestamps_are_positions(users, np.array([0, 1, 2, 0, 1, 0]))
    assert timestamps_are_positions(users, np.array([1, 2, 3, 1, 2, 1]))
    assert timestamps_are_positions(np.array([1, 0, 1, 0]), np.array([1, 1, 0, 0]))  # any row order
    assert not timestamps_are_positions(users, np.array([0, 1, 2, 0, 1, 5]))
    assert not timestamps_are_positions(users, np.array([10, 11, 12, 20, 21, 30]))
    assert not timestamps_are_positions(users, np.array([0, 1, 1, 0, 1, 0]))  # a tie is a real time


def test_a_temporal_split_of_positional_time_stamps_is_refused(tmp_path: Path) -> None:
    log = write_log(tmp_path / "positions.csv", positional_rows())
    data = load_dataset(str(log))
    assert data.timestamps_are_positions
    refused = r"split: 'temporal' needs real time stamps.*positions.*use split 'loo'"
    with pytest.raises(DataError, match=refused):
        make_split(data, "temporal")
    make_split(data, "loo")  # leave-one-out only needs the order within a user


def test_real_time_stamps_still_split_temporally(tmp_path: Path) -> None:
    rows = [(user, item, 1_000 * t + 7 * int(user[1:])) for user, item, t in positional_rows(length=6)]
    data = load_dataset(str(write_log(tmp_path / "times.csv", rows)))
    assert not data.timestamps_are_positions
    assert make_split(data, "temporal").kind == "temporal"


@pytest.mark.skipif(not (SHARED / "ml-1m").is_dir(), reason="../shared/data is not there")
@pytest.mark.parametrize(("name", "positional"), [("ml-100k", False), ("gowalla", True), ("ml-1m", True)])
def test_the_shared_copies_are_recognised(name: str, positional: bool,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CCE_STUDY_DATA_PATH", str(SHARED))
    data = load_dataset(name, progress=False)
    assert data.timestamps_are_positions is positional
    path = SHARED / name / "interactions.csv.gz"
    assert data.source == str(path.resolve())
    assert data.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_synthetic_logs_are_identified_by_their_full_spec() -> None:
    short = load_dataset("synthetic:users=30,items=50,seed=2")
    spelled = load_dataset("synthetic:seed=2,items=50,users=30,mean_len=50")
    other = load_dataset("synthetic:users=30,items=50,seed=3")
    assert short.source == spelled.source and short.sha256 == spelled.sha256
    assert short.source.startswith("synthetic:users=30,items=50,") and "seed=2" in short.source
    assert other.sha256 != short.sha256


def record(dataset: str, sha256: str | None, ndcg: float) -> TrialRecord:
    return TrialRecord(status="ok", config=TrainConfig(dataset=dataset).to_dict(),
                       val_metrics={"ndcg@10": ndcg}, dataset_sha256=sha256,
                       dataset_source=f"/copies/{sha256}")


def test_rows_of_two_copies_under_one_name_are_kept_apart(tmp_path: Path) -> None:
    db_path = tmp_path / "r.sqlite"
    with ResultsDB(db_path) as db:
        db.record_trial("a", "s", record("gowalla", "aaaaaaaa11", 0.1))
        db.record_trial("b", "s", record("gowalla", "bbbbbbbb22", 0.2))
        db.record_trial("c", "s", record("gowalla", None, 0.3))  # failed before loading, or an old row
        db.record_trial("d", "s", record("ml-1m", "cccccccc33", 0.4))
        db.record_trial("e", "s", record("ml-1m", "cccccccc33", 0.5))
    trials = load_trials(db_path).set_index("trial_id")
    assert trials.loc[["a", "b", "c", "d", "e"], "dataset"].tolist() == [
        "gowalla@aaaaaaaa", "gowalla@bbbbbbbb", "gowalla", "ml-1m", "ml-1m"]
    assert set(trials["dataset_name"]) == {"gowalla", "ml-1m"}
    assert trials.loc["a", "dataset_source"] == "/copies/aaaaaaaa11"


def test_databases_read_together_name_copies_over_all_of_them(tmp_path: Path) -> None:
    """One copy of gowalla in the grid's database, two in the seeds' one: read alone, the grid's rows keep
    the plain name; read together, every row of a copy carries that copy's name, in both databases."""
    with ResultsDB(tmp_path / "grid.sqlite") as db:
        db.record_trial("g", "grid", record("gowalla", "aaaaaaaa11", 0.1))
    with ResultsDB(tmp_path / "seeds.sqlite") as db:
        db.record_trial("s1", "seeds", record("gowalla", "aaaaaaaa11", 0.2))
        db.record_trial("s2", "seeds", record("gowalla", "bbbbbbbb22", 0.3))
    alone = [load_trials(tmp_path / name) for name in ("grid.sqlite", "seeds.sqlite")]
    assert alone[0]["dataset"].tolist() == ["gowalla"]
    together = name_dataset_copies(pd.concat(alone, ignore_index=True)).set_index("trial_id")
    assert together.loc[["g", "s1", "s2"], "dataset"].tolist() == [
        "gowalla@aaaaaaaa", "gowalla@aaaaaaaa", "gowalla@bbbbbbbb"]
    assert set(together["dataset_name"]) == {"gowalla"}


@pytest.mark.parametrize("added", [("eval_every",), ("eval_max_scores",), ("patience_steps",),
                                   ("eval_every", "eval_max_scores", "patience_steps")])
def test_fields_added_later_keep_the_ids_of_trials_recorded_before_them(added: tuple[str, ...]) -> None:
    """A trial recorded before a field existed was hashed without it (eval_every, then eval_max_scores, then
    patience_steps): at the field's default its id stays what it was, so `--resume` skips it; off the
    default it is another trial."""
    config = TrainConfig(dataset="ml-1m", num_negatives=64, seed=2)
    before = config.to_dict()
    for name in ("eval_every", "eval_max_scores", "patience_steps"):
        del before[name]  # the configuration as it was hashed before any of these fields existed
    canonical = json.dumps({"sweep": "s", "config": before}, sort_keys=True)
    assert trial_id("s", config) == f"s-{hashlib.sha256(canonical.encode()).hexdigest()[:16]}"
    other = {"eval_every": 2, "eval_max_scores": 1 << 26, "patience_steps": 800}
    assert trial_id("s", config.replace(**{name: other[name] for name in added})) != trial_id("s", config)


def test_a_sweep_refuses_a_temporal_split_of_positions_before_any_worker(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from study import cli

    log = write_log(tmp_path / "positions.csv", positional_rows())
    spec = tmp_path / "temporal.toml"
    spec.write_text(f'name = "t"\ndatasets = ["{log}"]\nsplit = "temporal"\n[axes]\nnum_negatives = [4]\n'
                    'batch_size = [4]\nmax_len = [4]\n')
    assert cli.main(["sweep", str(spec), "--dry-run", "--db", str(tmp_path / "r.sqlite")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "split: 'temporal' needs real time stamps" in err[0]
