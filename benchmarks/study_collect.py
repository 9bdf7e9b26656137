"""Bring one study device call's files into the tree: the databases `benchmarks/study_session.sh` left in
$OUT over `results/study/`, and its logs into `results/study/callN/` (`logs.tgz` and the `environment.txt`
inside it). The next call resumes from what this writes, so it refuses a database that lost rows against the
tree's copy: a call that was given an older copy (its results of the call before were never brought back)
returns a database without them, or with them run again, and copying it would silently drop trials.

    python benchmarks/study_collect.py /work/.device/3 --call 25            # FILES_AT of the device call
    python benchmarks/study_collect.py FILES_AT --call 25 --dry-run          # say what would change

A refused database is left where it is; merge it by hand (the rows it has and the tree lacks) or pass
--allow-lost-rows to take it as it is. Exit status 1 when anything was refused.

On the device, `benchmarks/study_session.sh` writes the copies this reads with the same code:

    python3 benchmarks/study_collect.py snapshot "$OUT" DB...   # consistent copies, WAL included"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

RESULTS = Path("results/study")


Row = tuple[str, str | None]  # (status, started_at)


@dataclass
class Comparison:
    """What a returned database holds against the tree's copy of it (trial id -> (status, started_at) on
    each side). `--resume` never runs an `ok` trial again, so an `ok` row that is missing, no longer `ok`, or
    started at another time means the call began from an older copy than the tree's."""

    before: dict[str, Row]
    after: dict[str, Row]
    lost: list[str] = field(init=False)  # in the tree, not in the returned database
    demoted: list[str] = field(init=False)  # `ok` in the tree, another status in the returned database
    rerun: list[str] = field(init=False)  # `ok` on both sides, but not the same run
    added: list[str] = field(init=False)
    changed: list[str] = field(init=False)  # a status other than ok run again (e.g. `--retry`)

    def __post_init__(self) -> None:
        both = [t for t in self.before if t in self.after]
        ok_before = [t for t in both if self.before[t][0] == "ok"]
        self.lost = sorted(set(self.before) - set(self.after))
        self.demoted = sorted(t for t in ok_before if self.after[t][0] != "ok")
        self.rerun = sorted(t for t in ok_before
                            if self.after[t][0] == "ok" and self.after[t] != self.before[t])
        self.added = sorted(set(self.after) - set(self.before))
        self.changed = sorted(t for t in both
                              if self.before[t][0] != "ok" and self.after[t] != self.before[t])

    @property
    def refused(self) -> bool:
        return bool(self.lost or self.demoted or self.rerun)


def trial_rows(path: Path) -> dict[str, Row]:
    """trial id -> (status, started_at) of every row in `path`'s `trials` table (opened read-only)."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = connection.execute("SELECT trial_id, status, started_at FROM trials").fetchall()
    except sqlite3.DatabaseError as exc:
        raise SystemExit(f"{path}: not a results database ({exc})") from exc
    finally:
        connection.close()
    return {trial_id: (status, started_at) for trial_id, status, started_at in rows}


def counts(rows: dict[str, Row]) -> str:
    by_status = Counter(status for status, _ in rows.values())
    return ", ".join(f"{status} {n}" for status, n in sorted(by_status.items())) or "no rows"


def copy_database(source: Path, target: Path) -> None:
    """A consistent copy through SQLite's backup API (a returned file may come with its WAL)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".partial")
    partial.unlink(missing_ok=True)
    reading, writing = sqlite3.connect(f"file:{source}?mode=ro", uri=True), sqlite3.connect(partial)
    try:
        reading.backup(writing)
        writing.execute("PRAGMA journal_mode=DELETE")
    finally:
        reading.close()
        writing.close()
    partial.replace(target)


