"""The image the generated Dockerfile builds, on the real dockerd.

The sample service gets a development dependency its build runs (a bin on PATH) and a build
that writes under node_modules, as compilers' caches do. The image must carry the production
dependencies and the build output and nothing of those; a source-only change must reuse both
dependency installs and change only the image's top layer.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Render, git, init_repo, invoke_cli
from tests.servers.docker import Dockerd, MirrorImages

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("docker")]

SERVICE = "image-api"
# A small development dependency with a bin and no dependencies of its own.
DEV_DEPENDENCY = "mkdirp@1.0.4"
BUILD = (
    "mkdirp dist node_modules/.cache/build"
    " && node -e \"require('node:fs').cpSync('src', 'dist', { recursive: true })\""
)


def _invoke(root: Path, env: dict[str, str], *args: str) -> str:
    proc = invoke_cli(root, *args, env=env)
    if proc.returncode:
        pytest.fail(
            f"invoke {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
        )
    return proc.stdout + proc.stderr


def _cached_steps(output: str) -> dict[str, bool]:
    """BuildKit's plain progress: each step's name, and whether it came from the cache."""
    names = dict(re.findall(r"^#(\d+) \[([^\]]+)\]", output, re.MULTILINE))
    cached = set(re.findall(r"^#(\d+) CACHED$", output, re.MULTILINE))
    return {name: number in cached for number, name in names.items()}


def test_image_ships_production_files_only_and_rebuilds_just_the_code(
    render: Render,
    tmp_path: Path,
    dockerd: Dockerd,
    registry: str,
    mirror_images: MirrorImages,
) -> None:
    root = render(
        {
            "project_name": "Image API",
            "sample_app": True,
            **mirror_images.answers(node_version="22"),
            "production_target": "compose",
            "image_registry": f"{registry}/acme",
            "ci_provider": "none",
        },
        tmp_path / SERVICE,
    )
    manifest = root / "package.json"
    package = json.loads(manifest.read_text())
    package["scripts"]["build"] = BUILD
    manifest.write_text(json.dumps(package, indent=2) + "\n")
    subprocess.run(
        ["npm", "install", "--package-lock-only", "--save-dev", "--no-audit", DEV_DEPENDENCY],
        cwd=root,
        check=True,
        capture_output=True,
    )
    init_repo(root, "kit with a development dependency")
    env = {**dockerd.task_env, "BUILDKIT_PROGRESS": "plain"}
    repository = f"{registry}/acme/{SERVICE}-{SERVICE}"

    _invoke(root, env, "build", "--env", "staging")
    first = f"{repository}:{git(root, 'rev-parse', 'HEAD')[:12]}"
    listing = dockerd.run(
        "run",
        "--rm",
        "--entrypoint",
        "sh",
        first,
        "-c",
        "ls -A /app /app/node_modules /app/dist && node -e \"require('pg')\"",
    ).stdout.decode()
    # Production dependency and build output are there; the development dependency and what
    # the build wrote under node_modules are not.
    assert "pg\n" in listing
    assert "main.js" in listing
    assert "mkdirp" not in listing
    assert ".cache" not in listing

    main_js = root / "src" / "main.js"
    main_js.write_text(main_js.read_text() + "// a source-only change\n")
    git(root, "commit", "-q", "-am", "source-only change")
    output = _invoke(root, env, "build", "--env", "staging")
    second = f"{repository}:{git(root, 'rev-parse', 'HEAD')[:12]}"
    steps = _cached_steps(output)
    installs = {name: hit for name, hit in steps.items() if "deps_app" in name}
    assert installs, output
    assert all(installs.values()), f"a source change reinstalled dependencies: {installs}"
    assert not steps["build_app 2/2"], "the build step must run again for new code"

    with contextlib.closing(dockerd.client()) as client:
        before = client.images.get(first).attrs["RootFS"]["Layers"]
        after = client.images.get(second).attrs["RootFS"]["Layers"]
    # Only the application layer differs: a code-only release pushes and pulls one layer.
    assert before[:-1] == after[:-1]
    assert before[-1] != after[-1]
