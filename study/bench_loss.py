"""`cce-study bench-loss`: the fused loss against PyTorch baselines, forward + backward, on one GPU.

For each case (scheme x number of negatives) every implementation runs on the same random inputs in
one process: the Triton kernel (`impl="triton"`), PyTorch eager (`impl="torch"`), `torch.compile` of
the reference function, and for the full catalogue Apple's `cut_cross_entropy` when it is installed.
Time is the median of `triton.testing.do_bench` after its warm-up. Peak extra memory is
`max_memory_allocated` during one step minus what was allocated before it, with the inputs and their
gradient buffers already in place (so it counts the loss's temporaries, including the gradients the
backward produces before accumulating them). An out-of-memory case is recorded as "OOM".
Every implementation is timed on the call `kernels.api.normalise_inputs` validated once (the
validation reads an index-range flag back from the device: a host synchronisation per call); the row
"validate" times that validation alone, what `kernels.linear_cross_entropy` adds to each call.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

SCHEMES = ("full", "shared", "sequence", "position", "drawn")
IMPLS = ("triton", "torch", "compile", "cce")
# Run order within a case: the references first, so the others are compared with them.
IMPL_ORDER = ("torch", "cce", "triton", "compile")
REFERENCE_IMPLS = ("torch", "cce")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
FLOP_FORMULA = ("FLOPs = 6 * N * K * d (2NKd forward + 4NKd backward: grad of hidden and of items); "
                "K = C for the full catalogue")
GIB = 2**30
DRAW_SEED = 12345


@dataclass(frozen=True)
class Case:
    scheme: str
    rows: int
    hidden_dim: int
    catalogue: int
    negatives: int  # K; the catalogue size for "full"
    seq_len: int
    dtype: str

    @property
    def flops(self) -> int:
        return 6 * self.rows * self.negatives * self.hidden_dim


@dataclass
class Measurement:
    case: Case
    impl: str
    status: str = "ok"  # ok | OOM | error | skipped
    time_ms: float | None = None
    peak_extra_bytes: int | None = None
    tflops: float | None = None
    loss: float | None = None
    compared_with: str | None = None  # the impl the relative differences are measured against
    rel_diff_loss: float | None = None
    rel_diff_grad_hidden: float | None = None
    rel_diff_grad_items: float | None = None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        row = asdict(self)
        row.update(row.pop("case"))
        row["peak_extra_gib"] = None if self.peak_extra_bytes is None else self.peak_extra_bytes / GIB
        return row


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=51_200, help="N, rows of hidden (batch x positions)")
    parser.add_argument("--hidden-dim", type=int, default=64, help="d")
    parser.add_argument("--catalogue", type=int, default=1_000_000, help="C, items in the catalogue")
    parser.add_argument("--negatives", default="4096", help="K, comma-separated list (ignored by 'full')")
    parser.add_argument("--scheme", default="shared", help=f"comma-separated list of {', '.join(SCHEMES)}")
    parser.add_argument("--seq-len", type=int, default=200, help="L for the per-sequence scheme (B = N / L)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="dtype of hidden and items")
    parser.add_argument("--impls", default=None,
                        help=f"comma-separated subset of {', '.join(IMPLS)} (default: all available)")
    parser.add_argument("--warmup-ms", type=float, default=100.0, help="do_bench warm-up time")
    parser.add_argument("--rep-ms", type=float, default=500.0, help="do_bench measuring time")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON results file (default results/bench/loss-<UTC time>.json)")


def parse_list(name: str, text: str, allowed: tuple[str, ...]) -> list[str]:
    values = [value.strip() for value in text.split(",") if value.strip()]
    if not values:
        raise ValueError(f"{name}: empty list")
    unknown = [value for value in values if value not in allowed]
    if unknown:
        raise ValueError(f"{name}: unknown {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return list(dict.fromkeys(values))


def parse_negatives(text: str) -> list[int]:
    try:
        values = [int(value) for value in text.split(",") if value.strip()]
    except ValueError as exc:
        raise ValueError(f"--negatives: expected comma-separated integers, got {text!r}") from exc
    if not values or any(value < 1 for value in values):
        raise ValueError(f"--negatives: expected positive integers, got {text!r}")
    return list(dict.fromkeys(values))


def build_cases(args: argparse.Namespace) -> list[Case]:
    """The cases to run, in order; raises ValueError naming the bad option."""
    for name in ("rows", "hidden_dim", "catalogue", "seq_len"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: must be positive, got {getattr(args, name)}")
    schemes = parse_list("--scheme", args.scheme, SCHEMES)
    negatives = parse_negatives(args.negatives)
    if "sequence" in schemes and args.rows % args.seq_len:
        raise ValueError(f"--seq-len: --rows {args.rows} is not a multiple of --seq-len {args.seq_len} "
                         "(the per-sequence scheme needs B = N / L sequences)")
    too_many = [k for k in negatives if k > args.catalogue]
    if too_many and set(schemes) != {"full"}:
        raise ValueError(f"--negatives: {too_many} exceed --catalogue {args.catalogue}")
    cases = []
    for scheme in schemes:
        for k in [args.catalogue] if scheme == "full" else negatives:
            cases.append(Case(scheme, args.rows, args.hidden_dim, args.catalogue, k, args.seq_len,
                              args.dtype))
    return cases


def available_impls(requested: str | None) -> list[str]:
    if requested is not None:
        return parse_list("--impls", requested, IMPLS)
    impls = ["triton", "torch", "compile"]
    if importlib.util.find_spec("cut_cross_entropy") is not None:
        impls.append("cce")
    return impls


def run(args: argparse.Namespace) -> int:
    from study.cli import UserError

    cases = build_cases(args)
    impls = available_impls(args.impls)
    if args.warmup_ms <= 0 or args.rep_ms <= 0:
        raise ValueError("--warmup-ms/--rep-ms: must be positive")
    if not torch.cuda.is_available():
        raise UserError("bench-loss needs a CUDA GPU; none is visible (torch.cuda.is_available() is False)")
    out = args.out or Path("results/bench") / f"loss-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    measurements: list[Measurement] = []
    print(header())
    for case in cases:
        for measurement in run_case(case, impls, args.warmup_ms, args.rep_ms):
            measurements.append(measurement)
            print(table_row(measurement), flush=True)
    out.write_text(json.dumps(report(measurements, args), indent=2) + "\n")
    print(f"{FLOP_FORMULA}\nwrote {out}")
    return 0


def report(measurements: list[Measurement], args: argparse.Namespace) -> dict[str, Any]:
    import triton

    return {
        "card": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "command": shlex.join(sys.argv),
        "options": {key: str(value) if isinstance(value, Path) else value
                    for key, value in vars(args).items() if not key.startswith("_") and not callable(value)},
        "flop_formula": FLOP_FORMULA,
        "timing": f"triton.testing.do_bench median, warmup {args.warmup_ms} ms, rep {args.rep_ms} ms, "
                  "forward + backward to hidden and items",
        "memory": "max_memory_allocated during one step minus memory_allocated before it; inputs and "
                  "gradient buffers exist beforehand",
        "results": [measurement.as_json() for measurement in measurements],
    }


def header() -> str:
    return (f"{'scheme':<9}{'K':>9} {'impl':<8}{'time ms':>10}{'extra GiB':>11}{'TFLOP/s':>9}"
            f"{'loss diff':>10}{'grad diff':>10}  status")


def table_row(m: Measurement) -> str:
    def number(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    extra_gib = None if m.peak_extra_bytes is None else m.peak_extra_bytes / GIB
    grad_diffs = [diff for diff in (m.rel_diff_grad_hidden, m.rel_diff_grad_items) if diff is not None]
    grad_diff = max(grad_diffs) if grad_diffs else None
    status = m.status if m.error is None else f"{m.status}: {m.error}"
    if m.compared_with not in (None, "torch"):
        status += f" (diffs vs {m.compared_with})"
    return (f"{m.case.scheme:<9}{m.case.negatives:>9} {m.impl:<8}{number(m.time_ms, '.2f'):>10}"
            f"{number(extra_gib, '.3f'):>11}{number(m.tflops, '.1f'):>9}{number(m.rel_diff_loss, '.1e'):>10}"
            f"{number(grad_diff, '.1e'):>10}  {status}")


class CaseInputs:
    """Random inputs of one case on the GPU; items and hidden require grad, like an embedding table."""

    def __init__(self, case: Case) -> None:
        generator = torch.Generator(device="cuda").manual_seed(0)
        dtype = DTYPES[case.dtype]
        n, d, c, k = case.rows, case.hidden_dim, case.catalogue, case.negatives
        leading: tuple[int, ...] = (n // case.seq_len, case.seq_len) if case.scheme == "sequence" else (n,)
        self.hidden = torch.randn(*leading, d, device="cuda", generator=generator).to(dtype).requires_grad_()
        items = torch.randn(c, d, device="cuda", generator=generator) * d**-0.5  # logits of order 1
        self.items = items.to(dtype).requires_grad_()
        self.targets = torch.randint(0, c, leading, device="cuda", generator=generator)
        self.negatives: torch.Tensor | int | None = None
        self.seed: int | None = None
        if case.scheme == "shared":
            self.negatives = torch.randint(0, c, (k,), device="cuda", generator=generator)
        elif case.scheme == "sequence":
            self.negatives = torch.randint(0, c, (leading[0], k), device="cuda", generator=generator)
        elif case.scheme == "position":
            self.negatives = torch.randint(0, c, (n, k), device="cuda", generator=generator)
        elif case.scheme == "drawn":
            self.negatives, self.seed = k, DRAW_SEED


def loss_function(impl: str, inputs: CaseInputs, case: Case) -> Callable[[], torch.Tensor] | str:
    """A closure computing the loss with `impl`, or the reason the impl does not apply.

    The fused kernel, eager PyTorch and torch.compile all run on the call that
    `kernels.api.normalise_inputs` validated once, outside the timed step: the validation's index
    check reads a flag back from the device, a host synchronisation that would charge the public
    API's cost to whichever implementation goes through it. `validation_step` times it on its own.
    """
    from kernels.api import compute_normalised

    if impl in ("triton", "torch"):
        call = validated_call(inputs)

        def validated() -> torch.Tensor:
            return compute_normalised(call, seed=inputs.seed, log_q=None, remove_accidental_hits=True,
                                      ignore_index=-100, reduction="mean", impl="triton" if impl == "triton"
                                      else "torch")
        return validated
    if impl == "compile":
        return compiled_reference(inputs)
    if case.scheme != "full":
        return "not applicable"  # cut_cross_entropy computes the full-catalogue loss only
    if importlib.util.find_spec("cut_cross_entropy") is None:
        return "cut_cross_entropy is not installed"
    from cut_cross_entropy import linear_cross_entropy as apple_linear_cross_entropy

    def apple() -> torch.Tensor:
        hidden = inputs.hidden.reshape(-1, inputs.hidden.shape[-1])
        return apple_linear_cross_entropy(hidden, inputs.items, inputs.targets.reshape(-1))
    return apple


def validated_call(inputs: CaseInputs) -> Any:
    from kernels.api import normalise_inputs

    return normalise_inputs(inputs.hidden, inputs.items, inputs.targets, inputs.negatives, seed=inputs.seed,
                            ignore_index=-100)


def validation_step(inputs: CaseInputs) -> Callable[[], None]:
    """What `kernels.linear_cross_entropy` adds to every call: checks and the index-range read-back."""
    def step() -> None:
        validated_call(inputs)
    return step


def compiled_reference(inputs: CaseInputs) -> Callable[[], torch.Tensor]:
    """torch.compile of the reference on the validated, flattened call (validation stays eager)."""
    from kernels.reference import reference_linear_cross_entropy

    torch._dynamo.reset()  # a fresh cache per case: shapes change and the recompile limit is small
    call = validated_call(inputs)
    compiled = torch.compile(reference_linear_cross_entropy, dynamic=False)

    def step() -> torch.Tensor:
        return compiled(call.hidden, call.items, call.targets, call.negatives, scheme=call.scheme,
                        num_negatives=call.num_negatives, rows_per_sequence=call.rows_per_sequence,
                        seed=inputs.seed, log_q=None, remove_accidental_hits=True, ignore_index=-100,
                        reduction="mean")
    return step


def run_case(case: Case, impls: list[str], warmup_ms: float, rep_ms: float) -> list[Measurement]:
    """Measure every impl on one case on the same inputs.

    Eager PyTorch runs first and the others are checked against it; where eager does not fit,
    cut_cross_entropy (full catalogue) is the reference instead.
    """
    from triton.testing import do_bench

    ordered = sorted(impls, key=IMPL_ORDER.index)
    results: list[Measurement] = []
    inputs: CaseInputs | None = None
    reference: dict[str, Any] | None = None
    reference_impl: str | None = None
    try:
        inputs = CaseInputs(case)
        for impl in ordered:
            measurement = Measurement(case, impl)
            loss_fn = loss_function(impl, inputs, case)
            if isinstance(loss_fn, str):
                if loss_fn != "not applicable":
                    measurement.status, measurement.error = "skipped", loss_fn
                    results.append(measurement)
                continue
            try:
                check = correctness_run(loss_fn, inputs)
                measurement.loss = check["loss"]
                if reference is None and impl in REFERENCE_IMPLS:
                    reference, reference_impl = check, impl
                elif reference is not None:
                    measurement.compared_with = reference_impl
                    compare(measurement, check, reference)
                del check
                step = fwd_bwd(loss_fn)
                measurement.peak_extra_bytes = peak_extra_memory(step)
                median_ms = do_bench(step, warmup=warmup_ms, rep=rep_ms, return_mode="median")
                measurement.time_ms = float(median_ms)
                measurement.tflops = case.flops / (measurement.time_ms * 1e-3) / 1e12
            except Exception as exc:  # a failing impl is recorded; the other impls still run
                if is_out_of_memory(exc):
                    measurement.status = "OOM"
                else:
                    measurement.status = "error"
                    measurement.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            results.append(measurement)
            free_memory()
        validation = Measurement(case, "validate")  # the public API's checks, timed on their own
        validation.time_ms = float(do_bench(validation_step(inputs), warmup=warmup_ms, rep=rep_ms,
                                            return_mode="median"))
        results.append(validation)
    except torch.cuda.OutOfMemoryError:
        results.extend(Measurement(case, impl, status="OOM", error="inputs do not fit") for impl in ordered
                       if impl not in {m.impl for m in results})
    finally:
        del inputs, reference
        free_memory()
    return results


def compare(measurement: Measurement, check: dict[str, Any], reference: dict[str, Any]) -> None:
    measurement.rel_diff_loss = abs(check["loss"] - reference["loss"]) / max(abs(reference["loss"]), 1e-30)
    measurement.rel_diff_grad_hidden = relative_l2(check["grad_hidden"], reference["grad_hidden"])
    measurement.rel_diff_grad_items = relative_l2(check["grad_items"], reference["grad_items"])


def is_out_of_memory(exc: BaseException) -> bool:
    # Compiled (Triton/inductor) kernels report a failed allocation as a generic accelerator error.
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc)


def fwd_bwd(loss_fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
    def step() -> None:
        loss_fn().backward()  # gradients accumulate into the existing buffers: no new persistent memory
    return step


def correctness_run(loss_fn: Callable[[], torch.Tensor], inputs: CaseInputs) -> dict[str, Any]:
    """One step from zeroed gradients: the loss and float32 copies of both gradients."""
    for tensor in (inputs.hidden, inputs.items):
        if tensor.grad is None:
            tensor.grad = torch.zeros_like(tensor)
        else:
            tensor.grad.zero_()
    loss = loss_fn()
    loss.backward()
    assert inputs.hidden.grad is not None and inputs.items.grad is not None
    return {"loss": float(loss.detach()), "grad_hidden": inputs.hidden.grad.float().clone(),
            "grad_items": inputs.items.grad.float().clone()}


def relative_l2(value: torch.Tensor, reference: torch.Tensor) -> float:
    difference = torch.linalg.vector_norm(value - reference)
    return float(difference / torch.linalg.vector_norm(reference).clamp(min=1e-30))


def peak_extra_memory(step: Callable[[], None]) -> int:
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - baseline


def free_memory() -> None:
    gc.collect()
    torch.cuda.empty_cache()



def main(argv: list[str] | None = None) -> int:
    """`python -m study.bench_loss ...`: the same command without the rest of the CLI's imports."""
    from study.cli import main_for

    return main_for("bench-loss", argv)


if __name__ == "__main__":
    sys.exit(main())
