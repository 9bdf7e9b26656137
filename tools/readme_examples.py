"""The example outputs in README.md, generated from the commands they document.

An example is a region of README.md between two HTML comments, holding a ```bash block with the
command(s) and, after it, a plain ``` block with their output:

    <!-- example: check lines=8 -->
    ```bash
    cce-study plan --budget 40GiB ...
    ```
    ```
    (output, written by this tool)
    ```
    <!-- /example -->

The bash block is the source of truth (edit it by hand); the output block is rewritten. Options after
"example:": `check` (cheap, deterministic: the CI test re-runs it and compares), `lines=N` (keep the
first N lines of output, then "..."), `tail=N` (keep the last N lines, after "..."), `stdout` (only
stdout; default: stdout, then stderr), `needs=DATASET` (skipped, with a note, where the dataset is not
available without a download). Examples without `check` are regenerated only with --all (they train,
and their times vary).

    python tools/readme_examples.py --check         # exit 1 and a diff when a checked example is stale
    python tools/readme_examples.py --update        # rewrite the checked examples
    python tools/readme_examples.py --update --all  # also the slow ones (trains: minutes on a CPU)

Commands run from the repository root with this Python (`cce-study ARGS` as `python -m study.cli
ARGS`), with the environment as it is (set CCE_STUDY_DATA_PATH for the datasets).
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
_REGION = re.compile(r"<!-- example:(?P<options>[^>]*?)-->\n(?P<body>.*?)<!-- /example -->", re.DOTALL)
_BLOCKS = re.compile(r"```bash\n(?P<commands>.*?)```\n```\n(?P<output>.*?)```\n", re.DOTALL)


@dataclass(frozen=True)
class Example:
    commands: list[str]
    output: str
    check: bool
    lines: int | None
    tail: int | None
    stdout_only: bool
    needs: str | None
    start: int  # offsets of the output block's text in the README
    end: int

    @property
    def title(self) -> str:
        return self.commands[0][:90]


def parse(text: str) -> list[Example]:
    examples = []
    for region in _REGION.finditer(text):
        options = region["options"].split()
        blocks = _BLOCKS.fullmatch(region["body"])
        if blocks is None:
            raise ValueError(f"README.md: the example at offset {region.start()} is not a ```bash block "
                             "followed by a ``` block")
        values = dict(option.split("=", 1) for option in options if "=" in option)
        commands = [c for c in blocks["commands"].replace("\\\n", " ").splitlines()
                    if c.strip() and not c.lstrip().startswith("#")]
        body_start = region.start("body")
        examples.append(Example(
            commands=commands, output=blocks["output"], check="check" in options,
            lines=int(values["lines"]) if "lines" in values else None,
            tail=int(values["tail"]) if "tail" in values else None, stdout_only="stdout" in options,
            needs=values.get("needs"), start=body_start + blocks.start("output"),
            end=body_start + blocks.end("output")))
    return examples


def unavailable(example: Example) -> str | None:
    """Why the example cannot run here (its dataset is not available without a download), or None."""
    if example.needs is None:
        return None
    sys.path.insert(0, str(REPO_ROOT))
    from study.data import DataError, resolve_dataset

    try:
        resolve_dataset(example.needs, download=False, progress=False)
    except DataError as exc:
        return str(exc)
    return None


def run(example: Example) -> str:
    """The output block the example's commands produce now."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                                     os.environ.get("PYTHONPATH")]))}
    env.pop("CCE_STUDY_DEBUG", None)
    out = []
    for command in example.commands:
        argv = shlex.split(command, comments=True)
        if argv[0] == "cce-study":
            argv = [sys.executable, "-m", "study.cli", *argv[1:]]
        done = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            raise RuntimeError(f"{command}: exit code {done.returncode}\n{done.stderr[-2000:]}")
        out.append(done.stdout if example.stdout_only else done.stdout + done.stderr)
    lines = "".join(out).rstrip("\n").splitlines()
    lines = [line.rstrip() for line in lines]
    if example.lines is not None and len(lines) > example.lines:
        lines = [*lines[:example.lines], "..."]
    if example.tail is not None and len(lines) > example.tail:
        lines = ["...", *lines[-example.tail:]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="compare the checked examples; exit 1 if stale")
    mode.add_argument("--update", action="store_true", help="rewrite the examples' outputs in README.md")
    parser.add_argument("--all", action="store_true", help="also the slow examples (without `check`)")
    parser.add_argument("--readme", type=Path, default=README, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    stale, replacements = [], []
    for example in parse(text):
        if not (example.check or args.all):
            continue
        reason = unavailable(example)
        if reason is not None:
            print(f"skipped ({reason.split('. ')[0]}): {example.title}", file=sys.stderr)
            continue
        output = run(example)
        if output != example.output:
            stale.append(example)
            replacements.append((example, output))
            if args.check:
                diff = difflib.unified_diff(example.output.splitlines(), output.splitlines(), "README.md",
                                            "now", lineterm="")
                print(f"stale: {example.title}\n" + "\n".join(diff), file=sys.stderr)
    if args.update:
        for example, output in sorted(replacements, key=lambda pair: -pair[0].start):
            text = text[:example.start] + output + text[example.end:]
        args.readme.write_text(text, encoding="utf-8")
        print(f"{len(replacements)} example(s) updated in {args.readme}", file=sys.stderr)
        return 0
    if stale:
        print(f"{len(stale)} README example(s) no longer match their commands: run "
              f"`python tools/readme_examples.py --update`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
