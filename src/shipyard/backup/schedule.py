"""`shipyard backup schedule`: the backups and restore drills of a Compose host, on their cron
schedules, in a service that runs until it is stopped (compose.backup.yaml's `scheduler`).

Kubernetes has CronJobs; a Compose host has no scheduler of its own but its crontab, which a
kit cannot install. This loop stands in for that crontab, inside the backup image: each job is
the engine's own command (`shipyard backup run ...`, `shipyard backup verify ...`) run as a
child process at the times its schedule gives, in UTC. The schedules are parsed by cronsim, the
cron evaluator of healthchecks.io (Debian cron's rules, with an optional leading seconds field).

Unlike cron, jobs run one at a time (a drill never restores while a backup dumps): a job due
while another runs starts once that one ends, and the further runs it missed meanwhile are
skipped and said, never queued up. A job's failure is its own (its exit status and error go to
the log, its metrics to the Pushgateway): the loop goes on. SIGTERM or SIGINT stops the loop; a
running job is interrupted (SIGINT, so it cleans up) and waited for, within docker's stop
timeout, then the loop exits 0.
"""

from __future__ import annotations

import signal
import subprocess
import sys
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
    stop = _Stop()
    due = {j: j.after(_now()) for j in jobs}
    for j in jobs:
        say(f"{j.name} at '{j.cron}' (UTC), next {_at(due[j])}: shipyard {' '.join(j.args)}")
    while not stop.asked:
        current = min(jobs, key=lambda j: due[j])
        if not stop.sleep_until(due[current]):
            break
        _run_one(current, due[current], stop)
        for j, skipped in advance(jobs, due, current, _now()).items():
            say(f"{j.name}: {skipped} run(s) due while {current.name} ran were skipped")
    say("stopped")
    return 0


def advance(
    jobs: Sequence[Job], due: dict[Job, datetime], ran: Job, moment: datetime
) -> dict[Job, int]:
    """Move the due times on after `ran` ran until `moment`, in place; the runs each job
    skips. `ran` is next due after `moment`. Another job that fell due meanwhile stays due
    (at its latest time passed), so it runs next, once: the times it missed before are
    skipped, as are those `ran` missed while it ran."""
    skipped: dict[Job, int] = {}
    due[ran] = ran.after(due[ran])
    for j in jobs:
        missed = 0
        if j is ran:
            while due[j] <= moment:
                due[j], missed = j.after(due[j]), missed + 1
        else:
            while (later := j.after(due[j])) <= moment:
                due[j], missed = later, missed + 1
        if missed:
            skipped[j] = missed
    return skipped


class _Stop:
    """SIGTERM and SIGINT, as a flag the loop reads: the handler only sets it (a handler that
    took a lock could deadlock with the code it interrupts), and the waits below look at it at
    least once a second."""

    def __init__(self) -> None:
        self.asked = False
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._ask)

    def _ask(self, _signum: int, _frame: FrameType | None) -> None:
        self.asked = True

    def sleep_until(self, moment: datetime) -> bool:
        """Wait for `moment` by the wall clock, as cron does (a clock set or a host resumed
        moves it); False when a stop came first."""
        while not self.asked:
            left = (moment - _now()).total_seconds()
            if left <= 0:
                return True
            time.sleep(min(left, 1.0))
        return False


def _run_one(j: Job, at: datetime, stop: _Stop) -> None:
    """Run one job to its end; a stop is passed on as SIGINT, which the engine takes as an
    interruption and cleans up after (a partial upload aborted, tar and zstd stopped) before
    it ends. Its outcome said in one line."""
    say(f"{j.name} (due {_at(at)}) started")
    started = time.monotonic()
    try:
        child = subprocess.Popen([*ENGINE, *j.args], stdin=subprocess.DEVNULL)
    except OSError as exc:
        say(f"{j.name} could not start: {exc.strerror or exc}", error=True)
        return
    forwarded = False
    while True:
        try:
            rc = child.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            if stop.asked and not forwarded:
                say(f"stopping: {j.name} is interrupted (SIGINT) and waited for")
                child.send_signal(signal.SIGINT)
                forwarded = True
    took = f"{time.monotonic() - started:.1f} s"
    if rc == 0:
        say(f"{j.name} finished in {took}")
    else:
        say(f"{j.name} failed: it {ended(rc)} after {took}", error=True)


def _now() -> datetime:
    return datetime.now(UTC)


def _at(moment: datetime) -> str:
    return timepoint.rfc3339(moment)


def say(line: str, *, error: bool = False) -> None:
    print(f"{PREFIX} {line}", file=sys.stderr if error else sys.stdout, flush=True)
