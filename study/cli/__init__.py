"""The `cce-study` command line: one subcommand per job, each implemented in its own module.

Every command module exposes `configure(parser)` (adds its arguments) and `run(args) -> int`.
Errors a user can fix (missing file, bad value) are printed as one line, with a non-zero exit;
set CCE_STUDY_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("study.cli.train", "train and evaluate SASRec for one configuration"),
    "bench-loss": ("study.benchmarks.loss", "benchmark the fused loss against PyTorch baselines (GPU)"),
    "plan": ("study.cli.plan", "list the grid points that fit a memory budget, without running them"),
    "sweep": ("study.sweep.command",
              "run a sweep specification (TOML) with Ray Tune into a results database"),
    "best": ("study.cli.analysis", "best configuration under a memory budget, from a results database"),
    "pareto": ("study.cli.analysis", "memory-quality Pareto figures from a results database"),
    "report": ("study.cli.analysis", "Markdown report with tables and figures from a results database"),
    "study-report": ("study.analysis.study_report",
                     "the study's report from several databases, seeds aggregated"),
    "export": ("study.training.export",
               "write the kept model of a trial, or of the best trial under a budget"),
}


class UserError(Exception):
    """An error the user can fix; printed as one line without a traceback."""


def _configure_command(parser: argparse.ArgumentParser, name: str) -> None:
    """Add command `name`'s arguments to `parser` and remember its runner and name."""
    module = importlib.import_module(COMMANDS[name][0])
    configure = getattr(module, f"configure_{name.replace('-', '_')}", None) or module.configure
    configure(parser)
    runner = getattr(module, f"run_{name.replace('-', '_')}", None) or module.run
    parser.set_defaults(_run=runner, command=name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cce-study", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        _configure_command(sub.add_parser(name, help=help_text, description=help_text), name)
    return parser


def main(argv: list[str] | None = None) -> int:
    return _run(build_parser().parse_args(argv))


def main_for(name: str, argv: list[str] | None = None) -> int:
    """One command without the others' imports (`python -m study.sweep ...`); same arguments and exits."""
    parser = argparse.ArgumentParser(prog=f"cce-study {name}", description=COMMANDS[name][1])
    _configure_command(parser, name)
    return _run(parser.parse_args(argv))


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args._run(args) or 0)
    except (UserError, ValueError, FileNotFoundError) as exc:
        if os.environ.get("CCE_STUDY_DEBUG"):
            raise
        print(f"cce-study {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cce-study {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (`cce-study plan ... | head`): no traceback, and none from
        # Python's final flush of stdout either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1

