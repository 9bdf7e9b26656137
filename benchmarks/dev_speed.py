"""Issue 13's kernel variants on one GPU: which beats the defaults at d = 256 (and per position at d = 64).

1. gather: fwd+bwd of the per-position loss, C = 10^6, bf16, K=511 d=256 N=65,536 and K=2047 d=64
   N=51,200, tensor and drawn negatives: the default against the sliced backward (GatherConfig.item_slices
   in {8, 16, 32}) x backward tiles; peak extra memory beside each. The published CCE- kernel took
   38.8 ms / 0.76 GiB at d=256 and 32.6 ms at d=64 (docs/design.md#numbers-to-beat).
2. dense: each dense kernel alone (forward, grad_hidden, grad_items) over tile shapes at d=256, bf16,
   N=51,200: the full catalogue (C = 10^6) and shared K=16384; then fwd+bwd of the per-kernel winners
   combined against the default configs (full, shared K=4096 and 16384).
3. dblock (issue 13's d-blocked kernels: the forward, BlockConfig.block_d, and the one-pass backward of
   shared negatives, SharedConfig.dblock_backward): float64 checks of each d-blocked forward tile (shared
   negatives, log q tensor, accidental hits; d=256, 64, 200 in bf16, d=256 in float32) and of each
   d-blocked backward tile (d=256, 64, 200 in bf16), then at N=51,200, C=10^6, bf16, shared K=4096 and
   16384, d=256 then d=64: the forward alone (default against each tile, with its TFLOP/s), the backward
   alone (the default's against each d-blocked backward tile, and the first with 2 and 4 programs a row
   block, SharedConfig.dblock_splits, after the same forward), and fwd+bwd of the
   default, the fastest d-blocked forward with the default backward, the fastest d-blocked forward with
   each d-blocked backward, launch_config(d_blocked=True) as a user opts in, and torch.compile (x compile
   beside each). Under 6 minutes alone on an H200:

       PYTHONPATH=. python3 benchmarks/dev_speed.py --sections dblock --budget-seconds 330 --out OUT

A winner must also pass a float64 check at a moderate size (loss, dH, dE relative L2; per position
tensor and drawn negatives, bf16 and float32, with log q and accidental hits): the fastest variant that
passes (and at d=256 per position stays within the published kernel's 0.76 GiB) wins. Prints the
winners last; every number goes to OUT/dev_speed.json. About 3-4 minutes on an H200:

    PYTHONPATH=. python3 benchmarks/dev_speed.py --out OUT [--sections gather,dense]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
import triton
from triton.testing import do_bench

import kernels.triton_shared as ts
from kernels.draw import draw_negatives
from kernels.triton_gather import GatherConfig, default_config, gather_linear_cross_entropy
from kernels.triton_shared import BlockConfig, KernelConfigs, default_configs, shared_linear_cross_entropy

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))
from loss_oracle import oracle_loss  # noqa: E402  (the tests' float64 oracle)
from loss_oracle import relative_error as rel  # noqa: E402

IGNORE = -100
GIB = 2**30
C = 1_000_000
DEVICE = "cuda"
# (name, N, K, d) of the per-position timings; CHECK_SIZE (N, K, C) of the float64 checks.
GATHER_CASES = (("K511d256", 65_536, 511, 256), ("K2047d64", 51_200, 2047, 64))
CHECK_SIZE = (3001, 257, 40_000)
DENSE_SIZE = (51_200, 16_384, 4096)  # N, the K of the per-kernel sweep, the other K timed
# ms, GiB on an H200 (docs/design.md#numbers-to-beat)
PUBLISHED = {"K511d256": (38.8, 0.76), "K2047d64": (32.6, 0.91)}
RESULTS: dict = {"check": [], "gather": [], "dense_kernels": [], "dense": [], "winners": []}
STARTED = time.monotonic()


def save(out: str) -> None:
    with open(os.path.join(out, "dev_speed.json"), "w") as handle:
        json.dump(RESULTS, handle, indent=1)


def peak_extra(fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def backward_of(loss_function, *args) -> None:
    loss_function(*args).backward()


def timed(fn, grads, rep=150) -> tuple[float, int]:
    for g in grads:
        g.grad = None
    fn()
    for g in grads:
        g.grad = None
    memory = peak_extra(fn)
    ms = do_bench(fn, warmup=25, rep=rep, grad_to_none=grads, return_mode="median")
    for g in grads:
        g.grad = None
    return float(ms), memory


# --- per position --------------------------------------------------------------------------------

def gather_variants(dim: int, k: int) -> list[tuple[str, GatherConfig]]:
    base = default_config(torch.device(DEVICE), dim, k)
    variants = [("default", base)]
    if dim > 128:
        blocks, slice_counts = [(16, 1, 2), (16, 2, 4), (32, 1, 4)], (8, 16, 32)
    else:
        blocks, slice_counts = [(128, 1, 4), (64, 1, 4)], (16, 32)
    for slices in slice_counts:
        for block_k, rows, warps in blocks:
            variants.append((f"slices={slices} bk={block_k} rows={rows} w={warps}", dataclasses.replace(
                base, item_slices=slices, backward_block_k=block_k, backward_rows=rows, backward_warps=warps)))
    return variants


def gather_loss(hidden, items, targets, negatives, scheme, k, config, log_q=None):
    return gather_linear_cross_entropy(hidden, items, targets, negatives if scheme == "position" else None,
                                       scheme=scheme, num_negatives=k, seed=99, log_q=log_q,
                                       remove_accidental_hits=True, ignore_index=IGNORE, reduction="mean",
                                       config=config)


def check_gather(dim: int, scheme: str, hidden_dtype, items_dtype, label: str, config: GatherConfig) -> bool:
    n, k, c = CHECK_SIZE
    gen = torch.Generator(device=DEVICE).manual_seed(dim)
    hidden = (torch.randn(n, dim, device=DEVICE, generator=gen) * 0.5).to(hidden_dtype)
    items = (torch.randn(c, dim, device=DEVICE, generator=gen) * 0.5).to(items_dtype)
    targets = torch.randint(0, c, (n,), device=DEVICE, generator=gen)
    targets[::9] = IGNORE
    if scheme == "drawn":  # the kernel's own draws (seed 99, as gather_loss passes)
        negatives = draw_negatives(99, n, k, c, device=DEVICE)
    else:
        negatives = torch.randint(0, c, (n, k), device=DEVICE, generator=gen)
        negatives[::7, 3] = targets[::7].clamp(min=0)  # accidental hits
    log_q = torch.log_softmax(torch.randn(c, device=DEVICE, generator=gen), 0)
    h, e = hidden.clone().requires_grad_(), items.clone().requires_grad_()
    loss = gather_loss(h, e, targets, negatives, scheme, k, config, log_q)
    loss.backward()
    h64, e64 = hidden.double().requires_grad_(), items.double().requires_grad_()
    expected = oracle_loss(h64, e64, targets, negatives, log_q=log_q, ignore_index=IGNORE,
                           items_as=hidden_dtype, drawn=scheme == "drawn")
    expected.backward()
    errors = (rel(loss.detach(), expected.detach()), rel(h.grad, h64.grad), rel(e.grad, e64.grad))
    limit = 1e-4 if hidden_dtype == torch.float32 and items_dtype == torch.float32 else 2e-2
    ok = max(errors) < limit and bool(torch.isfinite(h.grad).all() and torch.isfinite(e.grad).all())
    RESULTS["check"].append(dict(kind="gather", case=label, loss=errors[0], grad_hidden=errors[1],
                                 grad_items=errors[2], ok=ok))
    print(f"check {label:60s} loss {errors[0]:.1e} dH {errors[1]:.1e} dE {errors[2]:.1e} "
          f"{'ok' if ok else 'FAIL'}", flush=True)
    return ok


def gather_section(out: str, deadline: float) -> None:
    for name, n, k, d in GATHER_CASES:
        torch.manual_seed(1)
        hidden = (torch.randn(n, d, device=DEVICE) * 0.3).to(torch.bfloat16).requires_grad_()
        items = (torch.randn(C, d, device=DEVICE) * 0.3).to(torch.bfloat16).requires_grad_()
        targets = torch.randint(0, C, (n,), device=DEVICE)
        negatives = torch.randint(0, C, (n, k), device=DEVICE)
        published_ms, published_gib = PUBLISHED[name]
        for scheme in ("position", "drawn"):
            rows = []
            for label, config in gather_variants(d, k):
                if time.monotonic() > deadline:
                    print(f"{name} {scheme} {label}: skipped (time budget)", flush=True)
                    continue
                step = functools.partial(backward_of, gather_loss, hidden, items, targets, negatives, scheme, k,
                                         config)
                try:
                    ms, memory = timed(step, [hidden, items])
                except Exception as error:
                    print(f"{name} {scheme} {label}: {type(error).__name__}: {str(error)[:100]}", flush=True)
                    continue
                row = dict(case=name, scheme=scheme, variant=label, ms=ms, peak_extra_gib=memory / GIB,
                           vs_published=published_ms / ms)
                rows.append(row)
                RESULTS["gather"].append(row)
                print(f"{name} {scheme:8s} {label:36s} {ms:8.2f} ms {memory / GIB:6.3f} GiB "
                      f"{published_ms / ms:5.2f}x published", flush=True)
            limit = published_gib if d == 256 else float("inf")
            variants = dict(gather_variants(d, k))
            best = None
            for row in sorted(rows, key=lambda r: (r["peak_extra_gib"] > limit, r["ms"])):
                config = variants[row["variant"]]
                if all(check_gather(d, checked, hd, idt, f"{name} {checked} {row['variant']} "
                                                         f"{str(hd)[6:]}/{str(idt)[6:]}", config)
                       for checked, hd, idt in ((scheme, torch.bfloat16, torch.bfloat16),
                                                (scheme, torch.float32, torch.float32))):
                    best = row
                    break
            if best is not None:
                default = next((r for r in rows if r["variant"] == "default"), None)
                RESULTS["winners"].append(dict(case=f"{name} {scheme}", winner=best["variant"], ms=best["ms"],
                                               peak_extra_gib=best["peak_extra_gib"],
                                               default_ms=default and default["ms"],
                                               default_gib=default and default["peak_extra_gib"]))
            save(out)
        del hidden, items, negatives
        torch.cuda.empty_cache()


# --- dense ---------------------------------------------------------------------------------------

# (BM, BN, warps, stages); each costs three compilations (~10 s) per scheme, so few.
DENSE_TILES_256 = [(64, 64, 4, 3), (128, 64, 8, 2), (64, 128, 8, 2), (128, 128, 8, 2), (64, 64, 8, 3),
                   (128, 32, 8, 3)]


def dense_inputs(scheme: str, k: int, dim: int, n: int | None = None, c: int | None = None, seed: int = 0):
    n = DENSE_SIZE[0] if n is None else n
    c = C if c is None else c
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    hidden = (torch.randn(n, dim, device=DEVICE, generator=gen) * 0.5).to(torch.bfloat16)
    items = (torch.randn(c, dim, device=DEVICE, generator=gen) * dim**-0.5).to(torch.bfloat16)
    targets = torch.randint(0, c, (n,), device=DEVICE, generator=gen)
    targets[1::11] = IGNORE
    negatives = torch.randint(0, c, (k,), device=DEVICE, generator=gen) if scheme == "shared" else None
    return hidden, items, targets, negatives


def dense_loss(hidden, items, targets, negatives, scheme, configs=None):
    k = items.shape[0] if scheme == "full" else negatives.shape[0]
    return shared_linear_cross_entropy(hidden, items, targets, negatives, scheme=scheme, num_negatives=k,
                                       rows_per_sequence=1, log_q=None, remove_accidental_hits=True,
                                       ignore_index=IGNORE, reduction="mean", config=configs)


def uniform_configs(tile: tuple[int, int, int, int], base: KernelConfigs) -> KernelConfigs:
    block = BlockConfig(*tile)
    return dataclasses.replace(base, forward=block, grad_hidden=block, grad_items=block, fused_backward=None)


def check_dense(configs: KernelConfigs, scheme: str) -> bool:
    n, k, c = CHECK_SIZE
    hidden, items, targets, negatives = dense_inputs(scheme, k, 256, n=n, c=c, seed=3)
    tile = (configs.forward, configs.grad_hidden, configs.grad_items)
    h, e = hidden.clone().requires_grad_(), items.clone().requires_grad_()
    try:
        loss = dense_loss(h, e, targets, negatives, scheme, configs)
        loss.backward()
    except Exception as error:  # out of shared memory for this tile shape
        print(f"check dense {scheme} {tile}: {type(error).__name__}", flush=True)
        return False
    h64, e64 = hidden.double().requires_grad_(), items.double().requires_grad_()
    expected = oracle_loss(h64, e64, targets, negatives, ignore_index=IGNORE)  # negatives None: full
    expected.backward()
    errors = (rel(loss.detach(), expected.detach()), rel(h.grad, h64.grad), rel(e.grad, e64.grad))
    ok = max(errors) < 2e-2 and bool(torch.isfinite(h.grad).all() and torch.isfinite(e.grad).all())
    RESULTS["check"].append(dict(kind="dense", case=f"{scheme} {tile}", loss=errors[0], grad_hidden=errors[1],
                                 grad_items=errors[2], ok=ok))
    print(f"check dense {scheme:6s} per-kernel winners: loss {errors[0]:.1e} dH {errors[1]:.1e} "
          f"dE {errors[2]:.1e} {'ok' if ok else 'FAIL'}", flush=True)
    return ok


def kernel_times(scheme: str, k: int, tile, base: KernelConfigs) -> dict[str, float]:
    hidden, items, targets, negatives = DENSE_CACHE[(scheme, k)]
    configs = uniform_configs(tile, base)
    num_negatives = items.shape[0] if scheme == "full" else k
    plan = ts._Plan(scheme=scheme, num_items=items.shape[0], num_groups=1, rows_per_group=hidden.shape[0],
                    num_negatives=num_negatives, log_q_mode=0, log_q_scalar=0.0, remove_hits=scheme != "full",
                    ignore_index=IGNORE, reduction="mean", config=configs)
    prepared = ts._prepare_negatives(negatives, None, plan) if negatives is not None else None
    lse, positive, _, kept, safe_targets = ts._forward(hidden, items, targets, prepared, plan)
    row_grad = kept / hidden.shape[0]
    coef = -row_grad if scheme == "full" else row_grad * torch.expm1(positive - lse)
    backward_args = (hidden, items, safe_targets, prepared, lse, row_grad, coef)
    kernels = {
        "forward": functools.partial(ts._forward, hidden, items, targets, prepared, plan),
        "grad_hidden": functools.partial(ts._grad_hidden, *backward_args, plan),
        "grad_items": functools.partial(ts._grad_items, *backward_args, plan),
    }
    times = {}
    for name, fn in kernels.items():
        try:
            times[name] = float(do_bench(fn, warmup=10, rep=60, return_mode="median"))
        except Exception as error:  # out of shared memory or registers for this tile shape
            times[name] = float("nan")
            print(f"   {scheme} {name} {tile}: {type(error).__name__}", flush=True)
    return times


DENSE_CACHE: dict = {}


def dense_section(out: str, deadline: float) -> None:
    base = default_configs(torch.device(DEVICE), 256)
    for scheme, k in (("full", C), ("shared", DENSE_SIZE[1])):
        DENSE_CACHE[(scheme, k)] = dense_inputs(scheme, k, 256)
        best: dict[str, tuple[float, tuple]] = {}
        for tile in DENSE_TILES_256:
            if time.monotonic() > deadline:
                print(f"dense {scheme} {tile}: skipped (time budget)", flush=True)
                continue
            times = kernel_times(scheme, k, tile, base)
            RESULTS["dense_kernels"].append(dict(scheme=scheme, k=k, tile=tile, **times))
            print(f"dense {scheme:6s} d=256 BM={tile[0]:3d} BN={tile[1]:3d} w={tile[2]} s={tile[3]}: "
                  f"fwd {times['forward']:.3f} dH {times['grad_hidden']:.3f} dE {times['grad_items']:.3f} ms",
                  flush=True)
            for name, ms in times.items():
                if not math.isnan(ms) and (name not in best or ms < best[name][0]):
                    best[name] = (ms, tile)
        save(out)
        del DENSE_CACHE[(scheme, k)]
        torch.cuda.empty_cache()
        if len(best) < 3:
            continue
        combined = dataclasses.replace(base, forward=BlockConfig(*best["forward"][1]),
                                       grad_hidden=BlockConfig(*best["grad_hidden"][1]),
                                       grad_items=BlockConfig(*best["grad_items"][1]))
        if combined != base and not check_dense(combined, scheme):
            continue
        for k_case in ((C,) if scheme == "full" else (DENSE_SIZE[2], DENSE_SIZE[1])):
            hidden, items, targets, negatives = dense_inputs(scheme, k_case, 256)
            h, e = hidden.requires_grad_(), items.requires_grad_()
            for label, configs in (("default", base), ("per-kernel winners", combined)):
                if time.monotonic() > deadline:
                    continue
                step = functools.partial(backward_of, dense_loss, h, e, targets, negatives, scheme, configs)
                ms, memory = timed(step, [h, e], rep=100 if scheme == "full" else 150)
                row = dict(scheme=scheme, k=k_case, variant=label, ms=ms, peak_extra_gib=memory / GIB,
                           configs=dataclasses.asdict(configs))
                RESULTS["dense"].append(row)
                print(f"dense {scheme:6s} d=256 K={k_case:7d} {label:20s} {ms:8.2f} ms {memory / GIB:6.3f} GiB",
                      flush=True)
            pair = [r for r in RESULTS["dense"] if r["scheme"] == scheme and r["k"] == k_case]
            if pair:
                winner = min(pair, key=lambda r: r["ms"])
                RESULTS["winners"].append(dict(case=f"{scheme} d=256 K={k_case}", winner=winner["variant"],
                                               ms=winner["ms"], configs=winner["configs"]))
            del h, e, hidden, items
            torch.cuda.empty_cache()
            save(out)


# --- d-blocked forward (BlockConfig.block_d) -------------------------------------------------------

# The d-blocked forward tiles timed against the default forward: (block_m, block_n, warps, stages, block_d).
# kernel_ptx.py --dblock compiles each for sm_90 (wgmma, no spills); launch_config fits them to the card.
DBLOCK_FORWARDS = ((128, 128, 8, 3, 64), (128, 128, 8, 4, 64), (128, 256, 8, 3, 64), (256, 128, 8, 3, 64))
# (d, K) of the timings, the d=256 cases first (the deadline cuts from the end).
DBLOCK_CASES = ((256, 4096), (256, 16384), (64, 4096), (64, 16384))
# (d, hidden dtype) of the float64 checks: the timed widths, d=200 (not a multiple of the chunk), float32.
DBLOCK_CHECKS = ((256, torch.bfloat16), (64, torch.bfloat16), (200, torch.bfloat16), (256, torch.float32))


def dblock_configs(dim: int, hidden_dtype: torch.dtype, sm_count: int = 132,
                   limit: int = 232_448) -> list[tuple[str, tuple | None, KernelConfigs]]:
    """(label, DBLOCK_FORWARDS tile or None, configs): the default configs first, then per tile the
    d-blocked forward with the default backward, each fitted to `limit` bytes of shared memory as
    launch_config fits them (the label says where the fitted tile differs)."""
    base = ts.fit_config(ts.gpu_config(dim, sm_count), dim=dim, hidden_dtype=hidden_dtype,
                         items_dtype=hidden_dtype, limit=limit)
    variants: list[tuple[str, tuple | None, KernelConfigs]] = [("default", None, base)]
    for tiles in DBLOCK_FORWARDS:
        variants.append(fitted_tile_variant(base, "forward", "dblock", tiles, dim, hidden_dtype, limit))
    return variants


def fitted_tile_variant(configs: KernelConfigs, stage: str, name: str, tiles: tuple, dim: int,
                        hidden_dtype: torch.dtype, limit: int) -> tuple[str, tuple, KernelConfigs]:
    """(label, tiles, configs): `configs` with BlockConfig(*tiles) as its `stage`, fitted to `limit` bytes
    of shared memory as launch_config fits them; the label names the tile and, where fitting changed it,
    the tile that runs."""
    change: dict[str, Any] = {stage: BlockConfig(*tiles)}
    fitted = ts.fit_config(dataclasses.replace(configs, **change), dim=dim, hidden_dtype=hidden_dtype,
                           items_dtype=hidden_dtype, limit=limit)
    block_m, block_n, warps, stages, block_d = tiles
    label = f"{name} {block_m}x{block_n} w{warps} s{stages} bd{block_d}"
    got = getattr(fitted, stage)
    if got != BlockConfig(*tiles):
        label += f" (fitted: {got.block_m}x{got.block_n} s{got.num_stages})"
    return label, tiles, fitted


# The d-blocked backward tiles timed per d: (block_m, block_n, warps, stages, block_d), d_blocked_backward's
# first; kernel_ptx.py --dblock compiles each for sm_90 (wgmma, no spills).
DBLOCK_BACKWARDS = {256: ((128, 64, 8, 2, 64), (128, 64, 8, 3, 64), (64, 64, 8, 2, 64)),
                    64: ((128, 128, 8, 3, 64), (128, 128, 8, 2, 64), (128, 64, 8, 2, 64))}
# d=200 (4 chunks, the last ragged) is checked with the d=256 tiles.
DBLOCK_BACKWARD_CHECKS = ((256, 256), (64, 64), (200, 256))
# SharedConfig.dblock_splits timed with the first DBLOCK_BACKWARDS tile (1 is the default): at N=51,200 a
# 128-row block gives 400 programs, 3.03 waves of one program per multiprocessor of an H200.
DBLOCK_SPLITS = (2, 4)


def dblock_backward_configs(dim: int, configs: KernelConfigs, hidden_dtype: torch.dtype = torch.bfloat16,
                            limit: int = 232_448) -> list[tuple[str, tuple, KernelConfigs]]:
    """(label, DBLOCK_BACKWARDS tile, configs): `configs` with each d-blocked backward tile of the timed
    width nearest `dim` (64 or 256), fitted to `limit` bytes of shared memory as launch_config fits them,
    then the first tile with each of DBLOCK_SPLITS programs per row block."""
    variants = [fitted_tile_variant(configs, "dblock_backward", "dblock backward", tiles, dim, hidden_dtype,
                                    limit) for tiles in DBLOCK_BACKWARDS[64 if dim <= 64 else 256]]
    label, tiles, fitted = variants[0]
    for splits in DBLOCK_SPLITS:
        variants.append((f"{label} splits={splits}", tiles, dataclasses.replace(fitted, dblock_splits=splits)))
    return variants


def shared_plan(hidden, items, negatives, configs: KernelConfigs):
    """The autograd function's plan of a shared-negatives call (hits removed, mean) and its negatives
    prepared once, as forward_ms and backward_ms time the kernels behind it."""
    plan = ts._Plan(scheme="shared", num_items=items.shape[0], num_groups=1, rows_per_group=hidden.shape[0],
                    num_negatives=negatives.shape[0], log_q_mode=0, log_q_scalar=0.0, remove_hits=True,
                    ignore_index=IGNORE, reduction="mean", config=configs)
    return plan, ts._prepare_negatives(negatives, None, plan)


def backward_ms(hidden, items, targets, negatives, configs: KernelConfigs) -> float:
    """The backward alone, both gradients, as the autograd function runs it (after one forward)."""
    plan, prepared = shared_plan(hidden, items, negatives, configs)
    lse, positive, _, kept, safe_targets = ts._forward(hidden, items, targets, prepared, plan)
    row_grad = kept / kept.sum().clamp(min=1.0)
    coef = row_grad * torch.expm1(positive - lse)
    args = (hidden, items, safe_targets, prepared, lse, row_grad, coef, plan)
    if configs.dblock_backward is not None:
        def step() -> None:
            ts._dblock_backward(*args, configs.dblock_backward)
    elif configs.fused_backward is not None and negatives.shape[0] <= configs.fused_max_negatives:
        def step() -> None:
            ts._fused_backward(*args, configs.fused_backward)
    else:
        def step() -> None:
            ts._grad_hidden(*args)
            ts._grad_items(*args)
    return float(do_bench(step, warmup=10, rep=80, return_mode="median"))


def check_dblock(configs: KernelConfigs, label: str, dim: int, hidden_dtype: torch.dtype) -> bool:
    """Loss, dH and dE of shared negatives with `configs` against float64 (log q tensor, accidental hits,
    ignored rows) at CHECK_SIZE."""
    n, k, c = CHECK_SIZE
    gen = torch.Generator(device=DEVICE).manual_seed(dim)
    hidden = (torch.randn(n, dim, device=DEVICE, generator=gen) * 0.5).to(hidden_dtype)
    items = (torch.randn(c, dim, device=DEVICE, generator=gen) * dim**-0.5).to(hidden_dtype)
    targets = torch.randint(0, c, (n,), device=DEVICE, generator=gen)
    negatives = torch.randint(0, c, (k,), device=DEVICE, generator=gen)
    hits = targets[::5]
    targets[::5] = negatives[torch.randint(0, k, hits.shape, device=DEVICE, generator=gen)]  # accidental hits
    targets[1::11] = IGNORE
    log_q = torch.log_softmax(torch.randn(c, device=DEVICE, generator=gen), 0)
    h, e = hidden.clone().requires_grad_(), items.clone().requires_grad_()
    try:
        loss = shared_linear_cross_entropy(h, e, targets, negatives, scheme="shared", num_negatives=k,
                                           rows_per_sequence=1, log_q=log_q, remove_accidental_hits=True,
                                           ignore_index=IGNORE, reduction="mean", config=configs)
        loss.backward()
    except Exception as error:  # a tile the compiler or the card refuses
        print(f"check dblock {label} d={dim} {hidden_dtype}: {type(error).__name__}: {str(error)[:100]}",
              flush=True)
        RESULTS["check"].append(dict(kind="dblock", case=f"{label} d={dim} {hidden_dtype}", ok=False,
                                     error=f"{type(error).__name__}: {str(error)[:300]}"))
        return False
    h64, e64 = hidden.double().requires_grad_(), items.double().requires_grad_()
    expected = oracle_loss(h64, e64, targets, negatives, log_q=log_q, ignore_index=IGNORE)
    expected.backward()
    errors = (rel(loss.detach(), expected.detach()), rel(h.grad, h64.grad), rel(e.grad, e64.grad))
    limit = 1e-4 if hidden_dtype == torch.float32 else 2e-2
    ok = max(errors) < limit and bool(torch.isfinite(h.grad).all() and torch.isfinite(e.grad).all())
    RESULTS["check"].append(dict(kind="dblock", case=f"{label} d={dim} {hidden_dtype}", loss=errors[0],
                                 grad_hidden=errors[1], grad_items=errors[2], ok=ok))
    print(f"check dblock {label:44s} d={dim} {str(hidden_dtype)[6:]:8s} loss {errors[0]:.1e} "
          f"dH {errors[1]:.1e} dE {errors[2]:.1e} {'ok' if ok else 'FAIL'}", flush=True)
    return ok


def forward_ms(hidden, items, targets, negatives, configs: KernelConfigs) -> float:
    """The forward alone, as the autograd function runs it (the negatives prepared once, outside)."""
    plan, prepared = shared_plan(hidden, items, negatives, configs)
    return float(do_bench(functools.partial(ts._forward, hidden, items, targets, prepared, plan), warmup=10,
                          rep=80, return_mode="median"))


def compiled_step(hidden, items, targets, negatives):
    """fwd+bwd of torch.compile of the reference (materialised logits), as bench-loss's "compile"."""
    from kernels.reference import reference_linear_cross_entropy

    torch._dynamo.reset()
    compiled = torch.compile(reference_linear_cross_entropy, dynamic=False)

    def step() -> None:
        compiled(hidden, items, targets, negatives, scheme="shared", num_negatives=negatives.shape[0],
                 rows_per_sequence=1, seed=None, log_q=None, remove_accidental_hits=True, ignore_index=IGNORE,
                 reduction="mean").backward()
    return step


