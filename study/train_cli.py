"""Moved to study/cli/train.py; the old name `study.train_cli` imports that module."""

import sys
from typing import TYPE_CHECKING

from study.cli import train

if TYPE_CHECKING:  # the names type checkers see; at run time `study.train_cli` is the module itself
    from study.cli.train import *  # noqa: F403

sys.modules[__name__] = train
