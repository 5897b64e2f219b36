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
    _add_kit(
        template_dir,
        root,
        registry,
        {
            "project_name": app,
            "components": [component],
            **mirror_images.answers(node_version=spec["node_version"]),
        },
    )
    # Added to the app as it is: its own README and .gitignore are kept (the kit's guide is
    # DEPLOYMENT.md; the ignore file only gains the kit's missing patterns at its end).
    assert (root / "README.md").read_bytes() == readme
    assert (root / ".gitignore").read_text().startswith(ignores)
    init_repo(root, f"{app} with the kit")
    proc = _build(root, dockerd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    image = f"{registry}/acme/{app}-{component['name']}:{git(root, 'rev-parse', 'HEAD')[:12]}"

    container, port = _start(dockerd, image, component["port"])
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


def _add_kit(template_dir: Path, root: Path, registry: str, answers: dict[str, Any]) -> None:
    """`copier copy` of the kit into the app's folder, as a user adds it: both environments
    on Compose, images for the test registry, no database or CI unless `answers` say."""
    run_copy(
        str(template_dir),
        root,
        data={
            "database": "none",
            "staging_target": "compose",
            "production_target": "compose",
            "image_registry": f"{registry}/acme",
            "ci_provider": "none",
            **answers,
        },
        defaults=True,
        unsafe=True,
        quiet=True,
    )


def _build(root: Path, dockerd: Dockerd) -> subprocess.CompletedProcess[str]:
    """The kit's own `invoke build --env staging`: every component's image."""
    return subprocess.run(
        [sys.executable, "-m", "invoke", "build", "--env", "staging"],
        cwd=root,
        env=dockerd.task_env,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )


def _start(dockerd: Dockerd, image: str, port: int) -> tuple[str, int]:
    """The image run as production runs it (read-only root, its own /tmp, no capabilities or
    new privileges), `port` published on a free one of the host's: the container and that port."""
    host_port = free_port()
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
            f"127.0.0.1:{host_port}:{port}",
            image,
        )
        .stdout.decode()
        .strip()
    )
    return container, host_port


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


WORKSPACE_COMPONENTS = [
    {
        "name": "api",
        "kind": "http",
        "port": 8000,
        "health_path": "/health",
        "path": "services/api",
        "start": "uvicorn api.server:app --host 0.0.0.0 --port 8000",
    },
    {"name": "jobs", "kind": "worker", "path": "services/jobs", "start": "python main.py"},
]


def test_a_uv_workspace_builds_each_member_from_its_one_lock(
    template_dir: Path,
    tmp_path: Path,
    dockerd: Dockerd,
    registry: str,
    mirror_images: MirrorImages,
) -> None:
    """A uv workspace as `uv init` makes one (README.md there): a packaged service, a library
    both components import, and a worker that is not a package. Each component's image runs
    from the one root uv.lock: the library and the console script come from the members,
    installed editable; a change to the library's code moves only the top layer; a member whose
    pyproject.toml left uv.lock behind fails the build in uv's words."""
    mirror_images.python()
    root = tmp_path / "shop"
    shutil.copytree(FIXTURES / "uv-workspace", root)
    readme = (root / "README.md").read_bytes()
    _add_kit(
        template_dir,
        root,
        registry,
        {
            "project_name": "shop",
            "runtime": "python",
            "python_version": "3.11",
            "python_package_manager": "uv",
            "workspaces": True,
            "components": WORKSPACE_COMPONENTS,
            "monitoring": "none",
            "image_mirror": mirror_images.mirror,
        },
    )
    assert (root / "README.md").read_bytes() == readme
    init_repo(root, "shop with the kit")

    def image(component: str) -> str:
        return f"{registry}/acme/shop-{component}:{git(root, 'rev-parse', 'HEAD')[:12]}"

    def layers(ref: str) -> list[str]:
        with contextlib.closing(dockerd.client()) as client:
            found: list[str] = client.images.get(ref).attrs["RootFS"]["Layers"]
        return found

    proc = _build(root, dockerd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first = image("api")
    assert _serve(dockerd, first, "/") == {"message": "Hello from common!"}
    # The packaged member's console script, on PATH; no installer in the image.
    listing = dockerd.run(
        "run", "--rm", "--entrypoint", "sh", first, "-c", "api; command -v uv pip || true"
    ).stdout.decode()
    assert listing.split("\n")[0] == "Hello from api!", listing
    assert "/uv" not in listing, listing
    assert "/pip" not in listing, listing
    # The worker is no package: its main.py runs from its folder, the working directory.
    jobs = dockerd.run("run", "--rm", "--read-only", "--cap-drop", "ALL", image("jobs"))
    assert jobs.stdout.decode() == "jobs: Hello from common!\n", jobs.stderr

    library = root / "libs" / "common" / "src" / "common" / "__init__.py"
    library.write_text(library.read_text().replace("Hello from common!", "Hello again!"))
    git(root, "commit", "-qam", "the library's words")
    proc = _build(root, dockerd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    second = image("api")
    assert _serve(dockerd, second, "/") == {"message": "Hello again!"}
    before, after = layers(first), layers(second)
    assert len(before) == len(after)
    assert before[:-1] == after[:-1]  # the base, the user and every dependency: reused
    assert before[-1] != after[-1]

    member = root / "services" / "api" / "pyproject.toml"
    member.write_text(member.read_text().replace('"common",', '"common",\n    "idna",'))
    git(root, "commit", "-qam", "a dependency without `uv lock`")
    proc = _build(root, dockerd)
    assert proc.returncode != 0
    assert "`--locked` was provided" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def _serve(dockerd: Dockerd, image: str, path: str) -> Any:
    """The JSON the image answers on `path` once healthy, run as production runs it."""
    container, port = _start(dockerd, image, 8000)
    try:
        health = _wait_healthy(dockerd, container)
        assert health == "healthy", _logs(dockerd, container)
        return requests.get(f"http://127.0.0.1:{port}{path}", timeout=5).json()
    finally:
        dockerd.run("rm", "--force", "--volumes", container)
