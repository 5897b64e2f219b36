"""A hung worker is restarted by its health check on the real engine (compose.prod.yaml).

Docker marks a container unhealthy but never restarts it (only Swarm does), so the kit wraps a
worker's health check in a watchdog that stops the worker after failures in a row and lets the
restart policy start a fresh container. Two workers, built from the kit's own Dockerfile on the
mirror's Node image, each declare one kind of health: `consumer` serves GET /healthz on a port,
`scheduler` has a command that checks its heartbeat file. Each is made to hang for real (a busy
loop: the process stays alive, its SIGTERM handler never runs) and must come back healthy in a
new container, with the reason in `docker logs`.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Render, script_package
from tests.health import wait_restarted_healthy
from tests.servers.docker import Dockerd, MirrorImages

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("docker")]

# The worker both components run (the start command picks the health kind): it ticks every
# 200 ms; once /tmp/hang exists (a tmpfs, so a new container starts without it) a tick spins
# forever. Its SIGTERM handler would log and exit, as a graceful worker does: a hung event loop
# never runs it, so only SIGKILL ends it.
WORKER_JS = """\
const fs = require('fs');
const http = require('http');
const kind = process.argv[2];
process.on('SIGTERM', () => { console.log('SIGTERM handled'); process.exit(0); });
if (kind === 'http') {
  http.createServer((req, res) => res.writeHead(req.url === '/healthz' ? 200 : 404).end())
    .listen(9464);
}
setInterval(() => {
  if (fs.existsSync('/tmp/hang')) { console.log('hanging'); for (;;) {} }
  fs.writeFileSync('/tmp/heartbeat', String(Date.now()));
}, 200);
console.log('worker started');
"""
COMPONENTS: list[dict[str, Any]] = [
    {
        "name": "consumer",
        "kind": "worker",
        "start": "node dist/worker.js http",
        "health_port": 9464,
        "health_path": "/healthz",
    },
    {
        "name": "scheduler",
        "kind": "worker",
        "start": "node dist/worker.js heartbeat",
        "health_command": "test -n \"$(find /tmp/heartbeat -newermt '-5 seconds')\"",
    },
]
PROJECT = "hung-workers"


@dataclass(frozen=True)
class Stack:
    """The rendered kit and how to run its production Compose file against the test engine."""

    root: Path
    dockerd: Dockerd
    env: dict[str, str]

    def compose(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker-compose", "--file", "compose.prod.yaml", *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )

    def state(self, service: str) -> dict[str, Any]:
        """`docker inspect` of the service's one container: RestartCount, State, Config."""
        proc = self.compose("ps", "--quiet", service)
        (container,) = proc.stdout.split()
        out = self.dockerd.run("inspect", container).stdout
        found: dict[str, Any] = json.loads(out)[0]
        return found

    def logs(self, service: str) -> str:
        return self.compose("logs", "--no-color", service).stdout


@pytest.fixture(scope="module")
def stack(
    render: Render,
    tmp_path_factory: pytest.TempPathFactory,
    dockerd: Dockerd,
    mirror_images: MirrorImages,
) -> Iterator[Stack]:
    """Both workers built from the kit's Dockerfile and running under compose.prod.yaml."""
    root = render(
        {
            "project_name": "Hung Workers",
            "components": COMPONENTS,
            "database": "none",
            **mirror_images.answers(node_version="22"),
            "staging_target": "compose",
            "production_target": "compose",
            "ci_provider": "none",
        },
        tmp_path_factory.mktemp("workers") / PROJECT,
    )
    script_package(root, "worker.js", WORKER_JS)
    env = dict(dockerd.env)
    for comp in COMPONENTS:
        tag = f"{PROJECT}-{comp['name']}:test"
        # BuildKit (the Dockerfile's cache and bind mounts); npm reaches its registry only
        # over the host network here.
        build = subprocess.run(
            [dockerd.cli, "build", "--network", "host", "--target", comp["name"], "-t", tag, "."],
            cwd=root,
            env={**env, "DOCKER_BUILDKIT": "1"},
            capture_output=True,
            text=True,
            check=False,
        )
        assert build.returncode == 0, build.stdout + build.stderr
        env[f"{comp['name'].upper()}_IMAGE"] = tag
    s = Stack(root, dockerd, env)
    try:
        up = s.compose("up", "--detach", "--wait", "--wait-timeout", "180")
        assert up.returncode == 0, up.stdout + up.stderr + s.logs("consumer") + s.logs("scheduler")
        yield s
    finally:
        s.compose("down", "--volumes", "--timeout", "1")


def test_the_kit_declares_the_watchdog_for_each_worker(stack: Stack) -> None:
    """What runs is what the kit rendered: each worker's check goes through the watchdog."""
    for comp in COMPONENTS:
        test = stack.state(comp["name"])["Config"]["Healthcheck"]["Test"]
        assert test[:3] == ["CMD", "/bin/sh", "-c"]
        assert "kill -KILL -1" in test[3]
        assert test[4] == comp["name"]
    consumer = stack.state("consumer")["Config"]["Healthcheck"]["Test"]
    assert consumer[5:7] == ["node", "-e"]
    assert "127.0.0.1:9464/healthz" in consumer[7]
    scheduler = stack.state("scheduler")["Config"]["Healthcheck"]["Test"]
    assert scheduler[5:7] == ["/bin/sh", "-c"]
    assert "/tmp/heartbeat" in scheduler[7]  # noqa: S108 (a path inside the container)


@pytest.mark.parametrize("service", [c["name"] for c in COMPONENTS])
def test_a_hung_worker_is_restarted_by_its_health_check(stack: Stack, service: str) -> None:
    before = stack.state(service)
    assert before["State"]["Health"]["Status"] == "healthy"
    # Healthy checks never stop it: it has run through several of them by now.
    assert before["RestartCount"] == 0
    stack.dockerd.run("exec", before["Id"], "touch", "/tmp/hang")  # noqa: S108 (in the container)

    now, seen_failing = wait_restarted_healthy(
        service, lambda: stack.state(service), lambda: stack.logs(service)
    )

    # It hung for real: the checks failed while the process stayed alive...
    assert seen_failing
    # ...and the same container came back as a new process, its hang (in /tmp) gone.
    assert now["Id"] == before["Id"]
    assert now["State"]["StartedAt"] != before["State"]["StartedAt"]
    assert now["RestartCount"] == 1
    logs = stack.logs(service)
    assert f"shipyard: {service} failed 3 health checks in a row" in logs, logs
    assert logs.count("worker started") == 2, logs
    # SIGKILL ended it: its SIGTERM handler could not run on a stuck event loop.
    assert "SIGTERM handled" not in logs, logs
