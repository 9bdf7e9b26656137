"""`cce-study best / pareto / report` through the real command line entry point, on real databases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from analysis_fixtures import (
    GIB,
    SyntheticTrial,
    build_database,
    small_database,
    synthetic_sweep,
    tiny_database,
)

from study import analysis, cli
from study.database.results_db import ResultsDB, load_trials


@pytest.fixture(autouse=True)
def only_analysis_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parse with the analysis commands only, so these tests do not import the training stack."""
    commands = {name: cli.COMMANDS[name] for name in ("best", "pareto", "report")}
    monkeypatch.setattr(cli, "COMMANDS", commands)


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_database(tmp_path_factory.mktemp("db") / "results.sqlite")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_best_json_is_the_best_fitting_trial_and_its_runner_up(database: Path, capsys) -> None:
    code, out, _ = run(capsys, "best", "--db", str(database), "--budget", "1.4GiB", "--json")
    assert code == 0
    document = json.loads(out)
    best, runner_up = analysis.best_under_budget(load_trials(database), round(1.4 * GIB))
    assert best is not None and runner_up is not None
    assert document["budget_bytes"] == round(1.4 * GIB)
    assert document["best"]["trial_id"] == best["trial_id"]
    assert document["runner_up"]["trial_id"] == runner_up["trial_id"]
    assert document["best"]["peak_bytes"] <= 1.4 * GIB
    assert document["best"]["val_ndcg@10"] >= document["runner_up"]["val_ndcg@10"]
    assert document["best"]["config"]["num_negatives"] == document["best"]["num_negatives"]


def test_best_text_names_the_trial_metrics_and_memory(database: Path, capsys) -> None:
    code, out, _ = run(capsys, "best", "--db", str(database), "--budget", "40GiB", "--metric", "hit@20",
                       "--memory-field", "torch_max_reserved")
    best, _ = analysis.best_under_budget(load_trials(database), 40 * GIB, metric="hit@20",
                                         memory_field="torch_max_reserved")
    assert code == 0 and best is not None
    assert best["trial_id"] in out and "val hit@20" in out and "Runner-up" in out and "GiB" in out


def test_fraction_budget_is_of_the_trials_card(database: Path, capsys) -> None:
    code, out, _ = run(capsys, "best", "--db", str(database), "--budget", "0.5", "--json")
    assert code == 0
    assert json.loads(out)["budget_bytes"] == 40 * GIB  # the fixture's card has 80 GiB


def test_budgets_give_one_row_per_budget(database: Path, capsys) -> None:
    code, out, _ = run(capsys, "best", "--db", str(database), "--budgets", "1GiB,1.4GiB,40GiB", "--json")
    assert code == 0
    rows = json.loads(out)["budgets"]
    assert [r["budget_bytes"] for r in rows] == [GIB, round(1.4 * GIB), 40 * GIB]
    assert rows[0]["trial_id"] is None  # nothing fits 1 GiB
    assert rows[2]["quality"] >= rows[1]["quality"]
    code, out, _ = run(capsys, "best", "--db", str(database), "--budgets", "1GiB,40GiB")
    assert code == 0 and "(none fits)" in out and "40 GiB" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["--budget", "1GiB"], "no ok trial fits 1 GiB"),
    (["--budget", "40G"], "--budget"),
    (["--budget", "40GiB", "--metric", "ndcg@3"], "--metric"),
    (["--budget", "40GiB", "--dataset", "beauty"], "--dataset beauty"),
    (["--budget", "40GiB", "--budgets", "8GiB"], "exactly one of --budget or --budgets"),
    ([], "exactly one of --budget or --budgets"),
])
def test_best_errors_are_one_line_with_a_non_zero_exit(database: Path, capsys, argv, message) -> None:
    code, out, err = run(capsys, "best", "--db", str(database), *argv)
    assert code != 0 and out == ""
    assert err.count("\n") == 1 and message in err


