"""The study report: seeds aggregated to mean and sd across databases, best per budget and implementation,
the negatives-vs-batch comparison, negative scopes, and the command writing it all."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pandas as pd
import pytest

from study import cli
from study.analysis import pareto
from study.analysis.study_report import (
    best_under_budgets,
    configurations,
    convergence_summary,
    fixed_product_lines,
    load_study,
    negatives_batch_figure,
    scaling_claim,
    scope_comparison,
    seed_candidates,
    speed_summary,
    versus,
)
from study.config import TrainConfig
from study.database.results_db import ResultsDB, load_trials
from study.record import MemoryReport, TrialRecord
from study.sweep.trial import predicted_over_budget_record
from study.training.trainer import collect_versions

GIB = 2**30


def trial(k: int, b: int, ndcg: float, gib: float, *, impl: str = "triton", seed: int = 0,
          scope: str = "position", status: str = "ok", stop: str | None = "early_stopping",
          patience: int = 10) -> TrialRecord:
    config = TrainConfig(dataset="ml-1m", loss="ce-neg", num_negatives=k, batch_size=b, max_len=50,
                         loss_impl=impl, negative_scope=scope, seed=seed,  # type: ignore[arg-type]
                         patience=patience)
    ok = status == "ok"
    return TrialRecord(status=status, config=config.to_dict(), loss_impl=impl,  # type: ignore[arg-type]
                       val_metrics={"ndcg@10": ndcg} if ok else {},
                       test_metrics={"ndcg@10": ndcg - 0.01} if ok else {},
                       memory=MemoryReport(nvml_process_peak=int(gib * GIB)),
                       steady_epoch_seconds=1.0 + k / 1e3, mean_epoch_seconds=1.0,
                       stop_reason=stop if ok else None)  # type: ignore[arg-type]


def write(path: Path, sweep: str, records: list[TrialRecord]) -> Path:
    with ResultsDB(path) as db:
        for index, record in enumerate(records):
            db.record_trial(f"{sweep}-{index}", sweep, record)
    return path


@pytest.fixture
def study_dbs(tmp_path: Path) -> list[Path]:
    grid = write(tmp_path / "grid.sqlite", "grid", [
        trial(64, 64, 0.150, 1.0), trial(1024, 64, 0.180, 2.0), trial(64, 1024, 0.160, 3.0),
        trial(1024, 1024, 0.190, 12.0),
        trial(64, 64, 0.149, 3.0, impl="torch"), trial(1024, 64, 0.181, 20.0, impl="torch"),
        trial(1024, 1024, 0.0, 90.0, impl="torch", status="predicted_over_budget"),
    ])
    seeds = write(tmp_path / "seeds.sqlite", "seeds", [
        trial(1024, 1024, 0.186, 12.5, seed=1), trial(1024, 1024, 0.188, 11.0, seed=2),
        trial(1024, 64, 0.170, 2.0, seed=1), trial(1024, 64, 0.190, 2.1, seed=2),
        trial(1024, 64, 0.150, 2.0, scope="batch"), trial(1024, 64, 0.152, 2.0, scope="batch", seed=1),
        trial(1024, 64, 0.151, 2.0, scope="batch", seed=2),
    ])
    return [grid, seeds]


def test_seeds_of_a_configuration_aggregate_across_databases(study_dbs: list[Path]) -> None:
    configs = configurations(load_study(study_dbs)).set_index(
        ["loss_impl_used", "negative_scope", "num_negatives", "batch_size"])
    big = configs.loc[("triton", "position", 1024, 1024)]
    assert big["seeds"] == 3 and big["val_mean"] == pytest.approx((0.190 + 0.186 + 0.188) / 3)
    assert big["val_sd"] == pytest.approx(pd.Series([0.190, 0.186, 0.188]).std())
    assert big["memory_bytes"] == int(12.5 * GIB)  # the largest seed: it must fit for every seed
    assert configs.loc[("torch", "position", 64, 64), "seeds"] == 1
    assert math.isnan(configs.loc[("torch", "position", 64, 64), "val_sd"])
    assert ("torch", "position", 1024, 1024) not in configs.index  # never ran


def seed_record(seed: int, ndcg: float, *, gpu: str = "NVIDIA H200", device: str = "cuda",
                budget: str = "40GiB", host: str = "a", sha: str = "a" * 64, requested: str = "triton",
                ran: str = "triton", lr: float = 1e-3) -> TrialRecord:
    """One seed of K=256, B=128 on ml-1m, with where and how it ran chosen."""
    config = TrainConfig(dataset="ml-1m", loss="ce-neg", num_negatives=256, batch_size=128, max_len=50,
                         loss_impl=requested, seed=seed, device=device, memory_budget=budget,  # type: ignore[arg-type]
                         lr=lr)
    return TrialRecord(status="ok", config=config.to_dict(), loss_impl=ran,  # type: ignore[arg-type]
                       val_metrics={"ndcg@10": ndcg}, test_metrics={"ndcg@10": ndcg - 0.01},
                       memory=MemoryReport(nvml_process_peak=GIB, gpu_name=gpu), mean_epoch_seconds=1.0,
                       steady_epoch_seconds=1.0, stop_reason="early_stopping", host=host,
                       dataset_sha256=sha, device=f"{device}:0")


def test_one_grouping_of_seeds_for_every_analysis(tmp_path: Path) -> None:
    """Seed repeats live in sweeps of their own and may run on other cards, devices, hosts and under
    another enforced budget: still one configuration, in the study report and in `best` / `pareto`
    alike. Another dataset file, training setting or implementation that ran is another configuration."""
    grid = write(tmp_path / "grid.sqlite", "grid", [seed_record(0, 0.20)])
    seeds = write(tmp_path / "seeds.sqlite", "seeds", [
        seed_record(1, 0.22, gpu="NVIDIA H100 80GB HBM3", device="auto", budget="16GiB", host="b"),
        seed_record(2, 0.21, requested="auto"),  # resolved to the fused loss, as seed 0 asked outright
        seed_record(0, 0.30, sha="b" * 64),  # another copy of "ml-1m"
        seed_record(0, 0.31, lr=5e-4),
        seed_record(0, 0.32, ran="torch", requested="auto"),
    ])
    trials = load_study([grid, seeds])
    in_report = {frozenset(ids.split(",")) for ids in configurations(trials)["trial_ids"]}
    table = pareto.pareto_table(trials, aggregate_seeds=True)
    in_pareto = {frozenset(ids.split(",")) for ids in table["trial_ids"]}
    assert in_report == in_pareto == {frozenset({"grid-0", "seeds-0", "seeds-1"}), frozenset({"seeds-2"}),
                                      frozenset({"seeds-3"}), frozenset({"seeds-4"})}
    three = table[table["num_seeds"] == 3].iloc[0]
    assert three["quality"] == pytest.approx(0.21) and three["seed"] == "0,1,2"
    assert three["gpu_name"] == "NVIDIA H200,NVIDIA H100 80GB HBM3" and three["sweep"] == "grid,seeds"


def test_best_under_each_budget_per_implementation(study_dbs: list[Path]) -> None:
    table = best_under_budgets(configurations(load_study(study_dbs)), [8 * GIB, 16 * GIB, 40 * GIB])
    best = {(row["budget GiB"], row["impl"]): (row["K"], row["batch"]) for _, row in table.iterrows()}
    assert best[(8.0, "fused (Triton)")] == (1024, 64)  # 1024 x 1024 needs 12.5 GiB
    assert best[(16.0, "fused (Triton)")] == (1024, 1024)
    assert best[(16.0, "PyTorch")] == (64, 64)  # its K=1024 trial took 20 GiB
    assert best[(40.0, "PyTorch")] == (1024, 64)
    verdicts = {(row["budget GiB"], row["impl"]): row["vs runner-up"] for _, row in table.iterrows()}
    # 0.180 +- 0.010 (3 seeds) against (64, 1024)'s one seed at 0.160: beyond the spread.
    assert verdicts[(8.0, "fused (Triton)")] == "ahead of runner-up: (64, 1024, 50) 0.1600 (1 seed)"
    # 0.188 +- 0.002 against 0.180 +- 0.010: the gap is inside the larger sd.
    assert verdicts[(16.0, "fused (Triton)")] == (
        "tied with runner-up (within sd): (1024, 64, 50) 0.1800 ± 0.0100 (3)")
    assert verdicts[(16.0, "PyTorch")] == "no runner-up"
    assert verdicts[(40.0, "PyTorch")] == "unknown (one seed): (64, 64, 50) 0.1490 (1 seed)"


def test_differences_inside_the_spread_are_no_difference() -> None:
    a = pd.Series({"val_mean": 0.190, "val_sd": 0.004, "seeds": 3})
    assert versus(a, pd.Series({"val_mean": 0.187, "val_sd": 0.001, "seeds": 3})) == "same (within sd)"
    assert versus(a, pd.Series({"val_mean": 0.180, "val_sd": 0.001, "seeds": 3})) == "better"
    assert versus(pd.Series({"val_mean": 0.17, "val_sd": 0.001, "seeds": 3}), a) == "worse"
    # One side with seeds: its spread is what is known; one seed on both sides: nothing is.
    assert versus(a, pd.Series({"val_mean": 0.188, "val_sd": math.nan, "seeds": 1})) == "same (within sd)"
    assert versus(a, pd.Series({"val_mean": 0.180, "val_sd": math.nan, "seeds": 1})) == "better"
    one = pd.Series({"val_mean": 0.190, "val_sd": math.nan, "seeds": 1})
    assert versus(one, pd.Series({"val_mean": 0.190, "val_sd": math.nan, "seeds": 1})) == "unknown (one seed)"


def test_the_scaling_claim_compares_the_best_with_either_axis_alone(study_dbs: list[Path]) -> None:
    table = scaling_claim(configurations(load_study(study_dbs)), [40 * GIB]).set_index("impl")
    fused = table.loc["fused (Triton)"]
    assert fused["best (K, B, L)"] == "(1024, 1024, 50)" and fused["both scaled"]
    assert "same (within sd)" in fused["negatives only (B=64)"]  # 0.188 +- 0.002 vs 0.180 +- 0.014
    # (64, 1024) ran one seed; the best's three seeds spread by 0.002, far less than the gap of 0.028.
    assert fused["batch only (K=64)"] == "(64, 1024, 50) 0.1600: best better"
    torch = table.loc["PyTorch"]  # one seed on both sides
    assert torch["batch only (K=64)"] == "(64, 64, 50) 0.1490: best unknown (one seed)"


def test_scopes_are_compared_with_per_position_at_equal_settings(study_dbs: list[Path]) -> None:
    table = scope_comparison(configurations(load_study(study_dbs)))
    assert list(table["scope"]) == ["position", "batch"]
    assert table.iloc[1]["vs per position"] == "worse"  # 0.151 +- 0.001 vs 0.180 +- 0.01


def test_scopes_are_compared_only_with_per_position_under_the_same_time_cap(tmp_path: Path) -> None:
    """A per-position configuration that differs in anything but the scope (here the time cap: another
    sweep, cut under another sharing of the card) is not the reference of the scopes; once it was, when
    it happened to be grouped last."""
    def capped(scope: str, cap: float, ndcg: float, seed: int) -> TrialRecord:
        return capped_trial(scope, cap, ndcg, seed, versions=collect_versions())
    scopes = write(tmp_path / "scopes.sqlite", "scopes", [
        capped(scope, 390, ndcg + seed / 1e4, seed)
        for scope, ndcg in (("position", 0.344), ("drawn", 0.345), ("batch", 0.311)) for seed in range(3)])
    other = write(tmp_path / "long.sqlite", "long",
                  [capped("position", 400, 0.400 + seed / 1e4, seed) for seed in range(3)])
    table = scope_comparison(configurations(load_study([other, scopes])))
    assert list(table["scope"]) == ["position", "drawn", "batch"]
    assert table.iloc[0]["val NDCG@10"].startswith("0.3441")  # the 390 s rows, not the 400 s ones (0.4001)
    assert table.iloc[1]["vs per position"] == "better"  # 0.3451 +- 0.0001 vs 0.3441 +- 0.0001
    assert table.iloc[2]["vs per position"] == "worse"


def capped_trial(scope: str, cap: float, ndcg: float, seed: int, *, versions: dict[str, str]) -> TrialRecord:
    config = TrainConfig(dataset="diginetica", loss="ce-neg", num_negatives=256, batch_size=1024,
                         max_len=20, negative_scope=scope, time_limit_s=cap,  # type: ignore[arg-type]
                         seed=seed)
    return TrialRecord(status="ok", config=config.to_dict(), loss_impl="triton",
                       val_metrics={"ndcg@10": ndcg}, test_metrics={"ndcg@10": ndcg},
                       memory=MemoryReport(nvml_process_peak=GIB), steady_epoch_seconds=6.0,
                       mean_epoch_seconds=6.0, stop_reason="time_limit", versions=versions)


def test_drawn_rows_from_before_the_stratum_weight_never_pool_with_weighted_ones(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rows whose trainer did not record how drawn negatives were weighted (study calls 13-39) trained the
    unweighted draw: the report calls their scope "drawn-unweighted", beside today's "drawn"; other scopes
    of the same rows keep their names, and the database itself is not changed."""
    old_versions = {"python": "3.12.3", "torch": "2.11.0+cu130"}
    old = write(tmp_path / "old.sqlite", "old", [
        capped_trial(scope, 390, ndcg + seed / 1e4, seed, versions=old_versions)
        for scope, ndcg in (("position", 0.344), ("drawn", 0.300)) for seed in range(3)])
    # A row the planner wrote (no trainer ran, so no versions) trained no loss at all: it stays "drawn".
    planned = TrainConfig(dataset="diginetica", loss="ce-neg", num_negatives=4096, batch_size=1024,
                          max_len=20, negative_scope="drawn", time_limit_s=390)
    new = write(tmp_path / "new.sqlite", "new",
                [capped_trial("drawn", 390, 0.345 + seed / 1e4, seed, versions=collect_versions())
                 for seed in range(3)] + [predicted_over_budget_record(planned, 50 * GIB, 40 * GIB, 43_097)])
    assert list(load_study([new])["negative_scope"]) == ["drawn"] * 4
    table = scope_comparison(configurations(load_study([old, new]))).set_index("scope")
    assert list(table.index) == ["position", "drawn", "drawn-unweighted"]
    assert table.loc["drawn", "val NDCG@10"].startswith("0.3451")  # the weighted seeds alone
    assert table.loc["drawn-unweighted", "val NDCG@10"].startswith("0.3001")
    assert set(load_trials(old)["negative_scope"]) == {"position", "drawn"}  # as recorded
    # `best` reads them the same way: pooled, the six drawn seeds (mean 0.3226) would lose to per position.
    assert cli.main(["best", "--db", str(old), "--db", str(new), "--budgets", "40GiB"]) == 0
    answer = capsys.readouterr().out.splitlines()[1].split()
    assert answer[2:5] == ["new-0", "256", "drawn"] and answer[8] == "0.3451"


