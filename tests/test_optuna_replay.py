"""benchmarks/optuna_replay.py: the sweep's Optuna search replayed against a recorded grid.

A small grid with hand-made results, where the answers (best under each budget, the configurations within
the tolerance, the Pareto frontier) are known; the replay must suggest exactly what the sweep's searcher
(`make_optuna_search`, Ray Tune's OptunaSearch) suggests, and count every suggestion as a trial."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd
import pytest
from repo_scripts import load_script

from study.database.results_db import ResultsDB, load_trials
from study.record import MemoryReport, TrialRecord
from study.sweep import driver
from study.sweep.spec import SweepSpec, parse_spec
from study.sweep.trial import CONSTRAINT_KEY, final_result
from study.units import GiB

ROOT = Path(__file__).resolve().parents[1]
BUDGET = 40 * GiB


def replay_module() -> ModuleType:
    return load_script("benchmarks/optuna_replay.py")


replay = replay_module()

# The fused grid, K x B x L = 3 x 2 x 2: (val NDCG@10, peak GiB), or None for predicted over the budget.
FUSED: dict[tuple[int, int, int], tuple[float, float] | None] = {
    (8, 8, 10): (0.100, 1), (8, 8, 20): (0.110, 2), (8, 16, 10): (0.105, 2), (8, 16, 20): (0.120, 4),
    (16, 8, 10): (0.115, 3), (16, 8, 20): (0.130, 6), (16, 16, 10): (0.125, 6), (16, 16, 20): (0.140, 12),
    (32, 8, 10): (0.129, 7), (32, 8, 20): (0.150, 20), (32, 16, 10): (0.1395, 14), (32, 16, 20): None,
}
FRONTIER = {(8, 8, 10), (8, 8, 20), (16, 8, 10), (8, 16, 20), (16, 8, 20), (16, 16, 20), (32, 8, 20)}
BEST = {8: {(16, 8, 20)}, 16: {(16, 16, 20)}, 40: {(32, 8, 20)}}
NEAR = {8: {(16, 8, 20), (32, 8, 10)}, 16: {(16, 16, 20), (32, 16, 10)}, 40: {(32, 8, 20)}}


def grid_spec() -> SweepSpec:
    return parse_spec({"name": "toy", "datasets": ["d"], "memory_budget": "40GiB",
                       "axes": {"loss_impl": ["triton", "torch"], "num_negatives": [8, 16, 32],
                                "batch_size": [8, 16], "max_len": [10, 20]}})


def record(config: dict[str, Any], values: tuple[float, float] | None, budget: int = BUDGET) -> TrialRecord:
    if values is None:
        return TrialRecord(status="predicted_over_budget", config=config, predicted_peak_bytes=50 * GiB,
                           memory=MemoryReport(budget_bytes=budget))
    quality, peak_gib = values
    return TrialRecord(status="ok", config=config, val_metrics={"ndcg@10": quality},
                       memory=MemoryReport(nvml_process_peak=int(peak_gib * GiB), budget_bytes=budget))


@pytest.fixture(scope="module")
def toy_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every fused configuration; PyTorch ones at K = 8 and 16 only (K = 32 has no row)."""
    spec = grid_spec()
    path = tmp_path_factory.mktemp("replay") / "toy.sqlite"
    with ResultsDB(path) as db:
        for config in spec.grid():
            point = (config.num_negatives, config.batch_size, config.max_len)
            values = FUSED[point]
            if config.loss_impl == "torch":
                if config.num_negatives == 32:
                    continue
                values = None if values is None else (values[0] - 0.001, values[1] * 2)
            db.record_trial(spec.trial_id(config), spec.name, record(config.to_dict(), values))
    return path


@pytest.fixture(scope="module")
def fused(toy_db: Path) -> Any:
    slices = replay.complete_slices(grid_spec(), load_trials(toy_db, sweep="toy"), "toy")
    return {grid.name: grid for grid in slices}["toy triton"]


