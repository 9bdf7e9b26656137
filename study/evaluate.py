"""Moved to study/training/evaluate.py; the old name `study.evaluate` imports that module."""

import sys
from typing import TYPE_CHECKING

from study.training import evaluate

if TYPE_CHECKING:  # the names type checkers see; at run time `study.evaluate` is the module itself
    from study.training.evaluate import *  # noqa: F403

sys.modules[__name__] = evaluate