def test_a_setting_besides_k_b_l_is_named_wherever_a_configuration_is(tmp_path: Path) -> None:
    """A side sweep that changed only the patience (the synthetic log's batch-1024 slice) is another
    configuration at the same (K, B, L): the tables name its setting, and the negatives x batch figure
    draws it as a line of its own instead of joining it to the grid's point at the same K."""
    grid = write(tmp_path / "grid.sqlite", "grid",
                 [trial(k, 1024, 0.04 + k / 1e6, 1.0) for k in (64, 256, 1024, 4096)])
    side = write(tmp_path / "side.sqlite", "side",
                 [trial(k, 1024, 0.15 + k / 1e6, 1.0, patience=40) for k in (1024, 4096)])
    configs = configurations(load_study([grid, side]))
    assert sorted(configs["other_settings"]) == ["", "", "", "", "patience=40", "patience=40"]
    second_side = write(tmp_path / "side2.sqlite", "side2",
                        [trial(k, 1024, 0.12 + k / 1e6, 1.0, patience=20) for k in (256, 1024)])
    three = negatives_batch_figure(configurations(load_study([grid, side, second_side])), "ml-1m (loo)")
    styles = {t.get_text(): str(h.get_linestyle()) for t, h in
              zip(three.legends[0].get_texts(), three.legends[0].legend_handles, strict=True)}
    assert len(styles) == 3 and len(set(styles.values())) == 3, styles  # each side sweep a style of its own
    best = best_under_budgets(configs, [8 * GIB])
    assert best.iloc[0]["other settings"] == "patience=40" and best.iloc[0]["K"] == 4096
    assert best.iloc[0]["vs runner-up"].endswith("(1024, 1024, 50) [patience=40] 0.1510 (1 seed)")
    figure = negatives_batch_figure(configs, "ml-1m (loo)")
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["batch 1024", "batch 1024, patience=40"]
    axes = figure.axes[0]
    drawn = sorted(len(container.lines[0].get_xdata()) for container in axes.containers)
    assert drawn == [2, 4]  # two lines (2 and 4 points), not one line of six


