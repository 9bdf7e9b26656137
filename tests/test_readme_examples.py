"""README.md's example outputs match what their commands print now (the cheap, deterministic ones:
plan, dry run, best on a committed database), so they cannot drift; and the generator itself."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from types import ModuleType

import pytest
from repo_scripts import load_script

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_tool() -> ModuleType:
    return load_script("tools/readme_examples.py")


def test_readme_examples_match_their_commands(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    shared = REPO_ROOT.parent / "shared" / "data"
    if not os.environ.get("CCE_STUDY_DATA_PATH") and shared.is_dir():
        monkeypatch.setenv("CCE_STUDY_DATA_PATH", str(shared))  # as the Makefile does
    tool = load_tool()
    checked = [example for example in tool.parse(tool.README.read_text()) if example.check]
    assert len(checked) >= 3  # plan, the demo's dry run, best on the committed GPU database
    code = tool.main(["--check"])
    assert code == 0, capsys.readouterr().err


def test_the_generator_finds_stale_outputs_and_rewrites_only_them(tmp_path: Path) -> None:
    tool = load_tool()
    readme = tmp_path / "README.md"
    readme.write_text(textwrap.dedent("""\
        Intro.

        <!-- example: check -->
        ```bash
        echo one
        echo two
        ```
        ```
        one
        stale
        ```
        <!-- /example -->

        Between.

        <!-- example: check lines=1 -->
        ```bash
        printf 'a\\nb\\nc\\n'  # three lines, one kept
        ```
        ```
        a
        ...
        ```
        <!-- /example -->

        <!-- example: -->
        ```bash
        echo slow, not checked
        ```
        ```
        whatever
        ```
        <!-- /example -->
        End.
        """))
    before = readme.read_text()
    assert tool.main(["--check", "--readme", str(readme)]) == 1
    assert readme.read_text() == before  # --check never writes
    assert tool.main(["--update", "--readme", str(readme)]) == 0
    after = readme.read_text()
    assert after == before.replace("one\nstale\n", "one\ntwo\n")
    assert tool.main(["--check", "--readme", str(readme)]) == 0
    assert tool.main(["--update", "--all", "--readme", str(readme)]) == 0
    assert "slow, not checked\n```\n<!-- /example -->" in readme.read_text()
