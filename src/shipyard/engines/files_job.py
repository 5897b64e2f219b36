"""Restoring the data paths of a Helm release: a Job made from the chart's backup CronJob.

The CronJob archives every data path from its claim, mounted read-only at
/data/<component><path> (templates/backup-cronjob.yaml). A restore needs the same pod (image,
Secrets, storage, NetworkPolicies by its labels) with the claims writable, running
`shipyard backup restore --files`, and nobody writing meanwhile: the components that own data
paths are scaled to zero first (a ReadWriteOnce claim is also free to mount then) and back to
their replicas afterwards, whether the restore passed or not. The engine extracts everything
into staging folders before it swaps any path in, so a failed Job leaves the files as they were.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipyard.engines import EngineError
from shipyard.engines.helm import JOB_CONDITIONS, POLL, wait_job
from shipyard.engines.proc import Command, command, run

COMPONENT_LABEL = "app.kubernetes.io/component"
INSTANCE_LABEL = "app.kubernetes.io/instance"


@dataclass(frozen=True)
class FilesRestore:
    """A restore of release `release`'s data paths from backup `backup` ('' for the newest)."""

    release: str
    namespace: str
    cronjob: str
    name: str
    backup: str
    components: tuple[str, ...]
    timeout: int
    manifest: Path  # where the Job's manifest is written before `kubectl create`

    def _kubectl(self, *args: str) -> Command:
        return command("kubectl", *args, "--namespace", self.namespace)

    def _selector(self, component: str) -> str:
        return f"{INSTANCE_LABEL}={self.release},{COMPONENT_LABEL}={component}"

    def read_cronjob(self) -> Command:
        return self._kubectl("get", "cronjob", self.cronjob, "--output", "json")

    def replicas(self, component: str) -> Command:
        """Prints `<deployment>\t<replicas>` for each Deployment of `component`."""
        each = "{range .items[*]}{.metadata.name}{'\\t'}{.spec.replicas}{'\\n'}{end}"
        return self._kubectl(
            "get", "deployment", "--selector", self._selector(component), "--output",
            f"jsonpath={each}",
        )  # fmt: skip

    def scale(self, deployment: str, replicas: int) -> Command:
        return self._kubectl("scale", f"deployment/{deployment}", f"--replicas={replicas}")

    def pods_gone(self, component: str) -> Command:
        return self._kubectl(
            "wait", "pod", "--for=delete", "--selector", self._selector(component),
            f"--timeout={self.timeout}s",
        )  # fmt: skip

    def create(self) -> Command:
        return self._kubectl("create", "--filename", str(self.manifest))

    def conditions(self) -> Command:
        return self._kubectl("get", "job", self.name, "--output", JOB_CONDITIONS)

    def plan(self) -> list[Command | str]:
        stopped = ", ".join(self.components)
        return [
            f"{self.read_cronjob()}  (the backup pod: image, Secrets, storage, data claims)",
            f"write the Job {self.name} to {self.manifest}: that pod running `shipyard backup "
            f"restore --files` of {self.backup or 'the newest complete backup'}, the claims "
            "writable",
            *(self.replicas(c) for c in self.components),
            f"scale {stopped} to 0 and wait until their pods are gone (nothing writes meanwhile)",
            self.create(),
            f"{self.conditions()}  (every {POLL}s until Complete, or Failed; at most "
            f"{self.timeout}s)",
            f"scale {stopped} back to their replicas, whether the restore passed or not",
        ]


def manifest(job: FilesRestore, cronjob: dict[str, Any]) -> dict[str, Any]:
    """The Job: the CronJob's pod with the claims writable, running the files restore."""
    template = copy.deepcopy(cronjob["spec"]["jobTemplate"]["spec"]["template"])
    spec = template["spec"]
    container = spec["containers"][0]
    args = list(container.get("args") or [])
    data = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "--data-path"]
    if not data or "--target" not in args:
        raise EngineError(
            f"the CronJob {job.cronjob} archives no data paths (it predates them: run `invoke "
            "deploy` with this version of the chart first), so there are no files to restore"
        )
    target = args[args.index("--target") + 1]
    container["args"] = [
        "shipyard", "backup", "restore", "--files", "--target", target, "--yes",
        *(["--backup", job.backup] if job.backup else []),
        *(arg for spec_ in data for arg in ("--data-path", spec_)),
    ]  # fmt: skip
    for mount in container.get("volumeMounts", []):
        if mount["name"].startswith("data-"):
            mount["readOnly"] = False
    for volume in spec.get("volumes", []):
        if volume["name"].startswith("data-") and "persistentVolumeClaim" in volume:
            volume["persistentVolumeClaim"]["readOnly"] = False
    # The backups go beside the components' pods to share their claims' node; those are
    # stopped now, so the claims are free to mount wherever this pod lands.
    spec.pop("affinity", None)
    spec["restartPolicy"] = "Never"
    labels = dict((template.get("metadata") or {}).get("labels") or {})
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job.name, "namespace": job.namespace, "labels": labels},
        "spec": {"backoffLimit": 0, "activeDeadlineSeconds": job.timeout, "template": template},
    }


def restore(job: FilesRestore, say: Callable[[str], None]) -> None:
    """Stop the data paths' components, run the Job, start them again; EngineError when the
    restore failed (the files are then as they were) or the cluster cannot be read."""

    def echo(cmd: Command, what: str, capture: bool = False) -> str:
        say(f"$ {cmd}")
        return run(cmd, capture=capture, what=what)

    try:
        cronjob = json.loads(echo(job.read_cronjob(), "reading the backup CronJob", True))
    except ValueError as exc:
        raise EngineError(f"`{job.read_cronjob()}` printed no JSON: {exc}") from None
    job.manifest.parent.mkdir(parents=True, exist_ok=True)
    job.manifest.write_text(json.dumps(manifest(job, cronjob), indent=2) + "\n", "utf-8")
    running: dict[str, int] = {}
    for component in job.components:
        out = echo(job.replicas(component), f"reading the Deployment of {component}", True)
        for line in out.splitlines():
            name, _, replicas = line.partition("\t")
            if name.strip():
                running[name.strip()] = int(replicas or 0)
    try:
        for deployment in running:
            echo(job.scale(deployment, 0), f"stopping {deployment}")
        for component in job.components:
            echo(job.pods_gone(component), f"waiting for the pods of {component} to stop")
        echo(job.create(), "creating the files restore Job")
        say(f"$ {job.conditions()}")
        failed = wait_job(job.conditions(), job.timeout, "the files restore Job")
    finally:
        for deployment, count in running.items():
            echo(job.scale(deployment, count), f"starting {deployment} again")
    where = f"`kubectl logs --namespace {job.namespace} job/{job.name}`"
    if failed is None:
        raise EngineError(
            f"the files restore Job {job.name} did not finish within {job.timeout}s (see "
            f"{where}); the components were started again"
        )
    if failed:
        raise EngineError(
            f"the files restore Job {job.name} failed ({failed}; see {where}): the data paths "
            "are as they were"
        )
