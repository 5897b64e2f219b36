"""Helm and kubectl command lines for Kubernetes targets, and the rollout check.

Every function takes the `Release` it acts on (plain values, no shipyard.yaml): the chart,
its namespace and the environment's values file. Image digests and replicas come from the
command line (values keys components.<name>.image.digest and replicaCount), so a values file
never pins what `invoke push` produced. Progress is reported through the caller's `say`.

Longer than most modules on purpose: every helm and kubectl command line the tasks run is
built here, so the exact commands can be read, and are tested, side by side.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from shipyard.backup import kinds
from shipyard.config import ConfigError, load_yaml
from shipyard.engines import EngineError
from shipyard.engines.kubectl import creating
from shipyard.engines.proc import Command, capture, command, run
from shipyard.engines.state import BACKUP


def binary() -> str:
    """The helm executable (SHIPYARD_HELM overrides, e.g. helm3)."""
    return os.environ.get("SHIPYARD_HELM", "helm")


@cache
def major(helm: str) -> int:
    """Helm's major version: 4 renamed --atomic to --rollback-on-failure."""
    try:
        out = run(command(helm, "version", "--short"), capture=True, what="helm version")
    except EngineError:
        return 4
    match = re.match(r"v(\d+)\.", out.strip())
    return int(match.group(1)) if match else 4


@dataclass(frozen=True)
class Release:
    """One release of the service's chart: what every helm and kubectl command here targets.

    The release is named after the service in every environment (environments are told apart
    by namespace); replicas and host are set on the command line with the pushed digests.
    """

    name: str
    namespace: str
    chart: str  # the chart's folder, relative to root
    values_file: str  # the environment's values file, relative to root
    replicas: int
    host: str
    root: Path
    component_replicas: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Maintenance:
    """Maintenance mode as the chart's `maintenance` values hold it: on since `since`, asking
    clients to come back after `retry_after` seconds, with the page in the file `page` (relative
    to the release's root; '' keeps the chart's own page)."""

    retry_after: int
    since: str
    page: str = ""

    def flags(self) -> list[str]:
        """The --set flags that switch it on."""
        args = ["--set", "maintenance.enabled=true", "--set"]
        args += [f"maintenance.retryAfter={self.retry_after}", "--set-string"]
        args.append(f"maintenance.since={self.since}")
        return args + (["--set-file", f"maintenance.page={self.page}"] if self.page else [])


def _values(release: Release, images: dict[str, str], migrate: bool) -> list[str]:
    """Chart, namespace, values file and the --set flags one release is made of."""
    args = [
        release.name,
        release.chart,
        "--namespace",
        release.namespace,
        "--values",
        release.values_file,
        "--set",
        f"replicaCount={release.replicas}",
        "--set-string",
        f"host={release.host}",
    ]
    for name, count in sorted(release.component_replicas.items()):
        args += ["--set", f"components.{name}.replicaCount={count}"]
    for name, ref in sorted(images.items()):
        digest = ref.rpartition("@")[2]
        key = "backup.image.digest" if name == BACKUP else f"components.{name}.image.digest"
        args += ["--set-string", f"{key}={digest}"]
    if not migrate:
        args += ["--set", "migrations.enabled=false"]
    return args


def upgrade(
    release: Release,
    images: dict[str, str],
    *,
    timeout: int,
    migrate: bool = True,
    maintenance: Maintenance | None = None,
) -> Command:
    """`helm upgrade --install` with the pushed digests; atomic, waits for pods and the hook.
    With `maintenance`, the release keeps serving the maintenance page."""
    helm = binary()
    args = [helm, "upgrade", "--install", *_values(release, images, migrate)]
    args += maintenance.flags() if maintenance else []
    args.append("--create-namespace")
    return command(*args, *_atomic(helm, timeout), cwd=release.root)


