"""Figures: written as PNG and SVG, readable, showing what the analysis computed, skipped with a note
when the data cannot support them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from analysis_fixtures import GIB, SyntheticTrial, synthetic_sweep, to_frame
from matplotlib.image import imread

from study import analysis
from study.analysis import plots


@pytest.fixture(scope="module")
def trials() -> pd.DataFrame:
    sweep = synthetic_sweep(np.random.default_rng(0), negatives=(64, 1024, 16384), batch_sizes=(32, 1024),
                            max_lens=(50, 200))
    failed = SyntheticTrial("failed-without-memory", sweep[0].config.replace(lr=0.5), "failed", "triton",
                            None, None, None)
    return to_frame([*sweep, failed])


def test_write_figures_writes_readable_png_and_svg(trials: pd.DataFrame, tmp_path: Path) -> None:
    notes: list[str] = []
    written = plots.write_figures(trials, tmp_path, note=notes.append)
    names = sorted(p.name for p in written)
    kinds = ("pareto", "heatmaps", "scaling", "fused_vs_torch")
    expected = sorted(f"{kind}_ml-100k_loo.{ext}" for kind in kinds for ext in ("png", "svg"))
    assert names == expected
    assert notes == []
    for path in written:
        assert path.is_file() and path.stat().st_size > 10_000, path
        if path.suffix == ".png":
            image = imread(path)
            assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 500
            assert image[..., :3].std() > 0.05  # not a blank canvas
        else:
            assert "<svg" in path.read_text()[:2000]


def test_pareto_figure_draws_the_frontier_infeasible_trials_and_budget_lines(trials: pd.DataFrame) -> None:
    table = analysis.pareto_table(trials)
    figure = plots.pareto_figure(table, metric="ndcg@10", memory_field="peak_bytes",
                                 budgets=(8 * GIB, 16 * GIB, 1000 * GIB), title="ml-100k (loo)")
    assert not isinstance(figure, str)
    axes = figure.axes[0]
    frontier = table[table["on_frontier"]].sort_values("memory_bytes")
    step = next(line for line in axes.get_lines() if line.get_color() == "crimson")
    np.testing.assert_allclose(step.get_xdata()[:-1], frontier["memory_bytes"] / GIB)
    np.testing.assert_allclose(step.get_ydata()[:-1], frontier["quality"])
    scatters = axes.collections
    assert len(scatters[0].get_offsets()) == int(table["candidate"].sum())
    over_budget = int(((trials["status"] != "ok") & trials["peak_bytes"].notna()).sum())
    assert over_budget > 0
    assert len(scatters[1].get_offsets()) == over_budget  # the failed trial without memory is not placed
    budget_lines = [line for line in axes.get_lines() if line.get_linestyle() == "--"]
    assert sorted(line.get_xdata()[0] for line in budget_lines) == [8, 16]  # 1000 GiB is out of range
    assert "NDCG@10" in axes.get_ylabel() and "GiB" in axes.get_xlabel() and axes.get_title()
    legend_texts = [t.get_text() for t in axes.get_legend().get_texts()]
    assert any("frontier" in t for t in legend_texts) and any("without memory" in t for t in legend_texts)


def test_scaling_figure_shows_the_best_per_negatives_under_each_budget(trials: pd.DataFrame) -> None:
    table = analysis.pareto_table(trials)
    budgets = (4 * GIB, 40 * GIB)
    figure = plots.scaling_figure(table, metric="ndcg@10", memory_field="peak_bytes", budgets=budgets)
    assert not isinstance(figure, str)
    expected = analysis.scaling_table(trials, budgets)
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    for budget in budgets:
        rows = expected[expected["budget_bytes"] == budget]
        line = lines[f"budget {budget / GIB:g} GiB"]
        np.testing.assert_allclose(line.get_ydata(), rows["quality"])
        labels = {t.get_text() for t in figure.axes[0].texts}
        assert {f"B={b}" for b in rows["batch_size"]} <= labels


def test_figures_without_support_are_skipped_with_a_note(tmp_path: Path) -> None:
    only_fused = synthetic_sweep(np.random.default_rng(1), negatives=(256,), batch_sizes=(64,),
                                 max_lens=(50,), impls=("triton",))
    notes: list[str] = []
    written = plots.write_figures(to_frame(only_fused), tmp_path, note=notes.append)
    assert sorted(p.name for p in written) == ["pareto_ml-100k_loo.png", "pareto_ml-100k_loo.svg"]
    assert len(notes) == 3
    assert any("fused_vs_torch" in n and "both" in n for n in notes)
    assert any("heatmaps" in n for n in notes) and any("scaling" in n for n in notes)


def test_no_figure_when_no_trial_finished(tmp_path: Path) -> None:
    failed = [SyntheticTrial(f"f{i}", cfg.config, "failed", "torch", None, None, None)
              for i, cfg in enumerate(synthetic_sweep(np.random.default_rng(2), negatives=(64, 256),
                                                      batch_sizes=(32,), max_lens=(50,), impls=("torch",)))]
    notes: list[str] = []
    assert plots.write_figures(to_frame(failed), tmp_path, note=notes.append) == []
    assert any("pareto" in n and "no ok trial" in n for n in notes)


def test_full_catalogue_ce_is_drawn_apart_from_sampled_negatives(trials: pd.DataFrame) -> None:
    full_ce = trials[trials["status"] == "ok"].head(3).assign(loss="ce", val_ndcg_10=0.5,
                                                              trial_id=lambda f: f["trial_id"] + "-ce")
    table = analysis.pareto_table(pd.concat([trials, full_ce], ignore_index=True))
    figure = plots.pareto_figure(table, metric="ndcg@10", memory_field="peak_bytes")
    assert not isinstance(figure, str)
    axes = figure.axes[0]
    sampled, squares = axes.collections[0], axes.collections[1]
    assert len(sampled.get_offsets()) == int(table["candidate"].sum()) - 3
    np.testing.assert_allclose(np.asarray(squares.get_offsets())[:, 1], [0.5, 0.5, 0.5])
    assert any("full CE" in t.get_text() for t in axes.texts)
    assert any("full-catalogue CE (3)" in t.get_text() for t in axes.get_legend().get_texts())


def test_fused_vs_torch_figure_draws_steady_state_times(trials: pd.DataFrame) -> None:
    # The fused side compiles in its first epoch: a quarter of its mean in the steady state.
    fused = trials["loss_impl_used"] == "triton"
    frame = trials.assign(steady_epoch_seconds=np.where(fused, trials["mean_epoch_seconds"] / 4,
                                                        trials["mean_epoch_seconds"]))
    frame.loc[frame.index[~fused][0], "steady_epoch_seconds"] = np.nan  # falls back to its mean
    table = analysis.pareto_table(frame)
    figure = plots.fused_vs_torch_figure(table, memory_field="peak_bytes")
    assert not isinstance(figure, str)
    time_axes = figure.axes[0]
    assert time_axes.get_xlabel() == "time per epoch (steady state, s)"
    pairs = analysis.fused_vs_torch(table)
    widths = [patch.get_width() for patch in time_axes.patches]
    np.testing.assert_allclose(widths[:len(pairs)], analysis.epoch_time(frame.set_index("trial_id").loc[
        pairs["triton_trial_id"]]))
    np.testing.assert_allclose(widths[len(pairs):], analysis.epoch_time(frame.set_index("trial_id").loc[
        pairs["torch_trial_id"]]))
    ratios = {t.get_text().strip() for t in time_axes.texts}
    assert ratios == {f"{r:.2f}x" for r in pairs["speedup"]}
    assert pairs["speedup"].min() > 3  # the steady state, not the mean over epochs, is compared


def test_trials_never_run_are_labelled_as_predicted_over_budget_not_failed(trials: pd.DataFrame) -> None:
    rng = np.random.default_rng(3)
    # a grid where one cell was only ever predicted over the budget (never run), one only failed
    # for real (oom), and the rest finished
    sweep = synthetic_sweep(rng, negatives=(64, 1024), batch_sizes=(32, 1024), max_lens=(50,))
    frame = to_frame(sweep)
    never_run = (frame["num_negatives"] == 1024) & (frame["batch_size"] == 1024)
    frame.loc[never_run, "status"] = "predicted_over_budget"
    frame.loc[never_run, "predicted_peak_bytes"] = frame.loc[never_run, "peak_bytes"]
    frame.loc[never_run, ["peak_bytes", "val_ndcg_10"]] = np.nan
    oom = (frame["num_negatives"] == 64) & (frame["batch_size"] == 1024)
    frame.loc[oom, "status"] = "oom"
    table = analysis.pareto_table(frame)

    heatmap = plots.heatmap_figure(table, metric="ndcg@10", memory_field="peak_bytes")
    assert not isinstance(heatmap, str)
    cell_texts = [t.get_text() for t in heatmap.axes[0].texts]
    assert sum("not run" in t and "predicted" in t for t in cell_texts) == 1
    assert "oom" in cell_texts and "failed" not in cell_texts
    titles = [axes.get_title() for axes in heatmap.axes if axes.get_title()]
    assert titles == ["max length 50: best validation NDCG@10", "max length 50: least peak memory (GiB)"]

    pareto = plots.pareto_figure(table, metric="ndcg@10", memory_field="peak_bytes")
    assert not isinstance(pareto, str)
    legend = [t.get_text() for t in pareto.axes[0].get_legend().get_texts()]
    not_run = next(t for t in legend if t.startswith("not run"))
    assert f"predicted over budget ({int(never_run.sum())})" in not_run
    ran = next(t for t in legend if t.startswith("ran, not ok"))
    assert f"({int(oom.sum())}: oom)" in ran and "failed" not in ran
    triangles = pareto.axes[0].collections[2]
    np.testing.assert_allclose(np.sort(np.asarray(triangles.get_offsets())[:, 0]),
                               np.sort(frame.loc[never_run, "predicted_peak_bytes"] / GIB))
