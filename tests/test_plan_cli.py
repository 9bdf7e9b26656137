"""`cce-study plan`: ordering, budget filtering, --json, dataset loading and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from study.cli import main
from study.config import TrainConfig
from study.memory.model import predict_peak_bytes
from study.units import GiB, MiB

GRID = ["--num-items", "500000", "--loss", "ce-neg", "--negatives", "256,2048,8192",
        "--batch-size", "64,256", "--negative-scope", "batch,position", "--impl", "torch,triton",
        "--gpu-total", "80GiB"]


def run_plan(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["plan", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(autouse=True)
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_json_lists_fitting_points_largest_first(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_plan(capsys, "--budget", "12GiB", *GRID, "--json")
    assert code == 0
    plan = json.loads(out)
    assert plan["budget_bytes"] == 12 * GiB and plan["gpu_total"] == 80 * GiB and plan["num_items"] == 500_000
    assert plan["total"] == 24 and 0 < plan["fitting"] < 24
    peaks = [point["predicted_peak_bytes"] for point in plan["points"]]
    assert len(peaks) == plan["fitting"]
    assert peaks == sorted(peaks, reverse=True)
    assert all(point["fits"] and point["predicted_peak_bytes"] <= 12 * GiB for point in plan["points"])
    for point in plan["points"]:
        config = TrainConfig.from_dict(point["config"])
        assert predict_peak_bytes(config, 500_000).total_bytes == point["predicted_peak_bytes"]
        assert sum(point["parts"].values()) == point["predicted_peak_bytes"]


def test_all_shows_points_over_budget_after_a_fitting_one(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_plan(capsys, "--budget", "12GiB", *GRID, "--json", "--all")
    plan = json.loads(out)
    assert code == 0 and len(plan["points"]) == 24
    fits = [point["fits"] for point in plan["points"]]
    assert fits == sorted(fits)  # largest first: every point that does not fit precedes those that do
    assert not all(fits)


def test_table_is_readable_and_ordered(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_plan(capsys, "--budget", "0.15", *GRID)
    assert code == 0
    lines = out.splitlines()
    assert "grid points fit 12.00 GiB of a 80.00 GiB card" in lines[0]
    header = lines[2].split()
    assert header[:6] == ["loss", "loss_impl", "negative_scope", "num_negatives", "batch_size", "peak"]
    rows = [line.split() for line in lines[3:] if line.strip()]
    assert rows and all(row[0] == "ce-neg" for row in rows)
    sizes = [_to_bytes(row[5], row[6]) for row in rows]
    assert sizes == sorted(sizes, reverse=True)
    assert all(size <= 12 * GiB for size in sizes)


def _to_bytes(number: str, unit: str) -> float:
    return float(number) * {"MiB": MiB, "GiB": GiB, "TiB": 1024 * GiB}[unit]


def test_nothing_fits_exits_one(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_plan(capsys, "--budget", "2MiB", "--num-items", "1000")
    assert code == 1
    assert out.startswith("0 of 1 grid points fit 2.00 MiB")


def test_full_ce_points_ignore_negative_settings(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_plan(capsys, "--budget", "40GiB", "--num-items", "3000", "--loss", "ce,ce-neg",
                            "--negatives", "16,64,256", "--json")
    plan = json.loads(out)
    assert code == 0
    assert plan["total"] == 1 + 3  # one full-CE point, three CE- points
    assert sorted(p["config"]["loss"] for p in plan["points"]) == ["ce", "ce-neg", "ce-neg", "ce-neg"]


def test_invalid_points_are_skipped_with_reason(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_plan(capsys, "--budget", "40GiB", "--num-items", "100", "--loss", "bce,ce-neg",
                            "--negative-scope", "drawn", "--negatives", "50,500")
    assert code == 0
    assert "1 of 1 grid points fit" in out
    skipped = [line for line in out.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 3
    assert any("negative_scope" in line and "bce" in line for line in skipped)
    assert any("num_negatives: 500 exceeds the catalogue of 100 items" in line for line in skipped)


def test_catalogue_read_from_dataset_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    log = tmp_path / "interactions.csv"
    rows = ["user_id,item_id,timestamp"]
    rows += [f"{user},{(user * 7 + step) % 37},{step}" for user in range(20) for step in range(6)]
    log.write_text("\n".join(rows) + "\n")
    code, out, err = run_plan(capsys, "--budget", "8GiB", "--dataset", str(log), "--batch-size", "8,512",
                              "--json")
    plan = json.loads(out)
    assert code == 0
    assert plan["num_items"] == 37 and plan["num_users"] == 20
    assert "loading" in err
    # batches are capped at the 20 users, so both batch sizes predict the same memory
    peaks = {p["config"]["batch_size"]: p["predicted_peak_bytes"] for p in plan["points"]}
    assert peaks[512] == predict_peak_bytes(TrainConfig(batch_size=20, eval_batch_size=20), 37).total_bytes


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--budget", "40GiB", "--num-items", "1000", "--negatives", "64,abc"],
         "--negatives: must be an integer"),
        (["--budget", "40GiB", "--num-items", "1000", "--loss", "ce,xent"], "--loss: 'xent' is not one of"),
        (["--budget", "40GiB", "--num-items", "1000", "--batch-size", "8,,16"], "--batch-size: empty entry"),
        (["--budget", "40 XB", "--num-items", "1000"], "memory_budget: unknown unit"),
        (["--budget", "0.5", "--num-items", "1000"], "memory_budget: '0.5' is a fraction of the card"),
        (["--budget", "40GiB", "--num-items", "1000", "--gpu-memory", "0.5"], "--gpu-memory: memory_budget"),
        (["--budget", "40GiB"], "--dataset: give a dataset (or --num-items)"),
        (["--budget", "40GiB", "--num-items", "1000", "--hidden", "0"],
         "--hidden: hidden: must be a positive"),
    ],
)
def test_bad_input_is_one_line_and_exit_two(
    capsys: pytest.CaptureFixture[str], args: list[str], fragment: str
) -> None:
    code, out, err = run_plan(capsys, *args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and fragment in err, err


def test_plan_and_sweep_dry_run_predict_the_same_bytes(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """One prediction everywhere: `plan` and the sweep's planning (what `sweep --dry-run` prints) give
    every grid point the same predicted peak, to the byte, with the dataset's users capping the batch
    (batch 512 > 40 users here; the sweep ignored the users before, 1.25 vs 1.23 GiB on ml-100k)."""
    from study import sweep
    from study.sweep.spec import load_spec

    dataset = "synthetic:users=40,items=3000,mean_len=30,seed=3"
    spec_path = tmp_path / "agree.toml"
    spec_path.write_text(f"""
