"""Compile every Triton kernel of kernels/ for a GPU target without a GPU, and write its PTX.

For refactoring the kernels on a machine without a GPU: run this before and after a change and compare
the two folders (`--compare OLD NEW`); identical PTX (debug info and kernel names aside) means the change
cannot alter what the GPU runs or how fast. The kernels are reached through the public host code
(`shared_linear_cross_entropy`, `gather_linear_cross_entropy`, forward and backward, on small CPU
tensors), so the launches carry exactly the constexprs, argument types and pointer alignments the host
code passes; a stub driver reports the target (sm_90 by default) and every launch only compiles
(JITFunction.run with warmup=True: nothing runs, outputs stay garbage). Branches of the host code that
depend on the tensors being on CUDA are set as on CUDA: the tiles an H200 launches (132 multiprocessors,
227 KiB of shared memory a block), no bf16 upcast, the per-sequence item gradient added with atomics in
the items' dtype. Tested with triton 3.6.0 (the H200's) and 3.7.1.

    PYTHONPATH=. python benchmarks/kernel_ptx.py --out DIR [--arch 90]   # every kernel's PTX (minutes)
    python benchmarks/kernel_ptx.py --compare OLD_DIR NEW_DIR
    PYTHONPATH=. python benchmarks/kernel_ptx.py --check   # the code generator only (seconds)
    PYTHONPATH=. python benchmarks/kernel_ptx.py --loops [--out DIR]   # the dense tile loops (seconds)
    PYTHONPATH=. python benchmarks/kernel_ptx.py --shared-memory [--limit BYTES] [--dims 64,512]   # a minute
    PYTHONPATH=. python benchmarks/kernel_ptx.py --dblock [--grid]   # d-blocked kernels (a minute; minutes)

--dblock compiles the forward of shared negatives at d=256 in bf16 (K=4096, hits removed) to the cubin with
the default tiles and with each of DBLOCK_CANDIDATES' d-blocked tiles (BlockConfig.block_d), then the
backward (both gradients) with the default split kernels at d=256 and the d-blocked backward
(SharedConfig.dblock_backward) with each of DBLOCK_BACKWARD_CANDIDATES' tiles at d=256 and 64 (the first also
with two programs a row block, SharedConfig.dblock_splits), and prints per
kernel its shared memory against the limit and kernels.tile_memory's estimate, registers, spilled bytes, loop
size and the MMA it runs on: PTX `wgmma.mma_async` / SASS `HGMMA` (Hopper's warpgroup MMA, with its
instruction shapes) against `mma.sync` / `HMMA`. It fails where a d-blocked kernel does not compile, spills,
exceeds the limit or its estimate, or has no wgmma. With --grid it compiles the d-blocked forward over
DBLOCK_GRID_* (d 64 to 512, every dtype pair and scheme) and the d-blocked backward over DBLOCK_GRID_DIMS x
DBLOCK_BACKWARD_GRID_TILES (every dtype pair) up to the shared-memory allocation and fails where an estimate
is below it.

--shared-memory compiles each dense kernel (full, shared, per-sequence; d 64, 96, 128, 256, 512; bf16, fp16,
fp32, bf16 hidden with fp32 items) with the tiles that triton_shared.launch_config gives a card of --limit
bytes of shared memory a block (default an H100/H200's 232,448), up to Triton's shared-memory allocation
(--full-compile: to the cubin, far longer), and prints each kernel's `shared` against the limit and
against kernels.tile_memory's estimate; it fails where a kernel needs more than the limit or more than the
estimate. With --grid it compiles every case with a grid of tiles, stages and warps instead (hours) and
fails only where the estimate is below the need: the check of the estimate for a new Triton version.

--loops compiles the launches of the public call that benchmarks/shared_ab.py times (shared negatives,
bf16, d=64, K=4096: fused backward, K=16384: split backward), prints per kernel the registers, the bytes
spilled and the SASS instructions of its largest loop (where the backend ships cuobjdump and nvdisasm),
and checks two rules of the tile loops in the TTGIR: no 64-bit integer comparison (an index range tested
per tile) and no layout conversion of a 2-D boolean tensor (a [rows, negatives] mask built in the wrong
layout, through shared memory, per tile). Both cost 40% at K=16384 on an H200 (notes/kernel-shared.md).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import types
from collections.abc import Callable, Iterator
from pathlib import Path

if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

import kernels.triton_common as triton_common  # noqa: E402
import kernels.triton_gather as tg  # noqa: E402
import kernels.triton_shared as ts  # noqa: E402

IGNORE = -100
DEBUG_LABEL = re.compile(r"\$L__tmp\d+:")
# The per-block opt-in shared memory of an H100/H200 (CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
# 227 KiB): what Triton compares with a compiled kernel's `shared` when it loads it there.
H100_SHARED_MEMORY = 232_448


class _CompileOnlyDriver:
    """Enough of a Triton driver for JITFunction.run to specialise and compile for `target`."""

    def __init__(self, target: GPUTarget) -> None:
        self.target = target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return self.target


class _FrontEndPassed(Exception):
    """Raised after Triton's code generator turned a kernel into TTIR, to skip the later stages."""


