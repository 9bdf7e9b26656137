"""Training vs evaluation seconds per epoch, and evaluation alone, for two code trees side by side.

Each measurement runs in its own process with PYTHONPATH set to a code tree (a folder holding the
packages kernels, models and study), so the same command measures the evaluator before and after a
change. Lay out the tree before the change once, for example:

    mkdir -p .cache/eval-before && git archive beb4e36 kernels models study | tar -x -C .cache/eval-before

Modes (--mode, comma-separated):
  ranking: one process per tree, the ranking before and after side by side in it: a freshly initialised
         SASRec (seeded) evaluated on the validation set with the evaluator's own RankingAccumulator
         ("new") and with the int64-key accumulator it replaced ("old", tests/metrics_reference.py),
         alternating, --repeats times each after one untimed warm-up of each; the popularity baseline
         the same way (its counts tie in most top-100 lists: the tie fallback's worst case). Reports
         seconds per validation, the device's peak memory above what was allocated before (CUDA), the
         metrics (must be identical), and a torch.profiler table of the first --profile-chunks chunks
         per accumulator (top ops by device time, or CPU time on CPU) with the time per chunk.
  epoch: `study.training.trainer.run_trial` for --epochs epochs (full CE, d=64, batch 128, L=200 by
         default, as in issue 13's ml-1m figures); reports each epoch's training seconds and validation
         seconds.
  chunks: the evaluator as trials run it (bf16 autocast on CUDA) at each --max-scores (the scores alive at
         once: chunk rows = max_scores // items, within batches of --eval-batch-size), alternating, --repeats
         times each after one untimed warm-up of each; seconds, peak memory above the start, and whether the
         metrics equal those of the first value (the encoder then runs on other row counts, so the last bit
         of a score may differ).
  eval:  a freshly initialised SASRec (seeded) evaluated on the validation set, --repeats times, plus
         the popularity baseline; reports seconds and the metrics, so that the trees' metrics can be
         compared exactly (the metrics must be identical: same ranks, same top-k lists).

    python3 benchmarks/eval_split.py --trees before=.cache/eval-before,after=. \\
        --datasets ml-1m,gowalla --mode epoch,eval --device cuda --out OUT
Writes OUT/eval_split.json and prints a table; exits 1 if two trees' metrics differ in eval mode, or a
measurement failed.

The ranking comparison on an H200 (diginetica at the study's L=20 and evaluation batch 2048, ml-1m at L=200;
bf16 autocast for the encoder, as trials on CUDA run it):

    python3 benchmarks/eval_split.py --mode ranking --datasets diginetica --max-len 20 \
        --eval-batch-size 2048 --device cuda --out OUT/diginetica
Writes OUT/eval_split.json and OUT/profile-DATASET-TREE-{old,new}.txt; exits 1 if old and new metrics
differ.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def child(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    if args.mode == "ranking":
        return ranking_child(args)
    if args.mode == "chunks":
        return chunks_child(args)

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


def untrained_model_and_validation(args: argparse.Namespace) -> tuple[Any, Any, Any, Any, Any]:
    """(split, device, model, autocast, prepared validation set): a seeded, untrained SASRec on args.dataset
    and its validation set laid out for the evaluator, which runs the encoder under bf16 autocast on CUDA
    as trials do."""
    import contextlib

    import torch

    import study.training.evaluate as evaluate
    from models.sasrec import SASRec
    from study.config import TrainConfig
    from study.data import load_dataset, make_split

    config = TrainConfig(dataset=args.dataset, hidden=args.hidden, max_len=args.max_len, seed=args.seed,
                         device=args.device, eval_batch_size=args.eval_batch_size, progress=False)
    split = make_split(load_dataset(config.dataset, kcore=config.kcore, progress=False), config.split,
                       seed=config.seed)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = SASRec(split.num_items, max_len=args.max_len, hidden=args.hidden, blocks=config.blocks,
                   heads=config.heads, dropout=config.dropout).to(device)
    autocast: Any = ((lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16))
                     if device.type == "cuda" else contextlib.nullcontext)
    prepared = evaluate.prepare_evaluation(split.validation, num_items=split.num_items, max_len=args.max_len,
                                           device=device)
    return split, device, model, autocast, prepared


def measured(run: Any, device: Any) -> tuple[float, int, Any]:
    """(seconds, peak bytes above the start on CUDA, result) of run(); the result is read back, so the
    device is done when the clock stops."""
    import torch

    on_cuda = device.type == "cuda"
    base = 0
    if on_cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - start
    return seconds, (torch.cuda.max_memory_allocated(device) - base if on_cuda else 0), result


def ranking_child(args: argparse.Namespace) -> dict[str, Any]:
    """Old and new RankingAccumulator in this process, on the same prepared validation set and model."""

    import torch

    import study.training.evaluate as evaluate

    sys.path.insert(0, str(REPO / "tests"))
    import metrics_reference

    from study.config import DEFAULT_EVAL_MAX_SCORES, eval_chunk_rows

    split, device, model, autocast, prepared = untrained_model_and_validation(args)
    on_cuda = device.type == "cuda"
    accumulators = {"old": metrics_reference.RankingAccumulator, "new": evaluate.RankingAccumulator}
    chunk_rows = eval_chunk_rows(DEFAULT_EVAL_MAX_SCORES, split.num_items)

    def model_metrics(evalset: Any) -> dict[str, float]:
        return evaluate.evaluate_model(model, evalset, num_items=split.num_items, max_len=args.max_len,
                                       batch_size=args.eval_batch_size, device=device, autocast=autocast)

    def popularity_metrics(evalset: Any) -> dict[str, float]:
        return evaluate.evaluate_popularity(split.item_counts, evalset, max_len=args.max_len,
                                            batch_size=args.eval_batch_size, device=device)

    def timed(variant: str, run: Any, evalset: Any) -> tuple[float, int, dict[str, float]]:
        evaluate.RankingAccumulator = accumulators[variant]  # type: ignore[misc]
        return measured(lambda: run(evalset), device)

    out: dict[str, Any] = {"users": len(prepared), "items": split.num_items, "chunk_rows": chunk_rows,
                           "chunks": count_chunks(len(prepared), args.eval_batch_size, chunk_rows),
                           "device_name": torch.cuda.get_device_name(device) if on_cuda else "cpu",
                           "torch": torch.__version__}
    for name, run in (("model", model_metrics), ("popularity", popularity_metrics)):
        runs: dict[str, Any] = {}
        for variant in accumulators:
            seconds, peak, metrics = timed(variant, run, prepared)
            runs[variant] = {"warm_up_seconds": seconds, "seconds": [], "peak_bytes": [peak],
                             "metrics": metrics}
        for _ in range(args.repeats):
            for variant in accumulators:
                seconds, peak, metrics = timed(variant, run, prepared)
                runs[variant]["seconds"].append(seconds)
                runs[variant]["peak_bytes"].append(peak)
                if metrics != runs[variant]["metrics"]:
                    runs[variant]["unstable"] = True
        old, new = runs["old"]["metrics"], runs["new"]["metrics"]
        runs["differ"] = [f"{key}: old {old[key]!r} vs new {new.get(key)!r}" for key in old
                          if old[key] != new.get(key)]
        out[name] = runs

    head = head_rows(prepared, args.profile_chunks * chunk_rows)
    out["profile"] = {"chunks": count_chunks(len(head), args.eval_batch_size, chunk_rows)}
    for variant in accumulators:
        out["profile"][variant] = profile(lambda v=variant: timed(v, model_metrics, head), on_cuda,
                                          out["profile"]["chunks"])
    evaluate.RankingAccumulator = accumulators["new"]  # type: ignore[misc]
    return out


def chunks_child(args: argparse.Namespace) -> dict[str, Any]:
    """evaluate_model at each max_scores on the same prepared validation set and model."""
    import torch

    import study.training.evaluate as evaluate
    from study.config import eval_chunk_rows

    split, device, model, autocast, prepared = untrained_model_and_validation(args)
    on_cuda = device.type == "cuda"
    sizes = [int(value) for value in args.max_scores.split(",")]

    def timed(max_scores: int) -> tuple[float, int, dict[str, float]]:
        return measured(lambda: evaluate.evaluate_model(
            model, prepared, num_items=split.num_items, max_len=args.max_len, batch_size=args.eval_batch_size,
            device=device, autocast=autocast, max_scores=max_scores), device)

    runs: dict[int, dict[str, Any]] = {}
    for size in sizes:
        _, peak, metrics = timed(size)
        chunk_rows = min(eval_chunk_rows(size, split.num_items), args.eval_batch_size)
        runs[size] = {"max_scores": size, "chunk_rows": chunk_rows, "seconds": [], "peak_bytes": [peak],
                      "chunks": count_chunks(len(prepared), args.eval_batch_size, chunk_rows),
                      "metrics": metrics}
    for _ in range(args.repeats):
        for size in sizes:
            seconds, peak, _ = timed(size)
            runs[size]["seconds"].append(seconds)
            runs[size]["peak_bytes"].append(peak)
    first = runs[sizes[0]]["metrics"]
    for size in sizes:
        metrics = runs[size]["metrics"]
        runs[size]["differ_from_first"] = [key for key in first if metrics.get(key) != first[key]]
    return {"users": len(prepared), "items": split.num_items, "torch": torch.__version__,
            "device_name": torch.cuda.get_device_name(device) if on_cuda else "cpu",
            "runs": list(runs.values())}


def count_chunks(rows: int, batch_size: int, chunk_rows: int) -> int:
    """How many chunks _evaluate cuts `rows` rows into: batches of batch_size, each cut every chunk_rows."""
    full, rest = divmod(rows, batch_size)
    return full * -(-batch_size // chunk_rows) + -(-rest // chunk_rows)


def head_rows(prepared: Any, rows: int) -> Any:
    """The first `rows` rows of a PreparedEvalSet."""
    rows = min(rows, len(prepared))
    seen_end = prepared.seen_offsets[rows]
    return dataclasses.replace(
        prepared, inputs=prepared.inputs[:rows], target_columns=prepared.target_columns[:rows],
        seen_rows=None if prepared.seen_rows is None else prepared.seen_rows[:seen_end],
        seen_columns=None if prepared.seen_columns is None else prepared.seen_columns[:seen_end],
        seen_offsets=prepared.seen_offsets[:rows + 1])


def profile(run: Any, on_cuda: bool, chunks: int) -> dict[str, Any]:
    """torch.profiler over one call of `run`: the top ops as a table, and device (CUDA) and host time per
    chunk in microseconds."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with torch_profile(activities=activities) as prof:
        run()
    averages = prof.key_averages()
    device_field = next((name for name in ("self_device_time_total", "self_cuda_time_total")
                         if hasattr(averages[0], name)), None) if on_cuda and len(averages) else None
    sort_by = device_field or "self_cpu_time_total"
    device_us = sum(getattr(event, device_field) for event in averages) if device_field else 0.0
    host_us = sum(event.self_cpu_time_total for event in averages)
    return {"table": averages.table(sort_by=sort_by, row_limit=25),
            "device_us_per_chunk": device_us / max(chunks, 1), "host_us_per_chunk": host_us / max(chunks, 1)}


