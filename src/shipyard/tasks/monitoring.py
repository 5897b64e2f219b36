"""`invoke monitoring.up --env ENV`: start or update a Compose host's monitoring stack
(compose.monitoring.yaml), through DOCKER_HOST like every Compose task.

Its services read the files of monitoring/ (prometheus.yml, the rules, alertmanager.yml,
Grafana's provisioning), listed under `x-shipyard-files`: they are put into the services'
config volumes through the Docker API, as a release puts the proxy's (tasks.targets.files),
since over DOCKER_HOST=ssh://… the host has no checkout to bind mount. Prometheus and
Alertmanager check changed files and reload; then `up --wait` starts what is not running.
A deploy leaves the stack alone: run this after the first deploy (the stack joins its
networks) and whenever monitoring/ changes.
"""

from __future__ import annotations

import contextlib

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from shipyard.engines import compose as compose_engine
from shipyard.engines import docker as docker_engine
from shipyard.tasks.support import HELP_DRY, HELP_ENV, execute, failures, plan, say, setup
from shipyard.tasks.targets import files

FILE = "compose.monitoring.yaml"


@task(
    help={
        "env": HELP_ENV,
        "dry_run": HELP_DRY,
        "timeout": "seconds to wait for every service to be healthy",
    }
)
def up(c: Context, env: str = "", dry_run: bool = False, timeout: int = 180) -> None:
    """Start or update the monitoring stack of a Compose environment (compose.monitoring.yaml)."""
    cfg, environment = setup(c, env)
    if environment.is_helm:
        raise Exit(
            f"shipyard: {environment.name} runs on Kubernetes, where the chart's ServiceMonitor "
            f"and PrometheusRule feed the cluster's Prometheus; {FILE} is for Compose hosts",
            code=1,
        )
    root = cfg.root
    if not (root / FILE).is_file():
        raise Exit(
            f"shipyard: {FILE} is missing: the kit has it when its monitoring answer is "
            "`prometheus` and an environment runs on Compose (copier update --data "
            "monitoring=prometheus)",
            code=1,
        )
    copies = files.required(root, FILE, environment.name)
    project = compose_engine.project_name(root / FILE, f"{cfg.service}-monitoring")
    doing = f"starting the monitoring stack of {environment.name}"
    with failures(doing):  # no Compose installed is said, not a traceback
        create = files.create(root, FILE, {}, copies, {})
        start = compose_engine.up(root, FILE, {}, timeout)
    if dry_run:
        title = f"start or update the monitoring stack of {environment.name} ({FILE})"
        plan(title, [create, files.describe(root, copies), start])
        return
    with failures(doing):
        execute(create, f"creating the services of {FILE}")
        with contextlib.closing(docker_engine.client()) as client:
            files.put(client, project, copies)
        execute(start, f"starting {FILE}")
    say(
        f"{environment.name}: monitoring stack up (DEPLOYMENT.md, Monitoring, says how to reach it)"
    )


ns = Collection("monitoring")
ns.add_task(up)