def test_best_on_a_missing_an_empty_or_an_all_failed_database(tmp_path: Path, capsys) -> None:
    code, _, err = run(capsys, "best", "--db", str(tmp_path / "absent.sqlite"), "--budget", "8GiB")
    assert code != 0 and "no such results database" in err and err.count("\n") == 1

    ResultsDB(tmp_path / "empty.sqlite").close()
    code, _, err = run(capsys, "best", "--db", str(tmp_path / "empty.sqlite"), "--budget", "8GiB")
    assert code != 0 and "no trials" in err and err.count("\n") == 1

    trials = synthetic_sweep(np.random.default_rng(0), negatives=(64,), batch_sizes=(32, 64), max_lens=(50,),
                             impls=("torch",))
    failed = [SyntheticTrial(t.trial_id, t.config, "oom", "torch", None, None, None) for t in trials]
    build_database(tmp_path / "failed.sqlite", failed)
    code, _, err = run(capsys, "best", "--db", str(tmp_path / "failed.sqlite"), "--budget", "8GiB")
    assert code != 0 and "no trial finished ok (oom 2)" in err and err.count("\n") == 1

    code, _, err = run(capsys, "best", "--db", str(tmp_path / "failed.sqlite"), "--budget", "8GiB",
                       "--sweep", "another")
    assert code != 0 and "no trials of sweep 'another'" in err


