"""How the backup engine reports: `BackupError` for a failure, `Log` lines for progress.

Every step takes a `log` callable (the default prints to stderr, which the compose service's
and the CronJob's logs keep); callers that want silence or their own output pass another.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

Log = Callable[[str], None]


class BackupError(Exception):
    """A backup, restore or verification failed; the message says what and why."""


def to_stderr(message: str) -> None:
    """The default `Log`: one prefixed line on stderr, flushed at once."""
    print(f"shipyard backup: {message}", file=sys.stderr, flush=True)


def human_size(n: int) -> str:
    """A byte count for a progress line: `512 B`, `3.2 MiB`."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1024
    return f"{n} B"


def human_duration(seconds: float) -> str:
    """An age for a progress line: `42 s`, `17 min`, `5.2 h`, `3.0 days`."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
