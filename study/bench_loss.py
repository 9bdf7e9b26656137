"""Moved to study/benchmarks/loss.py; the old name `study.bench_loss` imports that module (and runs it)."""

import sys
from typing import TYPE_CHECKING

from study.benchmarks import loss

if TYPE_CHECKING:  # the names type checkers see; at run time `study.bench_loss` is the module itself
    from study.benchmarks.loss import *  # noqa: F403

if __name__ == "__main__":  # `python -m study.bench_loss ...`, as before
    sys.exit(loss.main())
sys.modules[__name__] = loss