def test_lines_of_fixed_k_times_b_compare_the_batch_sizes_at_each_product(tmp_path: Path) -> None:
    """K x B = 2^16 is reached by (1024, 64), (256, 256) and (64, 1024); along it the table puts each batch's
    K and quality side by side, says which batch is ahead and how it compares with the next (by the seeds'
    spread); a (K, B, L) run under two settings shows its better one, named. Products only one batch
    reaches (here 2^22) are no line."""
    grid = write(tmp_path / "grid.sqlite", "grid", [
        trial(1024, 64, 0.3159, 1.0), trial(256, 256, 0.3033, 1.0), trial(256, 256, 0.3109, 1.0, seed=1),
        trial(256, 256, 0.2957, 1.0, seed=2), trial(64, 1024, 0.0400, 1.0), trial(1024, 1024, 0.30, 1.0),
        trial(4096, 1024, 0.29, 1.0)])
    side = write(tmp_path / "side.sqlite", "side", [trial(64, 1024, 0.2019, 1.0, patience=40),
                                                    trial(4096, 256, 0.31, 1.0, patience=40)])
    lines = fixed_product_lines(configurations(load_study([grid, side])))
    assert list(lines["K x B"]) == [65536, 1048576]
    line = lines.iloc[0]
    assert line["B=64"] == "K=1024: 0.3159 (1 seed)"
    assert line["B=256"] == "K=256: 0.3033 ± 0.0076 (3)"
    assert line["B=1024"] == "K=64: 0.2019 (1 seed) [patience=40]"  # the better of its two settings
    assert line["ahead on the line"] == "B=64"
    assert line["vs next"] == "better vs B=256"  # 0.0126 apart, more than B=256's sd 0.0076
    assert lines.iloc[1]["B=64"] == "-" and lines.iloc[1]["ahead on the line"] == "B=256"
    assert lines.iloc[1]["vs next"] == "unknown (one seed) vs B=1024"


