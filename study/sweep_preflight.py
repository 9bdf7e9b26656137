"""Moved to study/sweep/preflight.py; the old name `study.sweep_preflight` imports that module."""

import sys
from typing import TYPE_CHECKING

from study.sweep import preflight

if TYPE_CHECKING:  # the names type checkers see; at run time `study.sweep_preflight` is the module itself
    from study.sweep.preflight import *  # noqa: F403

sys.modules[__name__] = preflight
