"""Memory probes and budgets: unit parsing, enforcement, out-of-memory classification, NVML sampling.

CUDA and NVML are simulated (no GPU here): torch.cuda's query functions are monkeypatched and a
fake `pynvml` module is installed, so the probe's logic (UUID mapping, pid matching, peak keeping,
thread lifecycle, degradation) runs for real.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import types
import warnings
from dataclasses import dataclass

import pytest
import torch

from study import memory
from study.memory import (
    GiB,
    MemoryProbe,
    MiB,
    PeakSampler,
    apply_budget,
    classify_out_of_memory,
    is_out_of_memory,
    parse_budget,
)

CARD_TOTAL = 80 * GiB
CARD_UUID = "5a1c3e2f-0000-4b1d-9e8a-0123456789ab"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("40GiB", 40 * GiB),
        ("40 GiB", 40 * GiB),
        ("40gib", 40 * GiB),
        ("8000MiB", 8000 * MiB),
        ("1.5GB", 1_500_000_000),
        ("500 MB", 500_000_000),
        ("2TiB", 2 * 1024 * GiB),
        ("0.5", CARD_TOTAL // 2),
        ("1", CARD_TOTAL),
        ("25%", CARD_TOTAL // 4),
        ("1048576", MiB),
        ("3000000000", 3_000_000_000),
        ("  12 GiB ", 12 * GiB),
    ],
)
def test_parse_budget_units(text: str, expected: int) -> None:
    assert parse_budget(text, CARD_TOTAL) == expected


@pytest.mark.parametrize(
    ("text", "total", "fragment"),
    [
        ("", CARD_TOTAL, "cannot parse"),
        ("forty GiB", CARD_TOTAL, "cannot parse"),
        ("-1GiB", CARD_TOTAL, "cannot parse"),
        ("40 XB", CARD_TOTAL, "unknown unit"),
        ("40G", CARD_TOTAL, "unknown unit"),
        ("0.5", None, "total memory is unknown"),
        ("50%", None, "total memory is unknown"),
        ("0", CARD_TOTAL, "fraction"),
        ("150%", CARD_TOTAL, "fraction"),
        ("1.5", CARD_TOTAL, "whole number of bytes"),
        ("4096", CARD_TOTAL, "below the minimum"),
        ("100 B", CARD_TOTAL, "below the minimum"),
    ],
)
def test_parse_budget_errors_name_the_setting_and_text(text: str, total: int | None, fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_budget(text, total)
    message = str(caught.value)
    assert message.startswith("memory_budget:")
    assert repr(text) in message
    assert fragment in message


@dataclass
class FakeProperties:
    name: str = "NVIDIA Fake H100"
    total_memory: int = CARD_TOTAL
    uuid: str = CARD_UUID


@dataclass
class FakeCuda:
    allocated_peak: int = 3 * GiB
    reserved_peak: int = 4 * GiB
    reserved_now: int = 1 * GiB
    resets: int = 0
    fraction: tuple[float, int] | None = None


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
    state = FakeCuda()

    def reset_peak(index: int) -> None:
        assert index == 0
        state.resets += 1

    def set_fraction(fraction: float, index: int) -> None:
        state.fraction = (fraction, index)

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: FakeProperties())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset_peak)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda index: state.allocated_peak)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda index: state.reserved_peak)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda index: state.reserved_now)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", set_fraction)
    return state


class FakeNvmlError(Exception):
    pass


@dataclass
class FakeProcessInfo:
    pid: int
    usedGpuMemory: int | None  # noqa: N815 - NVML's field name


class FakeNvml:
    """Just enough of pynvml: one card known by UUID, this process plus a bigger neighbour."""

    def __init__(self, *, fail_init: bool = False) -> None:
        self.fail_init = fail_init
        self.initialised = 0
        self.shutdowns = 0
        self.uuids_asked: list[str] = []
        self.ours_returned: list[int] = []
        self._growth = itertools.count()
        self.lock = threading.Lock()

    def module(self) -> types.ModuleType:
        fake = types.ModuleType("pynvml")
        fake.NVMLError = FakeNvmlError  # type: ignore[attr-defined]
        fake.nvmlInit = self.nvml_init  # type: ignore[attr-defined]
        fake.nvmlShutdown = self.nvml_shutdown  # type: ignore[attr-defined]
        fake.nvmlDeviceGetHandleByUUID = self.handle_by_uuid  # type: ignore[attr-defined]
        fake.nvmlDeviceGetComputeRunningProcesses = self.processes  # type: ignore[attr-defined]
        return fake

    def nvml_init(self) -> None:
        if self.fail_init:
            raise FakeNvmlError("Driver Not Loaded")
        self.initialised += 1

    def nvml_shutdown(self) -> None:
        self.shutdowns += 1

    def handle_by_uuid(self, uuid: str) -> str:
        self.uuids_asked.append(uuid)
        if uuid != f"GPU-{CARD_UUID}":
            raise FakeNvmlError("Not Found")
        return "handle-of-the-card"

    def processes(self, handle: str) -> list[FakeProcessInfo]:
        assert handle == "handle-of-the-card"
        with self.lock:
            ours = 5 * GiB + next(self._growth) * 7 * MiB
            self.ours_returned.append(ours)
        return [
            FakeProcessInfo(pid=os.getpid() + 1, usedGpuMemory=70 * GiB),  # a neighbour trial on the card
            FakeProcessInfo(pid=os.getpid(), usedGpuMemory=ours),
            FakeProcessInfo(pid=os.getpid() + 2, usedGpuMemory=None),
        ]


def sampler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "cce-study-memory-sampler"]


def test_probe_on_cpu_fills_peak_rss_only() -> None:
    with MemoryProbe("cpu", sample_interval_s=0.01) as probe:
        block = torch.ones(64 * MiB // 4)  # 64 MiB of float32, touched; alive until the probe stops
        rss_inside = memory.current_rss_bytes()
        assert probe.sampling
    report = probe.report()
    del block
    assert not probe.sampling and not sampler_threads()
    # The probe's samples need not include the instant of rss_inside: the process's RSS can shrink by a
    # few pages (freed heap) before the next sample. The 64 MiB block must be in the peak all the same.
    assert report.cpu_peak_rss is not None and report.cpu_peak_rss >= rss_inside - MiB
    assert report.torch_max_allocated is None and report.nvml_process_peak is None and report.gpu_name is None
    assert report.peak_bytes == report.cpu_peak_rss


def test_probe_with_fake_nvml_tracks_only_this_process(
    monkeypatch: pytest.MonkeyPatch, fake_cuda: FakeCuda
) -> None:
    nvml = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml.module())
    with MemoryProbe("cuda:0", sample_interval_s=0.001, budget_bytes=40 * GiB) as probe:
        while len(nvml.ours_returned) < 5:
            threading.Event().wait(0.002)
    report = probe.report()
    assert not sampler_threads()
    assert nvml.uuids_asked[0] == f"GPU-{CARD_UUID}"
    assert nvml.initialised == 1 and nvml.shutdowns == 1
    assert report.nvml_process_peak == max(nvml.ours_returned)  # never the 70 GiB neighbour
    assert report.torch_max_allocated == fake_cuda.allocated_peak
    assert report.torch_max_reserved == fake_cuda.reserved_peak
    assert fake_cuda.resets == 1
    assert report.gpu_name == "NVIDIA Fake H100" and report.gpu_total == CARD_TOTAL
    assert report.budget_bytes == 40 * GiB
    assert report.peak_bytes == report.nvml_process_peak


@pytest.mark.parametrize("how", ["not_installed", "init_fails"])
def test_probe_degrades_without_nvml(monkeypatch: pytest.MonkeyPatch, fake_cuda: FakeCuda, how: str) -> None:
    if how == "not_installed":
        monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    else:
        monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(fail_init=True).module())
    with MemoryProbe("cuda", sample_interval_s=0.01) as probe:
        pass
    report = probe.report()
    assert report.nvml_process_peak is None
    assert "nvml" in probe.errors
    assert report.torch_max_reserved == fake_cuda.reserved_peak
    assert report.peak_bytes == fake_cuda.reserved_peak
    assert not sampler_threads()


def test_probe_is_single_use() -> None:
    probe = MemoryProbe("cpu")
    with probe:
        pass
    with pytest.raises(RuntimeError, match="one block"), probe:
        pass


def test_sampler_drops_a_failing_reader_and_keeps_others() -> None:
    values = iter([10, 30, 20])
    calls = {"broken": 0}

    def broken() -> int:
        calls["broken"] += 1
        if calls["broken"] > 1:
            raise OSError("sensor gone")
        return 99

    sampler = PeakSampler({"steady": lambda: next(values, 5), "broken": broken}, interval_s=0.001)
    sampler.start()
    sampler.stop()
    assert sampler.peak("steady") == 30
    assert sampler.peak("broken") == 99
    assert "sensor gone" in sampler.errors["broken"]
    assert not sampler.running


def test_apply_budget_on_cpu_warns_and_does_nothing(fake_cuda: FakeCuda) -> None:
    with pytest.warns(RuntimeWarning, match="cannot be enforced"):
        apply_budget(8 * GiB, "cpu")
    assert fake_cuda.fraction is None


def test_apply_budget_caps_allocator_below_budget_by_the_context(fake_cuda: FakeCuda) -> None:
    apply_budget(40 * GiB, torch.device("cuda:0"), context_bytes=1 * GiB)
    assert fake_cuda.fraction is not None
    fraction, index = fake_cuda.fraction
    assert index == 0
    assert fraction == pytest.approx(39 / 80, rel=1e-12)


def test_apply_budget_default_context_uses_measured_memory_outside_torch(
    monkeypatch: pytest.MonkeyPatch, fake_cuda: FakeCuda
) -> None:
    nvml = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml.module())
    fake_cuda.reserved_now = 4 * GiB  # NVML reports 5 GiB for the process: 1 GiB outside torch
    apply_budget(40 * GiB, "cuda:0")
    assert fake_cuda.fraction is not None
    assert fake_cuda.fraction[0] == pytest.approx((40 * GiB - 1 * GiB) / CARD_TOTAL, rel=1e-12)
    monkeypatch.setitem(sys.modules, "pynvml", None)
    apply_budget(40 * GiB, "cuda:0")
    expected = (40 * GiB - memory.DEFAULT_CUDA_CONTEXT_BYTES) / CARD_TOTAL
    assert fake_cuda.fraction[0] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("budget", "fragment"),
    [(81 * GiB, "exceeds the total memory"), (512 * MiB, "no room beyond the CUDA context"), (0, "positive")],
)
def test_apply_budget_rejects_impossible_budgets(fake_cuda: FakeCuda, budget: int, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment) as caught:
        apply_budget(budget, "cuda:0", context_bytes=1 * GiB)
    assert str(caught.value).startswith("memory_budget:")
    assert fake_cuda.fraction is None


def torch_oom_message(
    *, requested: str, allowed: str | None, allocated: str, unallocated: str, free: str
) -> str:
    """The text of PyTorch's CUDA caching allocator out-of-memory error (torch 2.4+ layout)."""
    allowed_info = f"{allowed} allowed; " if allowed else ""
    return (
        f"CUDA out of memory. Tried to allocate {requested}. GPU 0 has a total capacity of 79.19 GiB "
        f"of which {free} is free. Process 4242 has 40.10 GiB memory in use. {allowed_info}"
        "Of the allocated memory "
        f"{allocated} is allocated by PyTorch, and {unallocated} is reserved by PyTorch but unallocated. "
        "If reserved but unallocated memory is large try setting "
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"
    )


