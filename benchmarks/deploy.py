"""Requests a Compose release drops: Shipyard's switch against plain recreation, side by side.

On a real dockerd, the sample service (PostgreSQL, Caddy in front) gets three releases built
and pushed: A (the sample app), B (an app that ignores SIGTERM) and C (B with a health check
that fails). A bounded loop (loopback, ~20 requests/s, stops by itself) runs through the
proxy while the stack goes A -> B -> C -> back to A twice:

- baseline: `docker compose up -d` with each release's image (plain recreation; a few
  seconds after each, as a user watching the logs would), the proxy's upstream a fixed name;
- Shipyard: `invoke deploy` of B, of C (which fails and is rolled back) and `invoke rollback`.

Prints, last, `deploy: N requests, F failed, longest gap G s` for Shipyard, the baseline's
line above it. Starts its own dockerd and registries as the tests do (tests/servers/), so run
it after `. .ci/setup.sh`: `nox -s bench` or `python benchmarks/deploy.py`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import copy_template, git, init_repo, render_kit  # noqa: E402
from tests.load import Load, LoadReport  # noqa: E402
from tests.servers.docker import (  # noqa: E402
    MIRROR_STORAGE,
    import_base,
    publish_mirror_images,
    running_dockerd,
)
from tests.servers.registry import free_port, running_registry  # noqa: E402

SERVICE = "bench-api"
IMAGE_VAR = "BENCH_API_IMAGE"
NODE_VERSION = "22"
# Time a plain recreation is given before the next one: the new container's start-up.
SETTLE = 10.0


def _kit(work: Path, registry: str, answers: dict[str, str | int], port: int) -> Path:
    root = render_kit(
        copy_template(work / "template"),
        {
            "project_name": "Bench API",
            "sample_app": True,
            "components": [
                {
                    "name": SERVICE,
                    "kind": "http",
                    "port": port,
                    "health_path": "/health",
                    "path": ".",
                }
            ],
            **answers,
            "staging_target": "compose",
            "production_target": "compose",
            "image_registry": f"{registry}/bench",
            "ci_provider": "none",
            # The official image's PostgreSQL: releases are measured, not recoveries.
            "point_in_time_recovery": False,
            # Loopback ports, no certificates: the load loop talks plain HTTP to the proxy.
            "tls": "none",
        },
        work / SERVICE,
    )
    init_repo(root, "kit")
    return root


def _invoke(root: Path, env: dict[str, str], *args: str, check: bool = True) -> int:
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=root, env=env, capture_output=True, text=True
    )
    if check and proc.returncode:
        raise SystemExit(f"invoke {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}"[-4000:])
    return proc.returncode


def _release(root: Path, env: dict[str, str], old: str, new: str, message: str) -> str:
    """Commit `old` -> `new` in src/main.js, build and push; the pushed repo@digest."""
    main_js = root / "src" / "main.js"
    main_js.write_text(main_js.read_text().replace(old, new))
    git(root, "commit", "-q", "-am", message)
    _invoke(root, env, "build", "--env", "staging")
    _invoke(root, env, "push", "--env", "staging")
    ref: str = json.loads((root / ".shipyard" / "images.json").read_text())[SERVICE]["ref"]
    return ref


def _baseline(root: Path, env: dict[str, str], url: str, refs: list[str]) -> LoadReport:
    with Load(url) as load:
        time.sleep(2)
        for ref in refs:
            subprocess.run(
                ["docker-compose", "--file", "compose.prod.yaml", "up", "--detach", "--no-build"],
                cwd=root,
                env={**env, IMAGE_VAR: ref},
                check=True,
                capture_output=True,
            )
            time.sleep(SETTLE)
    return load.report


def _shipyard(root: Path, env: dict[str, str], url: str, b: str, c: str) -> LoadReport:
    with Load(url) as load:
        time.sleep(2)
        deploy = ("deploy", "--env", "staging", "--yes", "--skip-migrate", "--timeout", "40")
        _invoke(root, {**env, IMAGE_VAR: b}, *deploy)
        if _invoke(root, {**env, IMAGE_VAR: c}, *deploy, check=False) != 1:
            raise SystemExit("the release whose health check fails was not refused")
        _invoke(root, env, "rollback", "--env", "staging", "--yes")
        time.sleep(2)
    return load.report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.parse_known_args()  # `nox -s bench -- ...` passes every script the same arguments

    with (
        running_dockerd() as daemon,
        tempfile.TemporaryDirectory() as tmp,
        running_registry(Path(tmp) / "registry") as registry,
        running_registry(MIRROR_STORAGE) as mirror,
    ):
        images = publish_mirror_images(daemon, import_base(daemon), mirror)
        port = free_port()
        root = _kit(Path(tmp), registry, images.answers(NODE_VERSION), port)
        env = {**daemon.task_env, "POSTGRES_PASSWORD": "bench-only-password"}
        try:
            _invoke(root, env, "build", "--env", "staging")
            _invoke(root, env, "push", "--env", "staging")
            a = json.loads((root / ".shipyard" / "images.json").read_text())[SERVICE]["ref"]
            b = _release(
                root,
                env,
                "process.on('SIGTERM', () => {",
                "process.on('SIGTERM', () => {}); // ignored\nprocess.on('SIGUSR2', () => {",
                "B: ignores SIGTERM",
            )
            c = _release(
                root,
                env,
                "return reply(res, 200, { status: 'ok' });",
                "return reply(res, 500, { status: 'broken on purpose' });",
                "C: its health check fails",
            )
            git(root, "reset", "-q", "--hard", "HEAD~2")
            _invoke(root, {**env, IMAGE_VAR: a}, "deploy", "--env", "staging", "--yes")
            url = f"http://127.0.0.1:{port}/health"
            baseline = _baseline(root, env, url, [b, c, a])
            ours = _shipyard(root, env, url, b, c)
        finally:
            subprocess.run(
                [
                    *("docker-compose", "--file", "compose.prod.yaml", "--profile", "migrate"),
                    *("down", "--volumes", "--remove-orphans", "--timeout", "5"),
                ],
                cwd=root,
                env={**env, IMAGE_VAR: "unused"},
                capture_output=True,
                check=False,
            )
    print(f"baseline (docker compose up -d): {baseline}")
    print(f"deploy: {ours}")


if __name__ == "__main__":
    main()
