"""Moved to study/sweep/db_spool.py; the old name `study.db_spool` imports that module."""

import sys
from typing import TYPE_CHECKING

from study.sweep import db_spool

if TYPE_CHECKING:  # the names type checkers see; at run time `study.db_spool` is the module itself
    from study.sweep.db_spool import *  # noqa: F403

sys.modules[__name__] = db_spool
