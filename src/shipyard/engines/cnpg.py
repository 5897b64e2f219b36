"""CloudNativePG: the operator's on-demand base backups and point-in-time recovery, by kubectl.

Where a Helm environment runs PostgreSQL as the chart's CloudNativePG `Cluster`
(`database.on_kubernetes: cloudnativepg` in shipyard.yaml), the operator backs it up: WAL
archived continuously and base backups to the object store. The tasks do not dump it; they ask
the operator, as its own `kubectl cnpg` plugin does, through objects:

- a base backup now (`invoke backup`, and the deploy's before production migrations) is a
  `Backup` object, waited for until its phase is `completed` (or `failed`);
- a point-in-time recovery (`invoke restore --at`) is a NEW `Cluster` bootstrapped from the
  live one's object store: the running Cluster is never touched (CloudNativePG's own rule).

Manifests are plain dicts checked against the vendored CRD schemas by the tests, created from
a private temporary file (`kubectl create --filename`), and shown whole in dry-run plans.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shipyard import timepoint
from shipyard.engines import EngineError
from shipyard.engines.kubectl import creating
from shipyard.engines.proc import Command, command, run

API = "postgresql.cnpg.io/v1"
CLUSTER = "clusters.postgresql.cnpg.io"
BACKUP = "backups.postgresql.cnpg.io"
# Seconds between two looks at a Backup or a recovering Cluster.
POLL = 5
# A Backup's phases that end it (api/v1/backup_types.go); the others mean "still running".
COMPLETED = "completed"
FAILED = ("failed", "invalid backup definition")
MANAGED = {"app.kubernetes.io/managed-by": "shipyard"}


@dataclass(frozen=True)
class Cluster:
    """The environment's CloudNativePG Cluster: the chart names it `<release>-postgres`."""

    name: str
    namespace: str

    def lookup(self) -> Command:
        """Prints the Cluster as JSON, or nothing when it does not exist (exit 0 either way)."""
        return command(
            "kubectl", "get", CLUSTER, self.name, "--namespace", self.namespace,
            "--ignore-not-found", "--output", "json",
        )  # fmt: skip


def cluster(service: str, namespace: str) -> Cluster:
    """The Cluster of release `service` (the chart's `<fullname>-postgres`)."""
    return Cluster(f"{service}-postgres", namespace)


def live(target: Cluster) -> dict[str, Any] | None:
    """The Cluster object as the API server has it, or None when there is none."""
    out = run(target.lookup(), capture=True, what=f"looking up the Cluster {target.name}")
    if not out.strip():
        return None
    found: dict[str, Any] = json.loads(out)
    return found


# --- base backups -----------------------------------------------------------------------------


def backup_manifest(target: Cluster, name: str) -> dict[str, Any]:
    """A `Backup` of `target` now, to the object store its `spec.backup` names."""
    return {
        "apiVersion": API,
        "kind": "Backup",
        "metadata": {"name": name, "namespace": target.namespace, "labels": dict(MANAGED)},
        "spec": {"cluster": {"name": target.name}, "method": "barmanObjectStore"},
    }


def backup_phase(namespace: str, name: str) -> Command:
    """Prints the Backup's phase, a tab, and its error (both empty until the operator starts)."""
    return command(
        "kubectl", "get", BACKUP, name, "--namespace", namespace,
        "--output", "jsonpath={.status.phase}{'\\t'}{.status.error}",
    )  # fmt: skip


def wait_backup(namespace: str, name: str, timeout: int) -> None:
    """Until the Backup completed; EngineError when it failed or outlived `timeout` seconds."""
    where = f"`kubectl describe {BACKUP} {name} --namespace {namespace}`"
    deadline = time.monotonic() + timeout
    while True:
        out = run(backup_phase(namespace, name), capture=True, what=f"reading the Backup {name}")
        phase, _, error = out.strip().partition("\t")
        if phase == COMPLETED:
            return
        if phase in FAILED:
            raise EngineError(
                f"the base backup {name} failed: {error.strip() or phase} (see {where})"
            )
        if time.monotonic() > deadline:
            raise EngineError(
                f"the base backup {name} did not complete within {timeout}s (phase "
                f"{phase or 'not started'}; see {where})"
            )
        time.sleep(POLL)


@dataclass(frozen=True)
class BaseBackup:
    """A base backup of `cluster` named `name`, waited for at most `timeout` seconds (the
    deploy's before production migrations; `invoke backup`)."""

    cluster: Cluster
    name: str
    timeout: int

    def plan(self) -> list[Command | str]:
        return [
            f"{self.cluster.lookup()}  (no Cluster: a first install, nothing to back up)",
            f"kubectl create --namespace {self.cluster.namespace} --filename <a Backup "
            f"{self.name} of Cluster {self.cluster.name}, method barmanObjectStore>",
            f"{backup_phase(self.cluster.namespace, self.name)}  (every {POLL}s until "
            f"completed, or stop on failed; at most {self.timeout}s)",
        ]

    def take(self, say: Callable[[str], None]) -> bool:
        return take_backup(self.cluster, self.name, self.timeout, say)


