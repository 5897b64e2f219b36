"""The backup engine reports itself: after `shipyard backup run` and `verify` (the restore drill:
a restore into a scratch database, compared table by table), the facts the alerts need are
pushed to a Prometheus Pushgateway, when SHIPYARD_PUSHGATEWAY_URL names one.

A Pushgateway because a backup is a service-level batch job, the one use the Prometheus docs
recommend it for: the job ends before any scrape could see it, and the same push works from a
Compose host and from a Kubernetes CronJob. The group is `job="shipyard_backup"` plus the
`service` and `environment` labels (SHIPYARD_SERVICE, SHIPYARD_ENV); point-in-time recovery's
pgBackRest base backups add `backup="pitr"` and its drill `drill="pitr"`, so that the alerts
tell them from the dumps and their drill (a dump succeeding never hides a failing base backup).
A group is never deleted: each push is a POST, which replaces only the metrics it carries, so a
failed run stamps its failure and leaves the last success's time, size and duration as they
were, and a drill leaves the backup's facts alone.

Pushing is a report, never part of the result: a push that fails prints one warning on stderr
and the command's exit status stays the backup's own.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway

from shipyard.backup.manifest import Backup

if TYPE_CHECKING:  # pitr imports psycopg: the report needs only the type
    from shipyard.backup.pitr import BaseBackup

URL_VARIABLE = "SHIPYARD_PUSHGATEWAY_URL"
# The grouping key's labels besides `job`, and the variables they come from.
LABELS = {"service": "SHIPYARD_SERVICE", "environment": "SHIPYARD_ENV"}
JOB = "shipyard_backup"
# The groups' labels of point-in-time recovery's base backups and drill, added to the above.
PITR_BASE_GROUP = {"backup": "pitr"}
PITR_DRILL_GROUP = {"drill": "pitr"}
# A backup must not wait long on its report: a Pushgateway that does not answer in this many
# seconds costs one warning, not the CronJob's deadline.
TIMEOUT_SECONDS = 10.0

# Every metric pushed, with its help text. The alert rules and the dashboard
# (template/includes/monitoring.jinja) read these names.
METRICS = {
    "shipyard_backup_last_success_timestamp_seconds": (
        "When the data of the newest successful backup was read (a dump's snapshot, a base"
        " backup's end), Unix time."
    ),
    "shipyard_backup_last_failure_timestamp_seconds": (
        "When the last failed backup (`shipyard backup run`, `pitr base`) ended, Unix time."
    ),
    "shipyard_backup_duration_seconds": "How long the newest successful backup took.",
    "shipyard_backup_size_bytes": (
        "Bytes the newest successful backup holds in storage (a dump with its data path"
        " archives, or a base backup)."
    ),
    "shipyard_backup_verify_success": (
        "1 if the last restore drill (`shipyard backup verify`) passed, 0 if it failed."
    ),
    "shipyard_backup_verify_last_success_timestamp_seconds": (
        "When the last restore drill that passed ended, Unix time."
    ),
    "shipyard_backup_verify_last_failure_timestamp_seconds": (
        "When the last restore drill that failed ended, Unix time."
    ),
    "shipyard_backup_verify_duration_seconds": "How long the last restore drill took.",
    "shipyard_backup_verify_restore_seconds": (
        "The last passing drill's recovery time: fetching, restoring and reading back the backup."
    ),
    "shipyard_backup_verify_recovery_point_age_seconds": (
        "The last passing drill's recovery point: the age of the backup it restored."
    ),
}


@dataclass(frozen=True)
class Report:
    """The facts one command pushes: metric name (a key of METRICS) -> value."""

    values: Mapping[str, float]


def run_report(made: Backup | None, *, failed_at: float | None) -> Report:
    """After `backup run`: the backup it made (None if none completed) and, if the command
    failed (the backup, or retention after it), when."""
    values: dict[str, float] = {}
    if made is not None:
        values["shipyard_backup_last_success_timestamp_seconds"] = made.created.timestamp()
        values["shipyard_backup_duration_seconds"] = float(made.manifest["duration_seconds"])
        values["shipyard_backup_size_bytes"] = float(made.size)
    if failed_at is not None:
        values["shipyard_backup_last_failure_timestamp_seconds"] = failed_at
    return Report(values)


def base_report(made: BaseBackup | None, *, failed_at: float | None) -> Report:
    """After `backup pitr base`, as run_report after `backup run`: the base backup it made
    (None if it failed) and, if it failed, when. A differential backup's size is what it added
    to the repository."""
    values: dict[str, float] = {}
    if made is not None:
        values["shipyard_backup_last_success_timestamp_seconds"] = made.stopped.timestamp()
        values["shipyard_backup_duration_seconds"] = (made.stopped - made.started).total_seconds()
        values["shipyard_backup_size_bytes"] = float(made.size)
    if failed_at is not None:
        values["shipyard_backup_last_failure_timestamp_seconds"] = failed_at
    return Report(values)


def verify_report(verified: Backup | None, *, started: float, ended: float) -> Report:
    """After `backup verify`: the backup it verified (None if the drill failed), and when it
    ran. A failed drill leaves the last passing one's recovery time and point as they were."""
    outcome = "success" if verified is not None else "failure"
    values = {
        "shipyard_backup_verify_success": 1.0 if verified is not None else 0.0,
        f"shipyard_backup_verify_last_{outcome}_timestamp_seconds": ended,
        "shipyard_backup_verify_duration_seconds": ended - started,
    }
    if verified is not None and verified.verified is not None:
        record = verified.verified
        values["shipyard_backup_verify_restore_seconds"] = float(record["restore_seconds"])
        values["shipyard_backup_verify_recovery_point_age_seconds"] = float(
            record["recovery_point_age_seconds"]
        )
    return Report(values)


