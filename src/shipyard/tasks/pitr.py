"""Point-in-time recovery on a Compose host (`point_in_time: true` in an environment's backup).

There compose.prod.yaml's `postgres` runs the backup image: PostgreSQL with pgBackRest and the
backup engine, archiving each WAL segment through `shipyard-pgbackrest-push`. pgBackRest
works beside the data directory, so every step these tasks take runs in that container
(`docker exec`, through DOCKER_HOST like every Compose task): `setup` after each deploy, a base
backup with `invoke backup`, the window with `backup.list`, a drill with `backup.verify`, and
`invoke restore --at` (the scheduled base backups and drills run in compose.backup.yaml's
scheduler, which mounts the server's data and socket folder: targets/scheduler.py):

1. restore into a new folder of the data volume and check it there (the live data untouched);
2. stop the server, swap the checked folder in for PGDATA in a one-off container of the same
   image and volumes (the old data is kept beside it), start the server;
3. take a full base backup of the new timeline.

A failure before the swap changes nothing; a failed swap puts the old data back and starts it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from invoke.exceptions import Exit

from shipyard import config
from shipyard.engines import compose as compose_engine
from shipyard.engines import docker as docker_engine
from shipyard.engines import readiness
from shipyard.tasks.support import confirm, failures, plan, say

# The SDK's container object: its methods are untyped, so it passes as Any (engines/docker.py).
Container = Any

SERVICE = "postgres"
# The backup image's tag compose.prod.yaml's `postgres` starts from (`invoke push` moves it).
SERVER_TAG = "postgres"
# compose.prod.yaml's `pgbackrest` volume, where a local repository lives.
LOCAL_REPOSITORY = "file:///var/lib/pgbackrest"
# compose.prod.yaml's PGDATA: a folder inside the data volume, so a restore beside it swaps in.
PGDATA = "/var/lib/postgresql/data/pgdata"
# How long the server may take to accept connections again after the swap (crash recovery of
# the restored copy is already done: it was started and stopped cleanly in the check).
START_TIMEOUT = 300


def enabled(environment: config.Environment) -> bool:
    """Whether `environment` recovers to a point in time by pgBackRest on its Compose host."""
    settings = environment.backup
    return environment.target == "compose" and settings is not None and settings.point_in_time


def target(settings: config.BackupSettings) -> str:
    """The pgBackRest repository: the host's volume, or `pitr` beside the dumps in the bucket
    (a folder the dumps' retention never reads as a backup: it is not a backup id)."""
    if settings.storage == "s3":
        prefix = settings.prefix.strip("/")
        return f"s3://{settings.bucket}/{prefix + '/' if prefix else ''}pitr"
    return LOCAL_REPOSITORY


def _argv(settings: config.BackupSettings, step: str, *args: str) -> list[str]:
    return ["shipyard", "backup", "pitr", step, "--target", target(settings), *args]


@contextlib.contextmanager
def _server(cfg: config.Config, environment: config.Environment) -> Iterator[Container]:
    """The running postgres container of the environment's Compose project."""
    project = compose_engine.project_name(cfg.root / environment.compose_file, cfg.service)
    # No read timeout: pgBackRest says nothing until a restore or base backup of a large
    # database ends, which can take longer than any fixed bound.
    with failures("pitr"), contextlib.closing(docker_engine.client(timeout=None)) as client:
        with docker_engine.sdk_errors(f"finding {environment.name}'s PostgreSQL container"):
            found = [
                c
                for c in client.containers.list(
                    all=True,
                    filters={
                        "label": [
                            f"com.docker.compose.project={project}",
                            f"com.docker.compose.service={SERVICE}",
                        ]
                    },
                )
                if c.labels.get("com.docker.compose.oneoff") != "True"
            ]
        if not found or found[0].status != "running":
            raise Exit(
                f"shipyard: {environment.name}'s PostgreSQL ({project}, service {SERVICE}) is not"
                " running: deploy first (`invoke deploy --env ENV`)",
                code=1,
            )
        yield found[0]


def _run(
    server: Container, argv: list[str], doing: str, environment: dict[str, str] | None = None
) -> str:
    """`argv` in the server's container (its user and environment); its output, or Exit."""
    with failures(doing):
        return docker_engine.exec_checked(server.client, server.id, argv, environment).strip()


def setup(cfg: config.Config, environment: config.Environment) -> None:
    """After a deploy: archiving into the repository works (the server's archive_command set,
    a segment archived end to end), and the repository holds a base backup."""
    settings = _settings(environment)
    with _server(cfg, environment) as server:
        argv = _argv(settings, "setup", "--archive-command", "--base-if-none")
        doing = f"setting up point-in-time recovery of {environment.name}"
        say(_run(server, argv, doing, _labels(environment)))


def base_backup(cfg: config.Config, environment: config.Environment, kind: str) -> None:
    settings = _settings(environment)
    with _server(cfg, environment) as server:
        argv = _argv(settings, "base", "--type", kind)
        say(_run(server, argv, f"the base backup of {environment.name}", _labels(environment)))


def show_window(cfg: config.Config, environment: config.Environment) -> None:
    settings = _settings(environment)
    with _server(cfg, environment) as server:
        text = _run(
            server, _argv(settings, "list"), f"listing the base backups of {environment.name}"
        )
    print(f"{environment.name}: point-in-time recovery (pgBackRest):\n{text}")


def drill(cfg: config.Config, environment: config.Environment) -> None:
    settings = _settings(environment)
    with _server(cfg, environment) as server:
        doing = f"the restore drill of {environment.name}"
        say(_run(server, _argv(settings, "drill"), doing, _labels(environment)))


def _labels(environment: config.Environment) -> dict[str, str]:
    """The environment a base backup's or drill's pushed metrics are labelled with (the
    container's own SHIPYARD_PUSHGATEWAY_URL and SHIPYARD_SERVICE say where and which
    service): without it the push is refused with a warning."""
    return {"SHIPYARD_ENV": environment.name}


def recover(
    cfg: config.Config, environment: config.Environment, at: str, yes: bool, dry_run: bool
) -> None:
    """`invoke restore --env ENV --at POINT` on a Compose host (the module's three steps)."""
    env, settings = environment.name, _settings(environment)
    into = f"{PGDATA.rsplit('/', 1)[0]}/restored-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    restore = _argv(settings, "restore", "--at", at, "--into", into)
    swap = _argv(settings, "swap", "--restored", into, "--yes")
    steps = [
        f"in the running {SERVICE} container: {' '.join(restore)} (pgBackRest restores into a new"
        " folder of the data volume, a private server replays WAL to the point and is checked;"
        " the live data is untouched)",
        f"stop {SERVICE}; in a one-off container of its image and volumes: {' '.join(swap)}"
        f" (the live data is kept beside it as {PGDATA}.old-<UTC time>); start {SERVICE}",
        "a full base backup of the new timeline",
    ]
    if dry_run:
        plan(f"recover the database of {env} to {at}", steps)
        return
    confirm(
        f"Recover the database of {env} to {at}? Its server stops while the restored data is "
        "swapped in; the current data is kept beside it.",
        yes,
    )
    with _server(cfg, environment) as server:
        say(_run(server, restore, f"the restore of {env} to {at}"))
        _swap(server, swap, env)
        base = _argv(settings, "base", "--type", "full")
        say(_run(server, base, f"the base backup of {env}", _labels(environment)))
    print(f"{env}: database recovered to {at}; the previous data is kept beside it in the volume")


def _swap(server: Container, swap: list[str], env: str) -> None:
    """Stop the server, swap in a one-off container, start the server again (either way)."""
    client = server.client
    image = str(server.attrs["Config"]["Image"])
    say(f"{env}: stopping {SERVICE} for the swap")
    with failures(f"the swap of {env}"), docker_engine.sdk_errors(f"stopping {SERVICE}"):
        server.stop(timeout=120)
    from docker.errors import ContainerError

    try:
        with failures(f"the swap of {env}"), docker_engine.sdk_errors("the swap"):
            try:
                out = client.containers.run(
                    image,
                    swap[1:],
                    entrypoint=[swap[0]],
                    environment={"PGDATA": PGDATA},
                    volumes_from=[server.id],
                    network_mode="none",
                    remove=True,
                    stdout=True,
                    stderr=True,
                )
            except ContainerError as exc:
                said = docker_engine.one_line(docker_engine.decoded(exc.stderr or b""))
                raise Exit(
                    f"shipyard: the swap of {env} failed, nothing changed: {said}", code=1
                ) from None
        # What the swap did; not its advice to start the server and take a base backup, which
        # this task does next (an older engine gives both on one line).
        said = docker_engine.decoded(out).split("Start the server", 1)[0].strip()
        if said:
            say(said)
    finally:
        with failures(f"starting {SERVICE} of {env}"), docker_engine.sdk_errors("start"):
            server.start()
            readiness.wait_healthy(client, SERVICE, [server.id], START_TIMEOUT)


def _settings(environment: config.Environment) -> config.BackupSettings:
    if environment.backup is None:  # callers check enabled() first
        raise Exit(f"shipyard: {environment.name} has no backup settings", code=2)
    return environment.backup
