"""Older kernel trees next to the working tree, for the benchmarks that time them side by side
(shared_ab.py, dense_wide.py): their --trees option and the environment each tree's worker runs in.

A tree is a folder holding a `kernels/` package (`git archive SHA kernels | tar -x -C DIR`); the working tree
is `.`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def parse_trees(parser: argparse.ArgumentParser, text: str) -> dict[str, str]:
    """--trees NAME=FOLDER,... as {name: folder}; a parser error names a folder without kernels/."""
    trees = dict(pair.split("=", 1) for pair in text.split(","))
    for name, folder in trees.items():
        if not (Path(folder) / "kernels" / "__init__.py").is_file():
            parser.error(f"--trees: {name}={folder} has no kernels/__init__.py")
    return trees


def tree_environment(folder: str, **variables: str) -> dict[str, str]:
    """This process's environment with `folder` first on PYTHONPATH (its `kernels` wins), the compiled
    kernels rather than the interpreter, and `variables` set."""
    env = dict(os.environ, **variables,
               PYTHONPATH=os.pathsep.join([str(Path(folder).resolve()), os.environ.get("PYTHONPATH", "")]))
    env.pop("TRITON_INTERPRET", None)
    return env


__all__ = ["parse_trees", "tree_environment"]