def run_child(tree: str, mode: str, dataset: str, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(tree).resolve()),
                                                                    os.environ.get("PYTHONPATH", "")])))
    command = [sys.executable, __file__, "--child", "--mode", mode, "--dataset", dataset,
               "--device", args.device, "--epochs", str(args.epochs), "--repeats", str(args.repeats),
               "--hidden", str(args.hidden), "--batch-size", str(args.batch_size),
               "--max-len", str(args.max_len),
               "--eval-batch-size", str(args.eval_batch_size), "--seed", str(args.seed),
               "--profile-chunks", str(args.profile_chunks), "--max-scores", args.max_scores]
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
    parser.add_argument("--profile-chunks", type=int, default=24,
                        help="ranking mode: chunks of the validation set profiled per accumulator")
    parser.add_argument("--max-scores", default=f"{1 << 24},{1 << 26},{1 << 28}",
                        help="chunks mode: the max_scores values compared (the first is the reference)")
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
        for dataset in dataset_names(args.datasets):
            for name, tree in trees.items():
                started = time.perf_counter()
                result = run_child(tree, mode, dataset, args)
                result.update(tree=name, mode=mode, dataset=dataset,
                              wall_seconds=time.perf_counter() - started)
                results.append(result)
                print(summary(result), flush=True)
    differ = compare_metrics(results) + [
        f"DIFFERENT {r['dataset']} {r['tree']} {name} {line}" for r in results if r["mode"] == "ranking"
        for name in ("model", "popularity") for line in r.get(name, {}).get("differ", [])]
    for line in differ:
        print(line)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        for result in results:
            for variant in ("old", "new"):
                table = result.get("profile", {}).get(variant, {}).pop("table", None)
                if table is not None:
                    name = f"profile-{result['dataset']}-{result['tree']}-{variant}"
                    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)
                    (args.out / f"{name}.txt").write_text(table + "\n")
        (args.out / "eval_split.json").write_text(json.dumps(results, indent=2) + "\n")
    failed = [r for r in results if r.get("status") == "error" or r.get("error")]
    return 1 if differ or failed else 0


