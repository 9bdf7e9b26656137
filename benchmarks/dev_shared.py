"""Dev benchmark of the dense-negative CCE kernels (full, shared [K], per sequence [B, K]) on one GPU.

1. Correctness at a moderate size against a float64 torch reference (loss, dH, dE) for every scheme,
   bf16 / fp32 / bf16-hidden-with-fp32-items, d = 64 and 256.
2. Block-configuration sweep of each kernel alone (forward, grad_hidden, grad_items) at N = 51,200,
   C = 10^6, bf16, shared K = 16384 (d = 64 and 256).
3. fwd+bwd of the loss alone at the target sizes against PyTorch eager CE- (one matmul + logsumexp)
   and torch.compile of it, in the same process, with peak extra memory; the full catalogue at C = 10^6.

Run on the GPU host: PYTHONPATH=. python3 benchmarks/dev_shared.py [--sections check,sweep,targets]
[--out DIR]. Prints compact tables; writes every number to DIR/dev_shared.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time

import torch
import triton
from triton.testing import do_bench

import kernels.triton_shared as ts
from kernels.triton_shared import BlockConfig, KernelConfigs, default_configs, shared_linear_cross_entropy

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))
from loss_oracle import oracle_with_grads, relative_error  # noqa: E402  (the tests' float64 oracle)

IGNORE = -100
RESULTS: dict = {}


def save(out_dir: str) -> None:
    with open(os.path.join(out_dir, "dev_shared.json"), "w") as handle:
        json.dump(RESULTS, handle, indent=1)


def make_inputs(scheme, *, num_rows, num_items, k, dim, length, dtype, items_dtype, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    hidden = (torch.randn(num_rows, dim, device="cuda", generator=gen) * 0.5).to(dtype)
    items = (torch.randn(num_items, dim, device="cuda", generator=gen) * 0.5).to(items_dtype)
    targets = torch.randint(0, num_items, (num_rows,), device="cuda", generator=gen)
    negatives = None
    if scheme == "shared":
        negatives = torch.randint(0, num_items, (k,), device="cuda", generator=gen)
        picks = torch.randint(0, k, (len(targets[::5]),), device="cuda", generator=gen)
        targets[::5] = negatives[picks]
    elif scheme == "sequence":
        negatives = torch.randint(0, num_items, (num_rows // length, k), device="cuda", generator=gen)
        targets[::5] = negatives.repeat_interleave(length, 0)[::5, 3]
    targets[1::11] = IGNORE
    return hidden, items, targets, negatives


def run_fused(hidden, items, targets, negatives, scheme, length, configs=None):
    k = items.shape[0] if scheme == "full" else negatives.shape[-1]
    return shared_linear_cross_entropy(hidden, items, targets, negatives, scheme=scheme, num_negatives=k,
                                       rows_per_sequence=length, log_q=None, remove_accidental_hits=True,
                                       ignore_index=IGNORE, reduction="mean", config=configs)


def check_case(scheme, dim, dtype, items_dtype, *, num_rows, num_items, k, label, configs=None) -> dict:
    """One case of the fused loss against float64 (sequences of 100 rows): relative L2 errors, printed."""
    length = 100
    hidden, items, targets, negatives = make_inputs(
        scheme, num_rows=num_rows, num_items=num_items, k=k, dim=dim, length=length, dtype=dtype,
        items_dtype=items_dtype, seed=dim)
    h = hidden.clone().requires_grad_(True)
    e = items.clone().requires_grad_(True)
    loss = run_fused(h, e, targets, negatives, scheme, length, configs)
    loss.backward()
    # float64 from the inputs as the kernel sees them (items in hidden's dtype)
    reference = oracle_with_grads(hidden, items, targets, negatives, ignore_index=IGNORE, items_as=dtype)
    errors = tuple(relative_error(got, want) for got, want in zip((loss, h.grad, e.grad), reference))
    finite = bool(torch.isfinite(h.grad).all() and torch.isfinite(e.grad).all())
    name = f"{label} d={dim} {str(dtype)[6:]}/{str(items_dtype)[6:]}"
    limit = 1e-4 if dtype == torch.float32 else 2e-2
    status = "ok" if finite and max(errors) < limit else "FAIL"
    print(f"{name:42s} loss {errors[0]:.1e} dH {errors[1]:.1e} dE {errors[2]:.1e} {status}", flush=True)
    return dict(case=name, loss=errors[0], grad_hidden=errors[1], grad_items=errors[2], finite=finite)


def check(out_dir: str) -> None:
    print("== correctness vs float64 (relative L2 error) ==")
    rows = []
    cases = []
    for dim in (64, 256):
        for scheme in ("full", "shared", "sequence"):
            for dtype, items_dtype in ((torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32),
                                       (torch.bfloat16, torch.float32)):
                if dim == 256 and dtype == torch.float32:
                    continue
                cases.append((dim, scheme, dtype, items_dtype))
    for dim, scheme, dtype, items_dtype in cases:
        rows.append(check_case(scheme, dim, dtype, items_dtype, num_rows=4000, num_items=30_011, k=1_999,
                               label=scheme))
    RESULTS["check"] = rows
    save(out_dir)


def eager_ce(hidden, items, targets, negatives, scheme, length):
    """PyTorch CE- materialising the logits in hidden's dtype: one matmul + cross_entropy (the baseline)."""
    kept = targets != IGNORE
    safe = torch.where(kept, targets, 0)
    positive = (hidden * items[safe]).sum(-1, keepdim=True)
    if scheme == "shared":
        scores = hidden @ items[negatives].T
        hits = negatives[None, :] == safe[:, None]
    else:
        num_seq = negatives.shape[0]
        scores = torch.bmm(hidden.view(num_seq, length, -1), items[negatives].transpose(1, 2))
        scores = scores.view(hidden.shape[0], -1)
        hits = negatives.repeat_interleave(length, 0) == safe[:, None]
    logits = torch.cat([positive, scores.masked_fill(hits, float("-inf"))], 1)
    return torch.nn.functional.cross_entropy(logits, torch.where(kept, 0, IGNORE), ignore_index=IGNORE)


