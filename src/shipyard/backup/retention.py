"""Retention: which complete backups a policy keeps, and `prune`, which deletes the rest.

The newest backup and the newest verified one are always kept; so is any backup whose
manifest exists but could not be read, and each manual, pre-migrate or safety backup of the daily
window.
Incomplete leftovers of a crashed backup (no manifest) go once they are STALE_INCOMPLETE old.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from shipyard.backup.kinds import MANUAL, PRE_MIGRATE, SAFETY
from shipyard.backup.manifest import MANIFEST, Backup, id_time, list_backups
from shipyard.backup.report import Log, to_stderr
from shipyard.backup.storage import Storage

# Kinds of backup taken for a change, each kept for the whole daily window (the other kind,
# "scheduled", is the cron's: thinned to the newest of its day).
ASKED_FOR = (MANUAL, PRE_MIGRATE, SAFETY)
# Leftovers of a crashed backup are removed by retention once they are this old.
STALE_INCOMPLETE = timedelta(days=1)


@dataclass(frozen=True)
class Retention:
    """Keep the newest backup of each of the last `daily` days, `weekly` ISO weeks and
    `monthly` months (UTC calendar); the newest backup and the newest verified one always,
    and every manual, pre-migrate and safety backup of the last `daily` days."""

    daily: int
    weekly: int = 0
    monthly: int = 0


def plan_retention(
    backups: list[Backup], policy: Retention, now: datetime | None = None
) -> dict[str, str]:
    """backup id -> why it is kept; every other complete backup may be deleted."""
    now = now or datetime.now(UTC)
    keep: dict[str, str] = {}
    newest_first = sorted(backups, key=lambda b: (b.created, b.id), reverse=True)
    if newest_first:
        keep[newest_first[0].id] = "newest"
    verified = [b for b in newest_first if b.verified]
    if verified:
        keep.setdefault(verified[0].id, "newest verified")

    def bucket_rule(count: int, bucket: Callable[[datetime], tuple[int, ...]], what: str) -> None:
        if count <= 0:
            return
        current = bucket(now)
        allowed = _last_buckets(current, count, bucket, now)
        seen: set[tuple[int, ...]] = set()
        for b in newest_first:
            key = bucket(b.created)
            if key in allowed and key not in seen:
                seen.add(key)
                keep.setdefault(b.id, what)

    # Backups taken for a change are not thinned to the newest of their day: `invoke backup`
    # (manual) before a risky change, a deploy's pre-migrate backup (the only copy of what its
    # migration changed: a second deploy that day must not prune the first's), and the safety
    # backup a restore takes of what it replaces (the only way to undo it) stay for the whole
    # daily window, each. Today's at least, whatever the policy: one was just taken.
    days = _last_buckets(_day(now), policy.daily, _day, now)
    for b in newest_first:
        kind = b.manifest.get("kind")
        if kind in ASKED_FOR and _day(b.created) in days:
            keep.setdefault(b.id, kind)
    bucket_rule(policy.daily, _day, "daily")
    bucket_rule(policy.weekly, lambda t: tuple(t.isocalendar())[:2], "weekly")
    bucket_rule(policy.monthly, lambda t: (t.year, t.month), "monthly")
    return keep


def _day(t: datetime) -> tuple[int, ...]:
    return (t.year, t.month, t.day)


def _last_buckets(
    current: tuple[int, ...],
    count: int,
    bucket: Callable[[datetime], tuple[int, ...]],
    now: datetime,
) -> set[tuple[int, ...]]:
    """The `count` calendar buckets ending with now's, found by stepping back a day at a time."""
    found = {current}
    day = now
    while len(found) < count:
        day -= timedelta(days=1)
        found.add(bucket(day))
    return found


def prune(
    storage: Storage, policy: Retention, *, dry_run: bool = False, log: Log = to_stderr
) -> list[str]:
    """Delete complete backups the policy does not keep and stale incomplete leftovers."""
    backups = list_backups(storage)
    keep = plan_retention(backups, policy)
    complete = {b.id for b in backups}
    doomed = [b.id for b in backups if b.id not in keep]
    now = datetime.now(UTC)
    keys = storage.list_keys()
    # Only a backup that never wrote its manifest is a crashed leftover. One whose manifest
    # exists but could not be read or checked (a passing storage error, a newer format) may
    # be a good backup: it is never deleted on that guess.
    with_manifest = {k.split("/", 1)[0] for k in keys if k.endswith(f"/{MANIFEST}")}
    for backup_id in sorted({k.split("/", 1)[0] for k in keys} - complete):
        if backup_id in with_manifest:
            log(f"keeping {backup_id}: it has a manifest this run could not read")
            continue
        started = id_time(backup_id)
        if started and now - started > STALE_INCOMPLETE:
            doomed.append(backup_id)
    for backup_id in doomed:
        log(f"{'would delete' if dry_run else 'deleting'} {backup_id}")
        if not dry_run:
            storage.delete_prefix(f"{backup_id}/")
    log(
        f"retention kept {len(keep)} backup(s), {'would delete' if dry_run else 'deleted'} "
        f"{len(doomed)}"
    )
    return doomed
