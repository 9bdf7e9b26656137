"""The dense-negative loss (shared negatives, d=64 and 256) of several source trees side by side on one GPU.

Each tree (a folder holding a `kernels/` package: `git archive SHA kernels | tar -x -C DIR`) is timed in
its own process through the same public call, `kernels.linear_cross_entropy`, forward and backward of both
inputs, median of triton.testing.do_bench (gradients set to None between repetitions). The trees run in
turn, twice (A B A B), so a drift of the card shows up as a difference between a tree's two runs.

    python3 benchmarks/shared_ab.py --trees before=.cache/ab/092a77b,after=. --out DIR
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from kernel_trees import parse_trees, tree_environment

CASES = [(4096, 64), (16384, 64), (4096, 256), (16384, 256)]


def worker(rows: int, num_items: int) -> None:
    import torch
    import triton.testing

    import kernels

    results = []
    for num_negatives, dim in CASES:
        generator = torch.Generator(device="cuda").manual_seed(0)
        hidden = (torch.randn(rows, dim, device="cuda", generator=generator) / dim**0.5).bfloat16()
        items = (torch.randn(num_items, dim, device="cuda", generator=generator) / dim**0.5).bfloat16()
        targets = torch.randint(0, num_items, (rows,), device="cuda", generator=generator)
        negatives = torch.randint(0, num_items, (num_negatives,), device="cuda", generator=generator)
        hidden.requires_grad_(True)
        items.requires_grad_(True)

        def step(hidden=hidden, items=items, targets=targets, negatives=negatives) -> None:
            kernels.linear_cross_entropy(hidden, items, targets, negatives).backward()

        step()
        torch.cuda.synchronize()
        ms = triton.testing.do_bench(step, warmup=100, rep=500, grad_to_none=[hidden, items],
                                     return_mode="median")
        results.append({"num_negatives": num_negatives, "dim": dim, "ms": ms})
    print(json.dumps(results))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", help="NAME=FOLDER,... (each FOLDER holds kernels/)")
    parser.add_argument("--rows", type=int, default=51_200)
    parser.add_argument("--catalogue", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.rows, args.catalogue)
        return 0
    if not args.trees or not args.out:
        parser.error("--trees and --out are required")
    trees = parse_trees(parser, args.trees)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for attempt in (1, 2):
        for name, folder in trees.items():
            done = subprocess.run([sys.executable, __file__, "--worker", "--rows", str(args.rows),
                                   "--catalogue", str(args.catalogue)],
                                  env=tree_environment(folder), capture_output=True, text=True, cwd="/",
                                  timeout=300)
            if done.returncode != 0:
                print(f"{name}: exit {done.returncode}\n{done.stderr[-2000:]}", flush=True)
                continue
            for result in json.loads(done.stdout.strip().splitlines()[-1]):
                row = {"tree": name, "attempt": attempt, **result}
                rows.append(row)
                print(f"{name:10s} run {attempt}  shared K={row['num_negatives']:5d} d={row['dim']:3d}  "
                      f"{row['ms']:7.3f} ms", flush=True)
    (args.out / "shared_ab.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
