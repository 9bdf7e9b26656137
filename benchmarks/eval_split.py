"""Training vs evaluation seconds per epoch, and evaluation alone, for two code trees side by side.

Each measurement runs in its own process with PYTHONPATH set to a code tree (a folder holding the
packages kernels, models and study), so the same command measures the evaluator before and after a
change. Lay out the tree before the change once, for example:

    mkdir -p .cache/eval-before && git archive beb4e36 kernels models study | tar -x -C .cache/eval-before

Modes (--mode, comma-separated):
  epoch: `study.training.trainer.run_trial` for --epochs epochs (full CE, d=64, batch 128, L=200 by
         default, as in issue 13's ml-1m figures); reports each epoch's training seconds and validation
         seconds.
  eval:  a freshly initialised SASRec (seeded) evaluated on the validation set, --repeats times, plus
         the popularity baseline; reports seconds and the metrics, so that the trees' metrics can be
         compared exactly (the metrics must be identical: same ranks, same top-k lists).

    python3 benchmarks/eval_split.py --trees before=.cache/eval-before,after=. \\
        --datasets ml-1m,gowalla --mode epoch,eval --device cuda --out OUT
Writes OUT/eval_split.json and prints a table; exits 1 if two trees' metrics differ in eval mode.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def child(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from study.config import TrainConfig
    from study.training.trainer import run_trial

    config = TrainConfig(dataset=args.dataset, loss="ce", hidden=args.hidden, batch_size=args.batch_size,
                         max_len=args.max_len, epochs=args.epochs, patience=args.epochs, device=args.device,
                         eval_batch_size=args.eval_batch_size, progress=False, seed=args.seed)
    if args.mode == "epoch":
        record = run_trial(config)
        return {"status": record.status, "error": record.error,
                "epochs": [{"epoch": e.epoch, "train_seconds": e.epoch_seconds,
                            "eval_seconds": e.eval_seconds,
                            "val_ndcg@10": e.val_metrics.get("ndcg@10")} for e in record.epochs]}

    from models.sasrec import SASRec
    from study.data import load_dataset, make_split
    from study.training.evaluate import evaluate_model, evaluate_popularity

    split = make_split(load_dataset(config.dataset, kcore=config.kcore, progress=False), config.split,
                       seed=config.seed)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    model = SASRec(split.num_items, max_len=args.max_len, hidden=args.hidden, blocks=config.blocks,
                   heads=config.heads, dropout=config.dropout).to(device)
    timings, metrics = [], {}
    for _ in range(args.repeats):
        start = time.perf_counter()
        metrics = evaluate_model(model, split.validation, num_items=split.num_items, max_len=args.max_len,
                                 batch_size=args.eval_batch_size, device=device)
        timings.append(time.perf_counter() - start)
    start = time.perf_counter()
    popularity = evaluate_popularity(split.item_counts, split.validation, max_len=args.max_len,
                                     batch_size=args.eval_batch_size, device=device)
    return {"eval_seconds": timings, "popularity_seconds": time.perf_counter() - start, "metrics": metrics,
            "popularity_metrics": popularity, "users": len(split.validation), "items": split.num_items}


def run_child(tree: str, mode: str, dataset: str, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(tree).resolve()),
                                                                    os.environ.get("PYTHONPATH", "")])))
    command = [sys.executable, __file__, "--child", "--mode", mode, "--dataset", dataset,
               "--device", args.device, "--epochs", str(args.epochs), "--repeats", str(args.repeats),
               "--hidden", str(args.hidden), "--batch-size", str(args.batch_size),
               "--max-len", str(args.max_len),
               "--eval-batch-size", str(args.eval_batch_size), "--seed", str(args.seed)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        last_lines = done.stderr.strip().splitlines()[-3:]
        return {"status": "error", "error": " | ".join(last_lines) or f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trees", default="after=.", help="name=folder,... code trees to compare")
    parser.add_argument("--datasets", default="ml-1m,gowalla")
    parser.add_argument("--mode", default="epoch,eval")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-len", type=int, default=200)
    parser.add_argument("--eval-batch-size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per measurement process")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(child(args)))
        return 0

    trees = dict(item.split("=", 1) for item in args.trees.split(","))
    results: list[dict[str, Any]] = []
    for mode in args.mode.split(","):
        for dataset in args.datasets.split(","):
            for name, tree in trees.items():
                started = time.perf_counter()
                result = run_child(tree, mode, dataset, args)
                result.update(tree=name, mode=mode, dataset=dataset,
                              wall_seconds=time.perf_counter() - started)
                results.append(result)
                print(summary(result), flush=True)
    differ = compare_metrics(results)
    for line in differ:
        print(line)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "eval_split.json").write_text(json.dumps(results, indent=2) + "\n")
    return 1 if differ else 0


def summary(result: dict[str, Any]) -> str:
    head = f"{result['mode']:<6}{result['dataset']:<10}{result['tree']:<10}"
    if result.get("status") == "error" or result.get("error"):
        return head + f"error: {result.get('error')}"
    if result["mode"] == "epoch":
        cells = [f"epoch {e['epoch']}: train {e['train_seconds']:.3f} s, eval {e['eval_seconds']:.3f} s "
                 f"({e['eval_seconds'] / (e['train_seconds'] + e['eval_seconds']):.0%})"
                 for e in result["epochs"]]
        return head + "; ".join(cells)
    seconds = ", ".join(f"{s:.3f}" for s in result["eval_seconds"])
    return (head + f"eval {seconds} s, popularity {result['popularity_seconds']:.3f} s, "
            f"ndcg@10 {result['metrics']['ndcg@10']:.6f}, {result['users']} users x {result['items']} items")


def compare_metrics(results: list[dict[str, Any]]) -> list[str]:
    """Lines naming every metric on which two trees differ (eval mode); empty when all agree exactly."""
    lines = []
    by_dataset: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        if result["mode"] == "eval" and "metrics" in result:
            by_dataset.setdefault(result["dataset"], []).append(result)
    for dataset, group in by_dataset.items():
        first = group[0]
        for other in group[1:]:
            for field in ("metrics", "popularity_metrics"):
                for key, value in first[field].items():
                    if other[field].get(key) != value:
                        lines.append(f"DIFFERENT {dataset} {field} {key}: {first['tree']} {value!r} "
                                     f"vs {other['tree']} {other[field].get(key)!r}")
        if len(group) > 1 and not any(line.startswith(f"DIFFERENT {dataset} ") for line in lines):
            print(f"{dataset}: metrics identical across {', '.join(r['tree'] for r in group)}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
