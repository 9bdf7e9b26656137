"""The dense loss at d=512 on one GPU, per source tree: the first call (compilation, and any launch the GPU
refuses for shared memory and retries with smaller tiles) and the steady-state time.

Each (tree, case) runs in a fresh process with an empty Triton cache, so the first call compiles every
kernel it launches, as a user's first step does. A tree is a folder holding a `kernels/` package
(`git archive SHA kernels | tar -x -C DIR`). Cases: the full catalogue (C=32,768) and shared negatives
(K=4,096 of C=100,000), N=8,192 rows, float32 and bfloat16, forward and backward of both inputs through the
public `kernels.linear_cross_entropy`. A case still compiling after --timeout seconds is recorded as such.

    python3 benchmarks/dense_wide.py --trees before=.cache/tiles-before,after=. --out DIR [--timeout 150]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kernel_trees import parse_trees, tree_environment

CASES = [("full", "float32"), ("shared", "float32"), ("full", "bfloat16"), ("shared", "bfloat16")]
DIM, ROWS, FULL_CATALOGUE, SHARED_CATALOGUE, NEGATIVES = 512, 8192, 32_768, 100_000, 4096


def worker(scheme: str, dtype_name: str) -> None:
    import warnings

    import torch
    import triton.testing

    import kernels

    dtype = getattr(torch, dtype_name)
    generator = torch.Generator(device="cuda").manual_seed(0)
    num_items = FULL_CATALOGUE if scheme == "full" else SHARED_CATALOGUE
    hidden = (torch.randn(ROWS, DIM, device="cuda", generator=generator) / DIM**0.5).to(dtype)
    items = (torch.randn(num_items, DIM, device="cuda", generator=generator) / DIM**0.5).to(dtype)
    targets = torch.randint(0, num_items, (ROWS,), device="cuda", generator=generator)
    negatives = (None if scheme == "full" else
                 torch.randint(0, num_items, (NEGATIVES,), device="cuda", generator=generator))
    hidden.requires_grad_(True)
    items.requires_grad_(True)

    def step() -> None:
        kernels.linear_cross_entropy(hidden, items, targets, negatives, impl="triton").backward()

    torch.cuda.synchronize()
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        step()
        torch.cuda.synchronize()
    first_call_s = time.perf_counter() - start
    ms = triton.testing.do_bench(step, warmup=25, rep=200, grad_to_none=[hidden, items], return_mode="median")
    retried = [str(w.message) for w in caught if "need more shared memory" in str(w.message)]
    print(json.dumps({"first_call_s": round(first_call_s, 2), "ms": round(ms, 3), "retried": retried,
                      "kernels": str(Path(kernels.__file__).parent)}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", help="NAME=FOLDER,... (each FOLDER holds kernels/)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--timeout", type=float, default=150.0, help="seconds per (tree, case)")
    parser.add_argument("--worker", nargs=2, metavar=("SCHEME", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return 0
    if not args.trees or not args.out:
        parser.error("--trees and --out are required")
    trees = parse_trees(parser, args.trees)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for scheme, dtype in CASES:
        for name, folder in trees.items():
            row: dict = {"tree": name, "scheme": scheme, "dtype": dtype, "dim": DIM, "rows": ROWS}
            with tempfile.TemporaryDirectory() as cache:
                env = tree_environment(folder, TRITON_CACHE_DIR=cache)
                start = time.perf_counter()
                try:
                    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", scheme,
                                           dtype], env=env, capture_output=True, text=True, cwd="/",
                                          timeout=args.timeout)
                except subprocess.TimeoutExpired:
                    row["timed_out_s"] = args.timeout
                else:
                    if done.returncode == 0:
                        row.update(json.loads(done.stdout.strip().splitlines()[-1]))
                    else:
                        row["error"] = (done.stderr.strip().splitlines() or [""])[-1][:300]
                row["process_s"] = round(time.perf_counter() - start, 1)
            rows.append(row)
            outcome = (f"first call {row['first_call_s']:7.1f} s, then {row['ms']:9.3f} ms, "
                       f"{len(row['retried'])} retried" if "ms" in row else
                       f"still compiling after {args.timeout:.0f} s" if "timed_out_s" in row else
                       f"failed: {row.get('error', '')}")
            print(f"{name:8s} {scheme:6s} d={DIM} {dtype:8s}  {outcome}", flush=True)
            (args.out / "dense_wide.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
