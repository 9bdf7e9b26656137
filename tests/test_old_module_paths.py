"""The module paths of study/ before it was grouped by stage keep working: imports, `python -m`, the sweep
specs' default trial function, and every import the README and docs show."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# old module -> the module it moved to (the old name is another name for the same module object)
MOVED = {
    "study.train": "study.training.trainer",
    "study.evaluate": "study.training.evaluate",
    "study.metrics": "study.training.metrics",
    "study.checkpoint": "study.training.checkpoint",
    "study.export": "study.training.export",
    "study.memory_model": "study.memory.model",
    "study.db": "study.database.results_db",
    "study.sqlite_readonly": "study.database.sqlite_readonly",
    "study.plots": "study.analysis.plots",
    "study.report": "study.analysis.report",
    "study.study_report": "study.analysis.study_report",
    "study.train_cli": "study.cli.train",
    "study.plan_cli": "study.cli.plan",
    "study.analysis_cli": "study.cli.analysis",
    "study.bench_loss": "study.benchmarks.loss",
    "study.sweep_spec": "study.sweep.spec",
    "study.sweep_preflight": "study.sweep.preflight",
    "study.db_spool": "study.sweep.db_spool",
    "study.driver_lock": "study.sweep.driver_lock",
    "study.run_folders": "study.sweep.run_folders",
    "study.worker_death": "study.sweep.worker_death",
    "study.checkpoint_store": "study.sweep.checkpoint_store",
}


@pytest.mark.parametrize(("old", "new"), MOVED.items())
def test_an_old_module_path_is_the_moved_module(old: str, new: str) -> None:
    moved = importlib.import_module(new)
    assert importlib.import_module(old) is moved
    package, _, name = old.rpartition(".")
    assert getattr(importlib.import_module(package), name) is moved  # `from study import train`
    private = [name for name in vars(moved) if name.startswith("_") and not name.startswith("__")]
    for name in private[:3]:  # private names too (tests and notebooks patched some)
        assert getattr(importlib.import_module(old), name) is getattr(moved, name)


def test_the_packages_at_old_module_paths_give_the_old_names() -> None:
    from study import analysis, memory, sweep, units
    from study.analysis import pareto
    from study.memory import probes

    assert memory.parse_budget is units.parse_budget and memory.MemoryProbe is probes.MemoryProbe
    assert memory.current_rss_bytes is probes.current_rss_bytes
    assert analysis.pareto_table is pareto.pareto_table and units.GiB == analysis.GIB
    for name, module in sweep.MOVED_NAMES.items():
        assert getattr(sweep, name) is getattr(importlib.import_module(f"study.sweep.{module}"), name)
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        sweep.nothing_here  # noqa: B018


def test_the_default_trial_function_is_run_trial() -> None:
    from study.sweep.spec import DEFAULT_TRIAL_FUNCTION
    from study.sweep.trial import resolve_trial_function
    from study.training.trainer import run_trial

    assert DEFAULT_TRIAL_FUNCTION == "study.train:run_trial"  # part of every committed sweep's spec hash
    assert resolve_trial_function(DEFAULT_TRIAL_FUNCTION) is run_trial


def documented_imports() -> list[str]:
    """Every `from study... import ...` line of the README, the docs and the notebook."""
    pages = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").glob("*.md")),
             ROOT / "notebooks" / "pareto.ipynb"]
    lines = []
    for page in pages:
        for match in re.finditer(r"^\s*\"?(from study[\w.]* import [\w, ]+)", page.read_text(), flags=re.M):
            lines.append(match.group(1).rstrip(", "))
    return sorted(set(lines))


# What the README and docs showed before the regrouping (they show the new paths now).
DOCUMENTED_BEFORE = [
    "from study.db import ResultsDB, load_trials, load_epochs, metric_column, load_spec_versions",
    "from study.export import load_model, score, recommend",
    "from study.train import run_trial",
    "from study.memory import parse_budget",
    "from study import analysis, plots, report",
]


def test_every_documented_import_works() -> None:
    lines = documented_imports()
    assert any("load_trials" in line for line in lines) and any("load_model" in line for line in lines)
    for line in [*lines, *DOCUMENTED_BEFORE]:
        exec(line, {})  # noqa: S102


@pytest.mark.parametrize(("module", "command"), [
    ("study.sweep", "sweep"), ("study.bench_loss", "bench-loss"), ("study.benchmarks.loss", "bench-loss"),
    ("study.cli", None)])
def test_python_dash_m_runs_the_old_and_new_modules(module: str, command: str | None) -> None:
    result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    usage = result.stdout.splitlines()[0]
    assert usage.startswith(f"usage: cce-study {command}" if command else "usage: cce-study [-h] COMMAND")
