"""Moved to study/training/metrics.py; the old name `study.metrics` imports that module."""

import sys
from typing import TYPE_CHECKING

from study.training import metrics

if TYPE_CHECKING:  # the names type checkers see; at run time `study.metrics` is the module itself
    from study.training.metrics import *  # noqa: F403

sys.modules[__name__] = metrics
