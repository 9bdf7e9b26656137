"""Moved to study/training/trainer.py; the old name `study.train` imports that module."""

import sys
from typing import TYPE_CHECKING

from study.training import trainer

if TYPE_CHECKING:  # the names type checkers see; at run time `study.train` is the module itself
    from study.training.trainer import *  # noqa: F403

sys.modules[__name__] = trainer