T = TypeVar("T")


def fwd_bwd_ms(h: torch.Tensor, e: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor,
               configs: KernelConfigs) -> tuple[float, int]:
    """(ms, peak extra bytes) of the shared-negatives loss's forward and backward under `configs`."""
    step = functools.partial(backward_of, dense_loss, h, e, targets, negatives, "shared", configs)
    return timed(step, [h, e])


def measured_in_time(variants: list[tuple[str, KernelConfigs]], measure: Callable[[KernelConfigs], T],
                     deadline: float, what: str) -> Iterator[tuple[str, KernelConfigs, T]]:
    """(label, configs, measure(configs)) of each variant started before the deadline; one the card refuses
    (out of shared memory or registers) is printed as `what label: Error` and left out."""
    for label, configs in variants:
        if time.monotonic() > deadline:
            continue
        try:
            result = measure(configs)
        except Exception as error:  # out of shared memory or registers on this card
            print(f"{what} {label}: {type(error).__name__}", flush=True)
            continue
        yield label, configs, result


def dblock_section(out: str, deadline: float) -> None:
    """The d-blocked kernels: float64 checks first (a variant failing one is not timed), then per case the
    forward alone (default and each variant), the backward alone (default and each d-blocked backward)
    and fwd+bwd of the default, the fastest d-blocked forward with the default and with each d-blocked
    backward, launch_config(d_blocked=True), and torch.compile."""
    RESULTS.setdefault("dblock_forward", [])
    RESULTS.setdefault("dblock_backward", [])
    RESULTS.setdefault("dblock", [])
    passed: dict[tuple[tuple | None, int], bool] = {}  # (tile, timed d): every check of it passed
    for dim, hidden_dtype in DBLOCK_CHECKS:
        for label, tiles, configs in dblock_configs(dim, hidden_dtype)[1:]:
            if hidden_dtype == torch.float32 and tiles != DBLOCK_FORWARDS[0]:
                continue  # float32: the first tile only (its compilation is slow)
            key = (tiles, 64 if dim == 64 else 256)
            passed[key] = check_dblock(configs, label, dim, hidden_dtype) and passed.get(key, True)
    for dim, timed_dim in DBLOCK_BACKWARD_CHECKS:
        base = dblock_configs(dim, torch.bfloat16)[0][2]
        for label, tiles, configs in dblock_backward_configs(dim, base):
            key = (tiles, timed_dim)
            passed[key] = check_dblock(configs, label, dim, torch.bfloat16) and passed.get(key, True)
    save(out)
    n = DENSE_SIZE[0]
    for dim, k in DBLOCK_CASES:
        if time.monotonic() > deadline:
            print(f"dblock d={dim} K={k}: skipped (time budget)", flush=True)
            continue
        hidden, items, targets, negatives = dense_inputs("shared", k, dim, n=n)
        variants = [(label, configs) for label, tiles, configs in dblock_configs(dim, torch.bfloat16)
                    if tiles is None or passed.get((tiles, dim), False)]
        times = {}
        # the measures are passed inline, not named: the tensors must go with `del` at the end of the case
        for label, configs, ms in measured_in_time(variants, functools.partial(
                forward_ms, hidden, items, targets, negatives), deadline, f"dblock d={dim} K={k} forward"):
            times[label] = ms
            RESULTS["dblock_forward"].append(dict(dim=dim, k=k, variant=label, ms=times[label],
                                                  tflops=2 * n * k * dim / times[label] / 1e9,
                                                  forward=dataclasses.asdict(configs.forward)))
            print(f"dblock d={dim:3d} K={k:5d} forward {label:44s} {times[label]:7.3f} ms "
                  f"({2 * n * k * dim / times[label] / 1e9:5.0f} TFLOP/s)", flush=True)
        default = dict(variants)["default"]
        blocked = [label for label in times if label != "default"]
        best_forward = dict(variants)[min(blocked, key=times.__getitem__)] if blocked else default
        backwards = [(label, configs) for label, tiles, configs in dblock_backward_configs(dim, best_forward)
                     if passed.get((tiles, dim), False)]
        backward_times = {}
        for label, configs, ms in measured_in_time([("default", default)] + backwards, functools.partial(
                backward_ms, hidden, items, targets, negatives), deadline, f"dblock d={dim} K={k} backward"):
            backward_times[label] = ms
            # executed work: 8NKd for the split backward, 6NKd for the one-pass ones (fused and d-blocked)
            one_pass = configs.dblock_backward is not None or (
                configs.fused_backward is not None and k <= configs.fused_max_negatives)
            flops = (6 if one_pass else 8) * n * k * dim
            RESULTS["dblock_backward"].append(dict(dim=dim, k=k, variant=label, ms=backward_times[label],
                                                   executed_tflops=flops / backward_times[label] / 1e9))
            print(f"dblock d={dim:3d} K={k:5d} backward {label:48s} {backward_times[label]:7.3f} ms "
                  f"({flops / backward_times[label] / 1e9:5.0f} TFLOP/s executed)", flush=True)
        steps = [("default", default)]
        if blocked:
            steps.append((f"best forward {min(blocked, key=times.__getitem__)}", best_forward))
        steps += [(f"best forward + {label}", configs) for label, configs in backwards]
        opted_in = ts.launch_config(torch.device(DEVICE), dim, torch.bfloat16, torch.bfloat16, d_blocked=True)
        steps.append(("launch_config(d_blocked=True)", opted_in))
        h, e = hidden.requires_grad_(), items.requires_grad_()
        row = dict(dim=dim, k=k)
        for label, configs, (ms, memory) in measured_in_time(steps, functools.partial(
                fwd_bwd_ms, h, e, targets, negatives), deadline, f"dblock d={dim} K={k} fwd+bwd"):
            row[label] = dict(ms=ms, peak_extra_gib=memory / GIB, configs=dataclasses.asdict(configs))
            print(f"dblock d={dim:3d} K={k:5d} fwd+bwd {label:60s} {ms:7.3f} ms {memory / GIB:6.3f} GiB",
                  flush=True)
        if time.monotonic() < deadline - 30:  # torch.compile takes tens of seconds to compile
            try:
                ms, memory = timed(compiled_step(h, e, targets, negatives), [h, e])
                row["compile"] = dict(ms=ms, peak_extra_gib=memory / GIB)
                print(f"dblock d={dim:3d} K={k:5d} fwd+bwd {'torch.compile':60s} {ms:7.3f} ms "
                      f"{memory / GIB:6.3f} GiB", flush=True)
                for label, _ in steps:
                    if label in row:
                        row[label]["vs_compile"] = ms / row[label]["ms"]
                        print(f"    {label}: {ms / row[label]['ms']:.2f}x torch.compile", flush=True)
            except Exception as error:
                row["compile"] = dict(error=f"{type(error).__name__}: {str(error)[:300]}")
        RESULTS["dblock"].append(row)
        del h, e, hidden, items
        torch.cuda.empty_cache()
        save(out)


