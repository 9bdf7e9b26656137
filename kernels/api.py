"""The public loss entry point: validate, normalise, then dispatch to an implementation.

`linear_cross_entropy` is the only function the harness and the tests call
(docs/design.md#public-kernel-api).
Validation raises `ValueError` naming the offending argument, and a bad index never becomes an
illegal memory access. Shapes, dtypes and devices are checked before the call. Index ranges are
checked before the call too, except on the fused path on CUDA: there a host check would read a flag
back from the device on every call (a synchronisation per training step), so the kernels test every
index before using it and the error is raised at the next call instead (`kernels.index_guard`).
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Literal

import torch

from kernels import index_guard
from kernels.schemes import REDUCTIONS, Reduction, Scheme

Impl = Literal["auto", "torch", "triton"]

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
INTEGER_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
IMPLS: tuple[Impl, ...] = ("auto", "torch", "triton")


@dataclass(frozen=True)
class NormalisedCall:
    """A validated call in the flat form every implementation takes (see `triton_dispatch`)."""

    hidden: torch.Tensor  # [N, d], contiguous
    items: torch.Tensor  # [C, d], contiguous
    targets: torch.Tensor  # [N] int64, ignore_index allowed
    negatives: torch.Tensor | None  # None, [K], [B, K] or [N, K], int64 or int32
    scheme: Scheme
    num_negatives: int  # K; C for the full catalogue
    rows_per_sequence: int  # L when hidden is [B, L, d], else 1
    leading_shape: tuple[int, ...]  # hidden.shape[:-1], the shape of a reduction="none" result


def linear_cross_entropy(
    hidden: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor | int | None = None,
    *,
    seed: int | None = None,
    log_q: torch.Tensor | str | None = None,
    remove_accidental_hits: bool = True,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    impl: Impl = "auto",
) -> torch.Tensor:
    """Cross-entropy of `hidden @ items.T` over the full catalogue or over sampled negatives.

    hidden: [N, d] or [B, L, d] float32/bfloat16/float16. items: [C, d]; float32 items with half
    hidden (the autocast case) are computed in hidden's dtype. targets: [N] or [B, L] integer in
    [0, C) or ignore_index. negatives: None (full catalogue), [K] (shared by the batch), [B, K] with
    hidden [B, L, d] (shared by each sequence), [B, L, K] or [N, K] (per position), or an int K
    (drawn per position from `seed`; the same indices as `kernels.draw.draw_negatives`, each negative's
    logit plus its stratum weight, docs/design.md).
    log_q: None, a float32 tensor [C] of log sampling probabilities, or "uniform" (-log C); the
    logit of each negative is lowered by log(K) + log_q[item]. Returns a float32 scalar for
    reduction "mean" (0 when every row is ignored) or "sum", or float32 of hidden's leading shape
    for "none" (0 on ignored rows).

    An index outside [0, C) (ignore_index aside) raises a ValueError naming targets or negatives: before
    the call, except with the Triton kernels on CUDA, where the kernels leave it out (a bad target's row
    counts as ignored, a bad negative is dropped like an accidental hit) and the error is raised by the
    next call on that device or by `kernels.check_index_errors()`; see `kernels.index_guard`.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    if impl not in IMPLS:
        raise ValueError(f"impl: must be one of {', '.join(IMPLS)}, got {impl!r}")
    if not isinstance(remove_accidental_hits, bool):
        raise ValueError(f"remove_accidental_hits: must be a bool, got {remove_accidental_hits!r}")
    call = normalise_inputs(hidden, items, targets, negatives, seed=seed, ignore_index=ignore_index,
                            check_ranges=False)
    log_q_value = _normalise_log_q(log_q, call)
    resolved = resolve_impl(impl, call.hidden)
    deferred = defers_index_checks(call.hidden, resolved)
    if deferred:
        index_guard.raise_pending(call.hidden.device, wait=False)
    else:
        check_index_ranges(call, ignore_index=ignore_index)
    loss = compute_normalised(call, seed=seed, log_q=log_q_value,
                              remove_accidental_hits=remove_accidental_hits, ignore_index=ignore_index,
                              reduction=reduction, impl=resolved)
    if deferred:
        index_guard.publish(call.hidden.device)
    return loss


def resolve_impl(impl: Impl, hidden: torch.Tensor) -> Impl:
    """"auto" is "triton" on CUDA (when Triton is installed) and "torch" elsewhere."""
    if impl != "auto":
        return impl
    return "triton" if hidden.is_cuda and importlib.util.find_spec("triton") is not None else "torch"


def defers_index_checks(hidden: torch.Tensor, impl: Impl) -> bool:
    """Whether the index ranges are checked inside the kernels (kernels.index_guard) instead of on the
    host before the call: only for the Triton kernels on CUDA, where a host check is a synchronisation."""
    return impl == "triton" and hidden.is_cuda


