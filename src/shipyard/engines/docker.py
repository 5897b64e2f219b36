"""Docker: BuildKit builds through the CLI, everything else through the `docker` SDK.

The SDK's build API only drives the legacy builder (no `RUN --mount`), so builds go through
`docker buildx build` when the plugin is there, else a client whose `docker build` is
BuildKit's built-in builder (`DOCKER_BUILDKIT=1`, clients before 23.0). Inspect, tag, push
and registry digests go through the SDK, which talks to the same daemon (DOCKER_HOST).

Longer than most modules on purpose: every call into the Docker SDK is here, so the SDK is
imported (lazily) and its errors turned into EngineError in one place.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shipyard.engines import EngineError
from shipyard.engines.proc import Command, command, run, succeeds

if TYPE_CHECKING:
    from docker.client import DockerClient

# The SDK (and `requests` under it) is imported by the functions that use it: it takes a fifth
# of a second, every `invoke` command loads this module, and `build` only needs the CLI.

# Words registries and the daemon use when credentials are missing or wrong.
AUTH_ERROR = re.compile(
    r"unauthorized|authentication required|denied|no basic auth credentials", re.IGNORECASE
)
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
# Containers `retire` stops at once. Each stop holds a connection to the daemon for up to its
# grace period; a bound keeps a release of many replicas from opening dozens. Over ssh:// each
# connection is a session of one ssh connection, of which sshd allows 10 (MaxSessions), and
# the SDK keeps up to 9 idle ones (a pool per URL): stopping and removing by id (two URLs a
# container) stays within them up to 9 at once, so 8 leaves a margin.
STOPS_AT_ONCE = 8


def _candidates() -> list[str]:
    """docker clients to try: SHIPYARD_DOCKER if set, else every `docker` on PATH and Debian's."""
    if os.environ.get("SHIPYARD_DOCKER"):
        return [os.environ["SHIPYARD_DOCKER"]]
    found: list[str] = []
    for folder in [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin"]:
        path = shutil.which("docker", path=folder)
        if path and os.path.realpath(path) not in {os.path.realpath(p) for p in found}:
            found.append(path)
    return found


def builder() -> tuple[tuple[str, ...], dict[str, str]]:
    """The argv prefix and environment of a BuildKit `build` command on this machine."""
    clients = _candidates()
    for cli in clients:
        if succeeds([cli, "buildx", "version"]):
            return (cli, "buildx", "build", "--load"), {}
    for cli in clients:
        # Clients before 23.0 carry BuildKit's built-in builder; later ones need buildx.
        if _legacy_cli(cli):
            return (cli, "build"), {"DOCKER_BUILDKIT": "1"}
    raise EngineError(
        "no docker client with BuildKit found: install the buildx plugin "
        "(docker-buildx-plugin) or set SHIPYARD_DOCKER to a docker CLI that has it"
    )


def _legacy_cli(cli: str) -> bool:
    """`docker --version` says 20.x/22.x even when the daemon is down (unlike `docker version`)."""
    try:
        out = run(command(cli, "--version"), capture=True)
    except EngineError:
        return False
    match = re.search(r"version (\d+)\.", out)
    return match is not None and 0 < int(match.group(1)) < 23


def build_command(
    *,
    context: str,
    dockerfile: str,
    target: str,
    tags: Iterable[str],
    labels: Mapping[str, str],
    build_args: Mapping[str, str],
    network: str = "",
    prefix: tuple[tuple[str, ...], dict[str, str]] | None = None,
) -> Command:
    """The exact `docker build` line for one component's target."""
    argv, env = prefix or builder()
    args = [*argv, "--progress", "plain", "--file", dockerfile]
    if target:
        args += ["--target", target]
    for tag in tags:
        args += ["--tag", tag]
    for key, value in sorted(labels.items()):
        args += ["--label", f"{key}={value}"]
    for key, value in sorted(build_args.items()):
        args += ["--build-arg", f"{key}={value}"]
    if network:
        args += ["--network", network]
    args.append(context)
    return command(*args, env=env)


def client(timeout: float | None = 300) -> DockerClient:
    """An SDK client for DOCKER_HOST (else the current context's daemon); EngineError if no
    daemon answers. `timeout` bounds each call's wait for the daemon (None: a command run in a
    container that may stay silent for longer, such as a restore)."""
    from docker.client import from_env

    where = os.environ.get("DOCKER_HOST", "the current docker context's host")
    try:
        # from_env reads DOCKER_HOST/DOCKER_TLS_VERIFY, else the current context, like the CLI.
        # ssh:// goes through paramiko, which keeps one connection for every call. Not
        # `use_ssh_client` (the `ssh` binary, as the CLI uses): it starts an ssh per call and
        # fails exec_run at random with BrokenPipeError (docker/docker-py#3218, #2966).
        cli: DockerClient = from_env(timeout=timeout)  # type: ignore[no-untyped-call]
        cli.ping()  # type: ignore[no-untyped-call]  # the SDK is untyped
    except sdk_failures() as exc:
        from paramiko import SSHException

        fix = "start it (or set DOCKER_HOST)"
        if where.startswith("ssh://") or isinstance(exc, SSHException):
            fix = "check that `ssh HOST docker version` works and HOST is in ~/.ssh/known_hosts"
        raise EngineError(
            f"the Docker daemon is not reachable at {where}: {fix}, and retry ({_short(exc)})"
        ) from None
    return cli


def sdk_failures() -> tuple[type[Exception], ...]:
    """What an SDK call raises when it fails: the daemon's own errors, and what the SDK lets
    through from below: paramiko's over ssh:// (a host refusing the key or unknown, a channel
    refused), the socket's and `requests`' (OSErrors) when the connection goes away."""
    from docker.errors import DockerException
    from paramiko import SSHException

    return (DockerException, SSHException, OSError)


@contextlib.contextmanager
def sdk_errors(doing: str) -> Iterator[None]:
    """SDK failures (sdk_failures) as EngineError."""
    try:
        yield
    except sdk_failures() as exc:
        raise EngineError(f"{doing} failed: {_short(exc)}") from None


def _short(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is None and exc.strerror:
        return exc.strerror  # paramiko's "[Errno None] Unable to connect to port 22 on ..."
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def image_id(cli: DockerClient, ref: str) -> str | None:
    """The local image ID of `ref`, or None when the daemon does not have it."""
    from docker.errors import ImageNotFound

    with sdk_errors(f"inspecting {ref}"):
        try:
            image = cli.images.get(ref)
        except ImageNotFound:
            return None
    ident: str = image.id
    return ident


def push(
    cli: DockerClient,
    repository: str,
    tag: str,
    *,
    retries: int = 3,
    backoff: float = 2.0,
    progress: Callable[[str], None] = print,
) -> str:
    """Push repository:tag and return the digest the registry stored (sha256:...).

    Network errors are retried with backoff; a refused login fails at once with a hint.
    """
    last = ""
    for attempt in range(1, retries + 1):
        try:
            return _push_once(cli, repository, tag, progress)
        except EngineError as exc:
            last = str(exc)
            if AUTH_ERROR.search(last):
                registry = repository.split("/", 1)[0]
                raise EngineError(
                    f"{registry} refused the push of {repository}:{tag}: log in with "
                    f"`docker login {registry}` (or check the account can push there)"
                ) from None
        if attempt < retries:
            progress(f"push failed ({last}); retrying in {backoff * attempt:.0f}s")
            time.sleep(backoff * attempt)
    raise EngineError(f"could not push {repository}:{tag} after {retries} attempts: {last}")


def retag(cli: DockerClient, ref: str, repository: str, tag: str) -> None:
    """Give the local image `ref` the name repository:tag as well."""
    with sdk_errors(f"tagging {ref} as {repository}:{tag}"):
        cli.images.get(ref).tag(repository, tag)


def _push_once(
    cli: DockerClient, repository: str, tag: str, progress: Callable[[str], None]
) -> str:
    digest = ""
    seen: set[tuple[str, str]] = set()
    with sdk_errors(f"pushing {repository}:{tag}"):
        events: Iterable[dict[str, Any]] = cli.images.push(
            repository, tag=tag, stream=True, decode=True
        )
        for event in events:
            if "error" in event:
                raise EngineError(str(event.get("errorDetail", {}).get("message", event["error"])))
            aux = event.get("aux") or {}
            if isinstance(aux, dict) and aux.get("Digest"):
                digest = str(aux["Digest"])
            status, layer = str(event.get("status", "")), str(event.get("id", ""))
            # Per-layer progress bars are noise in CI logs; print each state change once.
            if status and "progress" not in event and (layer, status) not in seen:
                seen.add((layer, status))
                progress(f"  {layer + ': ' if layer else ''}{status}")
    if not DIGEST.match(digest):
        raise EngineError(f"the registry returned no digest for {repository}:{tag}")
    return digest


def registry_digest(cli: DockerClient, ref: str) -> str | None:
    """The digest `ref` (repo:tag or repo@digest) has in its registry, None if it is not there.

    Raises EngineError when the registry cannot be asked (down, or refusing credentials).
    """
    from docker.errors import APIError, NotFound

    try:
        data = cli.images.get_registry_data(ref)
    except NotFound:
        return None
    except APIError as exc:
        message = _short(exc)
        if "manifest unknown" in message or "not found" in message.lower():
            return None
        if AUTH_ERROR.search(message):
            registry = ref.split("/", 1)[0]
            raise EngineError(
                f"{registry} refused to show {ref}: run `docker login {registry}`"
            ) from None
        raise EngineError(f"cannot reach the registry for {ref}: {message}") from None
    except sdk_failures() as exc:
        raise EngineError(f"cannot reach the registry for {ref}: {_short(exc)}") from None
    digest: str = data.id
    return digest


def running_images(cli: DockerClient, project: str) -> dict[str, str]:
    """Image reference per Compose service of the project's running containers."""
    images: dict[str, str] = {}
    label = f"com.docker.compose.project={project}"
    with sdk_errors(f"listing the containers of {project}"):
        containers = cli.containers.list(filters={"label": label})
    for container in containers:
        labels: dict[str, str] = container.labels
        service = labels.get("com.docker.compose.service", "")
        if labels.get("com.docker.compose.oneoff") == "True" or not service:
            continue
        images[service] = str(container.attrs["Config"]["Image"])
    return images


def one_line(text: str, *, end: bool = False) -> str:
    """Output for a message: on one line, at most 300 characters, its start or (`end`, for a
    log whose last lines say why a process stopped) its end."""
    line = " ".join(text.split())
    if len(line) <= 300:
        return line
    return f"...{line[-297:]}" if end else line[:300]


def last_health_output(health: Mapping[str, Any]) -> str:
    """What the last finished health check printed (State.Health of an inspect), one line."""
    log = health.get("Log") or [{}]
    return one_line(str(log[-1].get("Output", "")))


def decoded(out: object) -> str:
    """The SDK's exec or log output as text (bytes, or already a string)."""
    return out.decode(errors="replace") if isinstance(out, bytes) else str(out)


def health_failures(cli: DockerClient, project: str) -> dict[str, str]:
    """Per Compose service whose container is not healthy, its last health check's output.

    The kit's HEALTHCHECK prints why it failed (connection refused: the app does not listen on
    its PORT; an HTTP status: it answers, but not 2xx), which a user needs before the rollback
    replaces the container and its health log.
    """
    failures: dict[str, str] = {}
    label = f"com.docker.compose.project={project}"
    with sdk_errors(f"reading the health of {project}"):
        containers = cli.containers.list(all=True, filters={"label": label})
    for container in containers:
        labels: dict[str, str] = container.labels
        service = labels.get("com.docker.compose.service", "")
        health = container.attrs.get("State", {}).get("Health") or {}
        if not service or labels.get("com.docker.compose.oneoff") == "True":
            continue
        if health.get("Status") in (None, "healthy"):
            continue
        output = last_health_output(health)
        # "starting": still in its start period when the wait ended, its checks failing so far.
        status = "unhealthy" if health["Status"] == "unhealthy" else "not healthy in time"
        failures[service] = f"{status}: {output or 'no health check has finished yet'}"
    return failures


def settle(cli: DockerClient, project: str, timeout: float = 120) -> None:
    """Wait until no container of the project is being removed, and clear dead ones.

    An interrupted `compose up` leaves the daemon removing the half-created container (slow on
    copying storage drivers); a new `up` fails with "marked for removal" until it is gone.
    """
    from docker.errors import APIError

    deadline = time.monotonic() + timeout
    label = f"com.docker.compose.project={project}"
    while True:
        busy = []
        with sdk_errors(f"clearing the removed containers of {project}"):
            for container in cli.containers.list(all=True, filters={"label": label}):
                if container.status == "dead":
                    try:
                        container.remove(force=True)
                    except APIError:
                        busy.append(container.name)
                elif container.status == "removing":
                    busy.append(container.name)
        if not busy or time.monotonic() > deadline:
            return
        time.sleep(1)


@dataclass(frozen=True)
class Replica:
    """One container of a Compose service."""

    id: str
    name: str  # resolvable by the other containers of its networks
    image: str


def replicas(
    cli: DockerClient, project: str, service: str, *, every: bool = False
) -> list[Replica]:
    """The containers of one service of the project: running ones, or `every` one (a container
    a failed or interrupted `up` created and never started too); one-off runs excluded."""
    labels = [f"com.docker.compose.project={project}", f"com.docker.compose.service={service}"]
    with sdk_errors(f"listing the containers of {service}"):
        containers = cli.containers.list(all=every, filters={"label": labels})
    return sorted(
        (
            Replica(c.id, c.name, str(c.attrs["Config"]["Image"]))
            for c in containers
            if c.labels.get("com.docker.compose.oneoff") != "True"
        ),
        key=lambda r: r.name,
    )


def remove_one_offs(cli: DockerClient, project: str) -> None:
    """Remove the project's one-off containers (`compose run`) that are still there."""
    labels = [f"com.docker.compose.project={project}", "com.docker.compose.oneoff=True"]
    with sdk_errors(f"removing the one-off containers of {project}"):
        for container in cli.containers.list(all=True, filters={"label": labels}):
            container.remove(force=True)


@dataclass(frozen=True)
class File:
    """A file to put in a container: its absolute path there, its bytes and its mode."""

    path: str
    body: bytes
    mode: int = 0o644


def write_file(cli: DockerClient, container: str, volume: str, path: str, text: str) -> None:
    """Write `text` to `path` (relative, its folders made) under the `volume` mount point."""
    put_files(cli, container, [File(f"{volume}/{path}", text.encode())])


def put_files(cli: DockerClient, container: str, files: Iterable[File]) -> None:
    """Write `files` into the volumes of a container, running or only created, through the
    daemon's archive API: works through a remote DOCKER_HOST (no path on this machine is
    involved) and under a read-only root filesystem, which the daemon only lets volumes past.
    Folders are made as needed; everything is owned by the image's user when it is numeric
    (else root), so a key can stay 0600 and still be read."""
    with sdk_errors(f"writing files in {container}"):
        target = cli.containers.get(container)
        mounts = sorted(
            (str(m["Destination"]) for m in target.attrs.get("Mounts", []) if m.get("RW", True)),
            key=len,
            reverse=True,
        )
        user = str(target.attrs["Config"].get("User") or "0").split(":")[0]
        owner = int(user) if user.isdigit() else 0
        grouped: dict[str, list[tuple[str, File]]] = {}
        for file in files:
            mount = next((m for m in mounts if file.path.startswith(m.rstrip("/") + "/")), None)
            if mount is None:
                raise EngineError(
                    f"{file.path} is not on a writable volume of {container}: "
                    "it cannot be written there"
                )
            grouped.setdefault(mount, []).append((file.path[len(mount.rstrip("/")) + 1 :], file))
        for mount, entries in grouped.items():
            data = io.BytesIO()
            with tarfile.open(fileobj=data, mode="w") as tar:
                for path, file in entries:
                    _add(tar, path, file, owner)
            if not target.put_archive(mount, data.getvalue()):
                raise EngineError(f"the daemon refused to write in {mount} of {container}")


def read_file(cli: DockerClient, container: str, path: str) -> bytes | None:
    """A file of a container (running or only created) through the archive API; None when it
    is not there."""
    from docker.errors import NotFound

    with sdk_errors(f"reading {path} in {container}"):
        try:
            stream, _ = cli.containers.get(container).get_archive(path)
        except NotFound:
            return None
        data = io.BytesIO(b"".join(stream))
    with tarfile.open(fileobj=data) as tar:
        member = tar.next()
        body = tar.extractfile(member) if member else None
        return body.read() if body else None


def _add(tar: tarfile.TarFile, path: str, file: File, owner: int) -> None:
    """`file` at `path` in `tar`, after the folders above it (once each)."""
    parts = path.split("/")
    names = set(tar.getnames())
    for depth in range(1, len(parts)):
        name = "/".join(parts[:depth])
        if name not in names:
            folder = tarfile.TarInfo(name)
            folder.type, folder.mode, folder.uid, folder.gid = tarfile.DIRTYPE, 0o755, owner, owner
            tar.addfile(folder)
    info = tarfile.TarInfo(path)
    info.size, info.mode, info.uid, info.gid = len(file.body), file.mode, owner, owner
    tar.addfile(info, io.BytesIO(file.body))


def logs(cli: DockerClient, container: str, tail: int) -> str:
    """The last `tail` lines a container wrote (stdout and stderr)."""
    with sdk_errors(f"reading the logs of {container}"):
        out = cli.containers.get(container).logs(tail=tail)
    return decoded(out)


def exec_checked(
    cli: DockerClient,
    container: str,
    argv: list[str],
    environment: Mapping[str, str] | None = None,
) -> str:
    """Run `argv` in a running container (with `environment` added to the container's); its
    output, or EngineError with it if it fails."""
    with sdk_errors(f"running {argv[0]} in {container}"):
        code, out = cli.containers.get(container).exec_run(
            argv, environment=dict(environment or {})
        )
    text = decoded(out)
    if code != 0:
        raise EngineError(f"`{' '.join(argv)}` failed in {container}: {_short(Exception(text))}")
    return text


def retire(cli: DockerClient, ids: Iterable[str], *, graceful: bool) -> None:
    """Remove containers: `graceful`ly (SIGTERM, then the container's own stop grace period,
    compose's stop_grace_period) or at once (containers that never received traffic).

    Together, up to STOPS_AT_ONCE: the replicas of an app that ignores SIGTERM then cost one
    grace period between them, not one each. Every container's error is reported."""
    from docker.errors import NotFound

    errors: list[str] = []
    at_once = threading.BoundedSemaphore(STOPS_AT_ONCE)

    def remove(ident: str) -> None:
        with at_once:
            try:
                # The low-level calls, not containers.get(): over ssh:// the SDK keeps a
                # session open per URL it called, and an inspect per container would hold
                # one more each while the stops run (see STOPS_AT_ONCE).
                with sdk_errors("removing a container"), contextlib.suppress(NotFound):
                    if graceful:
                        cli.api.stop(ident)  # the container's own stop timeout
                    cli.api.remove_container(ident, force=True)
            except EngineError as exc:
                errors.append(str(exc))

    # Daemon threads, each waiting on one stop: Ctrl-C ends the wait at once, as it ended the
    # one stop a loop waited on (the daemon goes on stopping the containers either way).
    threads = [threading.Thread(target=remove, args=(i,), daemon=True) for i in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise EngineError("; ".join(errors))
