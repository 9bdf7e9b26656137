"""Moved to study/sweep/worker_death.py; the old name `study.worker_death` imports that module."""

import sys
from typing import TYPE_CHECKING

from study.sweep import worker_death

if TYPE_CHECKING:  # the names type checkers see; at run time `study.worker_death` is the module itself
    from study.sweep.worker_death import *  # noqa: F403

sys.modules[__name__] = worker_death