name = "agree"
datasets = ["{dataset}"]
memory_budget = "0.5"
[trial]
loss = "ce-neg"
negative_scope = "position"
hidden = 32
[axes]
num_negatives = [64, 512]
batch_size = [16, 512]
max_len = [50]
[resources]
gpu_memory = "80GiB"
""")
    spec = load_spec(spec_path)
    planned = sweep.plan_trials(spec, spec.resources.gpu_memory_bytes)
    code, out, _ = run_plan(capsys, "--budget", "0.5", "--gpu-memory", "80GiB", "--dataset", dataset,
                            "--loss", "ce-neg", "--negative-scope", "position", "--hidden", "32",
                            "--negatives", "64,512", "--batch-size", "16,512", "--max-len", "50",
                            "--json", "--all")
    assert code == 0
    fields = ("num_negatives", "batch_size")
    from_plan = {tuple(p["config"][f] for f in fields): p["predicted_peak_bytes"]
                 for p in json.loads(out)["points"]}
    from_sweep = {tuple(getattr(t.config, f) for f in fields): t.predicted_peak_bytes for t in planned}
    assert len(from_sweep) == 4 and from_plan == from_sweep
    uncapped = predict_peak_bytes(planned[0].config.replace(batch_size=512), planned[0].num_items or 0)
    assert from_sweep[(64, 512)] < uncapped.total_bytes
    budgets = {t.budget_bytes for t in planned}
    assert budgets == {json.loads(out)["budget_bytes"]} == {40 * GiB}
