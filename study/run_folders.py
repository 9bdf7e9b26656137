"""Moved to study/sweep/run_folders.py; the old name `study.run_folders` imports that module."""

import sys
from typing import TYPE_CHECKING

from study.sweep import run_folders

if TYPE_CHECKING:  # the names type checkers see; at run time `study.run_folders` is the module itself
    from study.sweep.run_folders import *  # noqa: F403

sys.modules[__name__] = run_folders
