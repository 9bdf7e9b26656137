"""Dev benchmark: sorting the rows of per-position negatives in Triton vs torch.sort, on one GPU.

1. `sorted_rows` alone on random [N, K] int64 indices: method "triton" (one program per row, in
   registers) against "torch" (torch.sort in chunks), results compared for equality.
2. fwd+bwd of the per-position loss with each sort (the rest of the kernel unchanged).

Run on the GPU host: PYTHONPATH=. python3 benchmarks/dev_sort.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import triton
from triton.testing import do_bench

import kernels.triton_gather as triton_gather
from kernels.triton_gather import gather_linear_cross_entropy, sorted_rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    results: dict = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                         triton=triton.__version__, sort=[], loss=[])
    generator = torch.Generator(device="cuda").manual_seed(0)
    for rows, k in ((51_200, 2047), (65_536, 511), (25_600, 4096)):
        negatives = torch.randint(0, 1_000_000, (rows, k), device="cuda", generator=generator)
        same = torch.equal(sorted_rows(negatives, method="triton"), sorted_rows(negatives, method="torch"))
        row = dict(rows=rows, k=k, identical=same)
        for method in ("triton", "torch"):
            row[f"{method}_ms"] = do_bench(lambda m=method, x=negatives: sorted_rows(x, method=m), warmup=50,
                                           rep=300, return_mode="median")
        results["sort"].append(row)
        print(f"sort N={rows} K={k}: triton {row['triton_ms']:.3f} ms, torch {row['torch_ms']:.3f} ms, "
              f"identical {same}", flush=True)
        del negatives
    n, k, d, c = 51_200, 2047, 64, 1_000_000
    hidden = (torch.randn(n, d, device="cuda", generator=generator) * 0.3).to(torch.bfloat16).requires_grad_()
    items = (torch.randn(c, d, device="cuda", generator=generator) * 0.3).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, c, (n,), device="cuda", generator=generator)
    negatives = torch.randint(0, c, (n, k), device="cuda", generator=generator)

    def step() -> None:
        gather_linear_cross_entropy(hidden, items, targets, negatives, scheme="position", num_negatives=k,
                                    seed=None, log_q=None, remove_accidental_hits=True, ignore_index=-100,
                                    reduction="mean").backward()
    default_limit = triton_gather.SORT_IN_TRITON_MAX_NEGATIVES
    variants = (("triton sort", default_limit), ("torch.sort", 0), ("triton sort again", default_limit))
    for label, limit in variants:
        triton_gather.SORT_IN_TRITON_MAX_NEGATIVES = limit
        step()
        ms = do_bench(step, warmup=100, rep=500, grad_to_none=[hidden, items], return_mode="median")
        results["loss"].append(dict(variant=label, n=n, k=k, d=d, c=c, ms=ms))
        print(f"position fwd+bwd K={k} d={d}, {label}: {ms:.2f} ms", flush=True)
    triton_gather.SORT_IN_TRITON_MAX_NEGATIVES = default_limit
    with open(os.path.join(args.out, "dev_sort.json"), "w") as handle:
        json.dump(results, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
