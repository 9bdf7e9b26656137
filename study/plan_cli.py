"""Moved to study/cli/plan.py; the old name `study.plan_cli` imports that module."""

import sys
from typing import TYPE_CHECKING

from study.cli import plan

if TYPE_CHECKING:  # the names type checkers see; at run time `study.plan_cli` is the module itself
    from study.cli.plan import *  # noqa: F403

sys.modules[__name__] = plan
