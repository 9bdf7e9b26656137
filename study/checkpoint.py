"""Moved to study/training/checkpoint.py; the old name `study.checkpoint` imports that module."""

import sys
from typing import TYPE_CHECKING

from study.training import checkpoint

if TYPE_CHECKING:  # the names type checkers see; at run time `study.checkpoint` is the module itself
    from study.training.checkpoint import *  # noqa: F403

sys.modules[__name__] = checkpoint