def test_only_complete_slices_are_replayed(toy_db: Path) -> None:
    slices = replay.complete_slices(grid_spec(), load_trials(toy_db, sweep="toy"), "toy")
    assert [(g.name, g.size) for g in slices] == [("toy triton", 12), ("toy both K<=16", 16)]
    assert [name for name, _ in slices[0].spec.axes] == ["num_negatives", "batch_size", "max_len"]
    assert [name for name, _ in slices[1].spec.axes] == ["loss_impl", "num_negatives", "batch_size",
                                                         "max_len"]


def test_the_targets_of_a_known_grid(fused: Any) -> None:
    targets = replay.targets_of(fused)
    assert targets.frontier == FRONTIER
    assert {b: set(points) for b, points in targets.best.items()} == BEST
    assert {b: set(points) for b, points in targets.near.items()} == NEAR
    # what the sweep tells Optuna for the configuration predicted over the budget: infeasible
    assert fused.results[(32, 16, 20)][CONSTRAINT_KEY] > 0


def test_repeats_count_as_trials() -> None:
    a, b, c = (1,), (2,), (3,)
    sequence = [a, a, b, a, c]
    assert replay.trials_until(sequence, frozenset({c})) == 5  # the fifth trial, third distinct
    assert replay.trials_until(sequence, frozenset({b, c}), share=1.0) == 5
    assert replay.trials_until(sequence, frozenset({b, c}), share=0.5) == 3
    assert replay.trials_until(sequence, frozenset({(4,)})) is None
    assert replay.frontier_found(sequence, frozenset({a, c}), 5) == [1, 1, 1, 1, 2]


def test_random_order_visits_each_configuration_once(fused: Any) -> None:
    order = replay.random_order(fused, seed=3)
    assert sorted(order) == sorted(fused.results) and order != replay.random_order(fused, seed=4)
    row = replay.measure(order, replay.targets_of(fused), fused.size)
    assert all(1 <= row[key] <= fused.size for key in row if key.startswith("trials_to_"))
    assert row["trials_to_best_40gib"] == order.index((32, 8, 20)) + 1


def sweep_suggestions(grid: Any, sampler: str, seed: int, trials: int, concurrency: int) -> list[tuple]:
    """What the sweep's searcher suggests when each trial ends with its grid result: Ray's OptunaSearch
    through make_optuna_search, `concurrency` trials pending, the oldest completed first."""
    from ray.tune.search import Searcher

    spec = dataclasses.replace(grid.spec, search=dataclasses.replace(
        grid.spec.search, kind="optuna", sampler=sampler, seed=seed, num_samples=trials))
    searcher = driver.make_optuna_search(spec, pd.DataFrame())
    searcher.set_search_properties(None, None, driver.optuna_param_space(spec))
    names = [name for name, _ in spec.axes]
    suggested: list[tuple] = []
    pending: list[tuple[str, tuple]] = []
    for number in range(trials):
        config = searcher.suggest(f"t{number}")
        if config == Searcher.FINISHED:
            break
        point = tuple(config["axes"][name] for name in names)
        suggested.append(point)
        pending.append((f"t{number}", point))
        if len(pending) >= concurrency:
            trial_id, done = pending.pop(0)
            searcher.on_trial_complete(trial_id, grid.results[done])
    return suggested


def under_8gib(grid: Any) -> Any:
    """The fused grid as a sweep under 8 GiB would have recorded it: four configurations infeasible."""
    results = {point: final_result(str(point), record({}, FUSED[point], budget=8 * GiB)) for point in FUSED}
    assert sum(result[CONSTRAINT_KEY] > 0 for result in results.values()) == 4
    return replay.GridSlice("toy under 8 GiB", grid.spec, results)


@pytest.mark.parametrize(("sampler", "trials", "concurrency"),
                         [("tpe", 24, 1), ("tpe", 20, 3), ("nsga2", 60, 1)])