def test_is_out_of_memory() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate"))
    assert is_out_of_memory(MemoryError())
    wrapped = RuntimeError("trial failed")
    wrapped.__cause__ = torch.OutOfMemoryError("CUDA out of memory")
    assert is_out_of_memory(wrapped)
    assert not is_out_of_memory(RuntimeError("index out of range"))
    # only allocator errors (RuntimeError / MemoryError) count
    assert not is_out_of_memory(ValueError("out of memory"))
    assert not is_out_of_memory(KeyboardInterrupt())


def test_budget_enforcement_then_simulated_oom_is_classified_over_budget(fake_cuda: FakeCuda) -> None:
    budget = parse_budget("40GiB", CARD_TOTAL)
    apply_budget(budget, "cuda:0", context_bytes=1 * GiB)
    assert fake_cuda.fraction is not None
    allowed_gib = fake_cuda.fraction[0] * CARD_TOTAL / GiB  # what torch would print as "allowed"
    # The allocator holds 38.5 GiB and asks for 1 GiB more: beyond the 39 GiB allowed.
    over = torch.OutOfMemoryError(
        torch_oom_message(
            requested="1.00 GiB", allowed=f"{allowed_gib:.2f} GiB", allocated="38.20 GiB",
            unallocated="0.30 GiB", free="38.00 GiB",
        )
    )
    assert classify_out_of_memory(over, budget) == "over_budget"
    # Same budget, but the card filled up (another process) while this one held only 10 GiB.
    card_full = torch.OutOfMemoryError(
        torch_oom_message(
            requested="1.00 GiB", allowed=f"{allowed_gib:.2f} GiB", allocated="9.80 GiB",
            unallocated="0.20 GiB", free="200.00 MiB",
        )
    )
    assert classify_out_of_memory(card_full, budget) == "oom"
    assert classify_out_of_memory(over, None) == "oom"


