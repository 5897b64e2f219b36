"""`shipyard backup schedule`: the backups and restore drills of a Compose host, on their cron
schedules, in a service that runs until it is stopped (compose.backup.yaml's `scheduler`).

Kubernetes has CronJobs; a Compose host has no scheduler of its own but its crontab, which a
kit cannot install. This loop is that crontab, inside the backup image: each job is the
engine's own command (`shipyard backup run ...`, `shipyard backup verify ...`) run as a child
process at the times its schedule gives, in UTC, exactly as a crontab line would run it. The
schedules are parsed by cronsim, the cron evaluator of healthchecks.io (Debian cron's rules,
with an optional leading seconds field).

Jobs run one at a time: a job due while another runs starts when that one ends, and the runs
it missed meanwhile are skipped and said, never queued up. A job's failure is its own (its
exit status and error go to the log, its metrics to the Pushgateway): the loop goes on. SIGTERM
or SIGINT stops the loop; a running job is sent SIGTERM and waited for (docker's stop timeout
bounds the wait), then the loop exits 0.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType

from cronsim import CronSim, CronSimError

from shipyard import timepoint
from shipyard.backup.db import ended
from shipyard.backup.engine import BackupError

PREFIX = "shipyard backup schedule:"


# The engine's command, run by this interpreter (the image's venv), whatever PATH holds.
ENGINE = (sys.executable, "-m", "shipyard.cli")


@dataclass(frozen=True)
class Job:
    """One scheduled engine command: its name in the log, its cron schedule (UTC) and the
    arguments of `shipyard` it runs (`backup run --target ...`)."""

    name: str
    cron: str
    args: tuple[str, ...]

    def after(self, moment: datetime) -> datetime:
        """The first time after `moment` (UTC) this job is due."""
        return next(CronSim(self.cron, moment))


def job(name: str, option: str, cron: str, args: Sequence[str]) -> Job:
    """A Job, or BackupError naming `option` when `cron` is not a schedule cronsim reads."""
    try:
        CronSim(cron, datetime.now(UTC))
    except CronSimError as exc:
        raise BackupError(
            f"{option} {cron!r} is not a cron schedule ({exc}): give five fields, minute hour"
            " day-of-month month day-of-week, e.g. '0 3 * * *' (UTC)"
        ) from None
    return Job(name, cron, tuple(args))


def run(jobs: Sequence[Job]) -> int:
    """Run `jobs` on their schedules until SIGTERM or SIGINT; 0 once stopped."""
    stop = threading.Event()

    def stopping(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stopping)
    due = {j: j.after(_now()) for j in jobs}
    for j in jobs:
        _say(f"{j.name} at '{j.cron}' (UTC), next {_at(due[j])}: shipyard {' '.join(j.args)}")
    while not stop.is_set():
        current = min(jobs, key=lambda j: due[j])
        if stop.wait(max(0.0, (due[current] - _now()).total_seconds())):
            break
        _run_one(current, due[current], stop)
        due[current] = current.after(due[current])
        moment = _now()
        for j in jobs:
            skipped = 0
            while due[j] <= moment:
                skipped += 1
                due[j] = j.after(due[j])
            if skipped:
                _say(f"{j.name}: {skipped} run(s) due while {current.name} ran were skipped")
    _say("stopped")
    return 0


def _now() -> datetime:
    return datetime.now(UTC)


def _run_one(j: Job, at: datetime, stop: threading.Event) -> None:
    """Run one job to its end, forwarding a stop to it; its outcome said in one line."""
    _say(f"{j.name} (due {_at(at)}) started")
    started = time.monotonic()
    try:
        child = subprocess.Popen([*ENGINE, *j.args], stdin=subprocess.DEVNULL)
    except OSError as exc:
        _say(f"{j.name} could not start: {exc.strerror or exc}", error=True)
        return
    forwarded = False
    while True:
        try:
            rc = child.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            if stop.is_set() and not forwarded:
                _say(f"stopping: {j.name} is sent SIGTERM and waited for")
                child.send_signal(signal.SIGTERM)
                forwarded = True
    took = f"{time.monotonic() - started:.1f} s"
    if rc == 0:
        _say(f"{j.name} finished in {took}")
    else:
        _say(f"{j.name} failed: it {ended(rc)} after {took}", error=True)


def _at(moment: datetime) -> str:
    return timepoint.rfc3339(moment)


def _say(line: str, *, error: bool = False) -> None:
    print(f"{PREFIX} {line}", file=sys.stderr if error else sys.stdout, flush=True)