def test_how_training_stopped_counts_the_capped_points(tmp_path: Path) -> None:
    path = write(tmp_path / "capped.sqlite", "capped", [
        trial(64, 1024, 0.30, 1.0, stop="time_limit"), trial(64, 1024, 0.31, 1.0, seed=1, stop="time_limit"),
        trial(256, 1024, 0.33, 1.0, stop="time_limit"), trial(4096, 1024, 0.36, 2.0),
        trial(64, 1024, 0.0, 90.0, impl="torch", status="predicted_over_budget")])
    table = convergence_summary(load_study([path])).set_index("impl")
    fused = table.loc["fused (Triton)"]
    assert (fused["trials"], fused["ok"], fused["early stopping"], fused["time cap"]) == (4, 4, 1, 3)
    assert fused["time-capped (K, B, L)"] == "(64, 1024, 50) x2, (256, 1024, 50)"
    assert table.loc["PyTorch", "predicted over budget (not run)"] == 1
    assert table.loc["PyTorch", "time-capped (K, B, L)"] == "-"


def test_fused_vs_pytorch_counts_each_configuration_once(tmp_path: Path) -> None:
    """Three seeds of one configuration where PyTorch took twice the fused loss's time and memory, one seed
    of another where it took ten times: over configurations the median is 6, not the 2 of the four pairs."""
    def timed(k: int, seed: int, impl: str, seconds: float, gib: float) -> TrialRecord:
        return dataclasses.replace(trial(k, 64, 0.2, gib, impl=impl, seed=seed), steady_epoch_seconds=seconds)

    records = [timed(256, seed, "triton", 1.0, 1.0) for seed in range(3)]
    records += [timed(256, seed, "torch", 2.0, 2.0) for seed in range(3)]
    records += [timed(4096, 0, "triton", 1.5, 1.2), timed(4096, 0, "torch", 15.0, 12.0),
                timed(4096, 1, "torch", 30.0, 12.0)]  # seed 1 has no fused twin: no pair
    summary = speed_summary(load_study([write(tmp_path / "speed.sqlite", "speed", records)])).iloc[0]
    assert (summary["configurations"], summary["pairs"]) == (2, 4)
    assert summary["speed-up median"] == pytest.approx(6.0)
    assert summary["memory ratio median"] == pytest.approx(6.0)
    assert summary["speed-up range"] == "2.00-10.00" and summary["memory ratio range"] == "2.00-10.00"


