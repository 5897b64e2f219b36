"""Real framework apps, as their official generators make them, with the kit added.

tests/fixtures/apps/ holds a NestJS app (`nest new`) and a Next.js app (`create-next-app`,
`output: 'standalone'`) with their lockfiles; README.md there says how they were made and what
was changed. Each gets the kit rendered into its folder, builds through the kit's own
`invoke build` on the real engine with the Node major it needs, and must run as production runs
it (read-only root filesystem, no capabilities, the image's non-root user) until the image's
own HEALTHCHECK reports it healthy.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from copier import run_copy

from tests.conftest import REPO, git, init_repo
from tests.servers.docker import Dockerd, MirrorImages
from tests.servers.registry import free_port

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("docker")]

FIXTURES = REPO / "tests" / "fixtures" / "apps"
# The answers a user gives for each app. The ports are not the frameworks' default 3000, so
# the app must listen on the PORT the kit sets. NestJS 12 and Next.js 16 need Node >= 20.9.
APPS: dict[str, dict[str, Any]] = {
    "nestjs": {
        "node_version": "22",
        "component": {"name": "api", "port": 3100, "start": "node dist/main.js"},
    },
    "nextjs": {
        "node_version": "22",
        "component": {"name": "web", "port": 3200, "output": "next-standalone"},
    },
}


@pytest.mark.parametrize("app", sorted(APPS))
def test_generated_app_builds_with_the_kit_and_turns_healthy(
    app: str,
    template_dir: Path,
    tmp_path: Path,
    dockerd: Dockerd,
    registry: str,
    mirror_images: MirrorImages,
) -> None:
    spec = APPS[app]
    component = {"kind": "http", "health_path": "/health", "path": ".", **spec["component"]}
    root = tmp_path / app
    shutil.copytree(FIXTURES / app, root)
    readme = (root / "README.md").read_bytes()
    ignore_file = root / ".gitignore"
    ignores = ignore_file.read_text() if ignore_file.exists() else ""
    run_copy(
        str(template_dir),
        root,
        data={
            "project_name": app,
            "components": [component],
            "database": "none",
            **mirror_images.answers(node_version=spec["node_version"]),
            "staging_target": "compose",
            "production_target": "compose",
            "image_registry": f"{registry}/acme",
            "ci_provider": "none",
        },
        defaults=True,
        unsafe=True,
        quiet=True,
    )
    # Added to the app as it is: its own README and .gitignore are kept (the kit's guide is
    # DEPLOYMENT.md; the ignore file only gains the kit's missing patterns at its end).
    assert (root / "README.md").read_bytes() == readme
    assert (root / ".gitignore").read_text().startswith(ignores)
    init_repo(root, f"{app} with the kit")
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "build", "--env", "staging"],
        cwd=root,
        env=dockerd.task_env,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    image = f"{registry}/acme/{app}-{component['name']}:{git(root, 'rev-parse', 'HEAD')[:12]}"

    port = free_port()
    container = (
        dockerd.run(
            "run",
            "--detach",
            "--read-only",
            "--tmpfs",
            "/tmp",  # noqa: S108 - the container's own /tmp, as compose.prod.yaml mounts it
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges:true",
            "--publish",
            f"127.0.0.1:{port}:{component['port']}",
            image,
        )
        .stdout.decode()
        .strip()
    )
    try:
        health = _wait_healthy(dockerd, container)
        assert health == "healthy", _logs(dockerd, container)
        base = f"http://127.0.0.1:{port}"
        assert requests.get(f"{base}/health", timeout=5).status_code == 200
        if component.get("output") == "next-standalone":
            # The page's own assets come from .next/static, copied beside the server.
            page = requests.get(base, timeout=10)
            assert page.status_code == 200, page.text[:2000]
            assets = re.findall(r'/_next/static/[^"\']+\.(?:js|css)', page.text)
            assert assets, page.text[:2000]
            assert requests.get(base + assets[0], timeout=5).status_code == 200
            assert requests.get(f"{base}/next.svg", timeout=5).status_code == 200  # public/
    finally:
        dockerd.run("rm", "--force", "--volumes", container)


def _wait_healthy(dockerd: Dockerd, container: str, timeout: float = 90) -> str:
    """The container's health once the image's HEALTHCHECK decides (or it stops running)."""
    deadline = time.monotonic() + timeout
    status = "starting"
    while time.monotonic() < deadline:
        with contextlib.closing(dockerd.client()) as client:
            state = client.containers.get(container).attrs["State"]
        status = state.get("Health", {}).get("Status", "none")
        if status != "starting" or not state["Running"]:
            return status if state["Running"] else f"exited {state['ExitCode']}"
        time.sleep(1)
    return status


def _logs(dockerd: Dockerd, container: str) -> str:
    proc = dockerd.run("logs", container)
    return (proc.stdout + proc.stderr).decode(errors="replace")[-4000:]
