"""The backup scheduler of a Compose environment: compose.backup.yaml's `scheduler` service
(`shipyard backup schedule`, backup.schedule), which `invoke deploy` starts after each release
on the environment's schedule and retention from shipyard.yaml, so backups and drills run
without a crontab on the host."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from shipyard import config
from shipyard.engines import EngineError
from shipyard.engines import compose as compose_engine
from shipyard.engines.proc import Command
from shipyard.tasks import pitr
from shipyard.tasks.release import last_backup_image

SERVICE = "scheduler"


def start(cfg: config.Config, env: config.Environment) -> Command | str | None:
    """The `docker compose -f compose.backup.yaml up` of the scheduler (recreated when its
    image, schedule or file changed); else a sentence saying why backups will not be
    scheduled (no backup image pushed, an unreadable file, or a local backup folder the daemon
    would make on another host); None where there is nothing to schedule (no backups in
    shipyard.yaml, or a compose.backup.yaml from before the scheduler: `copier update` adds
    it)."""
    settings = env.backup
    file = cfg.root / compose_engine.BACKUP_FILE
    if settings is None or not file.is_file():
        return None
    not_scheduled = f"backups are NOT scheduled on {env.name}"
    try:
        if SERVICE not in compose_engine.services(file):
            return None
    except EngineError as exc:  # the release goes on (--skip-backup deploys with this file)
        return f"{not_scheduled}: {exc}"
    if settings.storage == "local" and _remote(os.environ.get("DOCKER_HOST", "")):
        # Compose resolves the bind mount here: the daemon would make that path on its host.
        return (
            f"{not_scheduled}: its backups folder ({settings.path}) is bind-mounted from where"
            " the daemon runs, and DOCKER_HOST is another machine; deploy from the kit's"
            " checkout on that host, or use S3 storage"
        )
    image = last_backup_image(cfg.root)
    if not image:
        return (
            f"{not_scheduled}: no backup image was pushed (`invoke build --env {env.name}"
            " --component backup`, `invoke push ...`, then deploy again)"
        )
    variables = {
        "SHIPYARD_ENV": env.name,
        "BACKUP_IMAGE": image,
        "SHIPYARD_BACKUP_SCHEDULE": settings.schedule,
        "SHIPYARD_RETENTION_DAYS": str(settings.retention_days),
        # pgBackRest's base backups and drill too, into the repository the other tasks use;
        # empty (point_in_time off in shipyard.yaml, whatever the shell holds), they are left out.
        "SHIPYARD_PITR_TARGET": pitr.target(settings) if pitr.enabled(env) else "",
    }
    return compose_engine.compose(
        cfg.root,
        compose_engine.BACKUP_FILE,
        "up",
        "--detach",
        "--wait",
        "--wait-timeout",
        "60",
        SERVICE,
        env=variables,
    )


def _remote(docker_host: str) -> bool:
    """Whether DOCKER_HOST names a daemon on another machine (ssh://, tcp:// but to this one)."""
    if not docker_host or docker_host.startswith(("unix://", "npipe://", "fd://")):
        return False
    return urlsplit(docker_host).hostname not in ("localhost", "127.0.0.1", "::1")
