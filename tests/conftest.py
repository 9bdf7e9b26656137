"""Shared pytest fixtures."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


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
