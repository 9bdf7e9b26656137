"""Moved to study/cli/analysis.py; the old name `study.analysis_cli` imports that module."""

import sys
from typing import TYPE_CHECKING

from study.cli import analysis

if TYPE_CHECKING:  # the names type checkers see; at run time `study.analysis_cli` is the module itself
    from study.cli.analysis import *  # noqa: F403

sys.modules[__name__] = analysis