def test_configurations_without_three_seeds_are_listed(study_dbs: list[Path]) -> None:
    wanted = seed_candidates(configurations(load_study(study_dbs)), [8 * GIB, 40 * GIB])
    assert (wanted["seeds"] < 3).all()
    assert {(1024, 1024), (1024, 64)}.isdisjoint(
        zip(wanted[wanted["loss_impl_used"] == "triton"]["num_negatives"],
            wanted[wanted["loss_impl_used"] == "triton"]["batch_size"]))  # both have three
    assert (wanted["loss_impl_used"] == "torch").any()


def test_the_command_writes_the_report_and_figures(study_dbs: list[Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    argv = ["study-report", "--out", str(out), "--budgets", "8GiB,40GiB"]
    for path in study_dbs:
        argv += ["--db", str(path)]
    assert cli.main(argv) == 0
    text = (out / "study-report.md").read_text()
    assert "## How training stopped" in text and "### Best configuration under each budget" in text
    assert "0.1880 ± 0.0020 (3)" in text  # the 1024 x 1024 configuration's three seeds
    assert sorted(p.name for p in (out / "figures").iterdir()) == [
        "frontier_ml-1m_loo.png", "negatives_batch_ml-1m_loo.png", "time_memory_ml-1m_loo.png"]
    assert cli.main(["study-report", "--out", str(out), "--db", str(tmp_path / "none.sqlite")]) == 2
    assert "none.sqlite: no results database there" in capsys.readouterr().err
