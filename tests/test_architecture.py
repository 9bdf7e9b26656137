"""ARCHITECTURE.md names every module and every top-level folder; no code cites the design note outside the
repository (docs/design.md replaces it)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "ARCHITECTURE.md"
# Folders whose modules must each appear in ARCHITECTURE.md by their path (`study/data/splits.py`).
MODULE_FOLDERS = ("kernels", "models", "study", "benchmarks", "tools")
MODULE_SUFFIXES = (".py", ".sh")
# Never part of the repository, whatever a checkout holds (build outputs, caches, virtual environments).
LOCAL_FOLDERS = re.compile(r"^(\.|_)|\.egg-info$|^(build|dist)$")


def tracked_files() -> list[str] | None:
    """The repository's files (relative paths; tracked, or new and not ignored); None outside git."""
    try:
        listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                 cwd=ROOT, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return [name for name in listing.stdout.decode().split("\0") if name]


def repository_modules(files: list[str] | None) -> list[str]:
    if files is None:
        files = [str(path.relative_to(ROOT)) for folder in MODULE_FOLDERS
                 for path in (ROOT / folder).rglob("*") if path.is_file()]
    return sorted(
        name for name in files
        if name.split("/")[0] in MODULE_FOLDERS and name.endswith(MODULE_SUFFIXES)
        and Path(name).name != "__init__.py" and "__pycache__" not in name
    )


def top_level_folders(files: list[str] | None) -> list[str]:
    if files is None:
        names = {path.name for path in ROOT.iterdir() if path.is_dir()}
    else:
        names = {name.split("/")[0] for name in files if "/" in name}
    return sorted(name for name in names if not LOCAL_FOLDERS.search(name))


def missing_from_architecture(text: str, files: list[str] | None) -> list[str]:
    missing = [module for module in repository_modules(files) if f"`{module}`" not in text]
    missing += [f"{folder}/" for folder in top_level_folders(files) if f"`{folder}/`" not in text]
    return missing


def test_architecture_names_every_module_and_top_level_folder() -> None:
    files = tracked_files()
    assert len(repository_modules(files)) > 50, "the module listing found too few modules to be right"
    missing = missing_from_architecture(ARCHITECTURE.read_text(), files)
    assert not missing, f"ARCHITECTURE.md does not name: {', '.join(missing)}"


def test_the_check_reports_a_module_or_folder_left_out() -> None:
    files = tracked_files()
    text = ARCHITECTURE.read_text()
    assert missing_from_architecture(text.replace("`study/data/splits.py`", "splits"), files) == [
        "study/data/splits.py"]
    assert missing_from_architecture(text.replace("`notes/`", "notes"), files) == ["notes/"]


def test_the_flow_is_drawn_once() -> None:
    text = ARCHITECTURE.read_text()
    stages = ("dataset", "batches", "model", "loss", "trainer", "TrialRecord", "database", "analysis")
    drawings = re.findall(r"^```\n(.*?)^```", text, flags=re.S | re.M)
    flows = [block for block in drawings
             if all(re.search(rf"^{stage}\b", block, flags=re.M) for stage in stages)]
    assert len(flows) == 1, "ARCHITECTURE.md should draw the flow dataset -> ... -> analysis exactly once"
    order = [re.search(rf"^{stage}\b", flows[0], flags=re.M).start() for stage in stages]  # type: ignore[union-attr]
    assert order == sorted(order), "the flow's stages are out of order"


@pytest.mark.parametrize("pattern", [r"DESIGN section \d", r"shared/DESIGN\.md"])
def test_no_code_cites_the_design_note_outside_the_repository(pattern: str) -> None:
    files = tracked_files()
    if files is None:
        pytest.skip("not a git checkout")
    texts = [name for name in files if name.endswith((".py", ".sh", ".toml"))
             or name in ("README.md", "ARCHITECTURE.md", "BENCHMARKS.md")]
    citing = [name for name in texts if re.search(pattern, (ROOT / name).read_text(errors="replace"))]
    assert not citing, f"cite docs/design.md instead of the design note outside the repository: {citing}"


# Pages whose cited repository paths must exist (notes and the results index cite raw-output folders).
PAGES_WITH_PATHS = ("ARCHITECTURE.md", "docs/design.md", "results/README.md", "notes/kernel-shared.md",
                    "notes/kernel-gather.md")


def cited_paths(text: str, folders: list[str]) -> list[str]:
    """Repository paths the text names (`results/h200-2026-11-26b/run6-sort-d8bc2d9/`, in backticks or not;
    globs allowed). A placeholder (`results/<name>/`) is cut at the placeholder."""
    folder_names = "|".join(re.escape(folder) for folder in folders)
    pattern = re.compile(rf"(?<![\w/.-])((?:{folder_names})/[\w./*-]*)")
    return [match.group(1).rstrip(".").rstrip("/") for match in pattern.finditer(text)]


def git_ignores(path: str) -> bool:
    """Whether .gitignore covers the path, as a file or as a folder."""
    return any(subprocess.run(["git", "check-ignore", "-q", name], cwd=ROOT).returncode == 0
               for name in (path, path + "/"))


def test_paths_cited_by_the_docs_and_notes_exist() -> None:
    files = tracked_files()
    if files is None:
        pytest.skip("not a git checkout (git decides which cited paths are local outputs)")
    missing = []
    for page in PAGES_WITH_PATHS:
        here = (ROOT / page).parent  # a Markdown link is relative to its page
        for path in cited_paths((ROOT / page).read_text(), top_level_folders(files)):
            if list(ROOT.glob(path)) or list(here.glob(path)):
                continue
            if not git_ignores(path):  # local outputs (results/demo/, ...) exist where a command wrote them
                missing.append(f"{page}: {path}")
    assert not missing, "cited paths that do not exist: " + "; ".join(missing)


def heading_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", markdown, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", heading).strip().lower().replace(" ", "-") for heading in headings}


def test_citations_of_the_design_page_name_its_sections() -> None:
    files = tracked_files()
    if files is None:
        pytest.skip("not a git checkout")
    anchors = heading_anchors((ROOT / "docs" / "design.md").read_text())
    assert {"the-loss", "numbers-to-beat", "public-kernel-api"} <= anchors
    cited = {(name, anchor) for name in files if name.endswith((".py", ".sh", ".md"))
             for anchor in re.findall(r"design\.md#([\w-]+)", (ROOT / name).read_text(errors="replace"))}
    assert cited, "nothing cites docs/design.md by section"
    broken = sorted(f"{name}: #{anchor}" for name, anchor in cited if anchor not in anchors)
    assert not broken, f"citations of docs/design.md sections that do not exist: {broken}"