def compute_normalised(
    call: NormalisedCall,
    *,
    seed: int | None,
    log_q: torch.Tensor | float | None,
    remove_accidental_hits: bool,
    ignore_index: int,
    reduction: Reduction,
    impl: Impl,
) -> torch.Tensor:
    """The loss of a call that `normalise_inputs` already validated (log_q as `_normalise_log_q` gives
    it). Split from `linear_cross_entropy` so that benchmarks can time the implementations without
    the public call's checks (the bare kernels)."""
    impl = resolve_impl(impl, call.hidden)
    if impl == "triton":
        from kernels.triton_dispatch import triton_linear_cross_entropy as implementation
    else:
        from kernels.reference import reference_linear_cross_entropy as implementation
    loss = implementation(
        call.hidden, call.items, call.targets, call.negatives, scheme=call.scheme,
        num_negatives=call.num_negatives, rows_per_sequence=call.rows_per_sequence, seed=seed,
        log_q=log_q, remove_accidental_hits=remove_accidental_hits, ignore_index=ignore_index,
        reduction=reduction,
    )
    if reduction == "none":
        return loss.reshape(call.leading_shape)
    return loss


def normalise_inputs(
    hidden: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor | int | None,
    *,
    seed: int | None,
    ignore_index: int,
    check_ranges: bool = True,
) -> NormalisedCall:
    """Validate shapes, dtypes, devices and (check_ranges) index ranges; return the flat form of the call.

    With check_ranges=False the caller must call `check_index_ranges` or run kernels that guard every
    index themselves (kernels.index_guard)."""
    _check_tensor("hidden", hidden)
    _check_tensor("items", items)
    _check_tensor("targets", targets)
    if hidden.dim() not in (2, 3):
        raise ValueError(f"hidden: expected [N, d] or [B, L, d], got shape {tuple(hidden.shape)}")
    if items.dim() != 2:
        raise ValueError(f"items: expected [C, d], got shape {tuple(items.shape)}")
    dim = hidden.shape[-1]
    num_items = items.shape[0]
    if dim < 1:
        raise ValueError(f"hidden: the last dimension d must be at least 1, got shape {tuple(hidden.shape)}")
    if items.shape[1] != dim:
        raise ValueError(f"items: expected [C, {dim}] to match hidden's d={dim}, "
                         f"got shape {tuple(items.shape)}")
    if num_items < 1:
        raise ValueError("items: the catalogue is empty (C = 0)")
    _check_float_dtypes(hidden, items)
    if targets.dtype not in INTEGER_DTYPES:
        raise ValueError(f"targets: expected an integer dtype, got {targets.dtype}")
    leading_shape = tuple(hidden.shape[:-1])
    if tuple(targets.shape) != leading_shape:
        raise ValueError(f"targets: expected shape {leading_shape} to match hidden, "
                         f"got {tuple(targets.shape)}")
    for name, tensor in (("items", items), ("targets", targets)):
        if tensor.device != hidden.device:
            raise ValueError(f"{name}: on {tensor.device}, but hidden is on {hidden.device}")
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise ValueError(f"ignore_index: must be an int, got {ignore_index!r}")

    num_rows = math.prod(leading_shape)
    rows_per_sequence = leading_shape[1] if hidden.dim() == 3 else 1
    flat_targets = targets.reshape(num_rows).to(torch.int64)
    scheme, flat_negatives, num_negatives = _normalise_negatives(negatives, seed, leading_shape, num_items,
                                                                 hidden.device)
    call = NormalisedCall(
        hidden=hidden.reshape(num_rows, dim).contiguous(),
        items=items.contiguous(),
        targets=flat_targets,
        negatives=flat_negatives,
        scheme=scheme,
        num_negatives=num_negatives,
        rows_per_sequence=rows_per_sequence,
        leading_shape=leading_shape,
    )
    if check_ranges:
        check_index_ranges(call, ignore_index=ignore_index)
    return call


def check_index_ranges(call: NormalisedCall, *, ignore_index: int) -> None:
    """ValueError naming targets or negatives when one of their indices lies outside [0, C) (ignore_index
    allowed in targets). On CUDA each check reads a flag back from the device: a host synchronisation."""
    num_items = call.items.shape[0]
    _check_index_range("targets", call.targets, num_items, ignore_index=ignore_index)
    if call.negatives is not None:
        _check_index_range("negatives", call.negatives, num_items, ignore_index=None)