@contextlib.contextmanager
def compile_only(target: GPUTarget, record: Callable[[str, object], None], *, front_end_only: bool = False,
                 ) -> Iterator[None]:
    """Every kernel launch inside compiles for `target` and hands (kernel name, compiled kernel or error)
    to `record`, instead of running. front_end_only: stop after the code generator (TTIR), which is where
    the language's rules are checked (the interpreter checks fewer); `record` then gets None on success."""
    original_run = JITFunction.run
    original_make_ir = ASTSource.make_ir

    def run(self: JITFunction, *args: object, grid: object, warmup: bool, **kwargs: object) -> object:
        try:
            compiled = original_run(self, *args, grid=grid, warmup=True, **kwargs)
        except _FrontEndPassed:
            compiled = None
        except Exception as error:  # noqa: BLE001 (a compilation error is a result here)
            record(self.fn.__name__, error)
            return None
        record(self.fn.__name__, compiled)
        return compiled

    def make_ir(self: ASTSource, *args: object, **kwargs: object) -> object:
        module = original_make_ir(self, *args, **kwargs)
        if front_end_only:
            raise _FrontEndPassed
        return module

    # Kernels that do not run leave their outputs unwritten: zeros keep the host code's indexing valid.
    patches = [(JITFunction, "run", run), (ASTSource, "make_ir", make_ir),
               (triton.runtime.driver, "_active", _CompileOnlyDriver(target)),
               (torch.cuda, "get_device_properties",
                lambda device=None: types.SimpleNamespace(multi_processor_count=132,
                                                          shared_memory_per_block_optin=H100_SHARED_MEMORY)),
               (ts, "_upcast", lambda hidden: False),  # as on CUDA
               (ts, "_adds_atomically", lambda items: True)]  # as on CUDA
    patches.append((triton_common, "new_output",
                    lambda shape, dtype, device: torch.zeros(shape, dtype=dtype, device=device)))
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, value in patches:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def _inputs(rows: int, dim: int, num_items: int, hidden_dtype: torch.dtype, items_dtype: torch.dtype,
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(rows, dim, generator=generator).to(hidden_dtype)
    items = torch.randn(num_items, dim, generator=generator).to(items_dtype)
    targets = torch.randint(0, num_items, (rows,), generator=generator)
    return hidden, items, targets


def _log_q(kind: str, num_items: int) -> torch.Tensor | float | None:
    if kind == "none":
        return None
    if kind == "constant":
        return -9.0
    return -torch.rand(num_items, generator=torch.Generator().manual_seed(1)) - 8.0


DTYPES = {"fp32": (torch.float32, torch.float32), "bf16": (torch.bfloat16, torch.bfloat16),
          "fp16": (torch.float16, torch.float16), "bf16/fp32": (torch.bfloat16, torch.float32)}


def dense_cases() -> list[dict]:
    cases = []
    for scheme, dim, k, dtypes, log_q, hits, grads in [
        ("full", 64, 1000, "bf16", "none", False, "both"),
        ("full", 256, 1024, "fp32", "none", False, "both"),
        ("shared", 64, 4096, "bf16", "tensor", True, "both"),  # the fused backward
        ("shared", 64, 4096, "bf16", "tensor", True, "hidden"),
        ("shared", 256, 1000, "fp16", "constant", False, "both"),
        ("shared", 128, 16384, "fp32", "none", True, "items"),
        ("sequence", 64, 500, "bf16/fp32", "constant", True, "both"),
        ("sequence", 256, 512, "bf16", "tensor", False, "both"),
    ]:
        cases.append(dict(family="dense", scheme=scheme, dim=dim, k=k, dtypes=dtypes, log_q=log_q, hits=hits,
                          grads=grads))
    # The opt-in d-blocked forward (launch_config(d_blocked=True)), gathered (shared), through ids
    # (per sequence) and in order (full); d not a multiple of its chunk in two of them.
    for scheme, dim, k, dtypes, log_q in [("shared", 256, 4096, "bf16", "none"),
                                          ("sequence", 200, 500, "bf16/fp32", "tensor"),
                                          ("full", 96, 1000, "fp32", "none")]:
        cases.append(dict(family="dense", scheme=scheme, dim=dim, k=k, dtypes=dtypes, log_q=log_q,
                          hits=scheme != "full", grads="both", d_blocked=True))
    return cases


def gather_cases() -> list[dict]:
    cases = []
    for scheme, dim, k, dtypes, log_q, hits, slices, rows in [
        ("position", 64, 2047, "bf16", "none", True, 0, 1),
        ("position", 256, 511, "bf16", "tensor", True, 0, 1),
        ("position", 128, 300, "fp32", "constant", False, 0, 1),
        ("drawn", 64, 2047, "bf16/fp32", "constant", True, 0, 1),
        ("drawn", 256, 511, "fp16", "tensor", False, 0, 1),
        ("position", 256, 511, "bf16", "none", True, 8, 1),
        ("position", 64, 2047, "fp32", "tensor", True, 16, 2),
        ("drawn", 256, 511, "bf16", "constant", True, 16, 1),
        ("drawn", 64, 2047, "bf16/fp32", "none", False, 32, 2),
    ]:
        cases.append(dict(family="gather", scheme=scheme, dim=dim, k=k, dtypes=dtypes, log_q=log_q, hits=hits,
                          slices=slices, rows=rows, grads="both"))
    return cases


def run_case(case: dict, dense_config: ts.SharedConfig | None = None, *, backward: bool = True) -> None:
    """Forward and (unless not `backward`) backward of `case` through the public host code; a dense case
    launches `dense_config`, or by default the tiles of an H200 (launch_config; d_blocked where the case
    says so)."""
    rows, sequences, k = 96, 4, case["k"]
    num_items = k if case["scheme"] == "full" else 20_000
    hidden_dtype, items_dtype = DTYPES[case["dtypes"]]
    hidden, items, targets = _inputs(rows, case["dim"], num_items, hidden_dtype, items_dtype)
    log_q = _log_q(case["log_q"], num_items)
    hidden = hidden.detach().requires_grad_(case["grads"] != "items")
    items = items.detach().requires_grad_(case["grads"] != "hidden")
    generator = torch.Generator().manual_seed(2)
    if case["family"] == "dense":
        if case["scheme"] == "full":
            negatives = None
        elif case["scheme"] == "shared":
            negatives = torch.randint(0, num_items, (k,), generator=generator)
        else:
            negatives = torch.randint(0, num_items, (sequences, k), generator=generator)
        config = dense_config or ts.launch_config(torch.device("cuda"), case["dim"], hidden_dtype,
                                                  items_dtype, d_blocked=case.get("d_blocked", False))
        loss = ts.shared_linear_cross_entropy(
            hidden, items, targets, negatives, scheme=case["scheme"], num_negatives=k,
            rows_per_sequence=rows // sequences, log_q=log_q, remove_accidental_hits=case["hits"],
            ignore_index=IGNORE, reduction="mean", config=config)
    else:
        negatives = (torch.randint(0, num_items, (rows, k), generator=generator)
                     if case["scheme"] == "position" else None)
        config = tg.default_config(torch.device("cuda"), case["dim"], k)
        if case["slices"]:
            config = type(config)(**{**config.__dict__, "item_slices": case["slices"],
                                     "backward_rows": case["rows"]})
        loss = tg.gather_linear_cross_entropy(
            hidden, items, targets, negatives, scheme=case["scheme"], num_negatives=k,
            seed=7 if case["scheme"] == "drawn" else None, log_q=log_q, remove_accidental_hits=case["hits"],
            ignore_index=IGNORE, reduction="mean", config=config)
    if backward:
        inputs = {"both": [hidden, items], "hidden": [hidden], "items": [items]}[case["grads"]]
        torch.autograd.grad(loss, inputs, allow_unused=True)


def other_launches() -> None:
    negatives = torch.randint(0, 20_000, (64, 511), generator=torch.Generator().manual_seed(3))
    tg.sorted_rows(negatives, method="triton")
    tg.draw_in_kernel(5, 8, 300, 20_000, block_k=128)


def normalise(ptx: str, name: str) -> str:
    """PTX without debug info (sections, .loc/.file lines and the $L__tmpN labels that only the line
    table refers to: a helper inlined elsewhere renumbers them), comments and the kernel's name."""
    ptx = re.sub(r"\.section\s+\.debug_\w+\s*\{.*?\n\s*\}", "", ptx, flags=re.S)
    lines = []
    for line in ptx.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith((".loc", ".file", "//")) or DEBUG_LABEL.fullmatch(stripped):
            continue
        lines.append(line.split("//")[0].rstrip())
    return "\n".join(lines).replace(name, "KERNEL") + "\n"


def compile_every_case(target: GPUTarget, record: Callable[[str, str, object], None], *,
                       front_end_only: bool = False) -> None:
    """Runs every case's forward and backward (and the sort and draw kernels) with each launch compiled for
    `target` instead of run; `record(case label, kernel name, compiled kernel, None or error)`."""
    label = ""

    def record_case(name: str, result: object) -> None:
        record(label, name, result)

    with compile_only(target, record_case, front_end_only=front_end_only):
        for case in dense_cases() + gather_cases():
            label = json.dumps(case, sort_keys=True)
            run_case(case)
        label = "sort and draw"
        other_launches()


def dump(out: Path, target: GPUTarget) -> int:
    """Writes each launch's normalised PTX to OUT/NNN-kernel.ptx and the list of launches to
    OUT/index.json; returns 1 if a kernel did not compile."""
    out.mkdir(parents=True, exist_ok=True)
    index: list[dict] = []

    def record(label: str, name: str, result: object) -> None:
        entry: dict = {"case": label, "launch": sum(1 for e in index if e["case"] == label), "kernel": name}
        if isinstance(result, Exception):
            entry["error"] = f"{type(result).__name__}: {result}"
        else:
            entry["file"] = f"{len(index):03d}-{name}.ptx"
            (out / entry["file"]).write_text(normalise(result.asm["ptx"], name))  # type: ignore[attr-defined]
        index.append(entry)
        print(label, entry["launch"], name, entry["error"].splitlines()[0] if "error" in entry else "ok",
              flush=True)

    compile_every_case(target, record)
    (out / "index.json").write_text(json.dumps(index, indent=1))
    return int(any("error" in entry for entry in index))


def check(target: GPUTarget) -> int:
    """Front end only (fast): prints every launch that Triton's code generator refuses; 1 if any."""
    launches: list[str] = []
    errors: list[str] = []

    def record(label: str, name: str, result: object) -> None:
        launches.append(name)
        if isinstance(result, Exception):
            errors.append(f"{name} in case {label}: {type(result).__name__}: {result}")

    compile_every_case(target, record, front_end_only=True)
    for error in dict.fromkeys(errors):
        print(error)
    print(f"{len(launches)} launches of {len(set(launches))} kernels, {len(errors)} refused")
    return int(bool(errors))


def _pair_launches(old_index: list[dict], new_index: list[dict]) -> list[tuple[dict | None, dict | None]]:
    """The launches of two dumps paired case by case: in order where a case launches as many kernels in
    both (so a renamed kernel pairs with its old name), else by kernel name and occurrence, with None for
    a launch that only one side has (a kernel added or removed)."""
    cases = list(dict.fromkeys(entry["case"] for entry in old_index + new_index))
    pairs: list[tuple[dict | None, dict | None]] = []
    for case in cases:
        before = [entry for entry in old_index if entry["case"] == case]
        after = [entry for entry in new_index if entry["case"] == case]
        if len(before) == len(after):
            pairs.extend(zip(before, after, strict=True))
            continue
        unmatched = list(after)
        for entry in before:
            match = next((other for other in unmatched if other["kernel"] == entry["kernel"]), None)
            if match is not None:
                unmatched.remove(match)
            pairs.append((entry, match))
        pairs.extend((None, entry) for entry in unmatched)
    return pairs


def compare(old: Path, new: Path) -> int:
    """Pairs the launches of the two dumps (_pair_launches); prints one line per launch, returns 1 on a
    difference."""
    old_index = json.loads((old / "index.json").read_text())
    new_index = json.loads((new / "index.json").read_text())
    if len(old_index) != len(new_index):
        print(f"launch counts differ: {len(old_index)} against {len(new_index)}")
    differ = 0
    for a, b in _pair_launches(old_index, new_index):
        if a is None or b is None:
            differ = 1
            entry = a if a is not None else b
            assert entry is not None
            print(f"{'ONLY OLD' if b is None else 'ONLY NEW'}   {entry['case'][:90]} #{entry['launch']} "
                  f"{entry['kernel']}")
            continue
        where = f"{a['case'][:90]} #{a['launch']} {a['kernel']}"
        if "error" in a or "error" in b:
            print(f"old: {a.get('error', 'ok')[:80]!r} new: {b.get('error', 'ok')[:80]!r} {where}")
            differ |= ("error" in a) != ("error" in b)
            continue
        # Normalised again: dumps written before a rule of `normalise` was added compare as well.
        before = normalise((old / a["file"]).read_text(), a["kernel"]).splitlines()
        after = normalise((new / b["file"]).read_text(), b["kernel"]).splitlines()
        if before == after:
            print(f"identical  {where} -> {b['kernel']}")
            continue
        differ = 1
        changed = [line for line in difflib.unified_diff(before, after, lineterm="", n=0)
                   if line[:1] in "+-" and line[:3] not in ("+++", "---")]
        print(f"DIFFERENT  {where} -> {b['kernel']}: {len(changed)} lines")
        for line in changed[:8]:
            print(f"    {line.strip()}")
    return differ


def shared_benchmark_cases() -> list[dict]:
    """The launches of the public call that benchmarks/shared_ab.py times (at CPU sizes: the constexprs,
    tiles and argument specialisations are those of N=51,200, C=10^6)."""
    return [dict(family="dense", scheme="shared", dim=64, k=k, dtypes="bf16", log_q="none", hits=True,
                 grads="both") for k in (4096, 16384)]


def _tile_loops(ttgir: str) -> list[list[str]]:
    """The bodies of the scf.for loops of a TTGIR module (nested loops inside their outer one)."""
    loops, depth, body = [], 0, None
    for line in ttgir.splitlines():
        if body is None and "scf.for" in line and line.rstrip().endswith("{"):
            body, depth = [], 0
        if body is not None:
            body.append(line)
            depth += line.count("{") - line.count("}")
            if depth == 0:
                loops.append(body)
                body = None
    return loops


def loop_rule_breaks(ttgir: str) -> list[str]:
    """What breaks the tile loops' rules (see the module docstring) in one kernel's TTGIR."""
    breaks = []
    for body in _tile_loops(ttgir):
        for line in body:
            op = line.split("loc(")[0].strip()
            if "arith.cmpi" in op and re.search(r"(tensor<[\dx]*xi64\b|: i64\b)", op):
                breaks.append(f"64-bit integer comparison in a tile loop: {op[:160]}")
            if "ttg.convert_layout" in op and re.search(r"-> tensor<\d+x\d+xi1", op):
                breaks.append(f"2-D boolean layout conversion in a tile loop: {op[:160]}")
    return breaks


def _backend_tool(name: str) -> str | None:
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(path) if path.is_file() else None


def sass_counts(cubin: bytes, opcodes: tuple[str, ...]) -> dict[str, int] | None:
    """How many SASS instructions of a cubin have each of `opcodes` (HGMMA: Hopper's warpgroup MMA, HMMA:
    the older warp MMA; modifiers ignored), plus, under "shapes", the distinct full opcodes of the first
    (e.g. HGMMA.64x128x16.F32.BF16); None where the backend ships no nvdisasm."""
    nvdisasm = _backend_tool("nvdisasm")
    if nvdisasm is None:
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        sass = subprocess.run([nvdisasm, "-c", file.name], capture_output=True, text=True).stdout
    counts: dict = dict.fromkeys(opcodes, 0)
    shapes: set[str] = set()
    for line in sass.splitlines():
        instruction = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)(\S*)", line)
        if instruction:
            for opcode in opcodes:
                counts[opcode] += instruction.group(1) == opcode
            if instruction.group(1) == opcodes[0]:
                shapes.add(instruction.group(1) + instruction.group(2))
    counts["shapes"] = sorted(shapes)
    return counts


