"""Read-only tasks: show what shipyard.yaml says."""

from __future__ import annotations

from invoke.context import Context
from invoke.tasks import task

from shipyard.tasks.support import config_errors, load_config


@task(help={"env": "environment to show (dev, staging, prod)"})
def config_check(c: Context, env: str = "") -> None:
    """Validate shipyard.yaml and summarise the service or one environment."""
    cfg = load_config(c)
    with config_errors():
        environments = [cfg.environment(env)] if env else list(cfg.environments.values())
    print(f"{cfg.service}: shipyard.yaml is valid")
    for comp in cfg.components:
        where = f"port {comp.port}" if comp.kind == "http" else "worker"
        print(f"  component {comp.name} ({where}) -> {cfg.image_repository(comp.name)}")
    for environment in environments:
        print(f"  env {env or environment.name}: {environment.target} on {environment.host}")
