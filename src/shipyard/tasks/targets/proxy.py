"""The Caddy proxy in front of a Compose stack's http components (compose.prod.yaml's `proxy`
service, proxy/Caddyfile): the files releases and maintenance mode write into its config
volume, and the reload that applies them.

Everything written lives on the proxy's /config volume, so it survives the proxy container
being recreated, and is applied with `caddy reload`, which adapts and loads the whole config
gracefully (requests in flight finish) or not at all (the running config stays).
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from shipyard.engines import EngineError
from shipyard.engines import docker as docker_engine

if TYPE_CHECKING:
    from docker.client import DockerClient

SERVICE = "proxy"
VOLUME = "/config"
# Put there from proxy/Caddyfile by each release (tasks.targets.files), with the page below.
CADDYFILE = "/config/Caddyfile"
# --force: a reload whose Caddyfile text is unchanged is otherwise skipped, and certificate
# files replaced on disk (tls=files) would never be read again. Still graceful, and a config
# that does not load still leaves the running one in place.
RELOAD = ["caddy", "reload", "--config", CADDYFILE, "--adapter", "caddyfile", "--force"]
# Imported first by every site block of proxy/Caddyfile (`import /config/maintenance/*.caddy`).
MAINTENANCE = "maintenance/maintenance.caddy"
# Where the repository's proxy/maintenance/ folder (index.html) is put.
PAGE_ROOT = "/config/maintenance-page"
MAINTENANCE_MARK = "# maintenance: on since "


def upstreams_file(component: str) -> str:
    """The component's upstream list, relative to VOLUME."""
    return f"upstreams/{component}/upstreams.caddy"


# Which environment of shipyard.yaml the stack is, written by each deploy: a Docker daemon holds
# one stack per project name, and every environment's stack has the same name.
ENVIRONMENT = "shipyard-environment"


def environment(client: DockerClient, project: str) -> str:
    """The environment the stack's last deploy was to; '' with no proxy or no mark yet."""
    for proxy in docker_engine.replicas(client, project, SERVICE):
        data = docker_engine.read_file(client, proxy.name, _in_volume(ENVIRONMENT))
        if data:
            return data.decode(errors="replace").strip()
    return ""


def mark(client: DockerClient, project: str, env: str) -> None:
    """Write `env` as the stack's environment: once, as every proxy mounts the same volume."""
    first = running(client, project)[0]
    docker_engine.write_file(client, first.name, VOLUME, ENVIRONMENT, f"{env}\n")


def running(client: DockerClient, project: str) -> list[docker_engine.Replica]:
    """The proxy containers of the project; EngineError when there is none."""
    proxies = docker_engine.replicas(client, project, SERVICE)
    if not proxies:
        raise EngineError(
            f"the {SERVICE} service of {project} is not running (`invoke deploy` starts it)"
        )
    return proxies


def apply(client: DockerClient, project: str, path: str, text: str) -> None:
    """Write `text` to `path` (relative to VOLUME) in every proxy, then reload each; raises
    EngineError when the config does not load (the running one stays)."""
    for proxy in running(client, project):
        docker_engine.write_file(client, proxy.name, VOLUME, path, text)
        docker_engine.exec_checked(client, proxy.name, RELOAD)


def maintenance_since(client: DockerClient, project: str) -> str:
    """When maintenance mode was switched on ('' when it is off, or there is no proxy)."""
    with contextlib.suppress(EngineError):
        for proxy in running(client, project):
            text = docker_engine.exec_checked(client, proxy.name, ["cat", _in_volume(MAINTENANCE)])
            first = text.splitlines()[0] if text.strip() else ""
            if first.startswith(MAINTENANCE_MARK):
                return first.removeprefix(MAINTENANCE_MARK)
    return ""


def certificate_errors(client: DockerClient, project: str, tail: int = 500) -> list[str]:
    """The proxy's recent certificate errors (issuance or renewal), oldest first, from its JSON
    log: Caddy keeps serving the certificate it has and retries, so this is where a failing
    ACME setup shows (DNS not pointing here, a rate limit, the CA unreachable)."""
    errors: list[str] = []
    for proxy in running(client, project):
        for line in docker_engine.logs(client, proxy.name, tail).splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("level") == "error" and str(entry.get("logger", "")).startswith("tls"):
                    when = datetime.fromtimestamp(float(entry.get("ts", 0)), UTC)
                    what = entry.get("identifier") or entry.get("identifiers") or ""
                    errors.append(
                        f"{when.isoformat(timespec='seconds')} {entry.get('msg', '')} {what}: "
                        f"{entry.get('error', '')}".strip()
                    )
    return errors


def maintenance(on: bool, retry_after: int) -> str:
    """The maintenance file: with `on`, a 503 with Retry-After and proxy/maintenance/index.html
    for every request, ahead of the site's reverse_proxy (two `handle` blocks without a matcher
    are exclusive, and the first wins); without, nothing."""
    if not on:
        return "# maintenance: off (`invoke maintenance --env ENV on` switches it on)\n"
    since = datetime.now(UTC).isoformat(timespec="seconds")
    return (
        f"{MAINTENANCE_MARK}{since}\n"
        "handle {\n"
        f"\theader Retry-After {retry_after}\n"
        "\theader Cache-Control no-store\n"
        f"\troot * {PAGE_ROOT}\n"
        "\trewrite * /index.html\n"
        "\tfile_server {\n"
        "\t\tstatus 503\n"
        "\t}\n"
        "}\n"
    )


def _in_volume(path: str) -> str:
    return f"{VOLUME}/{path}"