def sass_summary(cubin: bytes) -> str:
    """Registers, stack (spilled) bytes and the SASS instructions of the largest loop of a cubin, or why
    not (the backend has no cuobjdump/nvdisasm)."""
    cuobjdump, nvdisasm = _backend_tool("cuobjdump"), _backend_tool("nvdisasm")
    if cuobjdump is None or nvdisasm is None:
        return "no cuobjdump/nvdisasm in this Triton"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        usage = subprocess.run([cuobjdump, "-res-usage", file.name], capture_output=True, text=True).stdout
        sass = subprocess.run([nvdisasm, "-c", file.name], capture_output=True, text=True).stdout
    resources = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    instructions, labels, largest = [], {}, 0
    for line in sass.splitlines():
        label = re.match(r"\s*(\.L_x_\d+):", line)
        if label:
            labels[label.group(1)] = len(instructions)
        elif re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+", line):
            instructions.append(line)
            branch = re.search(r"BRA\s+`?\(?(\.L_x_\d+)", line)
            # A backward branch closes a loop (the one-instruction spin after EXIT is none).
            if branch and labels.get(branch.group(1), len(instructions)) < len(instructions) - 1:
                largest = max(largest, len(instructions) - labels[branch.group(1)])
    registers, stack = resources.groups() if resources else ("?", "?")
    return f"{registers} registers, {stack} stack bytes, {largest} instructions in its largest loop"


