"""Checkpoints of one trial (no Ray): a trial stopped after epoch k and continued ends exactly as one
that never stopped; the cadence; refusing a checkpoint of another configuration or a truncated one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import study.training.trainer as train
from study.config import TrainConfig
from study.record import TrialRecord
from study.training import checkpoint
from study.training.checkpoint import CheckpointPolicy, FolderCheckpointer, TrainingState


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def log_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """80 users with 6-14 interactions over 70 items with text ids ('item-007'), Zipf-like popularity."""
    rng = np.random.default_rng(11)
    rows = []
    weights = 1.0 / np.arange(1, 71)
    for user in range(80):
        items = rng.choice(70, size=int(rng.integers(6, 15)), replace=False, p=weights / weights.sum())
        rows += [(f"user-{user}", f"item-{item:03d}", 100 * user + step) for step, item in enumerate(items)]
    path = tmp_path_factory.mktemp("log") / "log.csv"
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(path, index=False)
    return path


def config_of(log: Path, **changes: object) -> TrainConfig:
    values: dict[str, object] = dict(dataset=str(log), loss="ce-neg", negative_scope="position",
                                     num_negatives=8, max_len=10, hidden=16, blocks=1, batch_size=16,
                                     eval_batch_size=32, epochs=5, patience=5, dropout=0.3, lr=5e-3,
                                     device="cpu", progress=False, seed=4)
    values.update(changes)
    return TrainConfig(**values)  # type: ignore[arg-type]


class Stopped(BaseException):
    """Stands in for the process being killed: nothing in the trainer catches it."""


class StopAfter(FolderCheckpointer):
    """Saves every epoch, then stops the trial right after saving epoch `epoch`."""

    def __init__(self, folder: Path, epoch: int) -> None:
        super().__init__(folder, CheckpointPolicy(every_epochs=1, every_minutes=0))
        self.epoch = epoch

    def _write(self, state: TrainingState) -> int:
        size = super()._write(state)
        if state.epoch == self.epoch:
            raise Stopped
        return size


def stopped_then_resumed(config: TrainConfig, folder: Path, epoch: int) -> TrialRecord:
    with pytest.raises(Stopped):
        train.run_trial(config, checkpointer=StopAfter(folder, epoch))
    assert json.loads((folder / checkpoint.INFO_FILE).read_text())["epoch"] == epoch
    return train.run_trial(config, checkpointer=FolderCheckpointer(folder, CheckpointPolicy(1, 0)))


def same_training(first: TrialRecord, second: TrialRecord) -> bool:
    return ([(e.train_loss, e.val_metrics, e.steps) for e in first.epochs]
            == [(e.train_loss, e.val_metrics, e.steps) for e in second.epochs]
            and first.test_metrics == second.test_metrics and first.best_epoch == second.best_epoch)


@pytest.mark.parametrize("settings", [
    dict(loss="ce-neg", negative_scope="position"),  # the sampler's generator, per step
    dict(loss="ce-neg", negative_scope="drawn"),  # the global step seeds the kernel's draw
    dict(loss="bce", negative_scope="sequence", sampling="popularity"),
])
def test_a_trial_continued_after_epoch_k_ends_exactly_as_one_never_stopped(log_file: Path, tmp_path: Path,
                                                                           settings: dict) -> None:
    config = config_of(log_file, **settings)
    uninterrupted = train.run_trial(config)
    resumed = stopped_then_resumed(config, tmp_path, epoch=2)
    assert resumed.status == "ok" and resumed.resumed_from_epoch == 2
    assert [e.epoch for e in resumed.epochs] == [1, 2, 3, 4, 5]
    assert same_training(uninterrupted, resumed)
    assert resumed.val_metrics == uninterrupted.val_metrics
    assert resumed.checkpoint_bytes is not None and resumed.checkpoint_bytes > 0
    assert resumed.checkpoint_seconds is not None and resumed.checkpoint_seconds > 0
    assert resumed.started_at is not None and resumed.started_at <= str(resumed.finished_at)
    assert resumed.total_seconds is not None and resumed.total_seconds >= sum(
        e.epoch_seconds + e.eval_seconds for e in resumed.epochs)
    # the finished trial keeps its model and drops its state
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.MODEL_FILE]
    assert resumed.model_path == str((tmp_path / checkpoint.MODEL_FILE).resolve())


@pytest.mark.parametrize("left_out", ["shuffle", "sampler", "torch"])
def test_continuing_without_one_generator_changes_the_trial(log_file: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            left_out: str) -> None:
    # The exactness test above can fail: each generator the checkpoint restores matters.
    config = config_of(log_file, epochs=3, patience=3)
    uninterrupted = train.run_trial(config)
    real_restore = train.restore_rng

    def restore_all_but_one(rng: dict, generators: dict) -> None:
        saved = {name: generator.get_state() for name, generator in generators.items()}
        cpu = torch.get_rng_state()
        real_restore(rng, generators)
        if left_out == "torch":
            torch.set_rng_state(cpu)
        else:
            generators[left_out].set_state(saved[left_out])

    monkeypatch.setattr(train, "restore_rng", restore_all_but_one)
    resumed = stopped_then_resumed(config, tmp_path, epoch=1)
    assert resumed.resumed_from_epoch == 1
    assert [e.train_loss for e in resumed.epochs][:1] == [e.train_loss for e in uninterrupted.epochs][:1]
    assert not same_training(uninterrupted, resumed)


def test_checkpoints_follow_the_cadence_and_skip_the_last_epoch(log_file: Path, tmp_path: Path) -> None:
    saved: list[int] = []

    class Recording(FolderCheckpointer):
        def _write(self, state: TrainingState) -> int:
            saved.append(state.epoch)
            return super()._write(state)

    config = config_of(log_file, epochs=6, patience=6, max_steps_per_epoch=2)
    every_two = CheckpointPolicy(every_epochs=2, every_minutes=0)
    train.run_trial(config, checkpointer=Recording(tmp_path, every_two))
    assert saved == [2, 4]  # not 6: the record covers the last epoch
    saved.clear()
    train.run_trial(config, checkpointer=Recording(tmp_path / "b", CheckpointPolicy(every_epochs=1,
                                                                                 every_minutes=60)))
    assert saved == []  # an hour has not passed
    with pytest.raises(ValueError, match="every_epochs"):
        CheckpointPolicy(every_epochs=0)
    with pytest.raises(ValueError, match="every_minutes"):
        CheckpointPolicy(every_minutes=-1)


def test_a_checkpoint_of_another_configuration_is_refused(log_file: Path, tmp_path: Path) -> None:
    with pytest.raises(Stopped):
        train.run_trial(config_of(log_file, epochs=3), checkpointer=StopAfter(tmp_path, 1))
    other = config_of(log_file, epochs=3, lr=1e-3)
    with pytest.raises(ValueError, match=r"another configuration \(lr 0.005 there, 0.001 here\)"):
        train.run_trial(other, checkpointer=FolderCheckpointer(tmp_path))
    # progress bars do not change what a trial computes
    resumed = train.run_trial(config_of(log_file, epochs=3, progress=True),
                              checkpointer=FolderCheckpointer(tmp_path, CheckpointPolicy(1, 0)))
    assert resumed.resumed_from_epoch == 1


def test_a_truncated_state_file_is_not_a_checkpoint(log_file: Path, tmp_path: Path) -> None:
    with pytest.raises(Stopped):
        train.run_trial(config_of(log_file, epochs=3), checkpointer=StopAfter(tmp_path, 1))
    assert checkpoint.read_info(tmp_path) is not None
    state_file = tmp_path / checkpoint.STATE_FILE
    state_file.write_bytes(state_file.read_bytes()[:-10])  # a copy cut short
    assert checkpoint.read_info(tmp_path) is None
    assert FolderCheckpointer(tmp_path).load() is None


def test_the_checkpoint_size_estimate_matches_a_written_state(tmp_path: Path) -> None:
    config = TrainConfig(dataset="synthetic:users=300,items=3000,mean_len=6,seed=1", loss="ce-neg",
                         num_negatives=16, max_len=20, hidden=32, blocks=2, batch_size=64, epochs=2,
                         patience=2, max_steps_per_epoch=2, device="cpu", progress=False)

    class KeepOne(FolderCheckpointer):
        def finish(self) -> None:  # keep the state to measure it
            pass

    record = train.run_trial(config, checkpointer=KeepOne(tmp_path, CheckpointPolicy(1, 0)))
    assert record.num_items is not None and record.checkpoint_bytes is not None
    estimate = checkpoint.estimate_checkpoint_bytes(record.num_items, hidden=32, max_len=20, blocks=2)
    assert record.checkpoint_bytes == (tmp_path / checkpoint.STATE_FILE).stat().st_size
    # the estimate leaves out what does not grow with the model: RNG states (~26 KiB), the epoch
    # records, and ~350 bytes of file bookkeeping per tensor (~110 tensors here)
    assert estimate <= record.checkpoint_bytes <= estimate + 128 * 1024


def test_train_command_continues_from_its_checkpoint_dir_and_keeps_the_model(
        log_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from study import cli

    folder = tmp_path / "ck"
    argv = ["train", "--dataset", str(log_file), "--loss", "ce-neg", "--negatives", "8", "--max-len", "10",
            "--hidden", "16", "--blocks", "1", "--batch-size", "16", "--epochs", "4", "--patience", "4",
            "--device", "cpu", "--no-progress", "--checkpoint-dir", str(folder),
            "--checkpoint-every-minutes", "0"]
    from study.cli.train import config_from_args

    parser = cli.build_parser()
    config = config_from_args(parser.parse_args(argv))
    with pytest.raises(Stopped):  # as if the command had been killed after epoch 2
        train.run_trial(config, checkpointer=StopAfter(folder, 2))
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "best epoch" in out and "of 4 (continued after epoch 2 from its checkpoint)" in out
    assert f"best model kept in {(folder / checkpoint.MODEL_FILE).resolve()}" in out
    assert sorted(p.name for p in folder.iterdir()) == [checkpoint.MODEL_FILE]
    assert cli.main([*argv[:-1], "-1"]) == 2
    assert "--checkpoint-every-minutes: must be a number >= 0" in capsys.readouterr().err