def _normalise_negatives(
    negatives: torch.Tensor | int | None,
    seed: int | None,
    leading_shape: tuple[int, ...],
    num_items: int,
    device: torch.device,
) -> tuple[Scheme, torch.Tensor | None, int]:
    if negatives is None:
        if seed is not None:
            raise ValueError("seed: only used with int negatives (drawn in the kernel); negatives is None")
        return "full", None, num_items
    if isinstance(negatives, bool) or not isinstance(negatives, int | torch.Tensor):
        raise ValueError("negatives: expected None, an int or an integer tensor, "
                         f"got {type(negatives).__name__}")
    if isinstance(negatives, int):
        _check_num_negatives(negatives, num_items)
        if seed is None:
            raise ValueError("seed: required when negatives is an int (negatives drawn inside the kernel)")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed: must be an int, got {seed!r}")
        return "drawn", None, negatives
    if seed is not None:
        raise ValueError("seed: only used with int negatives; pass seed=None with a negatives tensor")
    if negatives.dtype not in INTEGER_DTYPES:
        raise ValueError(f"negatives: expected an integer dtype, got {negatives.dtype}")
    if negatives.device != device:
        raise ValueError(f"negatives: on {negatives.device}, but hidden is on {device}")
    shape = tuple(negatives.shape)
    num_rows = math.prod(leading_shape)
    scheme: Scheme
    if len(shape) == 1:
        scheme = "shared"
    elif len(shape) == 2 and len(leading_shape) == 2 and shape[0] == leading_shape[0]:
        scheme = "sequence"
    elif (len(shape) == 2 and shape[0] == num_rows) or (len(shape) == 3 and shape[:2] == leading_shape):
        scheme = "position"
    else:
        expected = ("[K], [B, K] (per sequence), [B, L, K] or [B*L, K]" if len(leading_shape) == 2
                    else "[K] or [N, K]")
        raise ValueError(f"negatives: expected {expected} for hidden of leading shape {leading_shape}, "
                         f"got shape {shape}")
    num_negatives = shape[-1]
    _check_num_negatives(num_negatives, num_items)
    flat = negatives.reshape(-1, num_negatives) if scheme == "position" else negatives
    # int32 indices stay int32 (half the bytes the kernels read per pass, no copy of an [N, K] tensor).
    if flat.dtype not in (torch.int64, torch.int32):
        flat = flat.to(torch.int64)
    return scheme, flat.contiguous(), num_negatives


def _normalise_log_q(log_q: torch.Tensor | str | None, call: NormalisedCall) -> torch.Tensor | float | None:
    if log_q is None:
        return None
    if call.scheme == "full":
        raise ValueError("log_q: the logQ correction applies to sampled negatives; negatives is None")
    num_items = call.items.shape[0]
    if isinstance(log_q, str):
        if log_q != "uniform":
            raise ValueError(f"log_q: the only named distribution is 'uniform', got {log_q!r}")
        return -math.log(num_items)
    if not isinstance(log_q, torch.Tensor):
        raise ValueError(f"log_q: expected None, 'uniform' or a float tensor [C], got {type(log_q).__name__}")
    if tuple(log_q.shape) != (num_items,):
        raise ValueError(f"log_q: expected shape ({num_items},) (one value per item), "
                         f"got {tuple(log_q.shape)}")
    if not log_q.is_floating_point():
        raise ValueError(f"log_q: expected a floating dtype, got {log_q.dtype}")
    if log_q.device != call.hidden.device:
        raise ValueError(f"log_q: on {log_q.device}, but hidden is on {call.hidden.device}")
    return log_q.detach().to(torch.float32).contiguous()


def _check_tensor(name: str, value: object) -> None:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")


def _check_float_dtypes(hidden: torch.Tensor, items: torch.Tensor) -> None:
    for name, tensor in (("hidden", hidden), ("items", items)):
        if tensor.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{name}: expected float32, bfloat16 or float16, got {tensor.dtype}")
    autocast_case = items.dtype == torch.float32 and hidden.dtype in (torch.bfloat16, torch.float16)
    if items.dtype != hidden.dtype and not autocast_case:
        raise ValueError(f"items: dtype {items.dtype} does not match hidden's {hidden.dtype} "
                         "(only float32 items with bfloat16/float16 hidden may differ)")


def _check_num_negatives(num_negatives: int, num_items: int) -> None:
    if not 1 <= num_negatives <= num_items:
        raise ValueError(f"negatives: the number of negatives K must be in [1, C={num_items}], "
                         f"got {num_negatives}")


def _check_index_range(name: str, index: torch.Tensor, num_items: int, *, ignore_index: int | None) -> None:
    if index.numel() == 0:
        return
    if ignore_index is None:
        # One pass over what may be an [N, K] tensor of 10^8 indices, then one read-back.
        lowest, highest = (int(v) for v in torch.stack(torch.aminmax(index)).tolist())
        if lowest >= 0 and highest < num_items:
            return
    bad = (index < 0) | (index >= num_items)
    if ignore_index is not None:
        bad &= index != ignore_index
    if bool(bad.any()):  # the one host synchronisation of a valid call
        position = tuple(int(i) for i in bad.nonzero()[0])
        allowed = f"[0, {num_items})" + ("" if ignore_index is None else f" or ignore_index={ignore_index}")
        raise ValueError(f"{name}: value {int(index[position])} at index {position} is outside {allowed}")