def loops(target: GPUTarget, out: Path | None) -> int:
    """--loops: compile the shared benchmark's launches, print their loops, 1 if a rule breaks."""
    broken = 0
    label = ""

    def record(name: str, result: object) -> None:
        nonlocal broken
        if isinstance(result, Exception):
            print(f"{label} {name}: {type(result).__name__}: {str(result).splitlines()[0]}")
            broken = 1
            return
        asm = result.asm  # type: ignore[attr-defined]
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{label}-{name}.ttgir").write_text(asm["ttgir"])
            (out / f"{label}-{name}.cubin").write_bytes(asm["cubin"])
        breaks = loop_rule_breaks(asm["ttgir"])
        broken |= bool(breaks)
        print(f"{label} {name}: {sass_summary(asm['cubin'])}" + "".join(f"\n    {b}" for b in breaks),
              flush=True)

    with compile_only(target, record):
        for case in shared_benchmark_cases():
            label = f"shared K={case['k']} d={case['dim']} {case['dtypes']}"
            run_case(case)
    return broken


SHARED_MEMORY_DIMS = (64, 96, 128, 256, 512)
_CONFIG_FIELD = {"_forward_kernel": "forward", "_grad_hidden_kernel": "grad_hidden",
                 "_grad_items_kernel": "grad_items", "_fused_backward_kernel": "fused_backward"}


