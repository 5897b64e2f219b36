"""Recovery points: `--at` as a UTC time, checked against a recoverable window, and written
the one way every message and manifest writes a time. Both recovery engines use it: pgBackRest
on Compose (backup/pitr.py) and CloudNativePG on Kubernetes (engines/cnpg.py)."""

from __future__ import annotations

from datetime import UTC, datetime


def parse(at: str) -> datetime:
    """An ISO 8601 / RFC 3339 time with its offset (or Z) as UTC; ValueError with a sentence
    otherwise (a time without an offset is ambiguous: the server's zone is not the user's)."""
    try:
        parsed = datetime.fromisoformat(at.strip())
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise ValueError(
            f"--at {at!r} is not a time: give one like 2026-12-04T10:15:00Z (UTC, or with its "
            "offset), or 'latest'"
        )
    return parsed.astimezone(UTC)


def outside(point: datetime, first: datetime, now: datetime) -> str | None:
    """Why `point` is not in the window from `first` to `now`, or None when it is."""
    if point > now:
        return f"--at {rfc3339(point)} is in the future"
    if point < first:
        return f"--at {rfc3339(point)} is before the oldest base backup kept"
    return None


def rfc3339(moment: datetime) -> str:
    """`moment` in UTC to the second, as CloudNativePG's targetTime and the messages write it."""
    return f"{moment.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"