def _atomic(helm: str, timeout: int) -> list[str]:
    """Wait for the pods (and hooks); on failure, Helm rolls the release back itself."""
    if major(helm) >= 4:
        return [
            "--rollback-on-failure",
            "--wait=watcher",
            "--wait-for-jobs",
            "--timeout",
            f"{timeout}s",
        ]
    return ["--atomic", "--wait", "--wait-for-jobs", "--timeout", f"{timeout}s"]


def switch_maintenance(release: Release, maintenance: Maintenance | None, timeout: int) -> Command:
    """`helm upgrade` of the release as it is deployed with only maintenance mode switched (on
    with `maintenance`, else off): --reset-then-reuse-values keeps every value it was deployed
    with (images, replicas, host) and takes the chart's defaults for keys it did not have."""
    helm = binary()
    args = [helm, "upgrade", release.name, release.chart, "--namespace", release.namespace]
    args.append("--reset-then-reuse-values")
    args += maintenance.flags() if maintenance else ["--set", "maintenance.enabled=false"]
    return command(*args, *_atomic(helm, timeout), cwd=release.root)


def deployed_maintenance(release: Release) -> Maintenance | None:
    """Maintenance mode of the deployed release (from `helm get values`), None when it is off
    or nothing is deployed yet."""
    values = deployed_values(release)
    found = values.get("maintenance") or {}
    if not isinstance(found, dict) or found.get("enabled") is not True:
        return None
    return Maintenance(int(found.get("retryAfter", 300)), str(found.get("since", "")))


def deployed_digests(release: Release) -> dict[str, str]:
    """The image digest each component of the deployed release runs (`helm get values`);
    empty before the first install."""
    components = deployed_values(release).get("components") or {}
    digests: dict[str, str] = {}
    for name, values in components.items() if isinstance(components, dict) else ():
        image = values.get("image") if isinstance(values, dict) else None
        if isinstance(image, dict) and image.get("digest"):
            digests[str(name)] = str(image["digest"])
    return digests


def deployed_values(release: Release) -> dict[str, Any]:
    """The values the deployed release was given (`helm get values`); empty when none were, or
    nothing is deployed yet."""
    get = command(
        binary(),
        "get",
        "values",
        release.name,
        "--namespace",
        release.namespace,
        "--output",
        "json",
    )
    result = capture(get, what="helm get values")
    if result.returncode:
        if "not found" in result.stderr:
            return {}
        raise EngineError(f"helm get values failed: {result.stderr.strip()[-500:]}")
    try:
        values = json.loads(result.stdout or "{}") or {}
    except ValueError as exc:
        raise EngineError(f"helm get values printed no JSON: {exc}") from None
    return values if isinstance(values, dict) else {}


def render(release: Release, images: dict[str, str], *, cluster: bool) -> Command:
    """The manifests a deploy would apply, without applying them.

    `helm upgrade --install --dry-run=client` still asks the cluster for the release history,
    so without one Helm 4 renders the same values with `helm install --dry-run=client`, and
    Helm 3 (whose install also wants a cluster) with `helm template`.
    """
    helm = binary()
    values = _values(release, images, migrate=True)
    if cluster:
        return command(helm, "upgrade", "--install", *values, "--dry-run=client", cwd=release.root)
    if major(helm) >= 4:
        return command(helm, "install", *values, "--dry-run=client", cwd=release.root)
    return command(helm, "template", *values, cwd=release.root)


# Each true condition of a Job as "Type<TAB>message" lines (Complete or Failed end it).
JOB_CONDITIONS = (
    'jsonpath={range .status.conditions[?(@.status=="True")]}{.type}{"\\t"}{.message}{"\\n"}{end}'
)
# Kubernetes puts a Job's name in its pods' `job-name` label, whose values stop at 63.
JOB_NAME_MAX = 63