def shared_memory_cases(dims: tuple[int, ...] = SHARED_MEMORY_DIMS) -> list[dict]:
    """Every dense kernel as the public call launches it on an H200 (launch_config's tiles): each width of
    `dims`, each dtype (bf16, fp16, fp32, bf16 hidden with fp32 items); full, shared (K=4096: the fused
    backward at d <= 64; K=16384: grad_hidden and grad_items there; one case at d > 64, where both are
    the split kernels) and per sequence (item-gradient atomics in the items' dtype, as on CUDA)."""
    cases = []
    for dim in dims:
        for dtypes in ("bf16", "fp16", "fp32", "bf16/fp32"):
            schemes = [("full", 1000), ("shared", 4096), ("sequence", 500)]
            if dim <= 64:
                schemes.append(("shared", 16384))
            for scheme, k in schemes:
                gathered = scheme != "full"
                cases.append(dict(family="dense", scheme=scheme, dim=dim, k=k, dtypes=dtypes,
                                  log_q="tensor" if gathered else "none", hits=gathered, grads="both"))
    return cases


class _SharedMemoryKnown(Exception):
    """Raised once Triton has allocated a kernel's shared memory, with the number of bytes."""

    def __init__(self, shared: int) -> None:
        super().__init__(shared)
        self.shared = shared


@contextlib.contextmanager
def stop_after_shared_memory() -> Iterator[None]:
    """Compilations inside stop once the shared memory is allocated, raising _SharedMemoryKnown (the
    `ttg.shared` attribute that make_llir copies into the kernel's metadata as `shared`, unchanged by the
    later stages): LLVM's optimiser and ptxas take minutes on 2 cores for the wide float32 kernels, the
    steps before seconds. Where a Triton version no longer reaches `llvm.to_module` this way, compilations
    run to the end and the compiled metadata is read instead."""
    from triton.backends.nvidia import compiler as nvidia_compiler

    llvm = nvidia_compiler.llvm
    original = llvm.to_module

    def to_module(module: object, context: object) -> object:
        raise _SharedMemoryKnown(int(module.get_int_attr("ttg.shared")))  # type: ignore[attr-defined]

    llvm.to_module = to_module
    try:
        yield
    finally:
        llvm.to_module = original