def time_step(step, params, rep=200):
    def run():
        step().backward()
    for p in params:
        p.grad = None
    torch.cuda.synchronize()
    run()
    torch.cuda.synchronize()
    for p in params:
        p.grad = None
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    ms = do_bench(run, warmup=25, rep=rep, grad_to_none=params, return_mode="median")
    return ms, peak


def sweep_dim(dim: int) -> list[dict]:
    hidden, items, targets, negatives = make_inputs("shared", num_rows=51_200, num_items=1_000_000,
                                                    k=16_384, dim=dim, length=200, dtype=torch.bfloat16,
                                                    items_dtype=torch.bfloat16)
    base = default_configs(hidden.device, dim)
    if dim <= 128:
        candidates = [(64, 128, 4, 3), (128, 64, 4, 3), (128, 128, 4, 3), (64, 128, 4, 4), (64, 256, 4, 3),
                      (64, 128, 8, 3), (128, 128, 4, 4), (128, 64, 4, 4), (128, 256, 8, 3), (64, 64, 4, 3)]
    else:
        candidates = [(64, 64, 4, 3), (128, 64, 8, 2), (128, 64, 8, 3), (64, 128, 4, 3), (64, 64, 8, 3),
                      (64, 32, 4, 4), (32, 64, 4, 3), (64, 32, 4, 3), (128, 128, 8, 2)]
    k = negatives.shape[0]
    results = []
    for block_m, block_n, warps, stages in candidates:
        cfg = BlockConfig(block_m, block_n, warps, stages)
        configs = KernelConfigs(forward=cfg, grad_hidden=cfg, grad_items=cfg,
                                target_programs=base.target_programs)
        plan = ts._Plan(scheme="shared", num_items=items.shape[0], num_groups=1,
                        rows_per_group=hidden.shape[0], num_negatives=k, log_q_mode=0, log_q_scalar=0.0,
                        remove_hits=True, ignore_index=IGNORE, reduction="mean", config=configs)
        prepared = ts._prepare_negatives(negatives, None, plan)
        lse, positive, _, kept, safe_targets = ts._forward(hidden, items, targets, prepared, plan)
        row_grad = kept / hidden.shape[0]
        coef = row_grad * (torch.exp(positive - lse) - 1)
        backward_args = (hidden, items, safe_targets, prepared, lse, row_grad, coef)
        kernels = {
            "forward": functools.partial(ts._forward, hidden, items, targets, prepared, plan),
            "grad_hidden": functools.partial(ts._grad_hidden, *backward_args, plan),
            "grad_items": functools.partial(ts._grad_items, *backward_args, plan),
        }
        times = {}
        for name, fn in kernels.items():
            try:
                times[name] = do_bench(fn, warmup=10, rep=60, return_mode="median")
            except Exception as error:  # out of shared memory or registers for this tile shape
                times[name] = float("nan")
                print(f"   {name} {cfg}: {type(error).__name__}", flush=True)
        results.append(dict(dim=dim, block_m=block_m, block_n=block_n, warps=warps, stages=stages, **times))
        print(f"d={dim:3d} BM={block_m:3d} BN={block_n:3d} w={warps} s={stages}: fwd {times['forward']:.3f} "
              f"dH {times['grad_hidden']:.3f} dE {times['grad_items']:.3f}", flush=True)
    return results


