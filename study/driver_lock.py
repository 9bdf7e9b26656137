"""Moved to study/sweep/driver_lock.py; the old name `study.driver_lock` imports that module."""

import sys
from typing import TYPE_CHECKING

from study.sweep import driver_lock

if TYPE_CHECKING:  # the names type checkers see; at run time `study.driver_lock` is the module itself
    from study.sweep.driver_lock import *  # noqa: F403

sys.modules[__name__] = driver_lock