GRID_TILES = ((32, 32), (32, 64), (64, 32), (64, 64), (64, 128), (128, 64), (128, 128), (64, 256))


def grid_configs(dim: int) -> Iterator[ts.SharedConfig]:
    """--grid: every kernel with the same tiles, GRID_TILES x 1-4 stages x 4 and 8 warps (the fused backward
    where the case launches it)."""
    for (block_m, block_n), num_stages, num_warps in itertools.product(GRID_TILES, (1, 2, 3, 4), (4, 8)):
        tiles = ts.BlockConfig(block_m=block_m, block_n=block_n, num_warps=num_warps, num_stages=num_stages)
        yield ts.SharedConfig(forward=tiles, grad_hidden=tiles, grad_items=tiles, target_programs=528,
                              fused_backward=tiles if dim <= 64 else None, fused_max_negatives=8192)


def tiles_and_estimate(kernel: str, config: ts.SharedConfig, case: dict) -> tuple[ts.BlockConfig, int]:
    """The tiles `config` gives `kernel` (a SharedConfig field) and kernels.tile_memory's estimate of their
    shared memory in `case` (its dim and dtypes)."""
    tiles = getattr(config, kernel)
    hidden_dtype, items_dtype = DTYPES[case["dtypes"]]
    return tiles, ts.shared_memory_bytes(kernel, tiles, dim=case["dim"], hidden_dtype=hidden_dtype,
                                         items_dtype=items_dtype)


def shared_memory(target: GPUTarget, *, limit: int, dims: tuple[int, ...] = SHARED_MEMORY_DIMS,
                  full_compile: bool = False, grid: bool = False) -> int:
    """--shared-memory: each dense kernel's shared memory with launch_config's tiles, compiled for `target`,
    against `limit` and against kernels.tile_memory's estimate; 1 if a kernel exceeds the limit, the
    estimate falls below the compiled value (the rule no longer bounds what this Triton allocates) or a
    kernel does not compile. With `grid`, every case with each of grid_configs' tiles instead (hours for
    d up to 512; the limit is not checked): whether the estimate still bounds a new Triton's need."""
    failed = 0
    ratios: list[float] = []
    case: dict = {}
    config: ts.SharedConfig | None = None

    def record(name: str, result: object) -> None:
        nonlocal failed
        if name not in _CONFIG_FIELD:
            return
        label = f"{case['scheme']} K={case['k']} d={case['dim']} {case['dtypes']} {name}"
        if isinstance(result, _SharedMemoryKnown):
            shared = result.shared
        elif isinstance(result, Exception):
            print(f"{label}: {type(result).__name__}: {str(result).splitlines()[0]}", flush=True)
            failed = 1
            return
        else:
            shared = result.metadata.shared  # type: ignore[attr-defined]
        assert config is not None
        tiles, estimate = tiles_and_estimate(_CONFIG_FIELD[name], config, case)
        ratios.append(estimate / max(shared, 1))
        problems = (["OVER THE LIMIT"] if shared > limit and not grid else []) + (
            ["ESTIMATE BELOW"] if estimate < shared else [])
        failed |= bool(problems)
        print(f"{label}: {ts._tiles_text(tiles)}, {tiles.num_warps} warps: {shared} bytes of {limit}, "
              f"estimate {estimate}" + "".join(f"  {p}" for p in problems), flush=True)

    with compile_only(target, record), (contextlib.nullcontext() if full_compile
                                         else stop_after_shared_memory()):
        for case in shared_memory_cases(dims):
            hidden_dtype, items_dtype = DTYPES[case["dtypes"]]
            # launch_config's tiles on an H200 (132 multiprocessors) with `limit` bytes of shared memory
            configs = grid_configs(case["dim"]) if grid else [ts.fit_config(
                ts.gpu_config(case["dim"], 132), dim=case["dim"], hidden_dtype=hidden_dtype,
                items_dtype=items_dtype, limit=limit)]
            for config in configs:
                run_case(case, config)
    if ratios:
        ratios.sort()
        print(f"{len(ratios)} kernels: estimate / compiled need from {ratios[0]:.3f} to {ratios[-1]:.2f}, "
              f"median {ratios[len(ratios) // 2]:.3f}")
    return failed


# --dblock: the d=256 bf16 forward of shared negatives (K=4096, accidental hits removed, as bench-loss calls
# it) with the default tiles and with d-blocked candidates: (block_m, block_n, warps, stages, block_d).
DBLOCK_CANDIDATES = ((128, 128, 8, 2, 64), (128, 128, 8, 3, 64), (128, 128, 8, 4, 64), (128, 256, 8, 2, 64),
                     (128, 256, 8, 3, 64), (128, 256, 8, 4, 64), (128, 128, 4, 3, 64), (256, 128, 8, 3, 64))