SECTIONS = ("gather", "dense", "dblock")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="gather,dense",
                        help=f"comma-separated, of {', '.join(SECTIONS)}")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--budget-seconds", type=float, default=225.0,
                        help="stop starting new timings after this many seconds")
    args = parser.parse_args()
    sections = args.sections.split(",")
    unknown = [name for name in sections if name not in SECTIONS]
    if unknown:
        parser.error(f"--sections: unknown section(s) {', '.join(unknown)}; expected some of "
                     f"{', '.join(SECTIONS)}")
    os.makedirs(args.out, exist_ok=True)
    deadline = STARTED + args.budget_seconds
    props = torch.cuda.get_device_properties(0)
    RESULTS["device"] = dict(name=props.name, sms=props.multi_processor_count, torch=torch.__version__,
                             triton=triton.__version__, python=sys.version.split()[0])
    print(RESULTS["device"], flush=True)
    if "gather" in sections:
        gather_section(args.out, deadline)
    if "dense" in sections:
        dense_section(args.out, deadline)
    if "dblock" in sections:
        dblock_section(args.out, deadline)
    print("\n== winners (fastest correct variant; per position d=256 within the published 0.76 GiB) ==")
    for row in RESULTS["winners"]:
        extra = (f", default {row['default_ms']:.2f} ms / {row['default_gib']:.3f} GiB"
                 if row.get("default_ms") else "")
        memory = f" {row['peak_extra_gib']:.3f} GiB" if "peak_extra_gib" in row else ""
        print(f"{row['case']:24s} {row['winner']:40s} {row['ms']:8.2f} ms{memory}{extra}")
    print(f"total {time.monotonic() - STARTED:.0f} s")
    save(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
