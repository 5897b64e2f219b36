"""A sample service rendered by the template, committed, and released on a Compose host by the
kit's own `invoke` tasks: what the per-runtime real-engine tests (test_python, test_go) share.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import requests

from tests.conftest import Render, git, init_repo, invoke_cli, load_preset
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

    def commit_change(self, path: str, old: str, new: str) -> None:
        """Replace `old`, which the repo's file `path` must hold, with `new`, and commit it: the
        change of a code-only release."""
        file = self.root / path
        text = file.read_text()
        assert old in text, f"{path} has no {old!r}"
        file.write_text(text.replace(old, new))
        git(self.root, "commit", "-qam", "a code-only release")

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


def _publish_runtime(mirror_images: MirrorImages, answers: Mapping[str, Any]) -> None:
    """The runtime's base image in the mirror before the first build: a test run alone on a
    fresh machine finds no other test's push there."""
    runtime = answers.get("runtime", "node")
    if runtime == "python":
        mirror_images.python(str(answers.get("python_version", "3.11")))
    elif runtime == "go":
        mirror_images.golang(str(answers.get("go_version", "1.27")))
    else:
        mirror_images.node(str(answers.get("node_version", "22")))


def _engines(registry: str, mirror_images: MirrorImages) -> dict[str, Any]:
    """The answers that put a kit on the test engines: the mirror, registry and PostgreSQL
    served here, no TLS (no ACME), no CI, the official PostgreSQL image."""
    return {
        "postgres_version": mirror_images.postgres_version,
        "image_mirror": mirror_images.mirror,
        "image_registry": f"{registry}/acme",
        "ci_provider": "none",
        "tls": "none",
        # The official image's server unless the test asks (test_pitr_compose.py does).
        "point_in_time_recovery": False,
    }


@contextmanager
def sample_kit(
    render: Render,
    dest: Path,
    dockerd: Dockerd,
    registry: str,
    mirror_images: MirrorImages,
    answers: dict[str, Any],
    component: Mapping[str, Any] = MappingProxyType({}),
) -> Iterator[Kit]:
    """The sample app of `answers` (its runtime, versions and migrations) as one http component
    named after `dest` (with `component`'s answers too), with PostgreSQL, released to Compose
    for staging and production; its stack and volumes removed at the end."""
    service, port = dest.name, free_port()
    _publish_runtime(mirror_images, answers)
    root = render(
        {
            "sample_app": True,
            "components": [
                {
                    "name": service,
                    "kind": "http",
                    "port": port,
                    "health_path": "/healthz",
                    **component,
                }
            ],
            "database": "postgres",
            "staging_target": "compose",
            "production_target": "compose",
            **_engines(registry, mirror_images),
            **answers,
        },
        dest,
    )
    init_repo(root, "kit")
    kit = Kit(root, _env(dockerd), port, service)
    with stack_removed(kit.root, kit.env, [service]):
        yield kit


@contextmanager
def preset_kit(
    render: Render,
    dest: Path,
    dockerd: Dockerd,
    registry: str,
    mirror_images: MirrorImages,
    preset: str,
    app_files: Sequence[str],
    app_answers: Mapping[str, Any] | None = None,
    fixtures: Mapping[str, Path] | None = None,
) -> Iterator[Kit]:
    """tests/presets/PRESET.yml as its team runs it: the kit rendered from the preset's own
    answers (only the engines' answers replaced), plus the application it lacks: the
    runtime's sample app, rendered for the preset's first component (with `app_answers`) and
    copied in (`app_files`: its code, project file, lockfile and migrations), and `fixtures`
    (path in the repo -> file) for its other components; staged on Compose."""
    answers = {**load_preset(preset), **_engines(registry, mirror_images)}
    _publish_runtime(mirror_images, answers)
    first = answers["components"][0]
    app = render(
        {
            **answers,
            "sample_app": True,
            "components": [{k: v for k, v in first.items() if k != "start"}],
            **(app_answers or {}),
        },
        dest.with_name(f"{dest.name}-sample"),
    )
    root = render(answers, dest)
    for name in app_files:
        source = app / name
        assert source.exists(), f"the sample app has no {name}"
        if source.is_dir():
            shutil.copytree(source, root / name)
        else:
            shutil.copy2(source, root / name)
    for name, source in (fixtures or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, root / name)
    init_repo(root, "kit and app")
    # The preset's secrets, as the host's .env would give them.
    env = {**_env(dockerd), **{name: f"test-{name.lower()}" for name in answers["app_secrets"]}}
    kit = Kit(root, env, int(first["port"]), first["name"])
    with stack_removed(kit.root, kit.env, [c["name"] for c in answers["components"]]):
        yield kit


def _env(dockerd: Dockerd) -> dict[str, str]:
    return {**dockerd.task_env, "POSTGRES_PASSWORD": "test-only-password"}


@contextmanager
def stack_removed(root: Path, env: Mapping[str, str], components: Sequence[str]) -> Iterator[None]:
    """The stacks the kit at `root` deploys (of `components`), its backup scheduler's too, and
    their volumes, removed at the end."""
    try:
        yield
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
                **{f"{c.upper().replace('-', '_')}_IMAGE": "unused" for c in components},
                "SHIPYARD_BACKUP_CIPHER_PASS": "unused",
            },
            capture_output=True,
            check=False,
        )