def dataset_names(text: str) -> list[str]:
    """--datasets split at commas, but a `synthetic:` spec's own key=value settings stay with it."""
    names: list[str] = []
    for part in text.split(","):
        if names and "=" in part and names[-1].startswith("synthetic:"):
            names[-1] += "," + part
        else:
            names.append(part)
    return names


def summary(result: dict[str, Any]) -> str:
    head = f"{result['mode']:<8}{result['dataset']:<11}{result['tree']:<10}"
    if result.get("status") == "error" or result.get("error"):
        return head + f"error: {result.get('error')}"
    if result["mode"] == "ranking":
        return head + ranking_summary(result)
    if result["mode"] == "chunks":
        return head + f"{result['users']} users x {result['items']} items: " + "; ".join(
            f"max_scores {r['max_scores']} ({r['chunks']} chunks of <= {r['chunk_rows']} rows) "
            f"{min(r['seconds']):.3f} s, peak +{max(r['peak_bytes']) / 2**20:.0f} MiB"
            f"{', metrics differ in ' + ','.join(r['differ_from_first']) if r['differ_from_first'] else ''}"
            for r in result["runs"])
    if result["mode"] == "epoch":
        cells = [f"epoch {e['epoch']}: train {e['train_seconds']:.3f} s, eval {e['eval_seconds']:.3f} s "
                 f"({e['eval_seconds'] / (e['train_seconds'] + e['eval_seconds']):.0%})"
                 for e in result["epochs"]]
        return head + "; ".join(cells)
    seconds = ", ".join(f"{s:.3f}" for s in result["eval_seconds"])
    return (head + f"eval {seconds} s, popularity {result['popularity_seconds']:.3f} s, "
            f"ndcg@10 {result['metrics']['ndcg@10']:.6f}, {result['users']} users x {result['items']} items")


