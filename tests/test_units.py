"""study.units: byte units, budgets and sizes for people, importable without torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from study import analysis, memory, units

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_parsing_budgets_and_specs_does_not_import_torch() -> None:
    # A fresh interpreter: this one has imported torch long ago.
    script = textwrap.dedent("""
        import sys
        from study.units import parse_budget
        from study.sweep.spec import parse_spec

        assert parse_budget("40GiB", None) == 40 * 2**30
        spec = parse_spec({"name": "s", "datasets": ["ml-100k"], "memory_budget": "8GiB",
                           "resources": {"gpu_memory": "80GiB"},
                           "axes": {"num_negatives": [8], "batch_size": [4], "max_len": [5]}})
        assert len(spec.grid()) == 1
        heavy = sorted(name for name in ("torch", "triton", "psutil") if name in sys.modules)
        print(",".join(heavy) or "none")
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "none"


def test_memory_and_analysis_keep_their_names_for_the_units() -> None:
    assert memory.parse_budget is units.parse_budget
    assert memory.format_bytes is units.format_bytes
    assert memory.GiB == memory.MiB * 1024 == units.GiB == analysis.GIB
    assert analysis.format_gib is units.format_gib


@pytest.mark.parametrize(("num_bytes", "text"), [
    (1.5 * 2**30, "1.50 GiB"), (300 * 2**20, "300.00 MiB"), (3 * 2**40, "3.00 TiB"), (2048, "2.00 KiB"),
    (12, "12 B"), (None, "-"),
])
def test_format_bytes(num_bytes: float | None, text: str) -> None:
    assert units.format_bytes(num_bytes) == text


@pytest.mark.parametrize(("num_bytes", "text"), [
    (1.5 * 2**30, "1.5 GiB"), (0.123456 * 2**30, "0.123 GiB"), (None, "-"), (float("nan"), "-"),
])
def test_format_gib(num_bytes: float | None, text: str) -> None:
    assert units.format_gib(num_bytes) == text
