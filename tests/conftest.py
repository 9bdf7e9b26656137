"""Shared pytest fixtures, and the rules of the `cuda` marker.

Markers (registered in pyproject.toml): `slow` marks tests that start Ray or run many trials, so that
`pytest -m "not slow"` is a quick loop; a plain `pytest` (CI) runs them. `cuda` marks tests of the kernels
compiled for a real GPU: they run only when the marker expression asks for them (`pytest -m cuda`) and
CUDA is available, and are skipped otherwise, so a CPU run reports them as skipped.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

INTERPRET_VARIABLE = "TRITON_INTERPRET"


def cuda_tests_asked(markexpr: str) -> bool:
    """Whether `-m EXPR` asks for the cuda tests: it selects a test marked `cuda` and no unmarked test
    (so `-m cuda` and `-m "cuda and not slow"` do, `-m "not slow"` and no -m at all do not)."""
    if not markexpr.strip():
        return False
    try:
        from _pytest.mark.expression import Expression  # what pytest evaluates -m with (not public API)
    except ImportError:
        return re.search(r"(?<!not )\bcuda\b", markexpr) is not None
    try:
        expression = Expression.compile(markexpr)
    except (SyntaxError, pytest.UsageError):
        return False  # pytest reports the invalid expression itself
    return (expression.evaluate(lambda name, **_: name == "cuda")
            and not expression.evaluate(lambda name, **_: False))


def interpreter_on() -> bool:
    return os.environ.get(INTERPRET_VARIABLE, "").strip().lower() in ("1", "true", "on", "yes")


def pytest_configure(config: pytest.Config) -> None:
    # The CPU kernel tests turn the Triton interpreter on when their module is imported (collected), and
    # Triton decides at import time whether a kernel is compiled or interpreted. When the GPU tests are
    # asked for, the kernels must be compiled: pin the variable off before anything is collected.
    if cuda_tests_asked(config.getoption("markexpr") or "") and INTERPRET_VARIABLE not in os.environ:
        os.environ[INTERPRET_VARIABLE] = "0"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cuda_items = [item for item in items if item.get_closest_marker("cuda") is not None]
    if not cuda_items:
        return
    reason = None
    if not cuda_tests_asked(config.getoption("markexpr") or ""):
        reason = "GPU test: opt-in with `pytest -m cuda` on a machine with CUDA"
    elif interpreter_on():
        reason = (f"{INTERPRET_VARIABLE}=1 runs the Triton kernels in the interpreter: run `pytest -m cuda` "
                  f"without it")
    else:
        import torch

        if not torch.cuda.is_available():
            reason = "CUDA is not available"
    if reason is not None:
        for item in cuda_items:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real datasets next to the repository (`../shared/data`); skips the test when absent."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared datasets not found at {path}")
    return path


@pytest.fixture(scope="session")
def local_ray() -> Iterator[str]:
    """One local Ray instance for the in-process sweep tests (the driver reuses an initialised Ray)."""
    import ray
    from sweep_faults import wait_for_ray_gone

    from study import sweep

    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a length limit
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp_dir
    sweep.start_ray(None, num_cpus=2)
    try:
        yield temp_dir
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
        wait_for_ray_gone(temp_dir, timeout=60, kill_after=30)
