"""Read-only tasks: show what shipyard.yaml says."""

from __future__ import annotations

from invoke.context import Context
from invoke.tasks import task

from shipyard.tasks.common import environment, load_config


@task(help={"env": "environment to show (dev, staging, prod)"})
def config_check(c: Context, env: str = "") -> None:
    """Validate shipyard.yaml and summarise the service or one environment."""
    cfg = load_config(c)
    names = [env] if env else list(cfg.data["environments"])
    print(f"{cfg.service}: shipyard.yaml is valid")
    for comp in cfg.components:
        where = f"port {comp['port']}" if comp["kind"] == "http" else "worker"
        print(f"  component {comp['name']} ({where}) -> {cfg.image_repository(comp['name'])}")
    for name in names:
        settings = environment(cfg, name)
        print(f"  env {name}: {settings['target']} on {settings['host']}")
