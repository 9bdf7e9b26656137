"""Moved to study/analysis/plots.py; the old name `study.plots` imports that module."""

import sys
from typing import TYPE_CHECKING

from study.analysis import plots

if TYPE_CHECKING:  # the names type checkers see; at run time `study.plots` is the module itself
    from study.analysis.plots import *  # noqa: F403

sys.modules[__name__] = plots