# --dblock, backward: the d-blocked backward of shared negatives (both gradients, bf16, K=4096, hits removed)
# at (d, (block_m, block_n, warps, stages, block_d)); triton_shared.d_blocked_backward's tiles first.
DBLOCK_BACKWARD_CANDIDATES = ((256, (128, 64, 8, 2, 64)), (256, (128, 64, 8, 3, 64)),
                              (256, (64, 64, 8, 2, 64)), (64, (128, 128, 8, 3, 64)),
                              (64, (128, 128, 8, 2, 64)), (64, (128, 64, 8, 2, 64)))
# --dblock --grid: the grid over which the d-blocked kernels' estimates must bound the need.
DBLOCK_GRID_DIMS = (64, 96, 200, 256, 512)
DBLOCK_GRID_TILES = ((64, 64, 4, 3, 32), (128, 128, 8, 1, 64), (128, 128, 8, 2, 64), (128, 128, 8, 4, 64),
                     (128, 256, 8, 4, 64), (256, 128, 8, 3, 64), (64, 256, 4, 3, 64), (128, 128, 8, 3, 128),
                     (128, 64, 4, 2, 128))
DBLOCK_BACKWARD_GRID_TILES = ((128, 64, 8, 2, 64), (128, 64, 8, 3, 64), (128, 128, 8, 2, 64),
                              (128, 128, 8, 3, 64), (64, 64, 8, 2, 64), (64, 128, 4, 2, 64),
                              (128, 64, 8, 1, 64), (128, 64, 8, 4, 32), (64, 64, 4, 3, 128))
# Stack bytes the d-blocked backward may spill before --dblock fails. Triton 3.7.1 compiles its d=256
# 128x64 tiles with none; triton 3.9.0 spills 8 (2 stages), 16 (3 stages) and 48 bytes (two programs a row
# block) at 255 registers, a few words beside a 128-register dH accumulator. More than this means the tile
# no longer fits the register file. The forward must not spill at all.
BACKWARD_SPILL_TOLERANCE = 64

_DBLOCK_FIELD = {"_forward_kernel": "forward", "_forward_dblock_kernel": "forward",
                 "_backward_dblock_kernel": "dblock_backward", "_grad_hidden_kernel": "grad_hidden",
                 "_grad_items_kernel": "grad_items"}


def _dblock_forward_case(dim: int = 256, dtypes: str = "bf16", scheme: str = "shared") -> dict:
    return dict(family="dense", scheme=scheme, dim=dim, k=4096 if scheme != "full" else 1000, dtypes=dtypes,
                log_q="none" if scheme != "sequence" else "tensor", hits=scheme != "full", grads="hidden")


def _dblock_backward_case(dim: int = 256, dtypes: str = "bf16") -> dict:
    return dict(family="dense", scheme="shared", dim=dim, k=4096, dtypes=dtypes, log_q="none", hits=True,
                grads="both")


