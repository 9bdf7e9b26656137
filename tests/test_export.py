"""The model a user takes away: the model file a trial keeps, `load_model`, scoring raw item ids, and
`cce-study export` (by trial id and as the best trial under a budget), without Ray."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import study.training.trainer as train
from study import cli
from study.config import TrainConfig
from study.data import load_dataset, make_split
from study.database.results_db import ResultsDB
from study.record import MemoryReport, TrialRecord
from study.training.checkpoint import CheckpointPolicy, FolderCheckpointer
from study.training.evaluate import evaluate_model
from study.training.export import item_index, load_model, read_payload, recommend, score


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainConfig, TrialRecord, Path]:
    """A small trial on a log with text item ids ('sku-0042'), its record and its kept model file."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("trained")
    rng = np.random.default_rng(3)
    weights = 1.0 / np.arange(1, 91)
    rows = []
    for user in range(90):
        items = rng.choice(90, size=int(rng.integers(5, 13)), replace=False, p=weights / weights.sum())
        rows += [(f"u{user}", f"sku-{item:04d}", 10 * user + step) for step, item in enumerate(items)]
    log = folder / "log.csv"
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(log, index=False)
    config = TrainConfig(dataset=str(log), loss="ce-neg", num_negatives=8, max_len=8, hidden=16, blocks=1,
                         batch_size=16, epochs=3, patience=3, lr=5e-3, device="cpu", progress=False)
    checkpointer = FolderCheckpointer(folder / "trial", CheckpointPolicy(1, 0))
    record = train.run_trial(config, checkpointer=checkpointer)
    assert record.status == "ok" and record.model_path is not None
    return config, record, Path(record.model_path)


def test_a_kept_model_loads_and_reproduces_the_trials_test_metrics(trained) -> None:
    config, record, model_file = trained
    model, loaded_config, item_ids = load_model(model_file)
    assert loaded_config == config and not model.training
    data = load_dataset(config.dataset)
    assert item_ids == list(data.item_labels) and all(isinstance(i, str) for i in item_ids)
    split = make_split(data, config.split, seed=config.seed)
    test = evaluate_model(model, split.test, num_items=split.num_items, max_len=config.max_len,
                          batch_size=config.eval_batch_size, device="cpu", exclude_seen=config.exclude_seen)
    assert test == record.test_metrics
    payload = read_payload(model_file)
    assert payload["trial"]["best_epoch"] == record.best_epoch
    assert payload["trial"]["test_metrics"]["ndcg@10"] == record.test_metrics["ndcg@10"]


def test_scores_of_raw_item_ids_are_the_models_own(trained) -> None:
    _, _, model_file = trained
    model, config, item_ids = load_model(model_file)
    index = item_index(item_ids)
    long_history = ["sku-0001"] * 2 + [f"sku-{i:04d}" for i in range(2, 12)]  # beyond max_len = 8
    histories = [["sku-0003", "sku-0000", "sku-0017"], long_history]
    scores = score(model, item_ids, histories, exclude_seen=False)
    assert scores.shape == (2, len(item_ids))
    for row, history in enumerate(histories):
        inputs = torch.tensor([[index[raw] for raw in history][-config.max_len:]])
        with torch.no_grad():
            expected = (model.last_hidden(inputs) @ model.item_embedding.weight[1:].T)[0]
        torch.testing.assert_close(scores[row], expected)  # float32; padded to the batch's width
    excluded = score(model, item_ids, histories)
    for row, history in enumerate(histories):
        seen = {index[raw] - 1 for raw in history}  # the whole history, also beyond max_len
        assert all(math.isinf(excluded[row, j]) == (j in seen) for j in range(len(item_ids)))
    top = recommend(model, item_ids, histories[0], k=5)
    assert len(top) == 5 and not {raw for raw, _ in top} & set(histories[0])
    assert [s for _, s in top] == sorted((s for _, s in top), reverse=True)
    assert top[0][1] == pytest.approx(float(excluded[0].max()))
    with pytest.raises(ValueError, match="item id 'sku-9999' is not in the model's catalogue"):
        score(model, item_ids, [["sku-0001", "sku-9999"]])
    with pytest.raises(ValueError, match=r"histories\[0\]: empty"):
        score(model, item_ids, [[]])


