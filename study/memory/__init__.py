"""The memory stage: probes.py measures a trial's memory and enforces its budget; model.py predicts it.

`study.memory` was the probes module before study/ was grouped by stage; its names stay importable from
here (`from study.memory import MemoryProbe, parse_budget`). Units and budgets live in study/units.py.
"""

from study.memory.probes import *  # noqa: F403
from study.memory.probes import __all__ as _probes
from study.memory.probes import current_rss_bytes, lifetime_peak_rss_bytes
from study.units import MIN_BUDGET_BYTES, GiB, KiB, MiB, TiB, format_bytes, parse_budget

__all__ = [*_probes, "GiB", "KiB", "MIN_BUDGET_BYTES", "MiB", "TiB", "format_bytes", "parse_budget",
           "current_rss_bytes", "lifetime_peak_rss_bytes"]
