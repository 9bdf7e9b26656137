"""`cce-study sweep`: run a sweep specification with Ray Tune under a memory budget into the results database.

The command plans the trials (study.sweep.planning), holds the database's driver lock, writes what an
earlier run left unwritten, then runs the plan (study.sweep.driver) and prints the summary
(study.sweep.summary). Trial ids are a hash of the sweep name and the full configuration, so `--resume`
skips exactly the trials already recorded, after a crash, a SIGKILL of the driver, or Ctrl-C, and
continues each unfinished trial from the last checkpoint it saved under the sweep's storage
(study.sweep.checkpoint_store).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from study.database.results_db import (
    DEFAULT_BUSY_TIMEOUT_S,
    DatabaseBusyError,
    ResultsDB,
    check_database_path,
    load_trials,
)
from study.sweep import db_spool
from study.sweep.checkpoint_store import CheckpointStore
from study.sweep.driver import execute_sweep, storage_root
from study.sweep.driver_lock import DriverLock
from study.sweep.planning import budget_of, local_card_bytes, note, plan_trials, print_plan
from study.sweep.preflight import (
    DEFAULT_CONNECT_TIMEOUT_S,
    RETRYABLE_STATUSES,
    SweepError,
    check_cluster_answers,
    check_fractional_budgets,
    default_db_path,
    parse_retry,
    parse_seconds,
    resolve_spec_version,
)
from study.sweep.run_folders import remove_stale_run_folders
from study.sweep.spec import SweepSpec, load_spec
from study.sweep.summary import print_summary
from study.sweep.trial import resolve_trial_function

# study.cli looks for `configure_sweep` / `run_sweep` before `configure` / `run`: no function here may
# take those names.


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", type=Path, help="sweep specification (TOML), e.g. sweeps/demo.toml")
    parser.add_argument("--db", type=Path, default=None,
                        help="results database (default: results/<sweep name>/results.sqlite)")
    parser.add_argument("--address", default=None,
                        help="join a running Ray cluster at this address (default: start a local one)")
    parser.add_argument("--connect-timeout", default=DEFAULT_CONNECT_TIMEOUT_S, metavar="SECONDS",
                        help="with --address: give up when the cluster does not answer within this time "
                             f"(default {DEFAULT_CONNECT_TIMEOUT_S:g})")
    parser.add_argument("--resume", action="store_true",
                        help="finish a sweep whose database already holds some of its trials (recorded "
                             "trials are not run again)")
    parser.add_argument("--retry", metavar="STATUSES", default=None,
                        help="with --resume: also run again the recorded trials with these statuses, "
                             f"comma-separated ({', '.join(RETRYABLE_STATUSES)}); grid searches only")
    parser.add_argument("--new-spec-version", action="store_true",
                        help="when the specification changed since the database's trials of the sweep were "
                             "recorded, run it as a new version of the sweep (trials of unchanged "
                             "configurations are kept) instead of refusing")
    parser.add_argument("--db-busy-timeout", default=DEFAULT_BUSY_TIMEOUT_S, metavar="SECONDS",
                        help="how long a write waits for another process's lock on the database before "
                             "the sweep stops, keeping unwritten trials for --resume "
                             f"(default {DEFAULT_BUSY_TIMEOUT_S:g})")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the trials with their predicted memory and exit")
    parser.add_argument("--stop-after", type=parse_duration, default=None, metavar="DURATION",
                        help="start no trial after this long (e.g. 3600, 45m, 2h); trials already running "
                             "finish, the rest are left for --resume (for time-limited jobs)")
    parser.add_argument("--gpus-per-trial", type=_card_share, default=None, metavar="SHARE",
                        help="this run only: the GPUs each trial asks for (e.g. 0.25: four trials to a "
                             "card), instead of the spec's [resources] gpus; packing is not part of the "
                             "sweep's identity, so --resume accepts it")
    parser.add_argument("--cpus-per-trial", type=_positive_number, default=None, metavar="CPUS",
                        help="this run only: the CPUs each trial asks for, instead of [resources] cpus")
    parser.add_argument("--max-concurrent", type=_positive_integer, default=None, metavar="N",
                        help="this run only: at most N trials at once, instead of [resources] max_concurrent")
    parser.add_argument("--storage", default=None,
                        help="where trials keep checkpoints and best models: a folder or a URI such as "
                             "s3://bucket/prefix (default: [checkpoint] storage of the spec, else "
                             "checkpoints/ beside the database)")


def run(args: argparse.Namespace) -> int:
    spec = with_packing(load_spec(args.spec), args)
    retry = parse_retry(args.retry)
    busy_timeout = parse_seconds("--db-busy-timeout", args.db_busy_timeout)
    connect_timeout = parse_seconds("--connect-timeout", args.connect_timeout)
    if retry and spec.search.kind != "grid":
        raise SweepError("--retry: only a grid search retries trials (an optuna search draws new samples)")
    db_path = check_database_path(Path(args.db) if args.db is not None else default_db_path(spec),
                                  writable=not args.dry_run)
    storage = storage_root(spec, db_path, getattr(args, "storage", None))
    resolve_trial_function(spec.run.trial_function)  # fail now rather than in every worker
    card_bytes = spec.resources.gpu_memory_bytes or local_card_bytes()
    budget_bytes = budget_of(spec.memory_budget, card_bytes, spec.name)
    if args.dry_run:  # planning a GPU sweep elsewhere is fine: a fractional budget only gets a note
        plan = plan_trials(spec, card_bytes)
        done = _recorded_ids(db_path, spec.name)
        print_plan(spec, plan, budget_bytes, done, file=sys.stdout)
        return 0
    check_fractional_budgets(spec, card_bytes, address=args.address)
    if args.address is not None:
        check_cluster_answers(args.address, connect_timeout)
    try:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SweepError(f"{db_path}: cannot create its folder ({exc.strerror or exc})") from exc
    with DriverLock(db_path):
        remove_stale_run_folders()  # Tune's scratch folders of drivers that were killed
        plan = plan_trials(spec, card_bytes)
        with ResultsDB(db_path, busy_timeout_s=busy_timeout) as db:
            try:
                db_spool.replay(db, lambda message: note(spec.name, message))
            except DatabaseBusyError as exc:
                spool = db_spool.spool_path(db_path)
                raise SweepError(f"{exc}; the unwritten trials stay in {spool}") from exc
            done = db.trial_ids(spec.name)
            if done and not (args.resume or retry):
                raise SweepError(
                    f"{db_path} already holds {len(done)} trial(s) of sweep {spec.name!r}: pass --resume to "
                    f"finish that sweep, or --db to write a new database"
                )
            version = resolve_spec_version(db, spec, [t.trial_id for t in plan],
                                           new_version=args.new_spec_version)
            writer = db_spool.SpoolingWriter(db, spec_hash=version.spec_hash, spec_version=version.version)
            stop_after = getattr(args, "stop_after", None)  # callers building a Namespace may leave it out
            deadline = None if stop_after is None else time.time() + stop_after
            try:
                execute_sweep(spec, plan, db, card_bytes=card_bytes, address=args.address, writer=writer,
                              retry=retry, deadline=deadline, storage=storage)
            except KeyboardInterrupt:
                counts = db.status_counts(spec.name)
                print(f"[{spec.name}] interrupted: {sum(counts.values())} trial(s) recorded in {db_path}; "
                      f"run the same command with --resume to finish", file=sys.stderr, flush=True)
                raise
            if writer.stopped is not None:
                return _report_unwritten(spec, db, writer)
            print_summary(spec, db, db_path, budget_bytes, plan, file=sys.stdout,
                          store=CheckpointStore(storage, spec.name))
    return 0


def _report_unwritten(spec: SweepSpec, db: ResultsDB, writer: db_spool.SpoolingWriter) -> int:
    """The sweep stopped because the database stayed locked: write what was kept if the lock is gone by
    now, else say which trials wait in the spool. Exit code 1."""
    spooled = list(dict.fromkeys(writer.spooled))
    db.busy_timeout_s = min(db.busy_timeout_s, 5.0)  # one last short try: the sweep has waited already
    with contextlib.suppress(DatabaseBusyError):
        db_spool.replay(db, lambda message: note(spec.name, message))
        spooled = []
    print(f"[{spec.name}] stopped: {writer.stopped}", file=sys.stderr, flush=True)
    if spooled:
        print(f"[{spec.name}] {len(spooled)} finished trial(s) could not be written: {', '.join(spooled)}; "
              f"they are kept in {writer.path} and the next run writes them first", file=sys.stderr)
    print(f"[{spec.name}] once the lock is released, run the same command with --resume to finish the sweep",
          file=sys.stderr, flush=True)
    return 1


def with_packing(spec: SweepSpec, args: argparse.Namespace) -> SweepSpec:
    """The spec with the packing options of this run (--gpus-per-trial, --cpus-per-trial,
    --max-concurrent) in place of its [resources] ones; trial ids and the spec's version do not change."""
    overrides = {field: value for field, value in (("gpus", getattr(args, "gpus_per_trial", None)),
                                                   ("cpus", getattr(args, "cpus_per_trial", None)),
                                                   ("max_concurrent", getattr(args, "max_concurrent", None)))
                 if value is not None}
    if not overrides:
        return spec
    resources = dataclasses.replace(spec.resources, **overrides)
    if resources.pack_by_predicted_memory and not 0 < resources.gpus <= 1:
        raise SweepError(f"--gpus-per-trial: {spec.name!r} packs trials by predicted memory "
                         f"(resources.pack_by_predicted_memory), which needs a share of one card in (0, 1], "
                         f"got {resources.gpus:g}")
    return dataclasses.replace(spec, resources=resources)


