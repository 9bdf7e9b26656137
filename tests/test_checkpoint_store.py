"""Where a sweep keeps checkpoints and models: the storage layout on local paths and file:// URIs,
finding a trial's latest checkpoint by its id, pruning, disk usage; the `[checkpoint]` spec table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from study.sweep.checkpoint_store import CheckpointStore
from study.sweep.spec import CheckpointSpec, SpecError, parse_spec
from study.training import checkpoint


def write_checkpoint(folder: Path, epoch: int) -> None:
    folder.mkdir(parents=True)
    (folder / checkpoint.STATE_FILE).write_bytes(b"x" * (100 + epoch))
    (folder / checkpoint.INFO_FILE).write_text(json.dumps({"epoch": epoch, "state_bytes": 100 + epoch}))


@pytest.mark.parametrize("as_uri", [False, True])
def test_the_store_finds_prunes_and_measures_checkpoints_by_trial_id(tmp_path: Path, as_uri: bool) -> None:
    root = tmp_path / "storage"
    store = CheckpointStore(f"file://{root}" if as_uri else root, "sw")
    sweep = root / "sw"
    write_checkpoint(sweep / "run-1" / "sw-aaaa-t1_00000" / "checkpoint_000002", 3)
    write_checkpoint(sweep / "run-2" / "sw-aaaa-t2_00000" / "checkpoint_000000", 5)
    write_checkpoint(sweep / "run-2" / "sw-aaaa-t2_00000" / "checkpoint_000001", 6)
    (sweep / "run-2" / "sw-aaaa-t2_00000" / "checkpoint_000001" / checkpoint.STATE_FILE).write_bytes(b"cut")
    write_checkpoint(sweep / "run-2" / "sw-bbbb-t2_00001" / "checkpoint_000000", 1)
    (sweep / "run-3" / "sw-cccc-t3_00000").mkdir(parents=True)  # Tune's folder of a run that saved nothing

    found = store.latest_checkpoint("sw-aaaa")
    assert found is not None and (found.epoch, found.run) == (5, "run-2")  # epoch 6 is incomplete
    assert found.location.endswith("sw/run-2/sw-aaaa-t2_00000/checkpoint_000000")
    assert found.location.startswith("file://") == as_uri
    assert store.latest_checkpoint("sw-cccc") is None and store.latest_checkpoint("sw-aa") is None
    store.download(found, tmp_path / "copy")
    assert json.loads((tmp_path / "copy" / checkpoint.INFO_FILE).read_text())["epoch"] == 5

    location = store.put_model({"weights": torch.arange(1000.0)}, "sw-bbbb")
    assert location == store.model_location("sw-bbbb")
    assert torch.equal(torch.load(sweep / "models" / "sw-bbbb" / "model.pt")["weights"], torch.arange(1000.0))
    usage = store.disk_usage()
    assert usage.models == 1 and usage.trials_with_checkpoints == 3
    assert usage.checkpoint_bytes == sum(p.stat().st_size for p in sweep.glob("run-*/*/checkpoint_*/*"))
    assert usage.model_bytes == (sweep / "models" / "sw-bbbb" / "model.pt").stat().st_size

    assert store.checkpointed_trials() == {"sw-aaaa", "sw-bbbb"}
    store.delete_checkpoints({"sw-aaaa"})
    assert store.latest_checkpoint("sw-aaaa") is None and store.latest_checkpoint("sw-bbbb") is not None
    store.remove_finished_runs(keep="run-3")
    assert sorted(p.name for p in sweep.iterdir()) == ["models", "run-2", "run-3"]  # run-2: sw-bbbb's
    store.delete_checkpoints({"sw-bbbb"})
    store.remove_finished_runs()
    assert sorted(p.name for p in sweep.iterdir()) == ["models"]
    assert store.disk_usage().checkpoint_bytes == 0


def test_the_checkpoint_table_of_a_sweep_spec() -> None:
    base = {"name": "c", "datasets": ["d"],
            "axes": {"num_negatives": [8], "batch_size": [8], "max_len": [20]}}
    assert parse_spec(base).checkpoint == CheckpointSpec()
    spec = parse_spec({**base, "checkpoint": {"storage": "s3://bucket/x", "every_epochs": 2,
                                              "every_minutes": 0, "keep_best_model": False,
                                              "max_retries": 0}})
    assert spec.checkpoint == CheckpointSpec(storage="s3://bucket/x", every_epochs=2, every_minutes=0.0,
                                             keep_best_model=False, max_retries=0)
    for table, message in [({"every_epochs": 0}, "checkpoint.every_epochs: must be a positive integer"),
                           ({"every_minutes": -1}, "checkpoint.every_minutes: must be a number >= 0"),
                           ({"max_retries": 1.5}, "checkpoint.max_retries: must be an integer >= 0"),
                           ({"keep_best_model": "yes"}, "checkpoint.keep_best_model: must be true or false"),
                           ({"storage": ""}, "checkpoint.storage: must be a folder or a URI"),
                           ({"every": 1}, "checkpoint.every: unknown key")]:
        with pytest.raises(SpecError, match=message):
            parse_spec({**base, "checkpoint": table})