def sweep(out_dir: str) -> None:
    print("== per-kernel block sweep: bf16 N=51200 C=1e6 shared K=16384 (ms, median) ==")
    results = []
    for dim in (64, 256):
        results += sweep_dim(dim)
        torch.cuda.empty_cache()
        RESULTS["sweep"] = results
        save(out_dir)


def target_case(scheme: str, dim: int, k: int, compiled) -> dict:
    gib = 2**30
    hidden, items, targets, negatives = make_inputs(scheme, num_rows=51_200, num_items=1_000_000, k=k,
                                                    dim=dim, length=200, dtype=torch.bfloat16,
                                                    items_dtype=torch.bfloat16)
    h = hidden.requires_grad_(True)
    e = items.requires_grad_(True)
    args = (h, e, targets, negatives, scheme, 200)
    fused_ms, fused_peak = time_step(functools.partial(run_fused, *args), [h, e])
    eager_ms, eager_peak = time_step(functools.partial(eager_ce, *args), [h, e])
    row = dict(scheme=scheme, dim=dim, k=k, fused_ms=fused_ms, fused_peak=fused_peak, eager_ms=eager_ms,
               eager_peak=eager_peak)
    text = (f"{scheme:8s} d={dim:3d} K={k:5d}: fused {fused_ms:7.3f} ms {fused_peak / gib:5.2f} GiB | "
            f"eager {eager_ms:7.3f} ms {eager_peak / gib:5.2f} GiB | x{eager_ms / fused_ms:4.1f}")
    if compiled is not None and dim == 64 and k == 16384 and scheme == "shared":
        try:
            compile_ms, compile_peak = time_step(functools.partial(compiled, *args), [h, e])
            row.update(compile_ms=compile_ms, compile_peak=compile_peak)
            text += f" | compile {compile_ms:7.3f} ms {compile_peak / gib:5.2f} GiB"
        except Exception as error:
            text += f" | compile failed {type(error).__name__}"
    row["tflops_8nkd"] = 8 * 51_200 * k * dim / fused_ms / 1e9  # 2NKd forward + 6NKd backward
    text += f" | {row['tflops_8nkd']:.0f} TF/s(8NKd)"
    print(text, flush=True)
    return row


def full_case(dim: int) -> dict:
    hidden, items, targets, _ = make_inputs("full", num_rows=51_200, num_items=1_000_000, k=0, dim=dim,
                                            length=200, dtype=torch.bfloat16, items_dtype=torch.bfloat16)
    h = hidden.requires_grad_(True)
    e = items.requires_grad_(True)
    ms, peak = time_step(functools.partial(run_fused, h, e, targets, None, "full", 200), [h, e], rep=1)
    print(f"full     d={dim:3d} C=1e6: fused {ms:8.2f} ms {peak / 2**30:5.2f} GiB "
          f"| {8 * 51_200 * 1e6 * dim / ms / 1e9:.0f} TF/s(8NCd)", flush=True)
    return dict(scheme="full", dim=dim, k=1_000_000, fused_ms=ms, fused_peak=peak)


def targets_section(out_dir: str, with_compile: bool) -> None:
    print("== fwd+bwd of the loss, bf16, N=51200, C=1e6 (ms median; peak extra GiB) ==")
    compiled = torch.compile(eager_ce, dynamic=False) if with_compile else None
    results = []
    for scheme in ("shared", "sequence"):
        for dim in (64, 256):
            for k in (4096, 16384):
                results.append(target_case(scheme, dim, k, compiled))
                torch.cuda.empty_cache()
                RESULTS["targets"] = results
                save(out_dir)
    for dim in (64, 256):
        results.append(full_case(dim))
        torch.cuda.empty_cache()
        RESULTS["targets"] = results
        save(out_dir)


def profile(out_dir: str) -> None:
    """Where the time of one fwd+bwd goes (shared, K=4096, d=64): CUDA time per kernel name."""
    print("== profile: shared K=4096 d=64 bf16, 5 steps ==")
    hidden, items, targets, negatives = make_inputs("shared", num_rows=51_200, num_items=1_000_000, k=4096,
                                                    dim=64, length=200, dtype=torch.bfloat16,
                                                    items_dtype=torch.bfloat16)
    h = hidden.requires_grad_(True)
    e = items.requires_grad_(True)
    for _ in range(3):
        run_fused(h, e, targets, negatives, "shared", 200).backward()
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(5):
            h.grad = e.grad = None
            run_fused(h, e, targets, negatives, "shared", 200).backward()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=40)
    print(table)
    with open(os.path.join(out_dir, "profile.txt"), "w") as handle:
        handle.write(table)


