"""Memory probes (torch allocator, NVML per process, host RSS) and memory-budget enforcement.

A memory budget is a limit on the GPU memory of the trial's process: what NVML reports for the
process, the headline `MemoryReport.peak_bytes`. PyTorch can only cap its own caching allocator, so
`apply_budget` caps the allocator at the budget minus the CUDA context (memory the process holds
outside PyTorch). A trial over its budget then fails fast with an out-of-memory error, which
`classify_out_of_memory` tells apart from the card itself running out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import resource
import sys
import threading
import warnings
from collections.abc import Callable
from types import ModuleType, TracebackType
from typing import Any, Literal

import psutil
import torch

from study.record import MemoryReport

KiB = 2**10
MiB = 2**20
GiB = 2**30

# A budget below this is certainly a mistake (and a plain integer below it is more likely a
# mistyped fraction than a byte count).
MIN_BUDGET_BYTES = MiB

# Memory a CUDA process holds outside PyTorch's allocator: the context, loaded kernel modules,
# cuBLAS handles. NVML minus torch's peak reserved was 740-744 MiB in every SASRec trial measured on
# one H200 (torch 2.11, CUDA 13; benchmarks/memory_validation.py); see docs/design.md#memory-measurement.
DEFAULT_CUDA_CONTEXT_BYTES = 768 * MiB

_BINARY_UNITS = {"kib": KiB, "mib": MiB, "gib": GiB, "tib": 2**40}
_DECIMAL_UNITS = {"kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_BYTE_UNITS = {"b": 1, "byte": 1, "bytes": 1}
_UNITS = {**_BINARY_UNITS, **_DECIMAL_UNITS, **_BYTE_UNITS}
_BUDGET_PATTERN = re.compile(
    r"^\s*(?P<number>[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(?P<unit>[A-Za-z%]*)\s*$"
)


def format_bytes(num_bytes: int | float) -> str:
    """Bytes as text for people: "1.50 GiB"."""
    for unit, size in (("TiB", 2**40), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(num_bytes) >= size:
            return f"{num_bytes / size:.2f} {unit}"
    return f"{int(num_bytes)} B"


def parse_budget(text: str, total_bytes: int | None) -> int:
    """Parse a memory budget into bytes.

    Accepted forms (units are case-insensitive, a space before the unit is allowed):
    - binary sizes "40GiB", "8000 MiB", "512KiB", "1TiB";
    - decimal sizes "1.5GB", "500MB" (GB = 10^9 bytes, as on the card's box);
    - "100B" / "100 bytes";
    - a fraction of the card, "0.5" (a plain number in (0, 1]), or a percentage "50%";
      both need `total_bytes`, the card's total memory;
    - a plain integer greater than 1 is a byte count, and must be at least 1 MiB, since a smaller
      one is almost surely a mistyped fraction or a missing unit.
    Single-letter units ("40G") are refused because they are ambiguous between GiB and GB.
    Any budget below 1 MiB is refused. Errors raise ValueError naming `memory_budget` and the text.
    """
    if not isinstance(text, str):
        raise ValueError(f"memory_budget: expected text such as '40GiB', got {text!r}")
    match = _BUDGET_PATTERN.match(text)
    if match is None:
        raise ValueError(
            f"memory_budget: cannot parse {text!r}; write e.g. '40GiB', '8000MiB', '1.5GB' or '0.5'"
        )
    number = float(match["number"])
    unit = match["unit"].lower()
    if unit == "%" or (unit == "" and number <= 1.0):
        fraction = number / 100.0 if unit == "%" else number
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"memory_budget: {text!r} is not a fraction of the card in (0, 1] (or 0-100%)")
        if total_bytes is None:
            raise ValueError(
                f"memory_budget: {text!r} is a fraction of the card, but the card's total memory is unknown "
                "(no GPU); give an absolute size such as '40GiB'"
            )
        budget = round(fraction * total_bytes)
    elif unit == "":
        if not number.is_integer():
            raise ValueError(
                f"memory_budget: {text!r} is neither a fraction in (0, 1] nor a whole number of bytes; "
                "add a unit"
            )
        budget = int(number)
    elif unit in _UNITS:
        budget = round(number * _UNITS[unit])
    else:
        raise ValueError(
            f"memory_budget: unknown unit {match['unit']!r} in {text!r}; use one of "
            "B, KiB, MiB, GiB, TiB, KB, MB, GB, TB, % or a fraction such as 0.5"
        )
    if budget < MIN_BUDGET_BYTES:
        raise ValueError(f"memory_budget: {text!r} is {budget} bytes, below the minimum of 1 MiB")
    return budget


def apply_budget(budget_bytes: int, device: torch.device | str, *, context_bytes: int | None = None) -> None:
    """Enforce a memory budget on this process for `device`.

    On CUDA: caps PyTorch's caching allocator with `torch.cuda.set_per_process_memory_fraction` at
    `budget_bytes - context_bytes`, so that allocator memory plus the CUDA context stays within the
    budget; allocations beyond it raise `torch.OutOfMemoryError`. `context_bytes` defaults to the
    larger of the process's memory outside PyTorch measured now through NVML (when available) and
    DEFAULT_CUDA_CONTEXT_BYTES (the context grows as kernels load, so a measurement taken early is
    a lower bound). Raises ValueError if the budget exceeds the card or does not leave room beyond
    the context.

    On CPU (or any non-CUDA device) a budget cannot be enforced: this is a no-op that emits a
    `warnings.warn` saying so; the trial's memory is still measured (peak RSS).
    """
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes <= 0:
        raise ValueError(f"memory_budget: must be a positive number of bytes, got {budget_bytes!r}")
    device = torch.device(device)
    if device.type != "cuda":
        warnings.warn(
            f"memory_budget: {format_bytes(budget_bytes)} cannot be enforced on device {device}; "
            "it is recorded but not applied",
            RuntimeWarning,
            stacklevel=2,
        )
        return
    index = _cuda_index(device)
    properties = torch.cuda.get_device_properties(index)
    total = int(properties.total_memory)
    if budget_bytes > total:
        raise ValueError(
            f"memory_budget: {format_bytes(budget_bytes)} exceeds the total memory of cuda:{index} "
            f"({properties.name}, {format_bytes(total)})"
        )
    if context_bytes is None:
        context_bytes = max(DEFAULT_CUDA_CONTEXT_BYTES, _measured_memory_outside_torch(index) or 0)
    limit = allocator_limit_bytes(budget_bytes, context_bytes)
    torch.cuda.set_per_process_memory_fraction(limit / total, index)


def allocator_limit_bytes(budget_bytes: int, context_bytes: int) -> int:
    """The cap for PyTorch's allocator that keeps the whole process within `budget_bytes`."""
    limit = budget_bytes - context_bytes
    if limit <= 0:
        raise ValueError(
            f"memory_budget: {format_bytes(budget_bytes)} leaves no room beyond the CUDA context "
            f"({format_bytes(context_bytes)})"
        )
    return limit


def is_out_of_memory(exc: BaseException) -> bool:
    """True for an out-of-memory error of the GPU or host allocator (also when it is the `__cause__`)."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:
        if isinstance(current, _OOM_TYPES):
            return True
        if isinstance(current, RuntimeError) and _OOM_TEXT.search(str(current)):
            return True
        current = current.__cause__
        seen += 1
    return False


# torch.OutOfMemoryError is the public name since torch 2.5; torch.cuda.OutOfMemoryError before.
_OOM_TYPES: tuple[type[BaseException], ...] = tuple(
    {getattr(torch, "OutOfMemoryError", MemoryError), getattr(torch.cuda, "OutOfMemoryError", MemoryError),
     MemoryError}
)
_OOM_TEXT = re.compile(r"out of memory|CUDA_ERROR_OUT_OF_MEMORY|can't allocate memory", re.IGNORECASE)
_SIZE_TEXT = r"([0-9]+(?:\.[0-9]+)?) (bytes|KiB|MiB|GiB|TiB)"
_OOM_FACTS = {
    "requested": re.compile(r"Tried to allocate " + _SIZE_TEXT),
    "allowed": re.compile(_SIZE_TEXT + r" allowed;"),
    "allocated": re.compile(r"Of the allocated memory " + _SIZE_TEXT + r" is allocated by PyTorch"),
    "unallocated": re.compile(_SIZE_TEXT + r" is reserved by PyTorch but unallocated"),
}
# torch prints sizes with two decimals; allow for that rounding on three summed numbers.
_OOM_ROUNDING_SLACK = 16 * MiB


def _parse_size(number: str, unit: str) -> int:
    scale = {"bytes": 1, "KiB": KiB, "MiB": MiB, "GiB": GiB, "TiB": 2**40}[unit]
    return round(float(number) * scale)


def out_of_memory_facts(message: str) -> dict[str, int]:
    """Sizes stated in PyTorch's CUDA out-of-memory message: requested, allowed, allocated, unallocated."""
    facts: dict[str, int] = {}
    for name, pattern in _OOM_FACTS.items():
        found = pattern.search(message)
        if found is not None:
            facts[name] = _parse_size(found[1], found[2])
    return facts


def classify_out_of_memory(exc: BaseException, budget_bytes: int | None) -> Literal["over_budget", "oom"]:
    """Whether an out-of-memory error came from the budget ("over_budget") or the device itself ("oom").

    Without a budget it is "oom". With one, PyTorch's message says how much the allocator held,
    what was requested and (when a memory fraction is set) how much was allowed: the trial is
    over budget when held + requested exceeds the allowed amount (or the budget, if the message
    states no allowance); it is "oom" when the device ran out below that (e.g. another process
    filled the card). A host (CPU) out-of-memory is "oom": budgets are not enforced there. When the
    message states no sizes, a set budget is taken as the cause: it is the tighter limit by design.
    Raises ValueError if `exc` is not an out-of-memory error.
    """
    if not is_out_of_memory(exc):
        raise ValueError(f"exc: not an out-of-memory error: {type(exc).__name__}: {exc}")
    if budget_bytes is None:
        return "oom"
    message = _oom_message(exc)
    if isinstance(exc, MemoryError) or "can't allocate memory" in message.lower():
        return "oom"
    facts = out_of_memory_facts(message)
    if "requested" in facts and "allocated" in facts:
        held = facts["allocated"] + facts.get("unallocated", 0)
        limit = facts.get("allowed", budget_bytes)
        return "over_budget" if held + facts["requested"] + _OOM_ROUNDING_SLACK > limit else "oom"
    return "over_budget"


def _oom_message(exc: BaseException) -> str:
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, _OOM_TYPES) or _OOM_TEXT.search(str(current)):
            return str(current)
        current = current.__cause__
    return str(exc)


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _import_pynvml() -> ModuleType | None:
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