@dataclass(frozen=True)
class BackupJob:
    """A one-off Job from the chart's backup CronJob, waited for (before production migrations).

    On a first install there is no CronJob yet and nothing to back up, so it is looked up first.
    `kubectl create job --from` cannot set a variable: a Job with `env` (set in each of its
    containers, beside the CronJob's) is rendered by it, given them, and created from that.
    """

    cronjob: str
    name: str
    namespace: str
    timeout: int
    env: Mapping[str, str] = field(default_factory=dict)

    def lookup(self) -> Command:
        """Prints the CronJob's name, or nothing when it does not exist (exit 0 either way)."""
        return command(
            "kubectl", "get", "cronjob", self.cronjob, "--namespace", self.namespace,
            "--ignore-not-found", "--output", "name",
        )  # fmt: skip

    def create(self) -> Command:
        return command(
            "kubectl", "create", "job", "--namespace", self.namespace,
            f"--from=cronjob/{self.cronjob}", self.name,
        )  # fmt: skip

    def render(self) -> Command:
        """Prints the Job `create` would make, as JSON, creating nothing (client dry run)."""
        return command(*self.create().argv, "--dry-run=client", "--output", "json")

    def with_env(self, rendered: str) -> dict[str, Any]:
        """The Job `render` printed, with `env` set in each of its containers."""
        try:
            job = json.loads(rendered)
            pod = job["spec"]["template"]["spec"]
            containers = [*pod.get("initContainers", []), *pod["containers"]]
            job["metadata"]["namespace"] = self.namespace
            if job["kind"] != "Job":
                containers = []
        except (ValueError, KeyError, TypeError):
            containers = []
        if not containers:
            raise EngineError(f"`{self.render()}` printed no Job with containers")
        for container in containers:
            kept = [v for v in container.get("env", []) if v.get("name") not in self.env]
            container["env"] = [*kept, *({"name": k, "value": v} for k, v in self.env.items())]
        return dict(job)

    def conditions(self) -> Command:
        return command(
            "kubectl", "get", "job", self.name, "--namespace", self.namespace,
            "--output", JOB_CONDITIONS,
        )  # fmt: skip

    def take(self, say: Callable[[str], None]) -> bool:
        return run_backup(self, say)

    def plan(self) -> list[Command | str]:
        given = " ".join(f"{k}={v}" for k, v in self.env.items())
        create: list[Command | str] = [
            f"{self.render()}  (the Job, printed: nothing created)",
            f"kubectl create --namespace {self.namespace} --filename <that Job {self.name}, "
            f"with {given} in each container>",
        ]
        return [
            f"{self.lookup()}  (no CronJob: a first install, nothing to back up, no backup)",
            *(create if self.env else [self.create()]),
            f"{self.conditions()}  (every {POLL}s until Complete, or stop on Failed; at most "
            f"{self.timeout}s)",
        ]


# Seconds between two looks at the backup Job.
POLL = 2


def backup_job(service: str, namespace: str, timeout: int, now: float | None = None) -> BackupJob:
    """The backup Job to take before migrating, named `<service>-backup-pre-<time>` (<= 63),
    its kind pre-migrate (a variable: the CronJob is the previous release's, kinds.py)."""
    return BackupJob(
        f"{service}-backup",
        job_name(f"{service}-backup-pre", now),
        namespace,
        timeout,
        {kinds.KIND_VARIABLE: kinds.PRE_MIGRATE},
    )


def job_name(prefix: str, now: float | None = None) -> str:
    """`<prefix>-<time>`, the prefix cut so the whole stays a valid `job-name` label."""
    stamp = _base36(int(time.time() if now is None else now))
    return f"{prefix[: JOB_NAME_MAX - len(stamp) - 1].rstrip('-')}-{stamp}"


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if not number:
            return out


def run_backup(job: BackupJob, say: Callable[[str], None]) -> bool:
    """Take the backup, reporting each command through `say`: False when there is no CronJob
    yet (first install), True once the Job completed; EngineError when it failed or did not
    finish within its timeout."""
    ran = run_job(
        job, say, "the backup Job", after="; nothing was migrated or upgraded", more="--timeout"
    )
    if not ran:
        say(
            f"no CronJob {job.cronjob} in namespace {job.namespace} yet (a first install): "
            "nothing to back up, so no backup before migrating"
        )
    return ran


