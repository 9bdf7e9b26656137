from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import study.cli as cli
import study.cli.train as train_cli
from study.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
FAST = ["--max-len", "6", "--hidden", "8", "--blocks", "1", "--batch-size", "16", "--epochs", "1",
        "--device", "cpu", "--no-progress"]


@pytest.fixture(autouse=True)
def only_the_train_command(monkeypatch: pytest.MonkeyPatch):
    # build the real `cce-study` parser with only this command, independent of the other commands' modules
    monkeypatch.setattr(cli, "COMMANDS", {"train": cli.COMMANDS["train"]})


@pytest.fixture(scope="module")
def small_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(11)
    rows = [(user, int(item), 100 * user + step)
            for user in range(40) for step, item in enumerate(rng.integers(1, 25, size=7))]
    path = tmp_path_factory.mktemp("cli") / "log.csv"
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(path, index=False)
    return path


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    train_cli.configure(parser)
    return parser.parse_args(list(argv))


def test_every_option_maps_to_its_config_field():
    args = parse("--dataset", "x.csv", "--split", "temporal", "--kcore", "5", "--loss", "ce-neg",
                 "--negatives", "512", "--sampling", "popularity", "--negative-scope", "sequence",
                 "--gbce-t", "0.5", "--impl", "torch", "--max-len", "50", "--hidden", "32", "--blocks", "3",
                 "--heads", "2", "--dropout", "0.25", "--batch-size", "64", "--lr", "2e-3",
                 "--weight-decay", "0.01", "--epochs", "7", "--patience", "2", "--patience-steps", "300",
                 "--time-limit", "90", "--max-steps-per-epoch", "10", "--eval-batch-size", "128",
                 "--eval-every", "3", "--eval-max-scores", "4096", "--device", "cpu",
                 "--precision", "fp32", "--seed", "9", "--memory-budget", "8GiB", "--logq", "--include-seen",
                 "--no-progress")
    config = train_cli.config_from_args(args)
    assert config == TrainConfig(
        dataset="x.csv", split="temporal", kcore=5, loss="ce-neg", num_negatives=512, sampling="popularity",
        negative_scope="sequence", gbce_t=0.5, loss_impl="torch", max_len=50, hidden=32, blocks=3, heads=2,
        dropout=0.25, batch_size=64, lr=2e-3, weight_decay=0.01, epochs=7, patience=2, patience_steps=300,
        time_limit_s=90.0, max_steps_per_epoch=10, eval_batch_size=128, eval_every=3, eval_max_scores=4096,
        device="cpu", precision="fp32", seed=9,
        memory_budget="8GiB", logq_correction=True, exclude_seen=False, progress=False,
    )
    assert train_cli.config_from_args(parse()) == TrainConfig()  # defaults come from TrainConfig


@pytest.mark.parametrize(("argv", "message"), [
    (["--loss", "softmax"], "--loss: 'softmax' is not one of ce, ce-neg, bce, gbce"),
    (["--batch-size", "big"], "--batch-size: must be an integer, got 'big'"),
    (["--lr", "fast"], "--lr: must be a number, got 'fast'"),
    (["--dropout", "nan"], "--dropout: must be a finite number"),
    (["--heads", "3"], "heads: hidden=64 is not divisible by heads=3"),
])
def test_bad_option_values_name_the_option(argv: list[str], message: str):
    with pytest.raises(ValueError) as error:
        train_cli.config_from_args(parse(*argv))
    assert message in str(error.value)


