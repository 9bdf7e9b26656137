"""Moved to study/sweep/spec.py; the old name `study.sweep_spec` imports that module."""

import sys
from typing import TYPE_CHECKING

from study.sweep import spec

if TYPE_CHECKING:  # the names type checkers see; at run time `study.sweep_spec` is the module itself
    from study.sweep.spec import *  # noqa: F403

sys.modules[__name__] = spec