def run_job(
    job: BackupJob, say: Callable[[str], None], what: str, *, after: str = "", more: str = ""
) -> bool:
    """Create a Job from `job`'s CronJob and wait for it, reporting each command through `say`:
    False when there is no such CronJob (nothing created), True once the Job completed.
    EngineError when it failed or ran out of time, its sentence ending with `after` (what that
    left undone); `more` names the option that gives it more time, if the caller has one."""
    say(f"$ {job.lookup()}")
    if not run(job.lookup(), capture=True, what=f"looking up CronJob {job.cronjob}").strip():
        return False
    if job.env:
        say(f"$ {job.render()}")
        rendered = run(job.render(), capture=True, what=f"rendering {what}")
        creating(job.with_env(rendered), f"creating {what}", say)
    else:
        say(f"$ {job.create()}")
        run(job.create(), what=f"creating {what}")
    say(f"$ {job.conditions()}")
    where = f"`kubectl logs --namespace {job.namespace} job/{job.name}`"
    failed = wait_job(job.conditions(), job.timeout, what)
    if failed is None:
        hint = f"raise {more}, or see {where}" if more else f"see {where}"
        raise EngineError(f"{what} {job.name} did not finish within {job.timeout}s ({hint}){after}")
    if failed:
        raise EngineError(f"{what} {job.name} failed ({failed}); see {where}{after}")
    return True


def wait_job(conditions: Command, timeout: int, what: str) -> str | None:
    """Read a Job's conditions (`conditions`, printing JOB_CONDITIONS) every POLL seconds until
    it ends: '' when it completed, the reason when it failed, None when `timeout` passed."""
    deadline = time.monotonic() + timeout
    while True:
        out = run(conditions, capture=True, what=f"reading {what}")
        true = dict(line.partition("\t")[::2] for line in out.splitlines() if line.strip())
        if "Failed" in true:
            return true["Failed"] or "no reason given"
        if "Complete" in true:
            return ""
        if time.monotonic() > deadline:
            return None
        time.sleep(POLL)


def history(release: Release) -> Command:
    """The release's revisions as JSON (what `revisions` reads)."""
    return command(
        binary(), "history", release.name, "--namespace", release.namespace, "--output", "json"
    )


def revisions(release: Release) -> list[dict[str, Any]]:
    """The release's revisions from `helm history` (EngineError when it prints no list)."""
    read = history(release)
    try:
        found = json.loads(run(read, capture=True, what="helm history") or "[]")
    except ValueError:
        found = None
    if not isinstance(found, list):
        raise EngineError(f"`{read}` printed no list of revisions")
    return found


# Helm's description of a revision made by `helm rollback` (or --atomic after a failure).
ROLLBACK_DESCRIPTION = re.compile(r"Rollback to (\d+)")
# Statuses of revisions that were rolled out and served: the current one and those it replaced.
SERVED = ("deployed", "superseded")


def rollback_revision(revisions: list[dict[str, Any]]) -> int | None:
    """The revision `rollback` goes to, from `helm history --output json`: the newest served
    revision before the current one, or None when the history holds none.

    `helm rollback` without a revision goes to the one just before the current, so a second
    rollback would undo the first. Here a rollback's revision stands where the revision it
    restored stands ("Rollback to N"): a second rollback goes one further back, and revisions
    that were rolled back away from, or failed, are skipped.
    """
    by_number = {int(r["revision"]): r for r in revisions}
    if not by_number:
        return None
    deployed = [n for n, r in by_number.items() if r.get("status") == "deployed"]
    position = max(deployed or by_number)
    while match := ROLLBACK_DESCRIPTION.fullmatch(str(by_number[position].get("description"))):
        restored = int(match.group(1))
        if restored not in by_number or restored >= position:
            break
        position = restored
    earlier = [n for n, r in by_number.items() if n < position and r.get("status") in SERVED]
    return max(earlier) if earlier else None


