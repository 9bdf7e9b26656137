"""Kill one study-sized trial mid-training under a real sweep and let Ray Tune resume it from its
checkpoint; measure what that saved, what the checkpoints cost, and how close it ends to an
uninterrupted run of the same configuration and seed.

    python3 benchmarks/checkpoint_resume.py --out DIR [--dataset ml-1m] [--epochs 40] [--kill-after 20]
        [--negatives 1024] [--batch-size 256] [--max-len 200] [--impl triton] [--device cuda]
        [--large-items 1000000]

Run from the repository root (the trial function below is imported by the Ray workers as
`benchmarks.checkpoint_resume:killed_once_trial`). Three parts, everything written under DIR:

1. sweep `ckpt-killed`: the trial, checkpointing every epoch; its worker SIGKILLs itself right after
   the checkpoint of epoch --kill-after (first attempt only); Tune restarts it, it continues from
   that checkpoint. `killed.sqlite`, `events.jsonl` (attempt starts, epochs, saves, the load, the kill,
   with wall-clock times), `killed.log`.
2. sweep `ckpt-reference`: the same configuration and seed, never killed (same checkpoint cadence).
   `reference.sqlite`, `reference.log`.
3. with --large-items C: the save and load time and size of a checkpoint of a C-item SASRec (d=64,
   2 blocks) with Adam state, on the device, without training (`large_checkpoint` in the summary).

`summary.json` / `summary.txt`: the time the kill cost with and without checkpoints (without: the whole
trial up to the kill is redone), Tune's restart latency, checkpoint size (measured vs
`estimate_checkpoint_bytes`) and save/load time against an epoch, and the val/test NDCG@10 and
per-epoch loss differences between the resumed and the uninterrupted trial (on a GPU the fused loss's
float atomics make two uninterrupted runs differ too, by about 1e-3 NDCG@10).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

EVENTS_VARIABLE = "CCE_BENCH_EVENTS"  # the events file, for the Ray workers (inherited environment)
KILL_VARIABLE = "CCE_BENCH_KILL_AFTER"


def _event(kind: str, **values: Any) -> None:
    path = os.environ.get(EVENTS_VARIABLE)
    if path:
        with open(path, "a") as handle:
            entry = {"event": kind, "time": time.time(), "pid": os.getpid(), **values}
            handle.write(json.dumps(entry) + "\n")


def killed_once_trial(config: Any, *, on_epoch: Callable[[Any], None] | None = None,
                      checkpointer: Any = None) -> Any:
    """study.training.trainer.run_trial, its worker killed right after the checkpoint of epoch
    $CCE_BENCH_KILL_AFTER on the first attempt (a 'kill' event in the events file marks that it happened)."""
    from study.training.trainer import run_trial

    _event("start")
    kill_after = int(os.environ.get(KILL_VARIABLE, "0"))
    events = Path(os.environ.get(EVENTS_VARIABLE, "/nonexistent"))
    already_killed = events.is_file() and '"event": "kill"' in events.read_text()

    def report(epoch: Any) -> None:
        _event("epoch", epoch=epoch.epoch, epoch_seconds=epoch.epoch_seconds, eval_seconds=epoch.eval_seconds)
        if on_epoch is not None:
            on_epoch(epoch)

    if checkpointer is not None:
        load, save = checkpointer.load, checkpointer.save

        def timed_load() -> Any:
            began = time.perf_counter()
            state = load()
            _event("load", seconds=time.perf_counter() - began, epoch=None if state is None else state.epoch)
            return state

        def save_then_maybe_die(state: Any) -> int:
            began = time.perf_counter()
            size = save(state)
            _event("save", epoch=state.epoch, seconds=time.perf_counter() - began, bytes=size,
                   elapsed_seconds=state.elapsed_seconds)
            if state.epoch == kill_after and not already_killed:
                _event("kill", epoch=state.epoch)
                os.kill(os.getpid(), signal.SIGKILL)
            return size

        checkpointer.load, checkpointer.save = timed_load, save_then_maybe_die
    return run_trial(config, on_epoch=report, checkpointer=checkpointer)


def _spec(name: str, args: argparse.Namespace, trial_function: str) -> str:
    return textwrap.dedent(f"""
        name = "{name}"
        datasets = ["{args.dataset}"]
        split = "loo"
        [trial]
        loss = "ce-neg"
        negative_scope = "position"
        sampling = "uniform"
        loss_impl = "{args.impl}"
        hidden = 64
        blocks = 2
        heads = 1
        epochs = {args.epochs}
        patience = {args.epochs}
        device = "{args.device}"
        seed = 0
        [axes]
        num_negatives = [{args.negatives}]
        batch_size = [{args.batch_size}]
        max_len = [{args.max_len}]
        [resources]
        gpus = {1 if args.device == "cuda" else 0}
        cpus = 2
        [checkpoint]
        every_epochs = 1
        every_minutes = 0
        max_retries = 2
        [run]
        trial_function = "{trial_function}"
    """)


def _sweep(out: Path, name: str, spec_text: str) -> tuple[dict[str, Any], float]:
    from study.database.results_db import ResultsDB, load_trials
    from study.sweep import command as sweep

    spec = out / f"{name}.toml"
    spec.write_text(spec_text)
    db = out / f"{name.removeprefix('ckpt-')}.sqlite"
    for stale in out.glob(f"{db.name}*"):  # a database (and WAL files) of an earlier run of this script
        stale.unlink()
    began = time.time()
    sweep.run(argparse.Namespace(spec=spec, db=db, address=None, resume=False, dry_run=False,
                                 storage=str(out / "storage")))
    wall = time.time() - began
    row = load_trials(db).iloc[0]
    with ResultsDB(db) as reader:
        record = reader.load_record(str(row["trial_id"])).to_dict()
    return record, wall


def _large_checkpoint(items: int, device: str, folder: Path) -> dict[str, Any]:
    import torch

    from models.sasrec import SASRec
    from study.training.checkpoint import (
        TrainingState,
        capture_rng,
        estimate_checkpoint_bytes,
        load_state,
        save_state,
    )

    model = SASRec(items, max_len=200, hidden=64, blocks=2, heads=1, dropout=0.1).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randint(1, items, (2, 200), device=device)).float().pow(2).mean().backward()
    optimizer.step()  # Adam's moments exist
    best = {name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()}
    generators = {"shuffle": torch.Generator().manual_seed(0),
                  "sampler": torch.Generator(device=device).manual_seed(1)}
    if device == "cuda":
        torch.cuda.synchronize()
    began = time.perf_counter()
    state = TrainingState(config={}, epoch=1, global_step=1, model=model.state_dict(),
                          optimizer=optimizer.state_dict(), rng=capture_rng(generators), epochs=[],
                          best_score=0.0, best_epoch=1, best_val_metrics={}, best_model=best, stale_epochs=0,
                          elapsed_seconds=0.0, checkpoint_seconds=0.0, started_at=None)
    size = save_state(state, folder)
    saved = time.perf_counter() - began
    began = time.perf_counter()
    loaded = load_state(folder)
    model.load_state_dict(loaded.model)
    optimizer.load_state_dict(loaded.optimizer)
    if device == "cuda":
        torch.cuda.synchronize()
    restored = time.perf_counter() - began
    return {"items": items, "bytes": size, "estimate_bytes": estimate_checkpoint_bytes(items, hidden=64,
                                                                                      max_len=200, blocks=2),
            "save_seconds": saved, "load_seconds": restored, "folder": str(folder)}


def summarise(killed: dict[str, Any], reference: dict[str, Any], walls: dict[str, float],
              events: list[dict[str, Any]]) -> dict[str, Any]:
    from study.training.checkpoint import estimate_checkpoint_bytes

    starts = [e for e in events if e["event"] == "start"]
    kill = next(e for e in events if e["event"] == "kill")
    loads = [e for e in events if e["event"] == "load"]
    saves = [e for e in events if e["event"] == "save"]
    resumed_load = next(e for e in loads if e["epoch"] is not None)
    resumed_start = next(e for e in starts if e["time"] > kill["time"])
    first_resumed_epoch = next(e for e in events if e["event"] == "epoch" and e["time"] > kill["time"])
    first_epoch = next(e for e in events if e["event"] == "epoch")
    training_began = first_epoch["time"] - first_epoch["epoch_seconds"] - first_epoch["eval_seconds"]
    # Without checkpoints the restarted trial redoes every epoch up to the kill; with them it loads
    # the checkpoint instead. Setting up (data, model, compilation) is paid again either way.
    trained_at_kill = kill["time"] - training_began
    epochs = killed["epochs"]
    epoch_times = [e["epoch_seconds"] + e["eval_seconds"] for e in epochs]
    config = killed["config"]
    estimate = estimate_checkpoint_bytes(int(killed["num_items"]), hidden=config["hidden"],
                                         max_len=config["max_len"], blocks=config["blocks"])
    ref_epochs = reference["epochs"]
    loss_diff = [abs(a["train_loss"] - b["train_loss"]) for a, b in zip(epochs, ref_epochs)]
    k = kill["epoch"]
    return {
        "config": {name: config[name] for name in ("dataset", "loss", "negative_scope", "num_negatives",
                                                     "batch_size", "max_len", "hidden", "blocks", "loss_impl",
                                                     "epochs")},
        "num_items": killed["num_items"],
        "killed_after_epoch": k,
        "resumed_from_epoch": killed["resumed_from_epoch"],
        "epochs_run": len(epochs),
        "seconds": {
            "trial_time_at_kill": kill["time"] - starts[0]["time"],
            "training_time_at_kill": trained_at_kill,
            "tune_restart_latency": resumed_start["time"] - kill["time"],
            "restart_to_first_resumed_epoch_end": first_resumed_epoch["time"] - resumed_start["time"],
            "checkpoint_load": resumed_load["seconds"],
            "checkpoint_save_mean": sum(e["seconds"] for e in saves) / len(saves),
            "checkpoint_save_total": killed["checkpoint_seconds"],
            "epoch_mean_train_plus_eval": sum(epoch_times) / len(epoch_times),
            "sweep_wall_killed": walls["killed"],
            "sweep_wall_reference": walls["reference"],
            "saved_by_checkpoint": trained_at_kill - resumed_load["seconds"],
            "saved_net_of_all_saves": (trained_at_kill - resumed_load["seconds"]
                                       - killed["checkpoint_seconds"]),
            "overhead_of_kill_with_checkpoint": walls["killed"] - walls["reference"],
        },
        "checkpoint_bytes": killed["checkpoint_bytes"],
        "checkpoint_estimate_bytes": estimate,
        "quality": {
            "killed_val_ndcg_10": killed["val_metrics"].get("ndcg@10"),
            "reference_val_ndcg_10": reference["val_metrics"].get("ndcg@10"),
            "killed_test_ndcg_10": killed["test_metrics"].get("ndcg@10"),
            "reference_test_ndcg_10": reference["test_metrics"].get("ndcg@10"),
            "max_train_loss_diff_before_kill": max(loss_diff[:k], default=None),
            "max_train_loss_diff_after_kill": max(loss_diff[k:], default=None),
        },
    }


def _text(summary: dict[str, Any]) -> str:
    seconds, quality, mib = summary["seconds"], summary["quality"], 2**20
    size, estimate = summary["checkpoint_bytes"] / mib, summary["checkpoint_estimate_bytes"] / mib
    lines = [
        f"trial: {summary['config']} on {summary['num_items']} items",
        f"killed after epoch {summary['killed_after_epoch']}, resumed from epoch "
        f"{summary['resumed_from_epoch']}, {summary['epochs_run']} epochs in all",
        f"training time at the kill (redone without checkpoints): {seconds['training_time_at_kill']:.1f} s "
        f"(trial time {seconds['trial_time_at_kill']:.1f} s); saved by the checkpoint: "
        f"{seconds['saved_by_checkpoint']:.1f} s, {seconds['saved_net_of_all_saves']:.1f} s net of every "
        f"save ({seconds['checkpoint_save_total']:.2f} s)",
        f"Tune restart latency {seconds['tune_restart_latency']:.1f} s; restart to the end of the first "
        f"resumed epoch {seconds['restart_to_first_resumed_epoch_end']:.1f} s",
        f"checkpoint {size:.2f} MiB (estimate {estimate:.2f} MiB); save "
        f"{seconds['checkpoint_save_mean']:.3f} s mean, load {seconds['checkpoint_load']:.3f} s; "
        f"epoch (train + eval) {seconds['epoch_mean_train_plus_eval']:.2f} s",
        f"sweep wall: killed {seconds['sweep_wall_killed']:.1f} s, "
        f"reference {seconds['sweep_wall_reference']:.1f} s",
        f"val NDCG@10 killed {quality['killed_val_ndcg_10']:.5f} vs reference "
        f"{quality['reference_val_ndcg_10']:.5f}; test {quality['killed_test_ndcg_10']:.5f} vs "
        f"{quality['reference_test_ndcg_10']:.5f}",
        f"max |train loss diff| before the kill {quality['max_train_loss_diff_before_kill']:.2e}, "
        f"after {quality['max_train_loss_diff_after_kill']:.2e}",
    ]
    large = summary.get("large_checkpoint")
    if large:
        lines.append(f"checkpoint of a {large['items']:,}-item model: {large['bytes'] / mib:.1f} MiB "
                     f"(estimate {large['estimate_bytes'] / mib:.1f} MiB), save "
                     f"{large['save_seconds']:.2f} s, load {large['load_seconds']:.2f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--kill-after", type=int, default=20)
    parser.add_argument("--negatives", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-len", type=int, default=200)
    parser.add_argument("--impl", default="triton")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--large-items", type=int, default=0)
    args = parser.parse_args(argv)
    if not 1 <= args.kill_after < args.epochs:
        parser.error("--kill-after must be at least 1 and below --epochs")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    events_path = out / "events.jsonl"
    events_path.unlink(missing_ok=True)
    os.environ[EVENTS_VARIABLE] = str(events_path)  # before Ray starts: its workers inherit it
    os.environ[KILL_VARIABLE] = str(args.kill_after)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.chdir(REPO)

    killed, killed_wall = _sweep(out, "ckpt-killed",
                                 _spec("ckpt-killed", args, "benchmarks.checkpoint_resume:killed_once_trial"))
    os.environ.pop(KILL_VARIABLE)
    reference, reference_wall = _sweep(out, "ckpt-reference",
                                       _spec("ckpt-reference", args, "study.train:run_trial"))
    events = [json.loads(line) for line in events_path.read_text().splitlines()]
    if killed["status"] != "ok" or reference["status"] != "ok":
        print(f"trial status: killed {killed['status']} ({killed.get('error')}), reference "
              f"{reference['status']} ({reference.get('error')})", file=sys.stderr)
        return 1
    summary = summarise(killed, reference, {"killed": killed_wall, "reference": reference_wall}, events)
    if args.large_items:
        with tempfile.TemporaryDirectory(dir=out) as folder:
            summary["large_checkpoint"] = _large_checkpoint(args.large_items, args.device, Path(folder))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    text = _text(summary)
    (out / "summary.txt").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