class NvmlProcessMemory:
    """NVML's GPU memory of this process on one CUDA device; `read()` is None where NVML can't tell.

    The NVML device is found through the device's UUID, because NVML's indices ignore
    CUDA_VISIBLE_DEVICES. Only this process's entry (matched by pid) is counted, because trials may
    share a card. Inside a container without the host's pid namespace NVML reports host pids, no
    entry matches, and `read()` returns None.
    """

    def __init__(self, cuda_index: int) -> None:
        self._pynvml = _import_pynvml()
        self._handle: Any = None
        self._initialised = False
        self.error: str | None = None
        if self._pynvml is None:
            self.error = "pynvml (nvidia-ml-py) is not installed"
            return
        try:
            self._pynvml.nvmlInit()
            self._initialised = True
            self._handle = self._handle_for(cuda_index)
        except Exception as exc:  # NVML raises its own NVMLError family; any failure means "unavailable"
            self.error = f"NVML unavailable: {exc}"
            self.close()

    def _handle_for(self, cuda_index: int) -> Any:
        assert self._pynvml is not None
        uuid = str(torch.cuda.get_device_properties(cuda_index).uuid)
        candidates = [uuid] if uuid.startswith(("GPU-", "MIG-")) else [f"GPU-{uuid}", f"MIG-{uuid}"]
        last_error: Exception | None = None
        for candidate in candidates:
            try:
                return self._pynvml.nvmlDeviceGetHandleByUUID(candidate)
            except Exception as exc:
                last_error = exc
        raise RuntimeError(f"no NVML device with UUID {uuid}: {last_error}")

    @property
    def available(self) -> bool:
        return self._handle is not None

    def uuid(self) -> str | None:
        """The card's UUID as NVML reports it (GPU-... or MIG-...)."""
        if self._pynvml is None or self._handle is None:
            return None
        try:
            value = self._pynvml.nvmlDeviceGetUUID(self._handle)
        except Exception:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    def host_index(self) -> int | None:
        """The card's index on its host as NVML numbers it (ignores CUDA_VISIBLE_DEVICES)."""
        if self._pynvml is None or self._handle is None:
            return None
        try:
            return int(self._pynvml.nvmlDeviceGetIndex(self._handle))
        except Exception:
            return None

    def read(self) -> int | None:
        if self._pynvml is None or self._handle is None:
            return None
        pid = os.getpid()
        used = [
            process.usedGpuMemory
            for process in self._pynvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
            if process.pid == pid and process.usedGpuMemory is not None
        ]
        return sum(used) if used else None

    def close(self) -> None:
        if self._initialised and self._pynvml is not None:
            with contextlib.suppress(Exception):
                self._pynvml.nvmlShutdown()
        self._initialised = False
        self._handle = None