def test_best_asks_for_a_dataset_when_the_database_holds_several(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(6)
    trials = [*synthetic_sweep(rng, dataset="ml-100k", negatives=(64,), batch_sizes=(32,), max_lens=(50,)),
              *synthetic_sweep(rng, dataset="ml-1m", negatives=(64,), batch_sizes=(32,), max_lens=(50,))]
    database = build_database(tmp_path / "two.sqlite", trials)
    code, _, err = run(capsys, "best", "--db", str(database), "--budget", "40GiB")
    assert code != 0 and "ml-100k, ml-1m" in err and "--dataset" in err and err.count("\n") == 1
    code, out, _ = run(capsys, "best", "--db", str(database), "--budget", "40GiB", "--dataset", "ml-1m",
                       "--json")
    assert code == 0 and json.loads(out)["best"]["dataset"] == "ml-1m"


def test_pareto_writes_the_figures_it_lists(tmp_path: Path, capsys) -> None:
    database = tiny_database(tmp_path / "tiny.sqlite")
    code, out, _ = run(capsys, "pareto", "--db", str(database), "--out", str(tmp_path / "figs"),
                       "--budgets", "1.3GiB,2GiB")
    assert code == 0
    listed = [Path(line) for line in out.splitlines()]
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == sorted(p.name for p in listed)
    assert {p.suffix for p in listed} == {".png", ".svg"} and len(listed) == 8


def test_report_embeds_tables_and_existing_figures(database: Path, tmp_path: Path, capsys) -> None:
    code, out, _ = run(capsys, "report", "--db", str(database), "--out", str(tmp_path / "report"))
    assert code == 0
    report = Path(out.strip())
    assert report == tmp_path / "report" / "report.md"
    text = report.read_text()
    for heading in ("## Trial status", "## Pareto frontier", "## Best configuration under each budget",
                    "## Fused (Triton) vs PyTorch loss"):
        assert heading in text
    frontier = analysis.pareto_frontier(load_trials(database))
    assert all(trial_id in text for trial_id in frontier["trial_id"])
    images = [line.split("](")[1].split(")")[0] for line in text.splitlines() if line.startswith("![")]
    assert len(images) == 4
    assert all((report.parent / image).stat().st_size > 10_000 for image in images)


def test_report_compares_steady_state_epoch_times(tmp_path: Path) -> None:
    from analysis_fixtures import to_frame

    from study.analysis import report

    trials = synthetic_sweep(np.random.default_rng(3), negatives=(64, 1024), batch_sizes=(64, 256),
                             max_lens=(50,))
    frame = to_frame(trials)
    fused = frame["loss_impl_used"] == "triton"
    mean = frame["mean_epoch_seconds"]
    frame["steady_epoch_seconds"] = np.where(fused, mean / 4, mean)
    ok = frame.index[frame["status"] == "ok"]
    # one fused trial recorded before the steady time: its mean is shown and compared
    old_trial = analysis.fused_vs_torch(frame)["triton_trial_id"].iloc[0]
    frame.loc[frame["trial_id"] == old_trial, "steady_epoch_seconds"] = np.nan

    summary = report.fused_summary(frame, memory_field="peak_bytes")
    pairs = analysis.fused_vs_torch(frame)
    fused_times = summary["fused time per epoch (steady state, s)"]
    assert list(fused_times) == list(pairs[f"triton_{analysis.TIME_COLUMN}"])
    old_pair = (pairs["triton_trial_id"] == old_trial).to_numpy()
    mean_of = frame.set_index("trial_id")["mean_epoch_seconds"]
    assert fused_times[old_pair].tolist() == [mean_of[old_trial]]
    assert (summary["speedup (PyTorch / fused)"][~old_pair] > 3).all()  # steady state: 4x faster
    frontier = report.frontier_summary(frame, metric="ndcg@10", memory_field="peak_bytes")
    expected = analysis.epoch_time(frame.set_index("trial_id").loc[frontier["trial"]])
    np.testing.assert_allclose(frontier["time per epoch (steady state, s)"], expected)

    text = report.write_report(frame, tmp_path, note=lambda _: None).read_text()
    assert "time per epoch (steady state, s)" in text
    assert f"1 of {len(ok)} ok trials have no steady-state time recorded" in text
    assert f"median speedup {summary['speedup (PyTorch / fused)'].median():.2f}x" in text
    assert "no steady-state time" not in report.time_note(frame.fillna({"steady_epoch_seconds": 1.0}))


def test_pareto_and_report_write_next_to_the_database_without_out(tmp_path: Path, capsys) -> None:
    database = tiny_database(tmp_path / "sweep" / "results.sqlite")
    code, out, _ = run(capsys, "pareto", "--db", str(database))
    assert code == 0 and len(out.splitlines()) == 8
    assert all(Path(line).parent == tmp_path / "sweep" / "figures" for line in out.splitlines())
    code, out, _ = run(capsys, "report", "--db", str(database))
    assert code == 0 and Path(out.strip()) == tmp_path / "sweep" / "report" / "report.md"
    a_file = tmp_path / "plain.txt"
    a_file.write_text("x")
    code, _, err = run(capsys, "pareto", "--db", str(database), "--out", str(a_file / "figs"))
    assert code == 2 and err.count("\n") == 1 and "--out" in err and "plain.txt" in err


def test_full_ce_shows_full_for_its_negatives(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(5)
    trials = synthetic_sweep(rng, negatives=(64,), batch_sizes=(32,), max_lens=(50,), impls=("triton",))
    best_config = trials[0].config.replace(loss="ce", num_negatives=999)  # meaningless for full CE: NULL
    full = SyntheticTrial("full-ce", best_config, "ok", "triton", 0.9, trials[0].peak_bytes, 1.0)
    database = build_database(tmp_path / "r.sqlite", [*trials, full])
    code, out, _ = run(capsys, "best", "--db", str(database), "--budgets", "40GiB")
    assert code == 0
    row = next(line for line in out.splitlines() if "full-ce" in line)
    assert " full " in row and "999" not in row
    code, out, _ = run(capsys, "best", "--db", str(database), "--budget", "40GiB")
    assert code == 0 and "loss=ce negatives=full" in out
    code, out, _ = run(capsys, "best", "--db", str(database), "--budget", "40GiB", "--json")
    assert json.loads(out)["best"]["num_negatives"] is None
    code, out, _ = run(capsys, "report", "--db", str(database), "--out", str(tmp_path / "rep"))
    text = Path(out.strip()).read_text()
    assert "| full-ce | ce | full |" in text


def test_spec_version_selects_the_trials_of_one_version(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(7)
    trials = synthetic_sweep(rng, negatives=(64, 256), batch_sizes=(32,), max_lens=(50,), impls=("triton",))
    database = build_database(tmp_path / "r.sqlite", trials, sweep="test")
    with ResultsDB(database) as db:
        db.add_spec_version("test", "h1", {}, [t.trial_id for t in trials])
        db.add_spec_version("test", "h2", {}, [trials[0].trial_id])
    code, out, _ = run(capsys, "best", "--db", str(database), "--budgets", "40GiB", "--json")
    assert [r["trial_id"] for r in json.loads(out)["budgets"]] == [trials[0].trial_id]  # latest: one trial
    code, out, _ = run(capsys, "best", "--db", str(database), "--budgets", "40GiB", "--json",
                       "--spec-version", "1")
    best_of_both = max(trials, key=lambda t: t.quality or 0).trial_id
    assert [r["trial_id"] for r in json.loads(out)["budgets"]] == [best_of_both]
    code, _, err = run(capsys, "best", "--db", str(database), "--budgets", "40GiB", "--spec-version", "3")
    assert code == 2 and "spec_version: 3 is not recorded" in err and err.count("\n") == 1


def test_best_ranks_configurations_by_their_mean_over_seeds_across_databases(tmp_path: Path, capsys) -> None:
    """A grid in one database and its seed repeats in another, read as one: the configuration whose mean
    is highest wins, not the luckiest seed. Configuration A has seeds 0.30 / 0.20 / 0.22 (mean 0.24),
    B one seed at 0.25: per trial A's seed 0 would be best; over seeds B is."""
    base = synthetic_sweep(np.random.default_rng(8), negatives=(64, 256), batch_sizes=(32,), max_lens=(50,),
                           impls=("triton",))
    config_a, config_b = base[0].config, base[1].config
    assert config_a.num_negatives != config_b.num_negatives

    def trial(name: str, config, quality: float, peak_gib: float) -> SyntheticTrial:
        return SyntheticTrial(name, config, "ok", "triton", quality, round(peak_gib * GIB), 1.0)

    grid = build_database(tmp_path / "grid.sqlite", [trial("a-seed0", config_a, 0.30, 1.0),
                                                     trial("b-seed0", config_b, 0.25, 1.5)])
    seeds = build_database(tmp_path / "seeds.sqlite", [trial("a-seed1", config_a.replace(seed=1), 0.20, 1.2),
                                                       trial("a-seed2", config_a.replace(seed=2), 0.22, 1.1)],
                           sweep="seeds")
    code, out, _ = run(capsys, "best", "--db", str(grid), "--budget", "40GiB", "--json")
    assert code == 0 and json.loads(out)["best"]["trial_id"] == "a-seed0"  # one seed each: A is ahead
    code, out, _ = run(capsys, "best", "--db", str(grid), "--db", str(seeds), "--budget", "40GiB", "--json")
    document = json.loads(out)
    assert code == 0
    assert document["best"]["trial_id"] == "b-seed0" and document["best"]["seeds"] == 1
    runner_up = document["runner_up"]
    assert runner_up["seeds"] == 3 and sorted(runner_up["trial_ids"]) == ["a-seed0", "a-seed1", "a-seed2"]
    assert runner_up["val_ndcg@10"] == pytest.approx(0.24)
    assert runner_up["val_ndcg@10_sd"] == pytest.approx(np.std([0.30, 0.20, 0.22], ddof=1))
    assert runner_up["peak_bytes"] == round(1.2 * GIB)  # the largest peak of its seeds
    # Under 1.3 GiB only A fits (B peaked at 1.5), whose seeds all fit: the table shows its mean and spread.
    code, out, _ = run(capsys, "best", "--db", str(grid), "--db", str(seeds), "--budgets", "1.3GiB,40GiB")
    assert code == 0
    first, second = out.splitlines()[1:3]
    header = out.splitlines()[0]
    seeds_at = header.index(" seeds") + len(" seeds")
    assert "a-seed0" in first and "0.24 ± 0.053" in first and first[:seeds_at].split()[-1] == "3"
    assert first.rstrip().endswith("-")  # nothing else fits: no runner-up, no verdict
    assert "b-seed0" in second
    # The same database twice is refused in one line, naming the trial and the files.
    code, _, err = run(capsys, "best", "--db", str(grid), "--db", str(grid), "--budget", "40GiB")
    assert code != 0 and "a-seed0" in err and "grid.sqlite" in err and err.count("\n") == 1


def test_best_says_when_the_runner_up_is_within_the_seeds_spread(tmp_path: Path, capsys) -> None:
    """The games study's case: the best configuration ran one seed (0.0657), the runner-up three
    (0.0653 +- 0.0015), its seed repeats in a sweep of their own under another enforced budget. A gap of
    0.0004 inside a spread of 0.0015 is no difference, and every output of `best` and `report` says so."""
    base = synthetic_sweep(np.random.default_rng(3), negatives=(4096,), batch_sizes=(256,), max_lens=(20, 50),
                           impls=("triton",))
    short, long = (t.config for t in base)
    assert (short.max_len, long.max_len) == (20, 50)

    def trial(name: str, config, quality: float, peak_gib: float) -> SyntheticTrial:
        return SyntheticTrial(name, config, "ok", "triton", quality, round(peak_gib * GIB), 1.0)

    grid = build_database(tmp_path / "grid.sqlite", [trial("l20-s0", short, 0.0657, 1.23),
                                                     trial("l50-s0", long, 0.0638, 1.70)])
    repeats = [trial(f"l50-s{seed}", long.replace(seed=seed, memory_budget="16GiB"), quality, 1.72)
               for seed, quality in ((1, 0.0653), (2, 0.0668))]
    seeds = build_database(tmp_path / "seeds.sqlite", repeats, sweep="seeds")
    both = ["--db", str(grid), "--db", str(seeds)]

    code, out, _ = run(capsys, "best", *both, "--budget", "40GiB")
    assert code == 0
    assert "Best vs runner-up: tied with runner-up (within sd) (gap 0.0004" in out
    assert "runner-up sd 0.0015 over 3 seeds" in out
    code, out, _ = run(capsys, "best", *both, "--budget", "40GiB", "--json")
    document = json.loads(out)
    assert document["vs_runner_up"] == "same (within sd)"
    assert document["runner_up"]["seeds"] == 3 and document["runner_up"]["max_len"] == 50
    assert document["runner_up"]["val_ndcg@10_sd"] == pytest.approx(0.0015)

    code, out, _ = run(capsys, "best", *both, "--budgets", "8GiB,40GiB", "--json")
    rows = json.loads(out)["budgets"]
    assert [r["vs_runner_up"] for r in rows] == ["same (within sd)"] * 2
    assert all(r["runner_up_seeds"] == 3 and r["runner_up_max_len"] == 50 for r in rows)
    assert all(r["runner_up_quality_sd"] == pytest.approx(0.0015) for r in rows)
    code, out, _ = run(capsys, "best", *both, "--budgets", "8GiB,40GiB")
    assert code == 0 and "vs runner-up" in out.splitlines()[0]
    assert all(line.rstrip().endswith("tied with runner-up (within sd)") for line in out.splitlines()[1:])
    assert "0.0653 ± 0.0015 (3)" in out

    code, out, _ = run(capsys, "report", *both, "--out", str(tmp_path / "report"), "--budgets", "8GiB")
    text = Path(out.strip()).read_text()
    budget_row = next(line for line in text.splitlines() if line.startswith("| ml-100k | loo | 8 |"))
    assert budget_row.endswith("| tied with runner-up (within sd) |")

    # One seed on either side: the spread is unknown, and the answer says so.
    code, out, _ = run(capsys, "best", "--db", str(grid), "--budget", "40GiB", "--json")
    assert json.loads(out)["vs_runner_up"] == "unknown (one seed)"


def test_best_says_how_many_seeds_of_an_answer_the_time_limit_cut(tmp_path: Path, capsys) -> None:
    """Diginetica's case: every seed of the answer reached the per-trial time limit, so its quality is
    that of unfinished runs; `best` says so in the text, the budget table and the JSON, per seed."""
    base = synthetic_sweep(np.random.default_rng(5), negatives=(64, 4096), batch_sizes=(1024,),
                           max_lens=(20,), impls=("triton",))
    small, large = (t.config.replace(time_limit_s=400.0) for t in base)

    def trial(name: str, config, quality: float, stop: str) -> SyntheticTrial:
        return SyntheticTrial(name, config, "ok", "triton", quality, round(1.5 * GIB), 1.0, stop)

    capped = [trial(f"large-s{seed}", large.replace(seed=seed), quality, stop) for seed, quality, stop
              in ((0, 0.37, "time_limit"), (1, 0.371, "time_limit"), (2, 0.369, "early_stopping"))]
    database = build_database(tmp_path / "capped.sqlite",
                              [*capped, trial("small-s0", small, 0.31, "early_stopping")])

    code, out, _ = run(capsys, "best", "--db", str(database), "--budget", "40GiB")
    assert code == 0
    assert "the time limit (400 s) cut 2 of 3 seeds: unfinished runs" in out
    assert "stopped  before the time limit" in out  # the runner-up, one seed that early stopping ended
    code, out, _ = run(capsys, "best", "--db", str(database), "--budget", "40GiB", "--json")
    document = json.loads(out)
    assert document["best"]["time_capped_seeds"] == 2 and document["best"]["seeds"] == 3
    assert document["runner_up"]["time_capped_seeds"] == 0
    code, out, _ = run(capsys, "best", "--db", str(database), "--budgets", "8GiB,40GiB")
    header, *rows = out.splitlines()
    assert "cut by time limit" in header and all(" 2/3 " in row for row in rows)
    code, out, _ = run(capsys, "best", "--db", str(database), "--budgets", "40GiB", "--json")
    assert json.loads(out)["budgets"][0]["time_capped_seeds"] == 2


def test_best_says_how_crowded_the_card_was_for_each_seed(tmp_path: Path, capsys) -> None:
    """A capped seed trains as far as its share of the card allows. Seed 0 of the answer ran alone, seeds 1
    and 2 beside each other and, for half their run, beside a trial of another sweep in another database:
    `best` counts it although --sweep selects only the answer's sweep."""
    (config,) = (t.config for t in synthetic_sweep(np.random.default_rng(7), negatives=(1024,),
                                                   batch_sizes=(256,), max_lens=(200,), impls=("triton",)))

    def seed(seed: int, card: str, quality: float) -> SyntheticTrial:
        return SyntheticTrial(f"s{seed}", config.replace(seed=seed), "ok", "triton", quality, round(3 * GIB),
                              5.0, "time_limit", card=card, ran=(0.0, 300.0))

    grid = build_database(tmp_path / "grid.sqlite", [seed(0, "GPU-a", 0.34), seed(1, "GPU-b", 0.26),
                                                     seed(2, "GPU-b", 0.27)], sweep="grid")
    other = SyntheticTrial("other", config.replace(num_negatives=64), "ok", "torch", 0.1, round(9 * GIB), 9.0,
                           card="GPU-b", ran=(150.0, 600.0))
    neighbour = build_database(tmp_path / "other.sqlite", [other], sweep="other")
    both = ["--db", str(grid), "--db", str(neighbour), "--sweep", "grid"]

    code, out, _ = run(capsys, "best", *both, "--budgets", "8GiB")
    header, row = out.splitlines()
    assert code == 0 and "trials on card" in header and " 1.0-2.5 " in row
    code, out, _ = run(capsys, "best", *both, "--budget", "8GiB")
    assert "card     1.0-2.5 trials of these databases on it (mean over each seed's run" in out
    code, out, _ = run(capsys, "best", *both, "--budget", "8GiB", "--json")
    best = json.loads(out)["best"]
    assert best["trials_on_card_min"] == pytest.approx(1.0)
    assert best["trials_on_card_max"] == pytest.approx(2.5)
    code, out, _ = run(capsys, "best", "--db", str(grid), "--budgets", "8GiB", "--json")
    assert json.loads(out)["budgets"][0]["trials_on_card_max"] == pytest.approx(2.0)  # the neighbour unseen


def test_the_budget_table_names_the_scope_of_each_answer(tmp_path: Path, capsys) -> None:
    """Where a database holds negative scopes side by side, an answer may be drawn negatives: the budget
    table must say so, or the user would rerun it per position (diginetica's answer, 2026-11-29)."""
    base = synthetic_sweep(np.random.default_rng(6), negatives=(4096,), batch_sizes=(1024,),
                           max_lens=(20,), impls=("triton",))
    (config,) = (t.config for t in base)
    database = build_database(tmp_path / "scopes.sqlite", [
        SyntheticTrial("position", config, "ok", "triton", 0.371, round(1.9 * GIB), 1.0, "early_stopping"),
        SyntheticTrial("drawn", config.replace(negative_scope="drawn"), "ok", "triton", 0.372,
                       round(1.1 * GIB), 1.0, "early_stopping"),
    ])
    code, out, _ = run(capsys, "best", "--db", str(database), "--budgets", "8GiB,40GiB")
    header, *rows = out.splitlines()
    assert code == 0 and " scope " in header
    assert all(row.split()[2:5] == ["drawn", "4096", "drawn"] for row in rows)  # trial, K, scope
