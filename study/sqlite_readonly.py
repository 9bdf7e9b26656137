"""Moved to study/database/sqlite_readonly.py; the old name `study.sqlite_readonly` imports that module."""

import sys
from typing import TYPE_CHECKING

from study.database import sqlite_readonly

if TYPE_CHECKING:  # the names type checkers see; at run time `study.sqlite_readonly` is the module itself
    from study.database.sqlite_readonly import *  # noqa: F403

sys.modules[__name__] = sqlite_readonly