def rollback(release: Release, timeout: int, revision: int) -> Command:
    """`helm rollback` to `revision` (see `rollback_revision`), waiting for it."""
    return command(
        binary(),
        "rollback",
        release.name,
        str(revision),
        "--namespace",
        release.namespace,
        "--wait",
        "--timeout",
        f"{timeout}s",
    )


def status(release: Release) -> list[Command]:
    """`helm status` and the last revisions of the release."""
    ns = release.namespace
    return [
        command(binary(), "status", release.name, "--namespace", ns),
        command(binary(), "history", release.name, "--namespace", ns, "--max", "5"),
    ]


def logs(release: Release, component: str, tail: int, follow: bool) -> Command:
    """kubectl logs of the release's pods (one component's with --component)."""
    selector = f"app.kubernetes.io/instance={release.name}"
    if component:
        selector += f",app.kubernetes.io/component={component}"
    args = ["kubectl", "logs", "--namespace", release.namespace, "--selector", selector]
    args += ["--tail", str(tail), "--prefix", "--all-containers"]
    if follow:
        args.append("--follow")
    return command(*args)


def missing_secret_keys(release: Release) -> tuple[str, list[str]]:
    """The chart's existing Secret (secretEnv in the values) and the keys it lacks."""
    from kubernetes import client  # imported here: only Helm targets need it
    from urllib3.exceptions import HTTPError

    # The environment's values file may override the chart's defaults.
    secret_env: dict[str, Any] = {}
    for name in (f"{release.chart}/values.yaml", release.values_file):
        try:
            loaded = load_yaml(release.root / name) or {}
        except ConfigError as exc:
            raise EngineError(str(exc)) from None
        secret_env.update(loaded.get("secretEnv") or {})
    name, keys = str(secret_env.get("existingSecret", "")), list(secret_env.get("keys", []))
    if not name or not keys:
        return name, []
    _kubeconfig()
    try:
        secret = client.CoreV1Api().read_namespaced_secret(name, release.namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return name, keys
        raise EngineError(f"cannot read Secret {name}: {exc.reason}") from None
    except HTTPError as exc:
        raise EngineError(f"cannot reach the cluster: {exc}") from None
    present = set((secret.data or {}).keys()) | set((secret.string_data or {}).keys())
    return name, [key for key in keys if key not in present]


def _kubeconfig() -> None:
    from kubernetes import config  # imported here: only Helm targets need it

    try:
        config.load_kube_config()  # type: ignore[no-untyped-call]  # untyped loader
    # The loader raises several unrelated types (missing file, bad YAML, no context).
    except Exception as exc:
        raise EngineError(f"cannot load the kubeconfig: {exc}") from None


def check_rollout(release: Release, timeout: int) -> None:
    """Every Deployment of the release has all its updated replicas available (kubernetes API)."""
    from kubernetes import client  # imported here: only Helm targets need it
    from urllib3.exceptions import HTTPError

    _kubeconfig()
    apps = client.AppsV1Api()
    deadline = time.monotonic() + timeout
    selector = f"app.kubernetes.io/instance={release.name}"
    while True:
        pending = []
        try:
            deployments = apps.list_namespaced_deployment(
                release.namespace, label_selector=selector
            )
        except (client.ApiException, HTTPError) as exc:
            raise EngineError(f"cannot read the rollout from the cluster: {exc}") from None
        for dep in deployments.items:
            want = dep.spec.replicas or 0 if dep.spec else 0
            status = dep.status or client.V1DeploymentStatus()
            meta = dep.metadata or client.V1ObjectMeta()
            if (
                (status.observed_generation or 0) < (meta.generation or 0)
                or (status.updated_replicas or 0) < want
                or (status.available_replicas or 0) < want
            ):
                pending.append(f"{meta.name} {status.available_replicas or 0}/{want}")
        if not pending:
            return
        if time.monotonic() > deadline:
            raise EngineError(f"rollout not complete after {timeout}s: {', '.join(pending)}")
        time.sleep(2)
