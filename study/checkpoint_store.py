"""Moved to study/sweep/checkpoint_store.py; the old name `study.checkpoint_store` imports that module."""

import sys
from typing import TYPE_CHECKING

from study.sweep import checkpoint_store

if TYPE_CHECKING:  # the names type checkers see; at run time `study.checkpoint_store` is the module itself
    from study.sweep.checkpoint_store import *  # noqa: F403

sys.modules[__name__] = checkpoint_store
