"""The Pareto notebook executes end to end against a small database built here."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from analysis_fixtures import tiny_database
from nbclient import NotebookClient

from study import analysis
from study.database.results_db import load_trials

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "pareto.ipynb"


def test_pareto_notebook_executes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    database = tiny_database(tmp_path / "results.sqlite")
    figures = tmp_path / "figures"
    monkeypatch.setenv("CCE_STUDY_DB", str(database))
    monkeypatch.setenv("CCE_STUDY_FIGURES", str(figures))
    # The kernel imports `study` from this checkout whether or not it is installed.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, kernel_name="python3", timeout=120,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    trials = load_trials(database)
    assert f"{len(trials)} trials from {database}" in text
    best, _ = analysis.best_under_budget(trials, 8 * analysis.GIB)
    assert best is not None and best["trial_id"] in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 4
    assert sorted(p.name for p in figures.glob("*.png")) == sorted(
        f"{kind}_ml-100k_loo.png" for kind in ("pareto", "heatmaps", "scaling", "fused_vs_torch"))