def write_db(path: Path, trained, *, model_path: str | None) -> None:
    config, record, _ = trained
    kept = TrialRecord.from_dict({**record.to_dict(), "model_path": model_path})
    kept.memory = MemoryReport(cpu_peak_rss=2**30)
    small = TrialRecord.from_dict({**kept.to_dict(), "model_path": None})
    small.memory = MemoryReport(cpu_peak_rss=2**29)
    small.val_metrics = {k: v / 2 for k, v in record.val_metrics.items()}
    with ResultsDB(path) as db:
        db.record_trial("sw-kept", "sw", kept)
        db.record_trial("sw-small", "sw", small)  # fits 0.75 GiB, worse; no model kept
        db.record_trial("sw-oom", "sw", TrialRecord(status="oom", config=config.to_dict(), error="OOM"))


def test_export_writes_the_model_of_a_trial_or_of_the_best_under_a_budget(
        trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, record, model_file = trained
    db = tmp_path / "results.sqlite"
    write_db(db, trained, model_path=str(model_file))
    for selection in (["--trial", "sw-kept"], ["--budget", "2GiB", "--dataset", record.config["dataset"]]):
        out = tmp_path / selection[0].strip("-") / "model.pt"
        assert cli.main(["export", "--db", str(db), *selection, "--out", str(out)]) == 0
        payload = read_payload(out)
        assert payload["trial"]["trial_id"] == "sw-kept" and payload["trial"]["sweep"] == "sw"
        assert f"wrote {out}: trial sw-kept" in capsys.readouterr().out
        exported, kept = load_model(out)[0], load_model(model_file)[0]
        assert torch.equal(exported.item_embedding.weight, kept.item_embedding.weight)
    # the storage moved: --storage finds <storage>/<sweep>/models/<trial>/model.pt
    moved = tmp_path / "moved"
    (moved / "sw" / "models" / "sw-kept").mkdir(parents=True)
    shutil.copy(model_file, moved / "sw" / "models" / "sw-kept" / "model.pt")
    write_db(tmp_path / "stale.sqlite", trained, model_path=str(tmp_path / "gone" / "model.pt"))
    out = tmp_path / "moved.pt"
    assert cli.main(["export", "--db", str(tmp_path / "stale.sqlite"), "--trial", "sw-kept",
                     "--storage", f"file://{moved}", "--out", str(out)]) == 0
    assert read_payload(out)["trial"]["trial_id"] == "sw-kept"


@pytest.mark.parametrize("arguments, message", [
    (["--trial", "sw-nope"], "--trial sw-nope: no such trial in"),
    (["--trial", "sw-oom"], "trial sw-oom: status oom, only ok trials keep a model"),
    (["--trial", "sw-small"], "trial sw-small: no model was kept for it"),
    (["--budget", "0.75GiB"], "trial sw-small: no model was kept for it"),
    (["--budget", "100MiB"], "--budget 100MiB: no ok trial in"),
    (["--trial", "sw-kept", "--storage", "/nonexistent/storage"], "its model is gone from /nonexistent"),
    (["--budget", "2GiB", "--metric", "ndcg"], "--metric"),
])
def test_export_refuses_with_one_line_naming_what_is_wrong(trained, tmp_path: Path, arguments: list[str],
                                                          message: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    _, _, model_file = trained
    db = tmp_path / "results.sqlite"
    write_db(db, trained, model_path=str(model_file))
    out = tmp_path / "model.pt"
    assert cli.main(["export", "--db", str(db), *arguments, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("cce-study export: error: ") and message in error and error.count("\n") == 1
    assert not out.exists()


def test_a_file_that_is_not_a_model_is_refused(tmp_path: Path) -> None:
    torch.save({"weights": torch.ones(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a cce-study model file"):
        load_model(tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ValueError, match="not a cce-study model file"):
        load_model(tmp_path / "text.pt")
    with pytest.raises(FileNotFoundError, match="no such model file"):
        load_model(tmp_path / "missing.pt")