def cuda_device_uuid(cuda_index: int) -> str:
    """The card's UUID as NVML and nvidia-smi print it ("GPU-..."), from torch's device properties."""
    uuid = str(torch.cuda.get_device_properties(cuda_index).uuid)
    return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"


def _measured_memory_outside_torch(cuda_index: int) -> int | None:
    nvml = NvmlProcessMemory(cuda_index)
    try:
        used = nvml.read()
    except Exception:
        used = None
    finally:
        nvml.close()
    if used is None:
        return None
    return max(0, used - int(torch.cuda.memory_reserved(cuda_index)))


def current_rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


def lifetime_peak_rss_bytes() -> int:
    """The process's peak resident set size since it started (getrusage; KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * KiB


class PeakSampler:
    """Samples named readings in a daemon thread and keeps the maximum of each.

    Also samples once on `start()` and once on `stop()`, so a short run has readings. A reader that
    returns None contributes nothing; one that raises is dropped for the rest of the run (its peak
    so far is kept), so a failing source degrades to "unknown" instead of breaking the trial.
    """

    def __init__(self, readers: dict[str, Callable[[], int | None]], interval_s: float) -> None:
        if not interval_s > 0:
            raise ValueError(f"sample_interval_s: must be positive, got {interval_s!r}")
        self._readers = dict(readers)
        self._interval_s = interval_s
        self._peaks: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: dict[str, str] = {}

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("PeakSampler.start: already started")
        self.sample()
        self._thread = threading.Thread(target=self._run, name="cce-study-memory-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.sample()

    def sample(self) -> None:
        for name, reader in list(self._readers.items()):
            try:
                value = reader()
            except Exception as exc:
                self.errors[name] = f"{type(exc).__name__}: {exc}"
                self._readers.pop(name, None)
                continue
            if value is None:
                continue
            with self._lock:
                self._peaks[name] = max(value, self._peaks.get(name, value))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def peak(self, name: str) -> int | None:
        with self._lock:
            return self._peaks.get(name)


class MemoryProbe:
    """Measures the peak memory of the code run inside `with MemoryProbe(device) as probe:`.

    On CUDA: resets and reads torch's `max_memory_allocated` / `max_memory_reserved`, samples NVML's
    memory of this process in a background thread (see NvmlProcessMemory), and records the card's
    name and total memory. Always: the process's peak RSS (the larger of the sampled peak and the
    kernel's high-water mark when that rose inside the block). Sources that are absent or fail
    leave their fields None. `report()` gives the result after the block (or the peaks so far inside).
    `budget_bytes`, when given, is copied into the report. Memory the process held before the block
    counts, since it still occupies the card.
    """

    def __init__(
        self, device: torch.device | str, *, sample_interval_s: float = 0.05, budget_bytes: int | None = None
    ) -> None:
        if not sample_interval_s > 0:
            raise ValueError(f"sample_interval_s: must be positive, got {sample_interval_s!r}")
        self.device = torch.device(device)
        self.sample_interval_s = sample_interval_s
        self.budget_bytes = budget_bytes
        self.errors: dict[str, str] = {}
        self._report = MemoryReport(budget_bytes=budget_bytes)
        self._sampler: PeakSampler | None = None
        self._nvml: NvmlProcessMemory | None = None
        self._cuda_index: int | None = None
        self._lifetime_rss_at_start = 0
        self._state: Literal["new", "running", "done"] = "new"

    def __enter__(self) -> MemoryProbe:
        if self._state != "new":
            raise RuntimeError("MemoryProbe: a probe measures one block; create a new one")
        self._state = "running"
        readers: dict[str, Callable[[], int | None]] = {"rss": current_rss_bytes}
        if self.device.type == "cuda":
            self._start_cuda(readers)
        self._lifetime_rss_at_start = lifetime_peak_rss_bytes()
        self._sampler = PeakSampler(readers, self.sample_interval_s)
        self._sampler.start()
        return self

    def _start_cuda(self, readers: dict[str, Callable[[], int | None]]) -> None:
        try:
            self._cuda_index = _cuda_index(self.device)
            properties = torch.cuda.get_device_properties(self._cuda_index)
            self._report.gpu_name = str(properties.name)
            self._report.gpu_total = int(properties.total_memory)
            self._report.gpu_uuid = cuda_device_uuid(self._cuda_index)
            torch.cuda.reset_peak_memory_stats(self._cuda_index)
        except Exception as exc:
            self.errors["torch"] = f"{type(exc).__name__}: {exc}"
            self._cuda_index = None
            return
        self._nvml = NvmlProcessMemory(self._cuda_index)
        self._report.gpu_index = self._nvml.host_index()
        self._report.gpu_uuid = self._nvml.uuid() or self._report.gpu_uuid
        if self._nvml.available:
            readers["nvml"] = self._nvml.read
        elif self._nvml.error:
            self.errors["nvml"] = self._nvml.error

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._state != "running":
            return
        assert self._sampler is not None
        self._sampler.stop()
        self.errors.update(self._sampler.errors)
        if self._nvml is not None:
            self._nvml.close()
        self._fill_report()
        self._state = "done"

    def _fill_report(self) -> None:
        assert self._sampler is not None
        report = self._report
        report.budget_bytes = self.budget_bytes
        if self._cuda_index is not None:
            try:
                report.torch_max_allocated = int(torch.cuda.max_memory_allocated(self._cuda_index))
                report.torch_max_reserved = int(torch.cuda.max_memory_reserved(self._cuda_index))
            except Exception as exc:
                self.errors["torch"] = f"{type(exc).__name__}: {exc}"
        report.nvml_process_peak = self._sampler.peak("nvml")
        candidates = [self._sampler.peak("rss")]
        lifetime_rss = lifetime_peak_rss_bytes()
        # The kernel raises its high-water mark to the RSS of the moment it updates it, so a rise
        # during the block is an RSS the process had inside the block (it may lag the current RSS).
        if lifetime_rss > self._lifetime_rss_at_start:
            candidates.append(lifetime_rss)
        report.cpu_peak_rss = max((value for value in candidates if value is not None), default=None)

    def report(self) -> MemoryReport:
        """The measured peaks: final after the block, the peaks so far while it runs."""
        if self._state == "running":
            self._fill_report()
        return dataclasses.replace(self._report)

    @property
    def sampling(self) -> bool:
        """Whether the background sampler thread is alive."""
        return self._sampler is not None and self._sampler.running


__all__ = [
    "DEFAULT_CUDA_CONTEXT_BYTES",
    "GiB",
    "KiB",
    "MemoryProbe",
    "MiB",
    "NvmlProcessMemory",
    "PeakSampler",
    "allocator_limit_bytes",
    "apply_budget",
    "classify_out_of_memory",
    "cuda_device_uuid",
    "format_bytes",
    "is_out_of_memory",
    "out_of_memory_facts",
    "parse_budget",
]
