"""Moved to study/training/export.py; the old name `study.export` imports that module."""

import sys
from typing import TYPE_CHECKING

from study.training import export

if TYPE_CHECKING:  # the names type checkers see; at run time `study.export` is the module itself
    from study.training.export import *  # noqa: F403

sys.modules[__name__] = export