def ranking_summary(result: dict[str, Any]) -> str:
    lines = [f"{result['users']} users x {result['items']} items, {result['chunks']} chunks of "
             f"<= {result['chunk_rows']} rows ({result['device_name']}, torch {result['torch']})"]
    for name in ("model", "popularity"):
        runs = result[name]
        cells = []
        for variant in ("old", "new"):
            seconds = runs[variant]["seconds"]
            best = min(seconds) if seconds else runs[variant]["warm_up_seconds"]
            cells.append(f"{variant} {best:.3f} s (of {', '.join(f'{s:.3f}' for s in seconds)}; "
                         f"peak +{max(runs[variant]['peak_bytes']) / 2**20:.0f} MiB)")
        old, new = (min(runs[v]["seconds"] or [runs[v]["warm_up_seconds"]]) for v in ("old", "new"))
        verdict = "metrics identical" if not runs["differ"] else f"{len(runs['differ'])} metrics DIFFER"
        lines.append(f"  {name}: {'; '.join(cells)}; {old / new:.2f}x; {verdict}")
    prof = result["profile"]
    lines.append(f"  profile of {prof['chunks']} chunks, per chunk: " + "; ".join(
        f"{v} device {prof[v]['device_us_per_chunk']:.0f} us, host {prof[v]['host_us_per_chunk']:.0f} us"
        for v in ("old", "new")))
    return "\n".join(lines)


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