def drill_report(
    restore_seconds: float | None, recovery_point_age: float | None, *, started: float, ended: float
) -> Report:
    """After `backup pitr drill`: the same facts as a logical drill's (the alerts and the
    dashboard read both), its restore time and recovery point age None if it failed."""
    passed = restore_seconds is not None
    outcome = "success" if passed else "failure"
    values = {
        "shipyard_backup_verify_success": 1.0 if passed else 0.0,
        f"shipyard_backup_verify_last_{outcome}_timestamp_seconds": ended,
        "shipyard_backup_verify_duration_seconds": ended - started,
    }
    if restore_seconds is not None:
        values["shipyard_backup_verify_restore_seconds"] = restore_seconds
    if recovery_point_age is not None:  # None when it failed, or when it cannot be told
        values["shipyard_backup_verify_recovery_point_age_seconds"] = recovery_point_age
    return Report(values)


def push(
    report: Report, environ: Mapping[str, str], group: Mapping[str, str] | None = None
) -> None:
    """Push `report` to the Pushgateway `environ` names, in the group of its service and
    environment (and `group`'s labels). Without SHIPYARD_PUSHGATEWAY_URL nothing is pushed,
    silently; any failure is one warning on stderr and never an exception, so the caller's exit
    status is the backup's."""
    url = environ.get(URL_VARIABLE, "").strip()
    if not url:
        return
    labels = {label: environ.get(variable, "").strip() for label, variable in LABELS.items()}
    unset = [variable for label, variable in LABELS.items() if not labels[label]]
    if unset:
        _warn(
            f"{URL_VARIABLE} is set but {' and '.join(unset)} is not, so the metrics were not "
            "pushed; set both to the labels the alerts select"
        )
        return
    registry = CollectorRegistry()
    for name, value in report.values.items():
        Gauge(name, METRICS[name], registry=registry).set(value)
    try:
        pushadd_to_gateway(
            url,
            job=JOB,
            registry=registry,
            grouping_key=labels | dict(group or {}),
            timeout=TIMEOUT_SECONDS,
        )
    # Broad on purpose: whatever the push raises (refused, timed out, a 4xx/5xx, a URL it
    # cannot parse), the backup's own result must stand.
    except Exception as exc:
        _warn(f"could not push the metrics to {_shown(url)} ({exc})")


def _warn(problem: str) -> None:
    # stderr is line-buffered: the line is out before the command goes on.
    print(f"shipyard backup: warning: {problem}; the command's own result stands.", file=sys.stderr)


def _shown(url: str) -> str:
    """The URL as a message may print it: without credentials or query."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