def test_the_replay_suggests_what_the_sweeps_search_does(fused: Any, sampler: str, trials: int,
                                                         concurrency: int) -> None:
    # past TPE's 10 random start-up trials and NSGA-II's first generation of 50
    for grid in (fused, under_8gib(fused)):
        for seed in (0, 5):
            replayed = replay.replay_optuna(grid, sampler, seed, trials, concurrency=concurrency)
            assert replayed == sweep_suggestions(grid, sampler, seed, trials, concurrency)
            # a configuration drawn again is answered from its result, not trained again: one at a time,
            # the search trains every configuration once and then ends
            if concurrency == 1:
                assert sorted(replayed) == sorted(grid.results) and trials > grid.size
            else:
                assert set(replayed) <= set(grid.results) and len(replayed) <= trials


def test_make_optuna_search_uses_the_shared_sampler_space_and_constraint(
        fused: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.tune.search.optuna import OptunaSearch

    spec = dataclasses.replace(fused.spec, search=dataclasses.replace(
        fused.spec.search, kind="optuna", sampler="nsga2", seed=11, num_samples=4))
    made: list[Any] = []
    constrained: list[float] = []
    original_sampler, original_constraint = driver.optuna_sampler, driver.set_optuna_constraint

    def spy_sampler(search: Any) -> Any:
        made.append((search, original_sampler(search)))
        return made[-1][1]

    def spy_constraint(ot_trial: Any, result: dict[str, Any]) -> None:
        constrained.append(result[CONSTRAINT_KEY])
        original_constraint(ot_trial, result)

    monkeypatch.setattr(driver, "optuna_sampler", spy_sampler)
    monkeypatch.setattr(driver, "set_optuna_constraint", spy_constraint)
    searcher = driver.make_optuna_search(spec, pd.DataFrame())
    assert [search for search, _ in made] == [spec.search] and searcher._sampler is made[0][1]
    space = driver.optuna_param_space(spec)
    converted = OptunaSearch.convert_search_space(space)  # what the sweep's searcher draws from
    assert list(converted.items()) == list(driver.optuna_distributions(spec).items())
    searcher.set_search_properties(None, None, space)
    assert searcher._ot_study.directions == replay.replay_directions()
    searcher.suggest("t0")
    over = final_result("x", record({}, None))
    searcher.on_trial_complete("t0", over)
    assert constrained == [over[CONSTRAINT_KEY]]
    assert searcher._ot_study.trials[0].constraints == {CONSTRAINT_KEY: over[CONSTRAINT_KEY]}


def test_the_script_writes_its_tables_and_figure(toy_db: Path, tmp_path: Path) -> None:
    spec_file = tmp_path / "toy.toml"
    spec_file.write_text('name = "toy"\ndatasets = ["d"]\nmemory_budget = "40GiB"\n[axes]\n'
                         'loss_impl = ["triton", "torch"]\nnum_negatives = [8, 16, 32]\n'
                         'batch_size = [8, 16]\nmax_len = [10, 20]\n')
    out = tmp_path / "out"
    assert replay.main(["--db", str(toy_db), "--spec", str(spec_file), "--seeds", "2",
                        "--concurrency", "1", "--out", str(out)]) == 0
    runs = pd.read_csv(out / "replay-runs.csv")
    assert set(runs["method"]) == {"random", "tpe", "nsga2"} and len(runs) == 2 * 3 * 2
    searches = runs[runs["method"] != "random"]
    assert (searches["trials_run"] == searches["grid_size"]).all()  # one at a time: each once, then done
    summary = pd.read_csv(out / "replay-summary.csv")
    assert set(summary["slice"]) == {"toy triton", "toy both K<=16"}
    assert (out / "replay-frontier.png").stat().st_size > 0 and (out / "replay-summary.md").is_file()


def test_unpaired_databases_and_specs_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        replay.main(["--db", "a.sqlite", "--db", "b.sqlite", "--spec", "a.toml", "--out", "x"])
    assert exit_info.value.code == 2
    assert "--db and --spec: 2 database(s) but 1 spec(s)" in capsys.readouterr().err
