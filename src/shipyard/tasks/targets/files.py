"""Files of the repository that services read at run time (proxy/Caddyfile, the maintenance
page, TLS certificates, nginx/nginx.conf, the monitoring stack's monitoring/), put into their
volumes through the Docker API.

Not bind mounts: deploy.yml deploys with DOCKER_HOST=ssh://…, where a relative bind mount
resolves on the remote host, which has no checkout, and Docker mounts empty folders there.
Compose's own `configs:` are bind mounts too when they come from a file, and cannot be copied
into a read-only root filesystem at all. Each service lists its files in compose.prod.yaml
under `x-shipyard-files` (path in the container: path in the repository); a release creates
the containers, puts the files in, then starts them, and tells running ones to reload.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from invoke.exceptions import Exit

from shipyard.engines import EngineError
from shipyard.engines import compose as compose_engine
from shipyard.engines import docker as docker_engine
from shipyard.engines.proc import Command
from shipyard.tasks.targets import proxy

if TYPE_CHECKING:
    from docker.client import DockerClient

# Beside a service's first file: the digest of what was last put there (files unchanged since
# are neither put again nor reloaded).
MARK = ".shipyard-files"
# How a running service applies files that changed; a service without one reads them at start.
RELOAD = {
    proxy.SERVICE: proxy.RELOAD,
    # Test the new config first: a bare `-s reload` would report success and leave the old
    # config serving without a word.
    "nginx": [
        "sh",
        "-c",
        'nginx -t -q -c "$0" && nginx -s reload -c "$0"',
        "/etc/nginx/shipyard/nginx.conf",
    ],
    # compose.monitoring.yaml's: check first too, then SIGHUP (each is PID 1 of its container).
    "prometheus": [
        "sh",
        "-c",
        'promtool check config "$0" >/dev/null && kill -HUP 1',
        "/config/prometheus.yml",
    ],
    "alertmanager": ["sh", "/config/alertmanager.sh", "reload"],
}


@dataclass(frozen=True)
class Copy:
    """One entry of a service's x-shipyard-files."""

    service: str
    target: str
    source: Path


def declared(root: Path, compose_file: str) -> list[Copy]:
    """The files each service of the Compose file wants copied in."""
    found = compose_engine.copied_files(root / compose_file)
    return [
        Copy(service, target, root / source)
        for service, files in found.items()
        for target, source in files.items()
    ]


def required(root: Path, compose_file: str, env: str) -> list[Copy]:
    """The copies of the environment's Compose file; Exit before anything changes when the
    declaration is wrong or a source is missing."""
    try:
        copies = declared(root, compose_file)
    except EngineError as exc:
        raise Exit(f"shipyard: {exc}. Nothing was changed", code=1) from None
    absent = [str(c.source.relative_to(root)) for c in copies if not c.source.exists()]
    if absent:
        raise Exit(
            f"shipyard: {', '.join(absent)} missing: the services of {env} read them "
            f"({compose_file}, {compose_engine.FILES_KEY}; DEPLOYMENT.md says what goes there). "
            "Nothing was changed",
            code=1,
        )
    return copies


def create(
    root: Path,
    compose_file: str,
    images: Mapping[str, str],
    copies: list[Copy],
    variables: Mapping[str, str],
) -> Command:
    """Create the containers (and volumes) of the copies' services without starting them."""
    services = list(dict.fromkeys(c.service for c in copies))
    return compose_engine.create(root, compose_file, images, services, variables)


def describe(root: Path, copies: list[Copy]) -> str:
    """The plan's line for the copies."""
    services = sorted({c.service for c in copies})
    listed = ", ".join(str(c.source.relative_to(root)) for c in copies)
    return (
        f"put {listed} into the volumes of {', '.join(services)} through the Docker API "
        "(created first if need be, reloaded if running)"
    )


def contents(copy: Copy) -> list[docker_engine.File]:
    """The files of one entry: the file, or every file under the folder, modes kept."""
    if copy.source.is_file():
        return [_file(copy.source, copy.target)]
    return [
        _file(path, f"{copy.target.rstrip('/')}/{path.relative_to(copy.source).as_posix()}")
        for path in sorted(copy.source.rglob("*"))
        if path.is_file()
    ]


def _file(path: Path, target: str) -> docker_engine.File:
    return docker_engine.File(target, path.read_bytes(), path.stat().st_mode & 0o777)


def put(client: DockerClient, project: str, copies: list[Copy]) -> None:
    """Put the copies into every container of their services (created or running) whose files
    differ, then reload the running ones that changed; EngineError when a reload refuses the
    new files (the running config stays in place). Unchanged containers are not touched, so a
    release that changes none of these files never reloads them."""
    for service in dict.fromkeys(c.service for c in copies):
        mine = [c for c in copies if c.service == service]
        files = [f for c in mine for f in contents(c)]
        mark = f"{posixpath.dirname(mine[0].target)}/{MARK}"
        digest = _digest(files)
        replicas = docker_engine.replicas(client, project, service, every=True)
        if not replicas:
            raise EngineError(f"{project} has no {service} container to put its files in")
        running = {r.name for r in docker_engine.replicas(client, project, service)}
        reload = RELOAD.get(service)
        for replica in replicas:
            if docker_engine.read_file(client, replica.name, mark) == digest:
                continue
            docker_engine.put_files(client, replica.name, files)
            if reload and replica.name in running:
                docker_engine.exec_checked(client, replica.name, reload)
            # Only once applied: files a reload refused are put and reloaded again next time.
            docker_engine.put_files(client, replica.name, [docker_engine.File(mark, digest)])


def _digest(files: list[docker_engine.File]) -> bytes:
    """What the files are (paths, modes, contents), as one line."""
    total = hashlib.sha256()
    for file in sorted(files, key=lambda f: f.path):
        total.update(f"{file.path}\0{file.mode:o}\0{len(file.body)}\0".encode())
        total.update(file.body)
    return f"sha256:{total.hexdigest()}\n".encode()