FUSED_SIZES = dict(num_rows=51_200, num_items=1_000_000, ks=(4096, 16384), check=(4000, 30_011, 1_999))
FUSED_CANDIDATES = {
    64: [(64, 64, 4, 3), (128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (256, 64, 8, 3),
         (64, 128, 4, 3)],
    256: [(64, 64, 4, 3), (64, 32, 4, 3), (128, 64, 8, 2), (64, 64, 8, 3), (128, 32, 8, 3)],
}


def fused_section(out_dir: str) -> None:
    """Shared scheme: the split backward (grad_hidden + grad_items) against the fused one, fwd+bwd."""
    print("== shared: split vs fused backward, bf16 N=51200 C=1e6 (ms median; fwd+bwd) ==")
    results = []
    for dim in (64, 256):
        base = default_configs(torch.device("cuda"), dim)
        for k in FUSED_SIZES["ks"]:
            hidden, items, targets, negatives = make_inputs(
                "shared", num_rows=FUSED_SIZES["num_rows"], num_items=FUSED_SIZES["num_items"], k=k, dim=dim,
                length=200,
                dtype=torch.bfloat16, items_dtype=torch.bfloat16)
            h = hidden.requires_grad_(True)
            e = items.requires_grad_(True)
            variants = [("split", dataclasses.replace(base, fused_backward=None))]
            # fused_max_negatives: time the fused kernel at every K, not only where the default uses it.
            variants += [(f"fused {bm}x{bn} w{w} s{st}", dataclasses.replace(
                base, fused_backward=BlockConfig(bm, bn, w, st), fused_max_negatives=k))
                for bm, bn, w, st in FUSED_CANDIDATES[dim]]
            for name, configs in variants:
                try:
                    ms, peak = time_step(functools.partial(run_fused, h, e, targets, negatives, "shared", 200,
                                                           configs), [h, e])
                except Exception as error:  # out of shared memory or registers for this tile shape
                    print(f"d={dim} K={k} {name}: {type(error).__name__}: {str(error)[:120]}", flush=True)
                    continue
                results.append(dict(dim=dim, k=k, variant=name, ms=ms, peak=peak))
                print(f"d={dim:3d} K={k:5d} {name:24s} {ms:7.3f} ms {peak / 2**30:5.2f} GiB", flush=True)
            del h, e, hidden, items
            torch.cuda.empty_cache()
            RESULTS["fused"] = results
            save(out_dir)


def check_fused(out_dir: str) -> None:
    """The fused backward against float64 at a moderate size (shared only)."""
    print("== fused backward vs float64 (relative L2 error) ==")
    rows = []
    for dim in (64, 256):
        for dtype, items_dtype in ((torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32),
                                   (torch.float32, torch.float32)):
            bm, bn, w, st = FUSED_CANDIDATES[dim][0]
            configs = dataclasses.replace(default_configs(torch.device("cuda"), dim),
                                          fused_backward=BlockConfig(bm, bn, w, st))
            num_rows, num_items, k = FUSED_SIZES["check"]
            rows.append(check_case("shared", dim, dtype, items_dtype, num_rows=num_rows, num_items=num_items,
                                   k=k, label="fused", configs=configs))
    RESULTS["check_fused"] = rows
    save(out_dir)


def matmul_rate() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    matmul_ms = do_bench(functools.partial(torch.matmul, a, a), warmup=25, rep=100, return_mode="median")
    return 2 * 8192**3 / matmul_ms / 1e9


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sections", default="check,sweep,targets")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    sections = args.sections.split(",")
    props = torch.cuda.get_device_properties(0)
    RESULTS["device"] = dict(name=props.name, sms=props.multi_processor_count, torch=torch.__version__,
                             triton=triton.__version__, python=sys.version.split()[0])
    print(RESULTS["device"], flush=True)
    RESULTS["device"]["bf16_matmul_tflops"] = matmul_rate()
    print(f"bf16 8192^3 matmul: {RESULTS['device']['bf16_matmul_tflops']:.0f} TFLOP/s", flush=True)
    start = time.time()
    steps = {"check": functools.partial(check, args.out), "sweep": functools.partial(sweep, args.out),
             "targets": functools.partial(targets_section, args.out, not args.no_compile),
             "profile": functools.partial(profile, args.out),
             "check_fused": functools.partial(check_fused, args.out),
             "fused": functools.partial(fused_section, args.out)}
    for section in sections:
        steps[section]()
    print(f"total {time.time() - start:.0f} s")
    save(args.out)


if __name__ == "__main__":
    main()
