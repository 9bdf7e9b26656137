"""Moved to study/analysis/study_report.py; the old name `study.study_report` imports that module."""

import sys
from typing import TYPE_CHECKING

from study.analysis import study_report

if TYPE_CHECKING:  # the names type checkers see; at run time `study.study_report` is the module itself
    from study.analysis.study_report import *  # noqa: F403

sys.modules[__name__] = study_report