def test_json_output_is_one_parseable_record(small_log: Path, capsys: pytest.CaptureFixture[str]):
    code = cli.main(["train", "--dataset", str(small_log), *FAST, "--json"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.count("\n") == 1
    record = json.loads(out)
    assert record["status"] == "ok" and record["config"]["max_len"] == 6
    assert set(record["test_metrics"]) >= {"ndcg@10", "hit@10", "mrr@10", "coverage@10"}
    assert record["memory"]["peak_bytes"] is not None


def test_human_summary(small_log: Path, capsys: pytest.CaptureFixture[str]):
    code = cli.main(["train", "--dataset", str(small_log), *FAST])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("status ok\n")
    assert "validation NDCG@10 0." in out and "popularity NDCG@10 0." in out
    assert "test       NDCG@10 0." in out and "peak memory" in out and "sequences/s" in out


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(("case", "expected"), [
    ("missing_file", "no such file"),
    ("missing_column", "missing column 'timestamp'"),
    ("text_timestamp", "timestamp"),
    ("empty", "no interactions"),
    ("bad_value", "--negative-scope: 'everything' is not one of"),
])
def test_bad_input_exits_non_zero_with_one_line(case: str, expected: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]):
    argv = ["train", *FAST]
    if case == "missing_file":
        argv += ["--dataset", str(tmp_path / "absent.csv")]
    elif case == "missing_column":
        argv += ["--dataset", str(write(tmp_path, "a.csv", "user_id,item_id\n1,2\n"))]
    elif case == "text_timestamp":
        text = "user_id,item_id,timestamp\n1,2,3\n1,3,yesterday\n"
        argv += ["--dataset", str(write(tmp_path, "b.csv", text))]
    elif case == "empty":
        argv += ["--dataset", str(write(tmp_path, "c.csv", "user_id,item_id,timestamp\n"))]
    else:
        argv += ["--negative-scope", "everything"]
    code = cli.main(argv)
    captured = capsys.readouterr()
    assert code != 0 and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], captured.err


def test_console_run_keeps_stdout_for_the_json_record(small_log: Path):
    """In a real process: progress bar and warnings go to stderr, stdout holds only the record."""
    program = ("import sys, study.cli as c; c.COMMANDS = {'train': c.COMMANDS['train']}; "
               "sys.exit(c.main(sys.argv[1:]))")
    argv = ["train", "--dataset", str(small_log), *FAST[:-1], "--memory-budget", "1GiB", "--json"]
    result = subprocess.run([sys.executable, "-c", program, *argv], cwd=REPO, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["memory"]["budget_bytes"] == 2**30
    assert "cannot be enforced" in result.stderr  # the CPU budget warning, on stderr


@pytest.mark.slow  # two training processes
def test_seeded_cpu_runs_with_two_threads_are_reproducible():
    """Two processes, same seed, two threads each: the same losses and metrics to the last bit (the
    backward of advanced indexing used to sum in a thread-dependent order)."""
    argv = ["train", "--dataset", "synthetic:users=600,items=1500,mean_len=60,seed=2", "--loss", "ce-neg",
            "--negatives", "256", "--max-len", "50", "--hidden", "32", "--lr", "5e-3", "--batch-size", "32",
            "--epochs", "1", "--max-steps-per-epoch", "15", "--device", "cpu", "--seed", "3", "--no-progress",
            "--json"]
    program = ("import sys, study.cli as c; c.COMMANDS = {'train': c.COMMANDS['train']}; "
               "sys.exit(c.main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    records = []
    for _ in range(2):
        result = subprocess.run([sys.executable, "-c", program, *argv], cwd=REPO, capture_output=True,
                                text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stderr
        records.append(json.loads(result.stdout))
    first, second = records
    assert [e["train_loss"] for e in first["epochs"]] == [e["train_loss"] for e in second["epochs"]]
    assert first["val_metrics"] == second["val_metrics"] and first["test_metrics"] == second["test_metrics"]


def test_cpu_trials_use_deterministic_kernels_for_indexing_backward():
    """What made seeded CPU runs differ: with two threads, the gradient of `items[indices]` sums in an
    order that varies from call to call unless PyTorch's deterministic kernels are on, as they are
    inside a CPU trial (and restored after it)."""
    import torch

    from study.training import trainer as train

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    generator = torch.Generator().manual_seed(0)
    items = torch.randn(1683, 32, generator=generator, requires_grad=True)
    indices = torch.randint(0, 1683, (1600,), generator=generator)
    upstream = torch.randn(1600, 32, generator=generator)

    def gradient() -> torch.Tensor:
        items.grad = None
        (items[indices] * upstream).sum().backward()
        assert items.grad is not None
        return items.grad.clone()

    try:
        with train._deterministic_on_cpu("cpu"):
            assert torch.are_deterministic_algorithms_enabled()
            reference = gradient()
            assert all(torch.equal(reference, gradient()) for _ in range(40))
        assert not torch.are_deterministic_algorithms_enabled()
        # (outside, 40 calls of gradient() gave differing bits on 2 cores: not asserted, it is PyTorch's)
    finally:
        torch.set_num_threads(threads)
