"""Redis requires a password wherever the kit runs it.

Render checks over every preset with Redis: both Compose files need REDIS_PASSWORD (Compose
stops with a sentence without it), put it in the app's REDIS_URL and redis-cli's variable but
never in a command line, and no rendered file holds a Redis credential; on Helm, REDIS_URL
comes from the Secret. Then the real engine: a kit's Redis, from each Compose file, refuses a
client without the password (NOAUTH) and accepts the app's REDIS_URL.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest
from ruamel.yaml import YAML

from shipyard import config
from tests.conftest import PRESETS, Render, load_preset
from tests.servers.docker import Dockerd, MirrorImages

WITH_REDIS = [p for p in PRESETS if load_preset(p).get("redis")]


def on_helm(preset: str) -> bool:
    """Whether an environment of the preset runs on Helm (defaults: staging Compose, prod Helm)."""
    answers = load_preset(preset)
    targets = (answers.get("staging_target", "compose"), answers.get("production_target", "helm"))
    return "helm" in targets


WITH_REDIS_ON_HELM = [p for p in WITH_REDIS if on_helm(p)]
COMPOSE_FILES = ["compose.yaml", "compose.prod.yaml"]
DOCKER_COMPOSE = str(Path(sys.executable).with_name("docker-compose"))
# A throwaway test value, unique enough that finding it anywhere means it leaked there.
PASSWORD = "test-only-redis-password-51f0c2"  # noqa: S105


def dotenv(root: Path) -> dict[str, str]:
    """.env.example's variables: what a user's .env sets, placeholders included."""
    lines = (root / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def compose(root: Path, file: str, env: dict[str, str], *args: str) -> CompletedProcess[str]:
    """docker compose -f FILE ARGS in the kit, with `env` as its whole environment."""
    return subprocess.run(
        [DOCKER_COMPOSE, "-f", file, *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def compose_config(root: Path, file: str, env: dict[str, str]) -> CompletedProcess[str]:
    """`docker compose config --format json` of `file`, interpolated from `env` alone."""
    return compose(root, file, {"PATH": "/usr/bin:/bin", **env}, "config", "--format", "json")


def resolved(root: Path, file: str, env: dict[str, str]) -> dict[str, Any]:
    proc = compose_config(root, file, env)
    assert proc.returncode == 0, proc.stderr
    services: dict[str, Any] = json.loads(proc.stdout)["services"]
    return services


@pytest.mark.parametrize("preset", WITH_REDIS)
@pytest.mark.parametrize("file", COMPOSE_FILES)
def test_compose_redis_takes_the_password_from_the_environment_only(
    rendered: Callable[[str], Path], preset: str, file: str
) -> None:
    root = rendered(preset)
    services = resolved(root, file, {**dotenv(root), "REDIS_PASSWORD": PASSWORD})
    redis = services["redis"]
    # In redis-cli's variable (the health check authenticates with it), never in argv.
    assert redis["environment"]["REDISCLI_AUTH"] == PASSWORD
    for key in ("command", "entrypoint", "healthcheck"):
        assert PASSWORD not in json.dumps(redis.get(key)), key
    assert "redis-server -" in redis["command"][-1], "the config, with the hash, comes on stdin"
    assert redis["user"] == "redis", "the shell bypasses the image's entrypoint: never root"
    # Every component that uses Redis (all, unless its `uses` says otherwise) connects as the
    # default user with that password; the others are given no Redis URL at all.
    uses = {c["name"]: c.get("uses", ["redis"]) for c in load_preset(preset)["components"]}
    for comp in config.load(root).components:
        url = services[comp.name]["environment"].get("REDIS_URL")
        if "redis" in uses[comp.name]:
            assert url == f"redis://default:{PASSWORD}@redis:6379/0"
        else:
            assert url is None, comp.name


@pytest.mark.parametrize("preset", WITH_REDIS)
@pytest.mark.parametrize("file", COMPOSE_FILES)
def test_compose_refuses_to_start_without_redis_password(
    rendered: Callable[[str], Path], preset: str, file: str
) -> None:
    root = rendered(preset)
    env = {k: v for k, v in dotenv(root).items() if k != "REDIS_PASSWORD"}
    proc = compose_config(root, file, env)
    assert proc.returncode != 0
    assert "REDIS_PASSWORD is missing a value: set REDIS_PASSWORD" in proc.stderr
    # An empty one is refused the same way: Redis never runs with an empty password.
    proc = compose_config(root, file, {**env, "REDIS_PASSWORD": ""})
    assert "REDIS_PASSWORD is missing a value" in proc.stderr


@pytest.mark.parametrize("preset", WITH_REDIS)
def test_no_rendered_file_holds_a_redis_credential(
    rendered: Callable[[str], Path], preset: str
) -> None:
    root = rendered(preset)
    assert "REDIS_PASSWORD" in config.load(root).secrets
    assert dotenv(root)["REDIS_PASSWORD"] == "change-me"  # noqa: S105 (the placeholder)
    for path in root.rglob("*"):
        if not path.is_file() or ".git" in path.parts:
            continue
        text = path.read_text(errors="replace")
        # A URL with credentials takes them from the environment, required; the guide's
        # examples show placeholders.
        for userinfo in re.findall(r"redis://([^@\s\"']*)@", text):
            required = userinfo.startswith("default:${REDIS_PASSWORD:?")
            assert required or userinfo in {"default:PASSWORD", "default:..."}, (path, userinfo)
        # REDIS_PASSWORD's only value anywhere is .env.example's placeholder, or the host's
        # environment's, required (the monitoring stack's exporter logs in with it).
        for value in re.findall(r"^\s*REDIS_PASSWORD\s*[=:]\s*(\S.*)$", text, re.MULTILINE):
            required = value.startswith("${REDIS_PASSWORD:?")
            assert required or value in {"change-me", "${{ secrets.REDIS_PASSWORD }}"}, (
                path,
                value,
            )


@pytest.mark.parametrize("preset", WITH_REDIS_ON_HELM)
def test_chart_reads_redis_url_from_the_secret(
    rendered: Callable[[str], Path], preset: str
) -> None:
    root = rendered(preset)
    cfg = config.load(root)
    values = YAML(typ="safe").load((root / "charts" / cfg.service / "values.yaml").read_text())
    assert "REDIS_URL" in values["secretEnv"]["keys"]
    assert "REDIS_URL" not in values["env"], "a credential is never in the ConfigMap"
    guide = (root / "DEPLOYMENT.md").read_text()
    assert "redis://default:PASSWORD@" in guide, "the guide says what REDIS_URL holds"


@pytest.fixture(scope="module")
def redis_kit(
    render: Render, tmp_path_factory: pytest.TempPathFactory, mirror_images: MirrorImages
) -> Path:
    """A kit with Redis and no database, its images taken from the test mirror."""
    mirror_images.redis()
    answers = {
        "project_name": "Cache Svc",
        "database": "none",
        "migrations": "none",
        "redis": True,
        "redis_maxmemory": "96mb",  # compose.prod.yaml's Redis holds at most this
        "components": [
            {"name": "api", "kind": "http", "port": 3000, "health_path": "/health", "path": "."}
        ],
        "image_mirror": mirror_images.mirror,
        "staging_target": "compose",
        "production_target": "compose",
        "ci_provider": "none",
    }
    return render(answers, tmp_path_factory.mktemp("redis") / "cache-svc")


@contextlib.contextmanager
def redis_up(root: Path, file: str, env: dict[str, str]) -> Iterator[Callable[..., str]]:
    """Redis of `file` started (and healthy: `up --wait`), then removed with its volume.

    Yields run(*argv) -> output of argv in the redis container."""

    def run(*argv: str) -> str:
        proc = compose(root, file, env, "exec", "-T", "redis", *argv)
        return proc.stdout + proc.stderr

    try:
        up = compose(root, file, env, "up", "--detach", "--wait", "redis")
        logs = compose(root, file, env, "logs", "redis").stdout
        assert up.returncode == 0, f"redis did not become healthy:\n{up.stderr}\n{logs}"
        yield run
    finally:
        compose(root, file, env, "down", "--volumes", "--timeout", "5")


@pytest.mark.slow
@pytest.mark.xdist_group("docker")
@pytest.mark.parametrize("file", COMPOSE_FILES)
def test_redis_refuses_clients_without_the_password(
    redis_kit: Path, dockerd: Dockerd, file: str
) -> None:
    env = {**dockerd.task_env, **dotenv(redis_kit), "REDIS_PASSWORD": PASSWORD}
    url = resolved(redis_kit, file, env)["api"]["environment"]["REDIS_URL"]
    # `up --wait` returned: the health check authenticates (REDISCLI_AUTH).
    with redis_up(redis_kit, file, env) as run:
        # A client on the stack's network, by the service name the app uses.
        anonymous = ["env", "-u", "REDISCLI_AUTH", "redis-cli", "-h", "redis"]
        assert "NOAUTH" in run(*anonymous, "set", "probe", "1")
        assert "NOAUTH" in run(*anonymous, "get", "probe")
        assert "WRONGPASS" in run(*anonymous, "--user", "default", "--pass", "wrong", "ping")
        # The app's REDIS_URL gets in.
        with_url = ["env", "-u", "REDISCLI_AUTH", "redis-cli", "--no-auth-warning", "-u", url]
        assert run(*with_url, "set", "probe", "1") == "OK\n"
        assert run("redis-cli", "-h", "redis", "get", "probe") == "1\n"
        if file == "compose.prod.yaml":  # the server runs with the answer's maxmemory
            maxmemory = run("redis-cli", "-h", "redis", "config", "get", "maxmemory")
            assert maxmemory.split() == ["maxmemory", str(96 * 1024 * 1024)], maxmemory
        # The password is in no command line: neither what `docker inspect` shows nor `ps`.
        with contextlib.closing(dockerd.client()) as client:
            (container,) = client.containers.list(
                filters={"label": ["com.docker.compose.service=redis"]}
            )
            attrs = container.attrs
            assert attrs["State"]["Health"]["Status"] == "healthy"
            shown = [attrs["Path"], attrs["Args"], attrs["Config"]["Cmd"]]
            assert PASSWORD not in json.dumps(shown)
            processes = container.top()["Processes"]
        assert any("redis-server" in " ".join(p) for p in processes), processes
        assert PASSWORD not in json.dumps(processes)
        assert run("id", "-u") != "0\n", "redis runs as the image's redis user"