def dblock(target: GPUTarget, *, limit: int, grid: bool) -> int:
    """--dblock: the d-blocked forward against the default one and the d-blocked backward of shared
    negatives against the default split backward (grad_hidden, grad_items), compiled for `target` to the
    cubin: per kernel and tiles, shared memory (and kernels.tile_memory's estimate), registers, spilled
    bytes, SASS instructions of its largest loop and whether it runs on Hopper's warpgroup MMA (PTX
    wgmma.mma_async, SASS HGMMA, with its instruction shapes) or the older one (mma.sync, HMMA). 1 if a
    d-blocked kernel does not compile, exceeds `limit` or its estimate, spills (the backward: more than
    BACKWARD_SPILL_TOLERANCE bytes) or uses no wgmma. With
    `grid`: the estimates against the need over DBLOCK_GRID_* and DBLOCK_BACKWARD_GRID_TILES (every
    dtype pair; the forward also every scheme; up to the shared-memory allocation; minutes)."""
    failed = 0
    config: ts.SharedConfig | None = None
    case: dict = {}
    checked = ("_forward_dblock_kernel", "_backward_dblock_kernel")

    def record(name: str, result: object) -> None:
        nonlocal failed
        if name not in _DBLOCK_FIELD or (case["grads"] == "both") != (name not in ("_forward_kernel",
                                                                                    "_forward_dblock_kernel")):
            return
        assert config is not None
        tiles, estimate = tiles_and_estimate(_DBLOCK_FIELD[name], config, case)
        label = (f"{name} {case['scheme']} d={case['dim']} {case['dtypes']} {tiles.block_m}x{tiles.block_n} "
                 f"w{tiles.num_warps} s{tiles.num_stages} block_d={tiles.block_d or 'whole rows'}"
                 + (f" splits={config.dblock_splits}" if config.dblock_splits > 1 else ""))
        if isinstance(result, _SharedMemoryKnown):
            over = estimate < result.shared
            failed |= over
            print(f"{label}: {result.shared} bytes, estimate {estimate}"
                  + ("  ESTIMATE BELOW" if over else ""), flush=True)
            return
        if isinstance(result, Exception):
            print(f"{label}: {type(result).__name__}: {str(result).splitlines()[0]}", flush=True)
            failed = 1
            return
        shared = result.metadata.shared  # type: ignore[attr-defined]
        asm = result.asm  # type: ignore[attr-defined]
        wgmma, mma_sync = asm["ptx"].count("wgmma.mma_async"), asm["ptx"].count("mma.sync")
        sass = sass_counts(asm["cubin"], ("HGMMA", "HMMA"))
        summary = sass_summary(asm["cubin"])
        spilled = re.search(r"(\d+) stack bytes", summary)
        problems = []
        if name in checked:
            problems += ["OVER THE LIMIT"] if shared > limit else []
            problems += ["ESTIMATE BELOW"] if estimate < shared else []
            tolerated = BACKWARD_SPILL_TOLERANCE if name == "_backward_dblock_kernel" else 0
            problems += ["SPILLS"] if spilled and int(spilled.group(1)) > tolerated else []
            problems += ["NO WGMMA"] if wgmma == 0 or (sass is not None and sass["HGMMA"] == 0) else []
        failed |= bool(problems)
        sass_text = ("no nvdisasm" if sass is None else
                     f"SASS HGMMA {sass['HGMMA']} ({' '.join(sass['shapes'])}), HMMA {sass['HMMA']}")
        print(f"{label}: {shared} bytes of {limit} (estimate {estimate}); {summary}; PTX wgmma.mma_async "
              f"{wgmma}, mma.sync {mma_sync}; {sass_text}" + "".join(f"  {p}" for p in problems), flush=True)

    def base_config(dim: int, dtypes: str) -> ts.SharedConfig:
        hidden_dtype, items_dtype = DTYPES[dtypes]
        return ts.fit_config(ts.gpu_config(dim, 132), dim=dim, hidden_dtype=hidden_dtype,
                             items_dtype=items_dtype, limit=limit)

    with compile_only(target, record):
        if not grid:
            case = _dblock_forward_case()
            base = base_config(256, "bf16")
            for config in [base] + [dataclasses.replace(base, forward=ts.BlockConfig(*tiles))
                                    for tiles in DBLOCK_CANDIDATES]:
                run_case(case, config, backward=False)
            # The default backward at d=256 (the split kernels), then the d-blocked candidates, and the
            # first with two programs a row block (a float32 dH partial: its own specialisation).
            first = DBLOCK_BACKWARD_CANDIDATES[0]
            for dim, tiles, splits in ([(256, None, 1)] + [(d, t, 1) for d, t in DBLOCK_BACKWARD_CANDIDATES]
                                       + [(first[0], first[1], 2)]):
                case = _dblock_backward_case(dim)
                base = base_config(dim, "bf16")
                backward = None if tiles is None else ts.BlockConfig(*tiles)
                config = dataclasses.replace(base, fused_backward=None, dblock_splits=splits,
                                             dblock_backward=backward)
                run_case(case, config)
            return failed
        with stop_after_shared_memory():
            for dim, dtypes, scheme, tiles in itertools.product(DBLOCK_GRID_DIMS, DTYPES, ("full", "shared",
                                                                                          "sequence"),
                                                                DBLOCK_GRID_TILES):
                case = _dblock_forward_case(dim, dtypes, scheme)
                config = dataclasses.replace(base_config(256, "bf16"), forward=ts.BlockConfig(*tiles))
                run_case(case, config, backward=False)
            for dim, dtypes, tiles in itertools.product(DBLOCK_GRID_DIMS, DTYPES, DBLOCK_BACKWARD_GRID_TILES):
                case = _dblock_backward_case(dim, dtypes)
                config = dataclasses.replace(base_config(dim, dtypes), dblock_backward=ts.BlockConfig(*tiles))
                run_case(case, config)
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("OLD", "NEW"))
    parser.add_argument("--check", action="store_true", help="front end only: do the kernels compile")
    parser.add_argument("--loops", action="store_true",
                        help="the shared benchmark's tile loops: registers, spills, loop size, rules")
    parser.add_argument("--shared-memory", action="store_true",
                        help="each dense kernel's shared memory with the tiles an H200 launches, against the "
                             "limit and the estimate")
    parser.add_argument("--limit", type=int, default=H100_SHARED_MEMORY,
                        help="--shared-memory: the card's per-block opt-in shared memory, bytes")
    parser.add_argument("--dims", default=",".join(map(str, SHARED_MEMORY_DIMS)),
                        help="--shared-memory: the widths, comma-separated")
    parser.add_argument("--grid", action="store_true",
                        help="--shared-memory: a grid of tiles instead of the H200's, estimate only (hours)")
    parser.add_argument("--full-compile", action="store_true",
                        help="--shared-memory: compile to the end (slow), not up to the allocation")
    parser.add_argument("--dblock", action="store_true",
                        help="the d-blocked forward's and backward's candidate tiles in bf16 against the "
                             "default: shared memory, registers, spills, wgmma/HGMMA (--grid: the estimates)")
    args = parser.parse_args()
    target = GPUTarget("cuda", args.arch, 64)
    if args.compare:
        return compare(*args.compare)
    if args.check:
        return check(target)
    if args.loops:
        return loops(target, args.out)
    if args.dblock:
        return dblock(target, limit=args.limit, grid=args.grid)
    if args.shared_memory:
        return shared_memory(target, limit=args.limit, dims=tuple(int(d) for d in args.dims.split(",")),
                             full_compile=args.full_compile, grid=args.grid)
    if args.out is None:
        parser.error("one of --out, --check or --compare is required")
    return dump(args.out, target)


if __name__ == "__main__":
    sys.exit(main())
