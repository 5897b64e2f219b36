"""The backup scheduler of a Compose environment: compose.backup.yaml's `scheduler` service
(`shipyard backup schedule`, backup.schedule), which `invoke deploy` starts after each release,
so backups and drills run without a crontab on the host."""

from __future__ import annotations

from shipyard import config
from shipyard.engines import EngineError, state
from shipyard.engines import compose as compose_engine
from shipyard.engines.proc import Command
from shipyard.engines.state import BACKUP
from shipyard.tasks.release import Release

SERVICE = "scheduler"


def start(cfg: config.Config, env: config.Environment, release: Release) -> Command | str | None:
    """`docker compose -f compose.backup.yaml up` of the scheduler on the release's backup image
    (else the last one pushed: the engine reads every backup format it wrote), recreated when
    that image or the file changed; a sentence saying why backups are not scheduled when no
    backup image was ever pushed or the file cannot be read; None where there is nothing to
    schedule (no backups in shipyard.yaml, or a compose.backup.yaml from before the scheduler:
    DEPLOYMENT.md's crontab)."""
    file = cfg.root / compose_engine.BACKUP_FILE
    if env.backup is None or not file.is_file():
        return None
    try:
        if SERVICE not in compose_engine.services(file):
            return None
    except EngineError as exc:  # the release goes on (--skip-backup deploys with this file)
        return f"backups are NOT scheduled on {env.name}: {exc}"
    image = release.backup_image() or state.pushed(cfg.root).get(BACKUP, {}).get("ref", "")
    if not image:
        return (
            f"backups are NOT scheduled on {env.name}: no backup image was pushed (`invoke build"
            f" --env {env.name} --component backup`, `invoke push ...`, then deploy again)"
        )
    return compose_engine.compose(
        cfg.root,
        compose_engine.BACKUP_FILE,
        "up",
        "--detach",
        "--wait",
        "--wait-timeout",
        "60",
        SERVICE,
        env={"SHIPYARD_ENV": env.name, "BACKUP_IMAGE": image},
    )
