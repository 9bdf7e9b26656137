"""The analysis stage, on the trials of a results database: pareto.py (the memory-quality frontier and the
best configuration under a budget), seed_compare.py (whether one configuration beats another given their
seeds), plots.py (figures), report.py (the Markdown report of one database), study_report.py (the study's
report from several databases).

`study.analysis` was pareto.py's module before study/ was grouped by stage; its names stay importable from
here (`from study import analysis; analysis.pareto_table(...)`).
"""

from study.analysis.pareto import *  # noqa: F403
from study.analysis.pareto import METRIC_KS
from study.analysis.pareto import __all__ as _pareto

__all__ = [*_pareto, "METRIC_KS"]