def collect_logs(files_at: Path, call_dir: Path) -> str | None:
    """logs.tgz and its environment.txt into `call_dir`; the environment's first two lines (None: no logs)."""
    archive = files_at / "logs.tgz"
    if not archive.is_file():
        return None
    call_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(archive, call_dir / "logs.tgz")
    with tarfile.open(archive) as tar:
        member = next((m for m in tar.getmembers()
                       if Path(m.name).name == "environment.txt" and m.isfile()), None)
        if member is None:
            return ""
        extracted = tar.extractfile(member)
        assert extracted is not None
        text = extracted.read().decode()
    (call_dir / "environment.txt").write_text(text)
    return "\n".join(text.splitlines()[:2])


def _listed(what: str, ids: list[str], shown: list[str] | None = None, most: int = 8) -> str:
    """"  3 <what>: a, b, c" (the first `most` of `shown`, which defaults to the ids, then "...")."""
    shown = ids if shown is None else shown
    return f"  {len(ids)} {what}: " + ", ".join(shown[:most]) + (" ..." if len(ids) > most else "")


def describe(name: str, comparison: Comparison) -> list[str]:
    lines = [f"{name}: {counts(comparison.before)} -> {counts(comparison.after)}"
             f" ({len(comparison.added)} new row(s), {len(comparison.changed)} retried)"]
    if comparison.lost:
        lines.append(_listed("row(s) of the tree's copy are missing", comparison.lost))
    if comparison.demoted:
        lines.append(_listed("ok row(s) of the tree's copy are not ok here", comparison.demoted,
                             [f"{t} ({comparison.after[t][0]})" for t in comparison.demoted]))
    if comparison.rerun:
        lines.append(_listed("ok row(s) of the tree's copy were run again", comparison.rerun))
    if comparison.refused:
        lines.append("  refused: this call was given an older copy of the database than the tree's; merge "
                     "the rows it added by hand, or pass --allow-lost-rows to take it as it is")
    return lines


def snapshot(argv: list[str]) -> int:
    """`snapshot OUT DB...`: a consistent copy of each database that exists into OUT, with its counts."""
    parser = argparse.ArgumentParser(prog="study_collect.py snapshot",
                                     description="copy results databases for the trip back from the device")
    parser.add_argument("out", type=Path, help="the folder the copies go to ($OUT of a device call)")
    parser.add_argument("databases", type=Path, nargs="+", help="results databases; a missing one is skipped")
    args = parser.parse_args(argv)
    for source in args.databases:
        if not source.is_file():
            print(f"{source}: no database (the sweep recorded nothing)")
            continue
        target = args.out / source.name
        copy_database(source, target)
        print(f"{source}: {counts(trial_rows(target))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["snapshot"]:
        return snapshot(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files_at", type=Path, help="the folder the device call's $OUT files were copied to")
    parser.add_argument("--call", type=int, required=True,
                        help="the call's number: its logs go to results/study/callN")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="where the databases live (default %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="compare and report, copy nothing")
    parser.add_argument("--allow-lost-rows", action="store_true",
                        help="copy a database even when it lacks rows, or ok rows, of the tree's copy")
    args = parser.parse_args(argv)
    if not args.files_at.is_dir():
        parser.error(f"files_at: {args.files_at} is not a folder")
    returned = sorted(args.files_at.glob("*.sqlite"))
    if not returned:
        parser.error(f"files_at: {args.files_at} holds no *.sqlite")
    refused = False
    for source in returned:
        target = args.results / source.name
        before = trial_rows(target) if target.exists() else {}
        comparison = Comparison(before, trial_rows(source))
        print("\n".join(describe(source.name, comparison)))
        if comparison.refused and not args.allow_lost_rows:
            refused = True
            continue
        if not args.dry_run:
            copy_database(source, target)
    if not args.dry_run:
        environment = collect_logs(args.files_at, args.results / f"call{args.call}")
        shown = "no logs.tgz" if environment is None else environment or "no environment.txt"
        print(f"call{args.call}: {shown}")
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
