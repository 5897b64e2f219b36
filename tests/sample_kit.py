"""A sample service rendered by the template, committed, and released on a Compose host by the
kit's own `invoke` tasks: what the per-runtime real-engine tests (test_python, test_go) share.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import Render, init_repo, invoke_cli
from tests.servers.docker import Dockerd, MirrorImages
from tests.servers.registry import free_port


@dataclass(frozen=True)
class Kit:
    """A generated repo under git, and how to run its `invoke` tasks on the engines."""

    root: Path
    env: dict[str, str]
    port: int
    service: str

    def invoke(self, *args: str) -> None:
        proc = invoke_cli(self.root, *args, env=self.env, timeout=1200)
        if proc.returncode:
            pytest.fail(
                f"invoke {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
            )

    def release(self) -> str:
        """Build, push and deploy HEAD on staging; the image reference deployed."""
        self.invoke("build", "--env", "staging")
        self.invoke("push", "--env", "staging")
        self.invoke("deploy", "--env", "staging", "--yes")
        images = json.loads((self.root / ".shipyard" / "images.json").read_text())
        ref: str = images[self.service]["ref"]
        return ref


def visit(port: int, within: float = 120) -> int:
    """One request to the sample app's "/", which commits a row; the row count it answers
    with. Retried for `within` seconds: after a restore the app's pool (or its restarted
    container) reconnects."""
    deadline = time.monotonic() + within
    while True:
        with contextlib.suppress(requests.RequestException):
            reply = requests.get(f"http://127.0.0.1:{port}/", timeout=5)
            if reply.status_code == 200:
                return int(reply.json()["visits"])
        assert time.monotonic() < deadline, "the sample app did not answer"
        time.sleep(2)


@contextmanager
def sample_kit(
    render: Render,
    dest: Path,
    dockerd: Dockerd,
    registry: str,
    mirror_images: MirrorImages,
    answers: dict[str, Any],
) -> Iterator[Kit]:
    """The sample app of `answers` (its runtime, versions and migrations) as one http component
    named after `dest`, with PostgreSQL, released to Compose for staging and production; its
    stack and volumes removed at the end."""
    service, port = dest.name, free_port()
    # The runtime's base image in the mirror before the first build: a test run alone on a
    # fresh machine finds no other test's push there.
    runtime = answers.get("runtime", "node")
    if runtime == "python":
        mirror_images.python(str(answers.get("python_version", "3.11")))
    elif runtime == "go":
        mirror_images.golang(str(answers.get("go_version", "1.27")))
    else:
        mirror_images.node(str(answers.get("node_version", "22")))
    root = render(
        {
            "sample_app": True,
            "components": [
                {"name": service, "kind": "http", "port": port, "health_path": "/healthz"}
            ],
            "database": "postgres",
            "postgres_version": mirror_images.postgres_version,
            "image_mirror": mirror_images.mirror,
            "staging_target": "compose",
            "production_target": "compose",
            "image_registry": f"{registry}/acme",
            "ci_provider": "none",
            "tls": "none",
            # The official image's server unless the test asks (test_pitr_compose.py does).
            "point_in_time_recovery": False,
            **answers,
        },
        dest,
    )
    init_repo(root, "kit")
    env = {**dockerd.task_env, "POSTGRES_PASSWORD": "test-only-password"}
    try:
        yield Kit(root, env, port, service)
    finally:
        if (root / "compose.backup.yaml").is_file():  # the backup scheduler a deploy started
            subprocess.run(
                [
                    *("docker-compose", "--file", "compose.backup.yaml", "--profile", "schedule"),
                    *("down", "--volumes", "--timeout", "5"),
                ],
                cwd=root,
                env={**env, "BACKUP_IMAGE": "unused"},
                capture_output=True,
                check=False,
            )
        subprocess.run(
            [
                *("docker-compose", "--file", "compose.prod.yaml", "--profile", "migrate"),
                *("down", "--volumes", "--remove-orphans", "--timeout", "5"),
            ],
            cwd=root,
            # Compose interpolates every required variable, even for `down`.
            env={
                **env,
                f"{service.upper().replace('-', '_')}_IMAGE": "unused",
                "SHIPYARD_BACKUP_CIPHER_PASS": "unused",
            },
            capture_output=True,
            check=False,
        )
