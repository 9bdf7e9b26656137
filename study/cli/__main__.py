"""`python -m study.cli COMMAND ...`: the `cce-study` command line."""

import sys

from study.cli import main

sys.exit(main())
