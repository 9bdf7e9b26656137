"""Moved to study/analysis/report.py; the old name `study.report` imports that module."""

import sys
from typing import TYPE_CHECKING

from study.analysis import report

if TYPE_CHECKING:  # the names type checkers see; at run time `study.report` is the module itself
    from study.analysis.report import *  # noqa: F403

sys.modules[__name__] = report