def take_backup(target: Cluster, name: str, timeout: int, say: Callable[[str], None]) -> bool:
    """A base backup now, reported through `say`: False when the Cluster does not exist yet
    (a first install: nothing to back up), True once it completed; EngineError otherwise."""
    say(f"$ {target.lookup()}")
    found = live(target)
    if found is None:
        say(
            f"no Cluster {target.name} in namespace {target.namespace} yet (a first install): "
            "nothing to back up"
        )
        return False
    if not (found.get("spec") or {}).get("backup"):
        raise EngineError(
            f"the Cluster {target.name} has no backup configured (backup.enabled is false in "
            "this environment's values): there is nowhere to take a base backup to"
        )
    creating(backup_manifest(target, name), f"creating the Backup {name}", say)
    say(f"$ {backup_phase(target.namespace, name)}  (every {POLL}s until completed)")
    wait_backup(target.namespace, name, timeout)
    return True


# --- point-in-time recovery ------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """What the Cluster can be recovered to: from its oldest base backup kept to now."""

    first: datetime | None  # None: no base backup has completed yet

    def describe(self) -> str:
        if self.first is None:
            return "none yet: no base backup has completed"
        return f"{timepoint.rfc3339(self.first)} to now (the last archived WAL)"


def window(found: dict[str, Any]) -> Window:
    """The recoverable window the operator reports in the Cluster's status."""
    first = (found.get("status") or {}).get("firstRecoverabilityPoint") or ""
    return Window(timepoint.parse(first) if first else None)


def recovery_point(at: str, within: Window, now: datetime | None = None) -> datetime | None:
    """`--at` as a UTC time (None for `latest`), refused with the window when it is not in it."""
    if within.first is None:
        raise EngineError(
            "there is nothing to recover yet: no base backup of the Cluster has completed (take "
            "one with `invoke backup --env ENV`)"
        )
    if at == "latest":
        return None
    try:
        point = timepoint.parse(at)
    except ValueError as exc:
        raise EngineError(str(exc)) from None
    if reason := timepoint.outside(point, within.first, now or datetime.now(UTC)):
        raise EngineError(f"{reason}: the recoverable window is {within.describe()}")
    return point


# CloudNativePG refuses longer Cluster names (its webhook: the names it derives must fit).
CLUSTER_NAME_MAX = 50


def recovered_name(target: Cluster, now: datetime | None = None) -> str:
    """`<cluster>-pitr-<UTC time>`: a new name each second, within CLUSTER_NAME_MAX."""
    stamp = f"{now or datetime.now(UTC):%Y%m%d%H%M%S}"
    return f"{target.name[: CLUSTER_NAME_MAX - len(stamp) - 6].rstrip('-')}-pitr-{stamp}"


def recovery_manifest(found: dict[str, Any], name: str, point: datetime | None) -> dict[str, Any]:
    """A new one-instance Cluster `name`, bootstrapped from `found`'s object store and WAL up
    to `point` (None: all archived WAL), with the same image, storage and resources."""
    spec = found["spec"]
    store = (spec.get("backup") or {}).get("barmanObjectStore")
    if not store:
        raise EngineError(
            f"the Cluster {found['metadata']['name']} archives to no object store (backup is off "
            "in this environment's values): there is nothing to recover from"
        )
    initdb = (spec.get("bootstrap") or {}).get("initdb") or {}
    recovery: dict[str, Any] = {"source": "origin"}
    recovery.update({k: initdb[k] for k in ("database", "owner") if k in initdb})
    if point is not None:
        recovery["recoveryTarget"] = {"targetTime": timepoint.rfc3339(point)}
    # PostgreSQL's settings too: a recovery stops when max_connections and its kin are lower
    # than the origin's.
    kept = ("imageName", "imagePullSecrets", "postgresql", "storage", "resources")
    copied = {k: spec[k] for k in kept if k in spec}
    if "postgresql" in copied:
        # Synchronous replication needs standbys this one-instance Cluster does not have.
        copied["postgresql"] = {k: v for k, v in copied["postgresql"].items() if k != "synchronous"}
    return {
        "apiVersion": API,
        "kind": "Cluster",
        "metadata": {
            "name": name,
            "namespace": found["metadata"]["namespace"],
            "labels": {**MANAGED, "shipyard.dev/recovered-from": found["metadata"]["name"]},
        },
        "spec": {
            "instances": 1,
            **copied,
            "bootstrap": {"recovery": recovery},
            # The origin's archive, read only: this Cluster has no backup of its own, so it never
            # writes into the origin's folder (serverName keeps it pointed at the origin's).
            "externalClusters": [
                {
                    "name": "origin",
                    "barmanObjectStore": {**store, "serverName": found["metadata"]["name"]},
                }
            ],
        },
    }


def ready(namespace: str, name: str, timeout: int) -> Command:
    """Waits until the recovered Cluster is Ready (recovery replayed, PostgreSQL accepting)."""
    return command(
        "kubectl", "wait", f"{CLUSTER}/{name}", "--namespace", namespace,
        "--for=condition=Ready", f"--timeout={timeout}s",
    )  # fmt: skip
