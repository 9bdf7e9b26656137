"""`python -m study.sweep SPEC.toml ...`: the sweep command alone (same arguments and exit codes)."""

import sys

from study.sweep.command import main

sys.exit(main())
