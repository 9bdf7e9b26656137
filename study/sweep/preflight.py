"""What the sweep driver checks before it runs any trial, each failing with one line: options, budgets
no trial could meet, a Ray cluster that does not answer, and whether the specification still matches
the one that recorded the database's trials (spec versions)."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from study.database.results_db import ResultsDB, SpecVersion
from study.record import TRIAL_STATUSES
from study.sweep.spec import SweepSpec, spec_changes, spec_content, spec_hash
from study.units import parse_budget

RETRYABLE_STATUSES: tuple[str, ...] = tuple(s for s in TRIAL_STATUSES if s != "ok")
DEFAULT_CONNECT_TIMEOUT_S = 30.0
# Run in a separate process, so that a cluster that accepts connections but never answers cannot hang
# the driver: ray.init retries for minutes inside native code that no signal interrupts.
_PROBE = ("import sys, ray; ray.init(address=sys.argv[1], log_to_driver=False, logging_level='ERROR'); "
          "ray.shutdown()")


class PreflightError(ValueError):
    """A sweep cannot start for a reason the user can fix; one line."""


class SweepError(PreflightError):
    """A sweep cannot start or continue for a reason the user can fix; printed as one line by the CLI."""


def parse_retry(text: str | None) -> frozenset[str]:
    """`--retry failed,oom` -> the statuses whose recorded trials run again."""
    if text is None:
        return frozenset()
    statuses = [part.strip() for part in text.split(",")]
    unknown = [s for s in statuses if s not in RETRYABLE_STATUSES]
    if unknown or not statuses:
        raise PreflightError(f"--retry: {unknown[0] if unknown else text!r} is not one of "
                             f"{', '.join(RETRYABLE_STATUSES)}")
    return frozenset(statuses)


def parse_seconds(option: str, text: str | float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise PreflightError(f"{option}: expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise PreflightError(f"{option}: must be a positive number of seconds, got {text!r}")
    return value


def _is_fraction(budget: str) -> bool:
    try:
        parse_budget(budget, None)
    except ValueError:
        return True  # the spec parsed it against a card, so only the card's size was missing
    return False


def check_fractional_budgets(spec: SweepSpec, card_bytes: int | None, *, address: str | None) -> None:
    """Refuse a budget given as a fraction of the card ("0.5") when no trial can have a card to take
    the fraction of: every trial would fail the same way."""
    fractions = sorted({c.memory_budget for c in spec.grid()
                        if c.memory_budget is not None and _is_fraction(c.memory_budget)})
    if not fractions:
        return
    if spec.resources.gpus == 0:
        why = "resources.gpus is 0, so no trial gets a GPU"
    elif all(c.device == "cpu" for c in spec.grid()):
        why = "every trial runs on device \"cpu\""
    elif card_bytes is None and address is None:
        why = "this machine has no GPU"
    else:
        return
    raise PreflightError(f"{spec.source}: memory_budget {fractions[0]!r} is a fraction of a GPU's memory, "
                         f"but {why}: every trial would fail; give the budget as a size (e.g. \"8GiB\")")


def check_cluster_answers(address: str, timeout_s: float) -> None:
    """PreflightError within about `timeout_s` seconds unless a Ray cluster answers at `address`."""
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if host and port.isdigit():
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
                pass
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise PreflightError(f"--address {address}: nothing answers there ({reason})") from None
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": os.environ.get("RAY_USAGE_STATS_ENABLED", "0")}
    try:
        probe = subprocess.run([sys.executable, "-c", _PROBE, address], capture_output=True, text=True,
                               timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise PreflightError(f"--address {address}: no Ray cluster answered within {timeout_s:g} s "
                             "(--connect-timeout)") from None
    if probe.returncode != 0:
        lines = [line for line in probe.stderr.splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else f"exit code {probe.returncode}"
        raise PreflightError(f"--address {address}: cannot join the Ray cluster ({reason[:300]})")


def resolve_spec_version(db: ResultsDB, spec: SweepSpec, plan_ids: Iterable[str], *,
                         new_version: bool) -> SpecVersion:
    """The version of the sweep's specification this run records under: the latest one when the spec
    is unchanged; a new one when it changed and `new_version` allows it; else PreflightError saying
    what changed."""
    content, digest = spec_content(spec), spec_hash(spec)
    planned = frozenset(plan_ids)
    versions = db.spec_versions(spec.name)
    if versions:
        latest = versions[-1]
        if latest.spec_hash == digest:
            return latest
        if not new_version:
            changes = "; ".join(spec_changes(latest.content, content)) or "no key differs, only the hash"
            raise PreflightError(
                f"{spec.source} changed since sweep {spec.name!r} was recorded in {db.path} as spec version "
                f"{latest.version} ({changes}): pass --new-spec-version to run it as version "
                f"{latest.version + 1} (analysis shows the latest version by default), or --db for a new "
                f"database")
        return db.add_spec_version(spec.name, digest, content, planned)
    # No version recorded: a new sweep, or one recorded before spec versions were kept.
    foreign = sorted(db.trial_ids(spec.name) - planned)
    if foreign and not new_version:
        raise PreflightError(
            f"{db.path}: {len(foreign)} recorded trial(s) of sweep {spec.name!r} are not in the plan of "
            f"{spec.source} (e.g. {foreign[0]}): it changed since they were recorded, before spec versions "
            f"were kept; pass --new-spec-version to record it as version 1 beside them (analysis then "
            f"shows its trials by default), or --db for a new database")
    return db.add_spec_version(spec.name, digest, content, planned)


def default_db_path(spec: SweepSpec) -> Path:
    return Path("results") / spec.name / "results.sqlite"


__all__ = ["PreflightError", "SweepError", "parse_retry", "parse_seconds", "check_fractional_budgets",
           "check_cluster_answers", "resolve_spec_version", "RETRYABLE_STATUSES",
           "DEFAULT_CONNECT_TIMEOUT_S", "default_db_path"]
