"""Benchmarks that ship with the package: loss.py is `cce-study bench-loss`.

They live under study/ because the installed command must import them; benchmarks/ at the top of the
repository holds scripts run from a checkout and is not a package (a top-level package named `benchmarks`
would be installed into site-packages under a name many projects use).
"""
