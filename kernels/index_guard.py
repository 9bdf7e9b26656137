"""Out-of-range indices on the fused CUDA path: refused inside the kernels, reported without a host sync.

The public call refuses an index outside [0, C) with a ValueError naming the argument. Checking that
on the host needs the device's answer, a synchronisation on every call that stops a training step
from running ahead of the GPU. So on the fused path on CUDA the check moves into the kernels:

- every kernel that turns an index into an address first tests its range; an out-of-range target
  makes its row count as ignored (no loss, no gradient, not counted by the mean), an out-of-range
  negative is left out like an accidental hit. No such index ever becomes an address. (The dense-negative
  kernels test their negatives once per call, in a small kernel before the forward, not in every tile.)
- the kernels that test record what they refused in a small per-device int64 flag buffer (`flags`),
  which the call then copies to pinned host memory asynchronously (`publish`).
- the next call on that device reads the copy if it has arrived (an event query, not a wait) and
  raises the ValueError then; `check_index_errors` waits for the copy and raises at once (the trainer
  calls it where it synchronises anyway). So the error names the argument as before, one or a few
  calls late, and the step that carried the bad index was computed without it.

On the CPU (and for the PyTorch reference and the binary losses anywhere) the range is checked
before the call as before: there a host check costs no synchronisation with a device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Slots of the flag buffer: per argument (targets at 0, negatives at 3) a "seen" flag, one refused
# value and the catalogue size C of the call that refused it (several programs may write at once:
# any one of their values is kept, which is all a message needs).
TARGETS_SLOT = 0
NEGATIVES_SLOT = 3
FLAG_SLOTS = 6
_ARGUMENTS = {TARGETS_SLOT: ("targets", "its row was treated as ignored"),
              NEGATIVES_SLOT: ("negatives", "it was left out like an accidental hit")}


@dataclass
class _DeviceGuard:
    flags: torch.Tensor  # int64 [FLAG_SLOTS] on the device, written by the kernels
    host: torch.Tensor  # its copy in (pinned) host memory
    event: torch.cuda.Event | None  # recorded after the latest copy; None on the CPU


_GUARDS: dict[torch.device, _DeviceGuard] = {}


def _guard(device: torch.device) -> _DeviceGuard:
    device = _canonical(device)
    guard = _GUARDS.get(device)
    if guard is None:
        flags = torch.zeros(FLAG_SLOTS, dtype=torch.int64, device=device)
        if device.type == "cuda":
            host = torch.zeros(FLAG_SLOTS, dtype=torch.int64, pin_memory=True)
            guard = _DeviceGuard(flags, host, torch.cuda.Event())
        else:
            guard = _DeviceGuard(flags, flags, None)
        _GUARDS[device] = guard
    return guard


def _canonical(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _capturing(device: torch.device) -> bool:
    """Whether a CUDA graph is being captured on the current stream (nothing may wait or query then)."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def flags(device: torch.device) -> torch.Tensor:
    """The flag buffer the kernels on `device` report refused indices into (kernels.triton_guard)."""
    return _guard(device).flags


def publish(device: torch.device) -> None:
    """After a call's kernels are queued: copy the flags to the host without waiting for them."""
    guard = _guard(device)
    if guard.event is not None and not _capturing(device):
        guard.host.copy_(guard.flags, non_blocking=True)
        guard.event.record()


def raise_pending(device: torch.device, *, wait: bool) -> None:
    """Raise the ValueError of an index the kernels on `device` refused since the last report.

    wait=False looks only at the copy `publish` queued, if it has arrived (no synchronisation); wait=True
    reads the flags themselves, waiting for the kernels queued so far.
    """
    guard = _GUARDS.get(_canonical(device))
    if guard is None:
        return
    if guard.event is None or wait:
        if guard.event is not None and _capturing(device):
            return  # inside a CUDA graph capture nothing may wait; replays leave the flags for later
        values = guard.flags.tolist()  # waits for the kernels queued so far (graph replays included)
    else:
        if _capturing(device) or not guard.event.query():
            return
        values = guard.host.tolist()
    for slot, (name, treatment) in _ARGUMENTS.items():
        if values[slot]:
            guard.flags.zero_()  # reported once (this path may synchronise: it ends in an error)
            guard.host.zero_()
            value, num_items = values[slot + 1], values[slot + 2]
            raise ValueError(
                f"{name}: value {value} is outside [0, {num_items}) (the catalogue), refused inside the "
                f"fused kernel on {device} in this or an earlier call ({treatment}); on CUDA the index "
                "range is checked in the kernel and reported at the next call or check_index_errors(), "
                "not before the call"
            )


def check_index_errors(device: torch.device | str | None = None) -> None:
    """Wait for the fused kernels queued so far and raise the ValueError of any index they refused.

    `kernels.linear_cross_entropy` on CUDA reports an out-of-range index at the next call on the same
    device; call this where the host synchronises anyway (end of an epoch, a loss read-back) to hear
    of it there. device None checks every device used so far.
    """
    devices = list(_GUARDS) if device is None else [torch.device(device)]
    for each in devices:
        raise_pending(each, wait=True)