def test_classify_without_allowance_in_message_compares_with_budget() -> None:
    message = torch_oom_message(
        requested="2.00 GiB", allowed=None, allocated="7.00 GiB", unallocated="0.50 GiB", free="1.00 GiB"
    )
    assert classify_out_of_memory(torch.OutOfMemoryError(message), 8 * GiB) == "over_budget"
    assert classify_out_of_memory(torch.OutOfMemoryError(message), 60 * GiB) == "oom"
    terse = RuntimeError("CUDA error: out of memory")
    assert classify_out_of_memory(terse, 8 * GiB) == "over_budget"
    host = RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1000 bytes")
    assert classify_out_of_memory(host, 8 * GiB) == "oom"


def test_classify_rejects_other_errors() -> None:
    with pytest.raises(ValueError, match="exc: not an out-of-memory error"):
        classify_out_of_memory(ValueError("bad shape"), 8 * GiB)


def test_out_of_memory_facts_parse_torch_sizes() -> None:
    facts = memory.out_of_memory_facts(
        torch_oom_message(
            requested="512.00 MiB", allowed="39.00 GiB", allocated="38.25 GiB", unallocated="20.00 MiB",
            free="10.00 GiB",
        )
    )
    assert facts == {
        "requested": 512 * MiB,
        "allowed": 39 * GiB,
        "allocated": round(38.25 * GiB),
        "unallocated": 20 * MiB,
    }


def test_format_bytes() -> None:
    assert memory.format_bytes(1.5 * GiB) == "1.50 GiB"
    assert memory.format_bytes(300 * MiB) == "300.00 MiB"
    assert memory.format_bytes(12) == "12 B"


def test_no_warnings_leak_from_cuda_paths(fake_cuda: FakeCuda, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_budget(20 * GiB, "cuda:0", context_bytes=GiB)
