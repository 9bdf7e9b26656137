from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import study.training.trainer as train
from study.config import ConfigError, TrainConfig
from study.record import EpochRecord, TrialRecord, steady_state_seconds

ML_100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k" / "interactions.csv.gz"
if not ML_100K.exists():
    ML_100K = Path("/work/shared/data/ml-100k/interactions.csv.gz")


@pytest.fixture(autouse=True)
def one_thread():
    # the test machine is shared; one thread is faster than two contended ones
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 users who each walk 9 steps along a cycle of 30 items, from a random start."""
    rng = np.random.default_rng(5)
    rows = []
    for user in range(60):
        start = int(rng.integers(0, 30))
        for step in range(9):
            rows.append((f"u{user}", f"i{(start + step) % 30}", 1_000 + 10 * step + user))
    path = tmp_path_factory.mktemp("tiny") / "log.csv"
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(path, index=False)
    return path


def tiny_config(log: Path, **changes) -> TrainConfig:
    values = dict(dataset=str(log), max_len=8, hidden=16, blocks=1, batch_size=8, eval_batch_size=16,
                  epochs=2, patience=2, device="cpu", progress=False, lr=5e-3)
    values.update(changes)
    return TrainConfig(**values)


@pytest.mark.skipif(not ML_100K.exists(), reason="ml-100k is not in ../shared/data")
def test_short_ml100k_run_beats_popularity_and_fills_the_record():
    config = TrainConfig(dataset=str(ML_100K), loss="ce", max_len=50, hidden=32, dropout=0.2, batch_size=32,
                         lr=5e-3, epochs=3, patience=3, device="cpu", progress=False, seed=1)
    seen: list[EpochRecord] = []
    record = train.run_trial(config, on_epoch=seen.append)

    assert record.status == "ok" and record.error is None
    assert record.val_metrics["ndcg@10"] > 1.3 * record.popularity_val_metrics["ndcg@10"]
    assert record.test_metrics["ndcg@10"] > record.popularity_test_metrics["ndcg@10"]
    assert seen == record.epochs and [e.epoch for e in seen] == [1, 2, 3]
    assert len({e.steps for e in seen}) == 1 and seen[0].steps > 20  # every epoch covers all ~940 users
    best = record.epochs[record.best_epoch - 1]
    assert best.val_metrics == record.val_metrics
    assert record.val_metrics["ndcg@10"] == max(e.val_metrics["ndcg@10"] for e in record.epochs)
    losses = [e.train_loss for e in record.epochs]
    assert losses == sorted(losses, reverse=True)
    for k in (1, 5, 10, 20, 100):
        for name in ("ndcg", "hit", "mrr", "coverage"):
            assert 0.0 <= record.test_metrics[f"{name}@{k}"] <= 1.0
    assert (record.num_users, record.num_items, record.num_interactions) == (943, 1682, 100_000)
    assert record.device == "cpu" and record.loss_impl == "torch"
    assert {"python", "torch"} <= set(record.versions)
    assert record.git_commit is None or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", record.git_commit)
    assert record.started_at is not None and record.finished_at is not None
    assert record.started_at <= record.finished_at
    assert record.memory.cpu_peak_rss is not None and record.memory.cpu_peak_rss > 0
    assert record.mean_epoch_seconds is not None and record.mean_epoch_seconds > 0
    assert record.sequences_per_second is not None and record.sequences_per_second > 0
    assert record.total_seconds is not None and record.total_seconds >= sum(
        e.epoch_seconds + e.eval_seconds for e in record.epochs)
    restored = TrialRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert restored.test_metrics == record.test_metrics


def test_patience_and_step_limit_are_respected(tiny_log: Path):
    record = train.run_trial(tiny_config(tiny_log, epochs=6, patience=1, max_steps_per_epoch=3))
    assert record.status == "ok"
    assert all(e.steps == 3 for e in record.epochs)
    # training stops at the first epoch that does not improve on the best, or at the last epoch
    assert len(record.epochs) == min(6, record.best_epoch + 1)
    ndcg = [e.val_metrics["ndcg@10"] for e in record.epochs]
    best = record.best_epoch
    assert all(later > earlier for earlier, later in zip(ndcg[:best - 1], ndcg[1:best]))


def test_time_limit_stops_after_the_current_epoch(tiny_log: Path):
    record = train.run_trial(tiny_config(tiny_log, epochs=50, time_limit_s=1e-3))
    assert record.status == "ok"
    assert len(record.epochs) == 1 and record.epochs[0].steps == 1
    assert record.test_metrics  # the best (only) epoch is still evaluated on test
    assert record.steady_epoch_seconds == record.epochs[0].epoch_seconds  # one epoch: its own time


def test_steady_state_seconds_leaves_out_the_first_epoch_and_takes_the_median():
    assert steady_state_seconds([]) is None
    assert steady_state_seconds([5.0]) == 5.0  # one epoch: nothing else to go by
    assert steady_state_seconds([6.3, 0.98]) == 0.98  # the compiling first epoch is left out
    assert steady_state_seconds([9.0, 1.0, 3.0]) == 2.0  # median of an even count: mean of the middle two
    assert steady_state_seconds([9.0, 1.0, 50.0, 2.0, 1.5]) == 1.75  # a slow later epoch barely counts
    assert steady_state_seconds([9.0, 3.0, 1.0, 2.0]) == 2.0  # order-free median of epochs 2..4
    assert isinstance(steady_state_seconds((4, 2)), float)


def test_run_trial_records_the_steady_epoch_time(tiny_log: Path):
    record = train.run_trial(tiny_config(tiny_log, epochs=4, patience=4))
    assert record.status == "ok" and len(record.epochs) == 4
    times = [e.epoch_seconds for e in record.epochs]
    assert record.steady_epoch_seconds == pytest.approx(sorted(times[1:])[1])
    assert record.mean_epoch_seconds == pytest.approx(sum(times) / 4)
    assert TrialRecord.from_dict(record.to_dict()) == record


def test_records_written_before_the_steady_time_still_load():
    values = TrialRecord(status="ok", config={}, mean_epoch_seconds=2.0).to_dict()
    del values["steady_epoch_seconds"]
    old = TrialRecord.from_dict(values)
    assert old.mean_epoch_seconds == 2.0 and old.steady_epoch_seconds is None


def test_same_seed_gives_the_same_trial(tiny_log: Path):
    first = train.run_trial(tiny_config(tiny_log, seed=3))
    second = train.run_trial(tiny_config(tiny_log, seed=3))
    assert [e.train_loss for e in first.epochs] == [e.train_loss for e in second.epochs]
    assert first.test_metrics == second.test_metrics


def test_evaluation_scores_chunks_of_the_configured_size(tiny_log: Path, monkeypatch: pytest.MonkeyPatch):
    """TrainConfig.eval_max_scores reaches every evaluation (model and popularity, validation and test):
    30 items and 90 scores a chunk are 3 users a chunk. The metrics do not depend on the chunk size (on
    one CPU thread the encoder's rows are computed alike whatever their number)."""
    import study.training.evaluate as evaluate

    sizes: list[int] = []
    real_evaluate = evaluate._evaluate

    def recording(score, prepared, *, batch_size, ks, max_scores):
        sizes.append(max_scores)
        return real_evaluate(score, prepared, batch_size=batch_size, ks=ks, max_scores=max_scores)

    monkeypatch.setattr(evaluate, "_evaluate", recording)
    small = train.run_trial(tiny_config(tiny_log, seed=4, eval_max_scores=90))
    assert small.status == "ok" and sizes and set(sizes) == {90}
    default = train.run_trial(tiny_config(tiny_log, seed=4))
    assert set(sizes) == {90, 1 << 24}
    assert small.test_metrics == default.test_metrics and small.val_metrics == default.val_metrics


@pytest.mark.parametrize("check_interval", [1, 3])  # 3: the bad step is found inside a batch of checks
def test_non_finite_loss_ends_the_trial_as_failed(tiny_log: Path, monkeypatch: pytest.MonkeyPatch,
                                                  check_interval: int):
    monkeypatch.setattr(train, "loss_check_interval", lambda device: check_interval)
    real_build_loss = train.build_loss

    def poisoned_build_loss(*args, **kwargs):
        loss_function = real_build_loss(*args, **kwargs)
        # global step 9 (0-based) falls in epoch 2: 60 training sequences / batch 8 = 8 steps per epoch
        return lambda hidden, targets, step: loss_function(hidden, targets, step) * (
            math.nan if step == 9 else 1.0)

    monkeypatch.setattr(train, "build_loss", poisoned_build_loss)
    record = train.run_trial(tiny_config(tiny_log, epochs=3))
    assert record.status == "failed"
    assert record.error is not None and "non-finite loss" in record.error
    assert record.epochs[0].steps == 8
    assert "epoch 2, step 2 (global step 10)" in record.error
    assert len(record.epochs) == 1  # epoch 1 finished; epoch 2 did not
    assert record.finished_at is not None and record.memory.cpu_peak_rss is not None


def _raise_out_of_memory_on_second_call(monkeypatch: pytest.MonkeyPatch) -> None:
    real_forward = train.SASRec.forward
    calls = {"count": 0}

    def forward(self, inputs):
        calls["count"] += 1
        if calls["count"] == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_forward(self, inputs)

    monkeypatch.setattr(train.SASRec, "forward", forward)


def test_out_of_memory_returns_status_oom(tiny_log: Path, monkeypatch: pytest.MonkeyPatch):
    _raise_out_of_memory_on_second_call(monkeypatch)
    record = train.run_trial(tiny_config(tiny_log))
    assert record.status == "oom"
    assert record.error is not None and "OutOfMemoryError" in record.error and "20.00 GiB" in record.error
    assert record.memory.cpu_peak_rss is not None and record.test_metrics == {}


def test_out_of_memory_under_a_budget_is_over_budget(tiny_log: Path, monkeypatch: pytest.MonkeyPatch):
    _raise_out_of_memory_on_second_call(monkeypatch)
    with pytest.warns(RuntimeWarning, match="cannot be enforced"):
        record = train.run_trial(tiny_config(tiny_log, memory_budget="2GiB"))
    assert record.status == "over_budget"
    assert record.memory.budget_bytes == 2 * 2**30


def test_other_errors_propagate(tiny_log: Path, monkeypatch: pytest.MonkeyPatch):
    def broken_forward(self, inputs):
        raise RuntimeError("a bug, not a resource problem")

    monkeypatch.setattr(train.SASRec, "forward", broken_forward)
    with pytest.raises(RuntimeError, match="a bug"):
        train.run_trial(tiny_config(tiny_log))


def test_sampled_ce_with_negatives_drawn_in_the_kernel_trains(tiny_log: Path):
    record = train.run_trial(tiny_config(tiny_log, loss="ce-neg", negative_scope="drawn", num_negatives=5,
                                         logq_correction=True))
    assert record.status == "ok" and record.loss_impl == "torch"
    assert all(math.isfinite(e.train_loss) and e.train_loss > 0 for e in record.epochs)


def test_inconsistent_loss_settings_name_the_field(tiny_log: Path):
    with pytest.raises(ConfigError, match="negative_scope"):
        train.run_trial(tiny_config(tiny_log, loss="bce", negative_scope="drawn"))
    with pytest.raises(ConfigError, match="sampling"):
        train.run_trial(tiny_config(tiny_log, loss="ce-neg", negative_scope="drawn", sampling="popularity"))
    with pytest.raises(ConfigError, match="num_negatives: 31 exceeds the catalogue of 30"):
        train.run_trial(tiny_config(tiny_log, loss="ce-neg", num_negatives=31))


def test_git_commit_says_when_the_code_differs_from_it(tmp_path: Path):
    """A row's commit must not claim code it did not run: edited code (or a tree copied beside an older
    .git, as on the device) reads "<commit>-dirty"; results written beside the code do not."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                              capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "trainer.py").write_text("steps = 1\n")
    (tmp_path / "results.sqlite").write_bytes(b"rows")
    (tmp_path / "notes.md").write_text("a study\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "first")
    head = git("rev-parse", "HEAD")
    assert train.git_commit(tmp_path) == head
    (tmp_path / "results.sqlite").write_bytes(b"more rows")
    (tmp_path / "notes.md").write_text("a study, run\n")
    assert train.git_commit(tmp_path) == head
    (tmp_path / "study" / "trainer.py").write_text("steps = 2\n")
    assert train.git_commit(tmp_path) == f"{head}-dirty"
    assert train.git_commit(tmp_path / "study").endswith("-dirty")  # from inside it, too


def test_git_commit_is_none_outside_a_checkout(monkeypatch: pytest.MonkeyPatch):
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)
    assert train.git_commit() is None


@pytest.mark.parametrize(("loss", "scope", "sampling", "logq"), [
    ("ce-neg", "batch", "uniform", True),
    ("ce-neg", "sequence", "popularity", True),
    ("ce-neg", "position", "uniform", False),
    ("bce", "position", "uniform", False),
    ("gbce", "batch", "popularity", False),
])
def test_sampled_losses_train(tiny_log: Path, loss: str, scope: str, sampling: str, logq: bool):
    record = train.run_trial(tiny_config(tiny_log, loss=loss, negative_scope=scope, sampling=sampling,
                                         logq_correction=logq, num_negatives=6, max_steps_per_epoch=3))
    assert record.status == "ok", record.error
    assert all(math.isfinite(e.train_loss) and e.train_loss > 0 for e in record.epochs)
    assert "ndcg@10" in record.test_metrics


def test_full_ce_loss_shifts_targets_and_ignores_padding():
    torch.manual_seed(0)
    model = train.SASRec(12, max_len=5, hidden=8, blocks=1, dropout=0.0)
    config = TrainConfig(loss="ce", device="cpu", loss_impl="torch")
    loss_function = train.build_loss(config, model, torch.ones(13, dtype=torch.long), torch.device("cpu"))
    targets = torch.tensor([[3, 12, 1, 0, 0], [7, 7, 2, 9, 4]])
    hidden = torch.randn(2, 5, 8)
    # float64 reference: item ids 1..12 are catalogue rows 0..11, target 0 (padding) is no target
    logits = hidden.double().reshape(10, 8) @ model.item_embedding.weight[1:].double().T
    expected = torch.nn.functional.cross_entropy(logits, targets.reshape(10) - 1, ignore_index=-1)
    torch.testing.assert_close(loss_function(hidden, targets, 0).double(), expected, rtol=1e-5, atol=1e-6)


def test_logq_correction_is_refused_for_binary_losses(tiny_log: Path):
    with pytest.raises(ConfigError, match="logq_correction"):
        train.run_trial(tiny_config(tiny_log, loss="bce", logq_correction=True))


def test_the_record_says_why_training_stopped(tiny_log: Path):
    patient = train.run_trial(tiny_config(tiny_log, epochs=3, patience=10))
    assert patient.stop_reason == "max_epochs" and len(patient.epochs) == 3
    cut = train.run_trial(tiny_config(tiny_log, epochs=50, time_limit_s=1e-3))
    assert cut.stop_reason == "time_limit"
    stopped = train.run_trial(tiny_config(tiny_log, epochs=40, patience=1, lr=0.3))
    assert stopped.stop_reason == "early_stopping" and len(stopped.epochs) < 40
    assert len(stopped.epochs) == stopped.best_epoch + 1


def test_eval_every_validates_every_nth_epoch_and_the_last(tiny_log: Path):
    record = train.run_trial(tiny_config(tiny_log, epochs=7, patience=100, eval_every=3))
    evaluated = [e.epoch for e in record.epochs if e.val_metrics]
    assert evaluated == [3, 6, 7]
    assert all(e.eval_seconds == 0.0 for e in record.epochs if not e.val_metrics)
    assert record.best_epoch in evaluated
    assert record.val_metrics == record.epochs[record.best_epoch - 1].val_metrics


def test_eval_every_counts_patience_in_epochs(tiny_log: Path):
    # patience 4 with validation every 2 epochs: stop at the first validation 4 or more epochs past the best
    record = train.run_trial(tiny_config(tiny_log, epochs=60, patience=4, eval_every=2, lr=0.3))
    assert record.stop_reason in ("early_stopping", "max_epochs")
    if record.stop_reason == "early_stopping":
        last = record.epochs[-1].epoch
        assert last % 2 == 0 and last - record.best_epoch >= 4
        assert last - record.best_epoch < 4 + 2


def test_patience_steps_also_waits_that_many_optimiser_steps(tiny_log: Path):
    """With `patience_steps`, a trial stops at the first validation where both the epochs and the optimiser
    steps since the best epoch reach their patience: the same run as with epochs alone up to there."""
    by_epochs = train.run_trial(tiny_config(tiny_log, epochs=60, patience=1, lr=0.3))
    assert by_epochs.stop_reason == "early_stopping"
    steps_per_epoch = by_epochs.epochs[0].steps
    wanted = 3 * steps_per_epoch + 1  # more than three epochs' steps: four epochs without improvement
    both = train.run_trial(tiny_config(tiny_log, epochs=60, patience=1, patience_steps=wanted, lr=0.3))
    assert both.stop_reason in ("early_stopping", "max_epochs")
    assert len(both.epochs) > len(by_epochs.epochs)
    for a, b in zip(by_epochs.epochs, both.epochs):  # the same seed: the same run until the first stopped
        assert a.train_loss == b.train_loss and a.val_metrics == b.val_metrics
    if both.stop_reason == "early_stopping":
        since_best = [e for e in both.epochs if e.epoch > both.best_epoch]
        assert sum(e.steps for e in since_best) >= wanted > sum(e.steps for e in since_best[:-1])
    with pytest.raises(ConfigError, match="patience_steps"):
        tiny_config(tiny_log, patience_steps=-1)


def test_the_record_names_the_data_it_read_and_the_host(tiny_log: Path):
    import hashlib
    import socket

    record = train.run_trial(tiny_config(tiny_log, epochs=1))
    assert record.dataset_source == str(tiny_log.resolve())
    assert record.dataset_sha256 == hashlib.sha256(tiny_log.read_bytes()).hexdigest()
    assert record.host == socket.gethostname()
    assert TrialRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record


@pytest.mark.parametrize("scope", ["batch", "sequence", "position", "drawn"])
def test_fused_and_reference_losses_train_the_same_steps(tiny_log: Path, scope: str):
    """Steps of training with the Triton loss (interpreter) and the PyTorch reference from the same model,
    data and negatives give the same losses: a difference in quality between negative scopes is the
    scope's, not the fused path's."""
    from models.sasrec import SASRec
    from study.data import TrainBatches, load_dataset, make_split

    split = make_split(load_dataset(str(tiny_log), progress=False), "loo")
    losses = {}
    for impl in ("torch", "triton"):
        config = tiny_config(tiny_log, loss="ce-neg", negative_scope=scope, num_negatives=12, loss_impl=impl,
                             dropout=0.0)
        torch.manual_seed(0)
        model = SASRec(split.num_items, max_len=8, hidden=16, blocks=1, heads=1, dropout=0.0)
        optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
        loss_function = train.build_loss(config, model, split.item_counts, torch.device("cpu"),
                                         generator=torch.Generator().manual_seed(1))
        batches = TrainBatches(split.train, 8).iterate(8, shuffle=True, device="cpu",
                                                       generator=torch.Generator().manual_seed(2))
        values = []
        for step, (inputs, targets) in zip(range(4), batches):
            loss = loss_function(model(inputs), targets, step)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            values.append(loss.item())
        losses[impl] = values
    assert losses["torch"][-1] != losses["torch"][0]  # the model did train
    assert losses["triton"] == pytest.approx(losses["torch"], rel=1e-5, abs=1e-6)


def test_the_callers_prediction_is_recorded_when_it_was_made_for_the_trials_device(
        tiny_log: Path, monkeypatch: pytest.MonkeyPatch):
    import dataclasses

    from study.data import load_dataset
    from study.memory import model as memory_model

    config = tiny_config(tiny_log, epochs=1)
    size = memory_model.DatasetSize.of(load_dataset(config.dataset, kcore=config.kcore, progress=False))
    own = memory_model.predict_trial_memory(config, size)  # device "cpu", as the trial runs
    assert own.device == "cpu"
    calls = []
    predict = memory_model.predict_trial_memory
    monkeypatch.setattr(memory_model, "predict_trial_memory",
                        lambda *args, **kwargs: calls.append(args) or predict(*args, **kwargs))
    # a sweep's plan made it for this device: recorded as it is (a value the model would not give, to see
    # which one was recorded), the trainer predicts nothing
    given = dataclasses.replace(own, total_bytes=own.total_bytes + 12_345)
    assert train.run_trial(config, prediction=given).predicted_peak_bytes == given.total_bytes
    assert calls == []
    # made for CUDA (how the model reads device "auto"): the trainer predicts for the CPU it runs on
    for_cuda = predict(config.replace(device="auto"), size)
    assert for_cuda.device == "cuda" and for_cuda.total_bytes != own.total_bytes
    assert train.run_trial(config, prediction=for_cuda).predicted_peak_bytes == own.total_bytes
    assert len(calls) == 1
