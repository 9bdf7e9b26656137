"""Moved to study/database/results_db.py; the old name `study.db` imports that module."""

import sys
from typing import TYPE_CHECKING

from study.database import results_db

if TYPE_CHECKING:  # the names type checkers see; at run time `study.db` is the module itself
    from study.database.results_db import *  # noqa: F403

sys.modules[__name__] = results_db
