"""Moved to study/memory/model.py; the old name `study.memory_model` imports that module."""

import sys
from typing import TYPE_CHECKING

from study.memory import model

if TYPE_CHECKING:  # the names type checkers see; at run time `study.memory_model` is the module itself
    from study.memory.model import *  # noqa: F403

sys.modules[__name__] = model