def _card_share(text: str) -> float:
    """A trial's GPUs: a share of one card in [0, 1] or a whole number of cards (argparse type)."""
    value = _positive_number(text, allow_zero=True)
    if value > 1 and value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r}: above 1 must be a whole number of GPUs")
    return value


def _positive_number(text: str, *, allow_zero: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise argparse.ArgumentTypeError(f"{text!r} must be a {'non-negative' if allow_zero else 'positive'} "
                                         f"finite number")
    return value


def _positive_integer(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def parse_duration(text: str) -> float:
    """Seconds from "90", "90s", "45m" or "2h" (argparse type: a bad value is one line, exit 2)."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    value = text.strip().lower()
    scale = units.get(value[-1:])
    number = value[:-1] if scale is not None else value
    try:
        seconds = float(number) * (scale or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 3600, 45m, 2h)") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive, finite duration")
    return seconds


def _recorded_ids(db_path: Path, sweep: str) -> set[str]:
    if not db_path.is_file():
        return set()
    return set(load_trials(db_path, sweep=sweep, spec_version="all")["trial_id"])


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m study.sweep ...`: the sweep command alone (same arguments and exit codes)."""
    from study.cli import main_for

    return main_for("sweep", None if argv is None else list(argv))


__all__ = ["configure", "run", "with_packing", "parse_duration", "main"]

if __name__ == "__main__":
    sys.exit(main())
