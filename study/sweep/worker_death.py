"""What is known about a trial whose Ray worker process died: which process, what Ray says about its
exit, and the last lines of the worker's own log.

A worker that dies takes no Python exception with it, and Ray does not learn the signal (its raylet
reports only "exits with a connection error"). What remains is the text of Ray's ActorDiedError (the
worker's pid and node, Ray's exit type and detail) and the worker's stderr/stdout logs, which Ray
writes to `<session dir>/logs/worker-<worker id>-<job id>-<pid>.err|.out` on the worker's node. The
trainable enables `faulthandler`, so a crash by SIGSEGV, SIGBUS, SIGFPE, SIGILL or SIGABRT leaves
"Fatal Python error: ..." and a traceback there; a SIGKILL (the kernel's out-of-memory killer, `kill
-9`) leaves nothing, which is itself what identifies it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

LOG_TAIL_LINES = 15
_FATAL = "Fatal Python error"
_SIGNAL_LINE = re.compile(r"^\*\*\* (SIG[A-Z0-9]+) received")
_RAY_MARKER = re.compile(r"^:(job_id|actor_name|task_name):")  # lines Ray writes into every worker log


@dataclass(frozen=True)
class WorkerExit:
    """What Ray's error text says about a dead worker (None where it says nothing)."""

    pid: int | None = None
    node_ip: str | None = None
    exit_type: str | None = None
    exit_detail: str | None = None

    @classmethod
    def parse(cls, error_text: str) -> WorkerExit:
        def find(pattern: str) -> str | None:
            match = re.search(pattern, error_text)
            return match.group(1).strip() if match else None

        pid = find(r"\bpid: (\d+)") or find(r"Worker PID: (\d+)")
        detail = find(r"Worker exit detail: (.*?)(?: Some common causes|\n|$)")
        node_ip = find(r"\bip: (\S+)") or find(r"Worker IP address: (\S+)")
        return cls(pid=int(pid) if pid else None, node_ip=node_ip, exit_type=find(r"Worker exit type: (\w+)"),
                   exit_detail=detail)


def session_dir_of(path: str | Path | None) -> Path | None:
    """The Ray session folder (`.../session_<date>_<pid>`) that `path` lies in, if any."""
    if path is None:
        return None
    for folder in [Path(path), *Path(path).parents]:
        if folder.name.startswith("session_") and (folder / "logs").is_dir():
            return folder
    return None


def worker_logs(session_dir: Path | None, pid: int | None) -> list[Path]:
    """The stderr and stdout logs of worker `pid` in the session, stderr first."""
    if session_dir is None or pid is None:
        return []
    logs = session_dir / "logs"
    return sorted(logs.glob(f"worker-*-{pid}.err")) + sorted(logs.glob(f"worker-*-{pid}.out"))


def log_excerpt(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The telling part of a worker log: from just before its first crash report (Ray's "*** SIGSEGV
    received", faulthandler's "Fatal Python error"), with what the worker printed just before, else
    its last `lines` lines."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    kept = [line.rstrip() for line in text.splitlines() if line.strip() and not _RAY_MARKER.match(line)]
    crash = next((i for i, line in enumerate(kept) if _crash_report(line)), None)
    if crash is not None:
        return kept[max(0, crash - 5):crash + 2 * lines]
    return kept[-lines:]


def _crash_report(line: str) -> str | None:
    """"SIGSEGV" from Ray's "*** SIGSEGV received ..." line, or faulthandler's "Fatal Python error: ..."."""
    signal = _SIGNAL_LINE.search(line)
    if signal:
        return signal.group(1)
    return line.strip() if line.startswith(_FATAL) else None


def describe_worker_death(error_text: str | None, session_dir: Path | None) -> str:
    """The error of a trial whose worker died: a first line saying what is known, then the end of the
    worker's logs (or where they are when they are on another node)."""
    if not error_text:
        return "the trial's worker failed and Ray recorded no error for it"
    exit_info = WorkerExit.parse(error_text)
    if exit_info.pid is None:  # not a dead process: some other error Ray raised around the trial
        lines = [line for line in error_text.splitlines() if line.strip()]
        return "the trial's worker failed: " + "\n".join(lines[-40:])
    where = f"pid {exit_info.pid}" + (f" on {exit_info.node_ip}" if exit_info.node_ip else "")
    ray_says = ", ".join(part for part in (exit_info.exit_type, exit_info.exit_detail) if part)
    logs = worker_logs(session_dir, exit_info.pid)
    tails = {path: log_excerpt(path) for path in logs}
    reports = list(dict.fromkeys(report for tail in tails.values() for line in tail
                                 if (report := _crash_report(line)) is not None))
    if reports:
        cause = "crashed: " + "; ".join(reports)  # e.g. "SIGSEGV; Fatal Python error: Segmentation fault"
    elif logs:
        cause = ("no Python exception and no crash report in its log: it was killed, most likely by "
                 "SIGKILL (the kernel's out-of-memory killer, or kill -9)")
    else:
        cause = "no Python exception"
    first = f"the trial's worker process died ({where}): {cause}"
    if ray_says:
        first += f" [Ray: {ray_says}]"
    details = []
    for path, tail in tails.items():
        if tail:
            details.append(f"from its log {path}:")
            details += [f"  {line}" for line in tail]
    if not logs:
        details.append(f"its log is worker-*-{exit_info.pid}.err in the logs folder of the Ray session "
                       f"on {exit_info.node_ip or 'its node'}")
    return "\n".join([first, *details])


__all__ = ["describe_worker_death", "WorkerExit", "session_dir_of", "worker_logs", "log_excerpt"]
