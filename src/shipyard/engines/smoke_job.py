"""The smoke check of a Helm release: a Job running the check's command in the new image of a
component, with everything else of that component's pod (its environment, Secret and
ConfigMap references, service account, security contexts), taken from its Deployment as the
upgrade left it. Like `kubectl create job --from=cronjob/...`, but from a Deployment.

The Job's pods get `app.kubernetes.io/component: <component>-smoke`: the component's Service
selects on its component label, so no request is ever sent to a check.
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
from shipyard.engines.proc import Command, capture, command, run

COMPONENT_LABEL = "app.kubernetes.io/component"
# Lines of the check's log read back when it fails.
TAIL = 20
# Seconds a finished check's Job (and its log) stays for `kubectl logs` before Kubernetes
# removes it.
KEEP_SECONDS = 3600


@dataclass(frozen=True)
class SmokeJob:
    """One smoke check of release `release` (the Helm instance) in `namespace`."""

    release: str
    namespace: str
    component: str
    name: str
    argv: tuple[str, ...]
    timeout: int
    manifest: Path  # where the Job's manifest is written before `kubectl create`

    def _kubectl(self, *args: str) -> Command:
        return command("kubectl", *args, "--namespace", self.namespace)

    def deployment(self) -> Command:
        selector = f"app.kubernetes.io/instance={self.release},{COMPONENT_LABEL}={self.component}"
        return self._kubectl("get", "deployment", "--selector", selector, "--output", "json")

    def create(self) -> Command:
        return self._kubectl("create", "--filename", str(self.manifest))

    def conditions(self) -> Command:
        return self._kubectl("get", "job", self.name, "--output", JOB_CONDITIONS)

    def exit_code(self) -> Command:
        path = "{.items[*].status.containerStatuses[0].state.terminated.exitCode}"
        return self._kubectl(
            "get", "pods", "--selector", f"job-name={self.name}", "--output", f"jsonpath={path}"
        )

    def logs(self) -> Command:
        return self._kubectl("logs", f"job/{self.name}", "--tail", str(TAIL))

    def plan(self) -> list[Command | str]:
        return [
            f"{self.deployment()}  (the pod template of {self.component} after the upgrade)",
            f"write the Job {self.name} to {self.manifest}: that pod running "
            f"{' '.join(self.argv)}, never restarted, at most {self.timeout}s",
            self.create(),
            f"{self.conditions()}  (every {POLL}s until Complete, or Failed)",
        ]


@dataclass(frozen=True)
class Failure:
    """How a check that did not pass ended: the exit code (or why there is none) and its log."""

    code: str
    output: str


def manifest(job: SmokeJob, deployments: dict[str, Any]) -> dict[str, Any]:
    """The Job: the Deployment's pod template (from `kubectl get deployment -o json`) with its
    first container running the check instead of the server (no probes, no ports)."""
    items = deployments.get("items") or []
    if not items:
        raise EngineError(
            f"no Deployment of {job.component} in release {job.release} to run the smoke check "
            "like (is `smoke.component` a component the chart deploys?)"
        )
    template = copy.deepcopy(items[0]["spec"]["template"])
    labels = {**template.get("metadata", {}).get("labels", {})}
    labels[COMPONENT_LABEL] = f"{job.component}-smoke"
    template["metadata"] = {"labels": labels}
    spec = template["spec"]
    spec["restartPolicy"] = "Never"
    container = spec["containers"][0]
    for key in ("args", "livenessProbe", "readinessProbe", "startupProbe", "ports", "lifecycle"):
        container.pop(key, None)
    container["command"] = list(job.argv)
    spec["containers"] = [container]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job.name, "namespace": job.namespace, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": job.timeout,
            "ttlSecondsAfterFinished": KEEP_SECONDS,
            "template": template,
        },
    }


def run_check(job: SmokeJob, say: Callable[[str], None]) -> Failure | None:
    """Create the Job and wait for it, reporting each command through `say`: None when it
    passed, else its Failure. EngineError when the cluster cannot be read or written."""
    say(f"$ {job.deployment()}")
    try:
        deployments = json.loads(run(job.deployment(), capture=True, what="reading the Deployment"))
    except ValueError as exc:
        raise EngineError(f"`{job.deployment()}` printed no JSON: {exc}") from None
    job.manifest.parent.mkdir(parents=True, exist_ok=True)
    job.manifest.write_text(json.dumps(manifest(job, deployments), indent=2) + "\n", "utf-8")
    say(f"$ {job.create()}")
    run(job.create(), what="creating the smoke check Job")
    say(f"$ {job.conditions()}")
    failed = wait_job(job.conditions(), job.timeout, "the smoke check Job")
    if failed == "":
        return None
    # Whatever these say (or not), the rollback goes on: they are read, never required.
    code = capture(job.exit_code(), what="reading the smoke check's exit code").stdout.strip()
    if failed is None or not code:
        code = f"no exit code ({failed or f'still running after {job.timeout}s'})"
    output = capture(job.logs(), what="reading the smoke check's log").stdout
    return Failure(code, output)
