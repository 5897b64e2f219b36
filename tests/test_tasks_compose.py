"""The tasks on real engines: build, push, migrate and deploy the sample service on Compose.

One generated kit (`sample_app`, PostgreSQL) goes through a release history in order: a good
release, a release whose health check fails (rolled back), one interrupted with Ctrl-C
(rolled back), one whose migration fails (stopped before the rollout), and a manual rollback.
Everything runs against the real dockerd, registry and a PostgreSQL container; the base images
come from the test registry acting as the `image_mirror`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.backup_image import build_backup_image
from tests.conftest import Render, edit_yaml, git
from tests.load import Load
from tests.sample_kit import stack_removed, visit
from tests.servers.docker import Dockerd, MirrorImages
from tests.servers.registry import free_port
from tests.servers.sshd import SshDocker
from tests.servers.webhook import webhook

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("docker")]

SERVICE = "shop-api"
DATA = "/app/data"
LOCAL_RUN_FILE = "left-by-a-local-run.txt"
# Answered server parameters, and what `SHOW` answers for each on the running server: units
# converted by PostgreSQL, YAML's true as on, a literal `$` not taken for a Compose variable.
POSTGRES_SETTINGS = {
    "max_connections": 50,
    "shared_buffers": "32MB",
    "log_min_duration_statement": "0.5s",
    "log_connections": True,
    "log_line_prefix": "%m [%p] $user ",
}
POSTGRES_SHOWN = {
    "max_connections": "50",
    "shared_buffers": "32MB",
    "log_min_duration_statement": "500ms",
    "log_connections": "on",
    "log_line_prefix": "%m [%p] $user ",
}


@dataclass
class Kit:
    """A generated repo under git, and how to run `invoke` in it against the test engines."""

    root: Path
    env: dict[str, str]
    port: int

    def invoke(self, *args: str, check: bool = True, timeout: float = 900) -> Result:
        proc = subprocess.run(
            [sys.executable, "-m", "invoke", *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        result = Result(proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode:
            pytest.fail(f"invoke {' '.join(args)} exited {proc.returncode}:\n{result.output}")
        return result

    def commit(self, message: str) -> None:
        git(self.root, "add", "-A")
        git(self.root, "commit", "-q", "-m", message)

    def edit(self, path: str, old: str, new: str) -> None:
        file = self.root / path
        text = file.read_text()
        assert old in text, f"{old!r} not in {path}"
        file.write_text(text.replace(old, new))

    def ensure(self, path: str, old: str, new: str) -> bool:
        """Make `new` be in `path` (replacing `old` if needed); True if the file changed."""
        text = (self.root / path).read_text()
        if new in text:
            return False
        self.edit(path, old, new)
        return True

    def health(self) -> int:
        try:
            return requests.get(f"http://127.0.0.1:{self.port}/health", timeout=5).status_code
        except requests.ConnectionError:
            return 0

    def pushed(self) -> dict[str, str]:
        data: dict[str, dict[str, str]] = json.loads(
            (self.root / ".shipyard" / "images.json").read_text()
        )
        return data[SERVICE]


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


# Session scope: under xdist other modules' tests may run between these on the same worker,
# which would tear a module-scoped kit down and rebuild it fresh mid-sequence.
@pytest.fixture(scope="session")
def kit(
    render: Render,
    tmp_path_factory: pytest.TempPathFactory,
    dockerd: Dockerd,
    registry: str,
    mirror_images: MirrorImages,
) -> Iterator[Kit]:
    """The sample service rendered, committed, and torn down (containers, volumes) at the end."""
    root = tmp_path_factory.mktemp("kit") / "shop-api"
    yield from rendered_kit(render, root, "Shop API", dockerd, registry, mirror_images)


def rendered_kit(
    render: Render,
    root: Path,
    project_name: str,
    dockerd: Dockerd,
    registry: str,
    mirror_images: MirrorImages,
) -> Iterator[Kit]:
    """The sample service rendered at `root`, committed; its stack torn down when done."""
    port = free_port()
    render(
        {
            "project_name": project_name,
            "sample_app": True,
            "components": [
                {
                    "name": SERVICE,
                    "kind": "http",
                    "port": port,
                    "health_path": "/health",
                    "path": ".",
                    # Files the app keeps: a named volume that outlives its containers.
                    "data_paths": [DATA],
                }
            ],
            **mirror_images.answers(node_version="22"),
            "staging_target": "compose",
            "production_target": "compose",
            "image_registry": f"{registry}/acme",
            "ci_provider": "none",
            # Loopback ports, no certificates: the load loop talks plain HTTP to the proxy.
            "tls": "none",
            # The official image's server (test_pitr_compose.py releases one with pgBackRest).
            "point_in_time_recovery": False,
            # Its PostgreSQL runs with these (test_postgres_runs_with_the_answered_settings).
            "postgres_settings": POSTGRES_SETTINGS,
        },
        root,
    )
    # What a local run of the app left in its data path's folder (DATA is /app/data): never
    # in an image, nor in the volume Docker fills from the image's folder.
    (root / "data").mkdir()
    (root / "data" / LOCAL_RUN_FILE).write_text("a local upload\n")
    git(root, "init", "-q", "-b", "main")
    env = {**dockerd.task_env, "POSTGRES_PASSWORD": "test-only-password"}
    k = Kit(root, env, port)
    k.commit("kit")
    with stack_removed(root, env, [SERVICE]):
        yield k


def release(kit: Kit) -> str:
    """Build and push HEAD for staging; the pushed repo@digest."""
    kit.invoke("build", "--env", "staging")
    kit.invoke("push", "--env", "staging")
    return kit.pushed()["ref"]


def serving_images(dockerd: Dockerd) -> list[str]:
    """The image reference each running app container was started from."""
    return [image for _, image in serving(dockerd)]


def serving(dockerd: Dockerd) -> list[tuple[str, str]]:
    """Each running app container's id and the image reference it was started from."""
    with contextlib.closing(dockerd.client()) as client:
        containers = client.containers.list(
            filters={"label": [f"com.docker.compose.service={SERVICE}"]}
        )
        return [(str(c.id), str(c.attrs["Config"]["Image"])) for c in containers]


def stop_signals(dockerd: Dockerd, ids: list[str], since: int) -> list[str]:
    """The signals the daemon sent the containers `ids` since `since`, in the order sent."""
    with contextlib.closing(dockerd.client()) as client:
        until = int(time.time()) + 1
        events = client.events(  # type: ignore[no-untyped-call]
            since=since, until=until, decode=True, filters={"event": "kill"}
        )
        return [e["Actor"]["Attributes"]["signal"] for e in events if e["id"] in ids]


def serving_image(dockerd: Dockerd) -> str:
    """The image reference the one running app container was started from."""
    images = serving_images(dockerd)
    assert len(images) == 1, images
    return images[0]


@pytest.fixture(scope="session")
def first(kit: Kit, dockerd: Dockerd) -> str:
    """Release 1 deployed to staging: the image reference it runs."""
    ref = release(kit)
    kit.invoke("deploy", "--env", "staging", "--yes")
    return ref


def test_build_labels_and_push_records_the_registry_digest(kit: Kit, dockerd: Dockerd) -> None:
    ref = release(kit)
    record = kit.pushed()
    sha = git(kit.root, "rev-parse", "HEAD").strip()
    assert record["tag"] == sha[:12]
    assert record["revision"] == sha
    with contextlib.closing(dockerd.client()) as client:
        # What the registry serves for the tag is exactly the digest recorded for deploys.
        assert (
            client.images.get_registry_data(f"{record['repository']}:{record['tag']}").id
            == (record["digest"])
        )
        labels = client.images.get(ref).labels
    assert labels["org.opencontainers.image.revision"] == sha
    assert labels["org.opencontainers.image.version"] == sha[:12]
    # The image runs as the numeric non-root user the chart and compose files expect.
    with contextlib.closing(dockerd.client()) as client:
        assert client.images.get(ref).attrs["Config"]["User"] == "1000:1000"


def test_deploy_migrates_then_serves_by_digest(kit: Kit, dockerd: Dockerd, first: str) -> None:
    assert "@sha256:" in first
    assert serving_image(dockerd) == first
    assert kit.health() == 200
    # "/" writes a row to the table the migration created.
    visits = requests.get(f"http://127.0.0.1:{kit.port}/", timeout=5).json()["visits"]
    assert visits >= 1
    history = json.loads((kit.root / ".shipyard" / "deploys-staging.json").read_text())
    assert history[-1]["status"] == "deployed"
    # The record of pushes and deploys never dirties the tree.
    assert git(kit.root, "status", "--porcelain") == ""


def test_postgres_runs_with_the_answered_settings(kit: Kit, dockerd: Dockerd, first: str) -> None:
    with contextlib.closing(dockerd.client()) as client:
        (postgres,) = client.containers.list(
            filters={
                "label": [
                    "com.docker.compose.service=postgres",
                    f"com.docker.compose.project.working_dir={kit.root}",
                ]
            }
        )
        psql = ["psql", "-h", "127.0.0.1", "-U", "shop_api", "-d", "shop_api", "-At"]
        shown = {}
        for name in POSTGRES_SHOWN:
            code, output = postgres.exec_run(
                [*psql, "-c", f"SHOW {name}"],
                environment={"PGPASSWORD": kit.env["POSTGRES_PASSWORD"]},
            )
            assert code == 0, output.decode()
            shown[name] = output.decode().removesuffix("\n")
    assert shown == POSTGRES_SHOWN


def test_dry_run_prints_the_plan_and_changes_nothing(
    kit: Kit, dockerd: Dockerd, first: str
) -> None:
    result = kit.invoke("deploy", "--env", "staging", "--dry-run")
    assert "dry run" in result.stdout
    assert f"SHOP_API_IMAGE={first}" in result.stdout
    assert "--profile migrate run --rm migrate" in result.stdout
    assert "up --detach --no-build --remove-orphans --wait" in result.stdout
    # The switch: new containers beside the old, then the proxy pointed at them.
    scale = f"up --detach --no-build --no-deps --no-recreate --scale {SERVICE}=2 {SERVICE}\n"
    assert scale in result.stdout
    assert f"once each new {SERVICE} container passes its health check" in result.stdout
    assert serving_image(dockerd) == first


def test_failing_health_rolls_back_to_the_running_version(
    kit: Kit, dockerd: Dockerd, first: str
) -> None:
    kit.edit(
        "src/main.js",
        "return reply(res, 200, { status: 'ok' });",
        "return reply(res, 500, { status: 'broken on purpose' });",
    )
    kit.commit("a release whose health check fails")
    broken = release(kit)
    result = kit.invoke("deploy", "--env", "staging", "--yes", "--timeout", "40", check=False)
    assert result.code == 1
    assert "rolled back, the previous version is serving" in result.stderr
    # Why, from the new container's health log, before the rollback replaced it.
    # (unhealthy, or not healthy in time when the wait ends in its start period).
    why = f": GET http://127.0.0.1:{kit.port}/health answered HTTP 500); rolled back"
    assert f"; {SERVICE} unhealthy{why}" in result.stderr or (
        f"; {SERVICE} not healthy in time{why}" in result.stderr
    )
    assert "Traceback" not in result.output
    assert serving_image(dockerd) == first != broken
    assert kit.health() == 200


def deploy_in_terminal(kit: Kit, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """`invoke deploy --env staging --yes ARGS` started as from a terminal, in its own process
    group (a terminal's Ctrl-C reaches the whole group: os.killpg), its output piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "invoke", "deploy", "--env", "staging", "--yes", *args],
        cwd=kit.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # A shell starts background jobs with SIGINT ignored, which a child inherits, and then
        # Python never turns Ctrl-C into KeyboardInterrupt: the task gets the signal a terminal
        # would give it however this test was started.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def test_ctrl_c_mid_deploy_rolls_back(kit: Kit, dockerd: Dockerd, first: str) -> None:
    # A release whose health check fails (the previous test's, or made here when run alone),
    # so the rollout hangs in `up --wait` until Ctrl-C arrives.
    if kit.ensure(
        "src/main.js",
        "return reply(res, 200, { status: 'ok' });",
        "return reply(res, 500, { status: 'broken on purpose' });",
    ):
        kit.commit("a release whose health check fails")
        release(kit)
    proc = deploy_in_terminal(kit, kit.env, "--timeout", "120")
    assert proc.stdout is not None
    for line in proc.stdout:
        if " up --detach" in line:
            break
    time.sleep(5)
    # A terminal's Ctrl-C reaches the whole foreground process group.
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stdout + stderr
    assert "interrupted (Ctrl-C)" in stderr
    assert "Traceback" not in stdout + stderr
    assert serving_image(dockerd) == first
    assert kit.health() == 200


def test_release_adding_a_component_is_rolled_back_whole(
    kit: Kit, dockerd: Dockerd, first: str
) -> None:
    # A second component (the release whose health check fails, on its own) joins the stack:
    # the rollback must remove it too, not only put the old image of the first one back.
    # Built here, not taken from the last recorded push: a rollback may have rewritten that.
    if kit.ensure(
        "src/main.js",
        "return reply(res, 200, { status: 'ok' });",
        "return reply(res, 500, { status: 'broken on purpose' });",
    ):
        kit.commit("a release whose health check fails")
    broken = release(kit)
    assert broken != first
    compose = kit.root / "compose.prod.yaml"
    text = compose.read_text()
    start = text.index(f"  {SERVICE}:\n")
    end = text.index("\n\n", start)
    extra = text[start:end].replace(f"  {SERVICE}:\n", "  extra:\n", 1)
    extra = extra.replace("${SHOP_API_IMAGE:?", "${EXTRA_IMAGE:?")
    # No host port: the app's own port inside its container is what its health check asks.
    extra = "\n".join(
        line for line in extra.splitlines() if "127.0.0.1:" not in line and "ports:" not in line
    )
    compose.write_text(text[:end] + "\n\n" + extra + text[end:])
    kit.edit(
        "shipyard.yaml",
        '    start: "node dist/main.js"\n',
        '    start: "node dist/main.js"\n  - name: extra\n    kind: worker\n    path: "."\n'
        '    start: "node dist/main.js"\n',
    )
    kit.commit("a release that adds a component")
    # The images by digest, as CI passes them (the recorded push is of another commit).
    named = Kit(kit.root, {**kit.env, "SHOP_API_IMAGE": first, "EXTRA_IMAGE": broken}, kit.port)
    try:
        result = named.invoke(
            "deploy", "--env", "staging", "--yes", "--skip-migrate", "--timeout", "40", check=False
        )
    finally:
        git(kit.root, "reset", "-q", "--hard", "HEAD~1")
    assert result.code == 1, result.output
    assert "rolled back, the previous version is serving" in result.stderr
    assert "Traceback" not in result.output
    with contextlib.closing(dockerd.client()) as client:
        left = client.containers.list(
            all=True, filters={"label": ["com.docker.compose.service=extra"]}
        )
    assert left == []
    assert serving_image(dockerd) == first
    assert kit.health() == 200


def test_docker_sdk_errors_are_engine_errors(dockerd: Dockerd) -> None:
    from docker.client import DockerClient

    from shipyard.engines import EngineError
    from shipyard.engines import docker as docker_engine

    # The daemon refuses an API version it does not speak yet: the SDK's APIError.
    new = DockerClient(base_url=dockerd.host, version="1.99")  # type: ignore[no-untyped-call]
    with contextlib.closing(new), pytest.raises(EngineError, match="too new"):
        docker_engine.running_images(new, SERVICE)


def test_failing_migration_stops_the_deploy(kit: Kit, dockerd: Dockerd, first: str) -> None:
    kit.ensure(
        "src/main.js",
        "return reply(res, 500, { status: 'broken on purpose' });",
        "return reply(res, 200, { status: 'ok' });",
    )
    (kit.root / "migrations" / "002_broken.sql").write_text(
        "ALTER TABLE no_such_table ADD x int;\n"
    )
    kit.commit("a release whose migration fails")
    release(kit)
    result = kit.invoke("deploy", "--env", "staging", "--yes", check=False)
    assert result.code == 1
    assert "the migration failed" in result.stderr
    assert "the running version keeps serving" in result.stderr
    assert serving_image(dockerd) == first
    assert kit.health() == 200


def test_rollback_returns_to_the_previous_release(
    kit: Kit, dockerd: Dockerd, first: str, ssh_docker: SshDocker
) -> None:
    # Built, pushed, deployed and rolled back over DOCKER_HOST=ssh://, as deploy.yml reaches a
    # Compose host: the CLI and Compose through `ssh`, the kit's SDK calls through paramiko.
    logins = {client: ssh_docker.logins(client) for client in ("sdk", "cli")}
    kit = dataclasses.replace(kit, env=ssh_docker.env(kit.env))
    (kit.root / "migrations" / "002_broken.sql").unlink(missing_ok=True)
    kit.ensure(
        "src/main.js",
        "return reply(res, 500, { status: 'broken on purpose' });",
        "return reply(res, 200, { status: 'ok' });",
    )
    kit.edit("src/main.js", "service: 'shop-api'", "service: 'shop-api', release: 2")
    kit.commit("a good second release")
    second = release(kit)
    kit.invoke("deploy", "--env", "staging", "--yes")
    assert serving_image(dockerd) == second
    kit.edit("src/main.js", "release: 2", "release: 3")
    kit.commit("a good third release")
    third = release(kit)
    kit.invoke("deploy", "--env", "staging", "--yes")
    assert serving_image(dockerd) == third
    plan = kit.invoke("rollback", "--env", "staging", "--dry-run")
    assert f"SHOP_API_IMAGE={second}" in plan.stdout
    kit.invoke("rollback", "--env", "staging", "--yes")
    assert serving_image(dockerd) == second
    assert requests.get(f"http://127.0.0.1:{kit.port}/", timeout=5).json()["release"] == 2
    # A second rollback goes one release further back, not forward to the third again.
    kit.invoke("rollback", "--env", "staging", "--yes")
    assert serving_image(dockerd) == first
    assert kit.health() == 200
    none = kit.invoke("rollback", "--env", "staging", "--yes", check=False)
    assert none.code == 1
    assert none.stderr.strip() == (
        "shipyard: staging has no healthy release before the current one recorded in "
        ".shipyard/deploys-staging.json to roll back to; nothing was changed"
    )
    assert serving_image(dockerd) == first
    status = kit.invoke("status", "--env", "staging")
    assert "rolled-back" in status.stdout
    # Both reached the daemon over ssh, each with its own key.
    assert all(ssh_docker.logins(client) > n for client, n in logins.items())


def set_staging(kit: Kit, key: str, value: object) -> None:
    def change(data: Any) -> None:
        data["environments"]["staging"][key] = value

    edit_yaml(kit.root / "shipyard.yaml", change)
    kit.commit(f"staging {key}: {value}")


@pytest.fixture(scope="session")
def deaf_and_broken(kit: Kit, first: str) -> tuple[str, str]:
    """Two releases of an app that ignores SIGTERM (so stopping an old container that still
    had requests would drop them): a healthy one, and one whose health check fails."""
    (kit.root / "migrations" / "002_broken.sql").unlink(missing_ok=True)
    kit.ensure(
        "src/main.js",
        "return reply(res, 500, { status: 'broken on purpose' });",
        "return reply(res, 200, { status: 'ok' });",
    )
    kit.edit(
        "src/main.js",
        "process.on('SIGTERM', () => {",
        "process.on('SIGTERM', () => {}); // ignored on purpose\nprocess.on('SIGUSR2', () => {",
    )
    kit.commit("a release that ignores SIGTERM")
    # The record of pushes goes back as it was with the commits: later tests expect HEAD's.
    pushes = (kit.root / ".shipyard" / "images.json").read_text()
    deaf = release(kit)
    kit.edit(
        "src/main.js",
        "return reply(res, 200, { status: 'ok' });",
        "return reply(res, 500, { status: 'broken on purpose' });",
    )
    kit.commit("the same, with a health check that fails")
    broken = release(kit)
    git(kit.root, "reset", "-q", "--hard", "HEAD~2")
    (kit.root / ".shipyard" / "images.json").write_text(pushes)
    return deaf, broken


def app_exec(dockerd: Dockerd, *command: str) -> tuple[int, str]:
    """Run a command in the one app container as the image's user; its exit code and output."""
    with contextlib.closing(dockerd.client()) as client:
        (container,) = client.containers.list(
            filters={"label": [f"com.docker.compose.service={SERVICE}"]}
        )
        code, output = container.exec_run(list(command), user="1000:1000")
    return int(code), output.decode()


def test_files_in_a_data_path_survive_releases(
    kit: Kit, dockerd: Dockerd, first: str, deaf_and_broken: tuple[str, str]
) -> None:
    """The app writes its data path (the only writable place besides /tmp under its read-only
    root, owned by its user), and a release of another image finds the files there."""
    assert serving_image(dockerd) == first
    # The repository's data/ holds a local run's file: the image's folder is empty, and so
    # was the volume Docker filled from it.
    image = dockerd.run("run", "--rm", "--entrypoint", "ls", first, "-A", DATA).stdout.decode()
    assert image == ""
    assert LOCAL_RUN_FILE not in app_exec(dockerd, "ls", "-A", DATA)[1]
    deaf, _ = deaf_and_broken
    write = f"mkdir -p {DATA}/photos && printf kept > {DATA}/photos/a.txt && stat -c %u:%g {DATA}"
    assert app_exec(dockerd, "/bin/sh", "-c", write) == (0, "1000:1000\n")
    code, _ = app_exec(dockerd, "/bin/sh", "-c", "touch /app/elsewhere")
    assert code != 0  # the rest of the container stays read-only

    def deploy(ref: str) -> None:
        named = Kit(kit.root, {**kit.env, "SHOP_API_IMAGE": ref}, kit.port)
        named.invoke("deploy", "--env", "staging", "--yes", "--skip-migrate")
        assert serving_image(dockerd) == ref

    try:
        deploy(deaf)
        assert app_exec(dockerd, "cat", f"{DATA}/photos/a.txt") == (0, "kept")
    finally:
        deploy(first)  # the tests after expect the first release
    assert app_exec(dockerd, "cat", f"{DATA}/photos/a.txt") == (0, "kept")
    assert kit.health() == 200


@pytest.mark.parametrize("replicas", [1, 3])
def test_releases_and_rollbacks_through_the_proxy_drop_no_request(
    kit: Kit, dockerd: Dockerd, first: str, deaf_and_broken: tuple[str, str], replicas: int
) -> None:
    """~20 requests/s through the proxy during a release, a release whose health check fails
    and a rollback, with an app that ignores SIGTERM, on one and on three replicas: not one
    request fails."""
    assert serving_image(dockerd) == first
    deaf, broken = deaf_and_broken
    if replicas > 1:
        set_staging(kit, "replicas", replicas)

    def deploy(ref: str) -> Result:
        # The image by digest, as CI passes it.
        named = Kit(kit.root, {**kit.env, "SHOP_API_IMAGE": ref}, kit.port)
        return named.invoke(
            "deploy", "--env", "staging", "--yes", "--skip-migrate", "--timeout", "40", check=False
        )

    try:
        with Load(f"http://127.0.0.1:{kit.port}/health") as load:
            time.sleep(2)
            assert deploy(deaf).code == 0
            assert serving_images(dockerd) == [deaf] * replicas
            failed = deploy(broken)
            assert failed.code == 1, failed.output
            assert "rolled back, the previous version is serving" in failed.stderr
            assert serving_images(dockerd) == [deaf] * replicas
            retired = [ident for ident, _ in serving(dockerd)]
            since = int(time.time())
            kit.invoke("rollback", "--env", "staging", "--yes")
            assert serving_images(dockerd) == [first] * replicas
            # The deaf replicas were stopped together: each had its SIGTERM before the
            # first of them was killed at the end of its grace period.
            signals = stop_signals(dockerd, retired, since)
            assert signals == ["15"] * replicas + ["9"] * replicas
            time.sleep(2)
    finally:
        if replicas > 1:
            git(kit.root, "reset", "-q", "--hard", "HEAD~1")
            # Back to one container of the first release, which the tests after expect.
            assert deploy(first).code == 0
    report = load.report
    assert report.requests > 200, report
    assert report.failed == 0, (str(report), report.errors)
    assert serving_image(dockerd) == first


def test_ctrl_c_during_the_drain_leaves_the_old_version_serving(
    kit: Kit, dockerd: Dockerd, first: str, deaf_and_broken: tuple[str, str]
) -> None:
    """Ctrl-C after the proxy was pointed at the new containers, while the old ones drain:
    nothing had stopped yet, so the proxy goes back to the old containers, the new ones are
    removed, and not one request of the load running through it all fails."""
    assert serving_image(dockerd) == first
    deaf, _ = deaf_and_broken
    with Load(f"http://127.0.0.1:{kit.port}/health") as load:
        time.sleep(2)
        env = {**kit.env, "SHOP_API_IMAGE": deaf}
        proc = deploy_in_terminal(kit, env, "--skip-migrate", "--timeout", "40")
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "draining the old ones" in line:
                os.killpg(proc.pid, signal.SIGINT)
                break
        stdout, stderr = proc.communicate(timeout=300)
        time.sleep(2)
    output = "".join(seen) + stdout + stderr
    assert "draining the old ones" in output, output
    assert proc.returncode == 130, output
    assert "interrupted (Ctrl-C)" in stderr
    assert "rolled back, the previous version is serving" in stderr
    assert "Traceback" not in output
    assert serving_image(dockerd) == first != deaf
    report = load.report
    assert report.failed == 0, (str(report), report.errors)
    assert kit.health() == 200


def test_maintenance_mode_answers_503_everywhere_and_holds_deploys(
    kit: Kit, dockerd: Dockerd, first: str
) -> None:
    assert serving_image(dockerd) == first
    base = f"http://127.0.0.1:{kit.port}"
    as_ci = Kit(kit.root, {**kit.env, "SHOP_API_IMAGE": first}, kit.port)
    deploy = ("deploy", "--env", "staging", "--yes", "--skip-migrate")
    # Prometheus scrapes the containers; through the proxy the metrics path is not served.
    assert requests.get(base + "/metrics", timeout=5).status_code == 404
    assert requests.get(base + "/health", timeout=5).status_code == 200
    kit.invoke("maintenance", "--env", "staging", "on", "--retry-after", "60")
    try:
        for path in ("/health", "/", "/any/thing?x=1"):
            answer = requests.get(base + path, timeout=5)
            assert answer.status_code == 503, path
            assert answer.headers["Retry-After"] == "60"
            assert "Shop API is down for maintenance" in answer.text
        held = as_ci.invoke(*deploy, check=False)
        assert held.code == 1
        assert held.stderr.strip().startswith("shipyard: staging is in maintenance mode (since ")
        assert held.stderr.strip().endswith(
            "deploy with --during-maintenance, or first `invoke maintenance --env staging off`; "
            "nothing was changed"
        )
        assert "in maintenance mode since" in kit.invoke("status", "--env", "staging").stdout
        # Deploying during maintenance (to fix what it is for) leaves the page up, and puts the
        # repository's proxy files in again: an edited page is served.
        page = kit.root / "proxy" / "maintenance" / "index.html"
        page.write_text(page.read_text().replace("</body>", "<p>Back at noon.</p></body>"))
        kit.commit("the maintenance page says when")
        try:
            as_ci.invoke(*deploy, "--during-maintenance")
        finally:
            # Later tests expect HEAD to be the commit whose images were pushed.
            git(kit.root, "reset", "-q", "--hard", "HEAD~1")
        answer = requests.get(base + "/health", timeout=5)
        assert answer.status_code == 503
        assert "Back at noon." in answer.text
        # The proxy's own health check (its admin API) stays green: Compose keeps it running.
        time.sleep(12)
        with contextlib.closing(dockerd.client()) as client:
            (proxy,) = client.containers.list(
                # This kit's proxy: other tests' stacks (test_python's) run in the same dockerd.
                filters={
                    "label": [
                        f"com.docker.compose.project={SERVICE}",
                        "com.docker.compose.service=proxy",
                    ]
                },
            )
            assert proxy.attrs["State"]["Health"]["Status"] == "healthy"
            # Its files came through the API: nothing is mounted from the checkout, which a
            # remote DOCKER_HOST does not have.
            assert {m["Type"] for m in proxy.attrs["Mounts"]} == {"volume"}
    finally:
        kit.invoke("maintenance", "--env", "staging", "off")
    assert requests.get(base + "/health", timeout=5).status_code == 200
    assert "maintenance" not in kit.invoke("status", "--env", "staging").stdout
    assert serving_image(dockerd) == first


def test_a_failing_smoke_check_rolls_the_release_back(
    kit: Kit, dockerd: Dockerd, first: str, deaf_and_broken: tuple[str, str]
) -> None:
    """The smoke check runs in the new image after the switch: failing, the release is rolled
    back as for a failed health check, and the webhook told so; passing (here: a request
    through the proxy, by its service name), the release stays."""
    assert serving_image(dockerd) == first
    deaf, _ = deaf_and_broken
    deploy = ("deploy", "--env", "staging", "--yes", "--skip-migrate")
    health = f"http://proxy:{kit.port}/health"
    failing = ["node", "-e", 'console.log("smoke: GET /orders answered 500"); process.exit(3)']
    before = serving(dockerd)
    try:
        set_staging(kit, "smoke", {"command": failing})
        with webhook("/hooks/s3cr3t") as hook:
            env = {**kit.env, "SHOP_API_IMAGE": deaf, "SHIPYARD_DEPLOY_WEBHOOK_URL": hook.url}
            failed = Kit(kit.root, env, kit.port).invoke(*deploy, check=False)
        assert failed.code == 1, failed.output
        reason = (
            f"the smoke check `{shlex.join(failing)}` exited with 3; its last lines: smoke: GET "
            "/orders answered 500"
        )
        last = failed.stderr.strip().splitlines()[-1]
        assert last == (
            f"shipyard: the rollout of staging failed ({reason}); rolled back, the previous "
            "version is serving"
        )
        # The very containers that served before: held running until the check passed, the
        # proxy only pointed back at them.
        assert serving(dockerd) == before
        assert serving_image(dockerd) == first
        old, new = f"{SERVICE} {first}", f"{SERVICE} {deaf}"
        assert hook.received == [
            {"text": f"Deploy of {SERVICE} on staging started: {old} -> {new}"},
            {
                "text": f"Deploy of {SERVICE} on staging rolled back: {old} serving again, {new} "
                f"not kept. {last.removeprefix('shipyard: ')}"
            },
        ]
        assert "s3cr3t" not in failed.output
        as_ci = Kit(kit.root, {**kit.env, "SHOP_API_IMAGE": deaf}, kit.port)
        script = f"fetch('{health}').then(r => process.exit(r.ok ? 0 : 1), () => process.exit(2))"
        set_staging(kit, "smoke", {"command": ["node", "-e", script], "timeout": 60})
        as_ci.invoke(*deploy)
        assert serving_image(dockerd) == deaf
        with contextlib.closing(dockerd.client()) as client:
            one_offs = client.containers.list(
                all=True, filters={"label": ["com.docker.compose.oneoff=True"]}
            )
        assert one_offs == []
    finally:
        git(kit.root, "reset", "-q", "--hard", "HEAD~2")
        Kit(kit.root, {**kit.env, "SHOP_API_IMAGE": first}, kit.port).invoke(*deploy)
    assert serving_image(dockerd) == first


def test_registry_down_fails_push_and_deploy_clearly(
    kit: Kit, dockerd: Dockerd, first: str
) -> None:
    closed = f"127.0.0.1:{free_port()}"
    records = json.loads((kit.root / ".shipyard" / "images.json").read_text())
    saved = json.dumps(records)
    records[SERVICE]["ref"] = f"{closed}/acme/{SERVICE}-{SERVICE}@{first.split('@')[1]}"
    (kit.root / ".shipyard" / "images.json").write_text(json.dumps(records))
    try:
        result = kit.invoke("deploy", "--env", "staging", "--yes", check=False)
    finally:
        (kit.root / ".shipyard" / "images.json").write_text(saved)
    assert result.code == 1
    assert "cannot reach the registry" in result.stderr
    assert "Traceback" not in result.output
    assert serving_image(dockerd) == first

    # Pushing to a registry that does not answer retries, then says so in one line.
    kit.edit(
        "shipyard.yaml",
        f"registry: {kit.pushed()['repository'].rsplit('/', 2)[0]}/acme",
        f"registry: {closed}/acme",
    )
    try:
        tag = kit.invoke("build", "--env", "dev", "--dry-run").stdout.split("--tag ")[1].split()[0]
        with contextlib.closing(dockerd.client()) as client:
            client.images.get(first).tag(tag)
        result = kit.invoke("push", "--env", "dev", "--retries", "2", check=False)
    finally:
        git(kit.root, "checkout", "shipyard.yaml")
    assert result.code == 1
    assert "could not push" in result.stderr
    assert "after 2 attempts" in result.stderr
    assert "Traceback" not in result.output


def test_an_ssh_host_not_in_known_hosts_is_refused(
    kit: Kit, dockerd: Dockerd, first: str, ssh_docker: SshDocker
) -> None:
    remote = dataclasses.replace(kit, env=ssh_docker.env(kit.env))
    known_hosts = ssh_docker.home / ".ssh" / "known_hosts"
    pinned = known_hosts.read_text()
    known_hosts.write_text("")
    try:
        result = remote.invoke("deploy", "--env", "staging", "--yes", check=False)
    finally:
        known_hosts.write_text(pinned)
    assert result.code == 1
    assert "not found in known_hosts" in result.stderr
    assert "Traceback" not in result.output
    assert serving_image(dockerd) == first


@pytest.mark.parametrize(
    "host", ["unix://{root}/no-such-docker.sock", "ssh://127.0.0.1:{port}"], ids=["unix", "ssh"]
)
def test_daemon_not_running_is_one_clear_message(kit: Kit, host: str, tmp_path: Path) -> None:
    # HOME: no ~/.ssh/config of the machine's changes what paramiko tries.
    env = {**kit.env, "DOCKER_HOST": host.format(root=kit.root, port=free_port())}
    env["HOME"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "push", "--env", "staging"],
        cwd=kit.root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "the Docker daemon is not reachable" in result.stderr
    if host.startswith("ssh://"):
        assert "check that `ssh HOST docker version` works" in result.stderr
        assert "Unable to connect to port" in result.stderr  # paramiko's reason
    assert "Traceback" not in result.stdout + result.stderr


@pytest.fixture(scope="session")
def backup_image(dockerd: Dockerd, mirror_images: MirrorImages) -> str:
    """The backup image, tagged locally (compose runs a local image without pulling)."""
    return build_backup_image(dockerd, "shipyard-test/backup-engine:1")


def test_backup_tasks_run_in_the_compose_stack(
    kit: Kit, dockerd: Dockerd, first: str, backup_image: str, ssh_docker: SshDocker
) -> None:
    """As the generated DEPLOYMENT.md says: from the repo root, with DOCKER_HOST (ssh://, as
    for deploys) and the backup image only; the database is on the stack's internal network,
    which no PGHOST could reach."""
    env = {k: v for k, v in kit.env.items() if not k.startswith("PG")}
    at = Kit(kit.root, ssh_docker.env({**env, "BACKUP_IMAGE": backup_image}), kit.port)
    logins = ssh_docker.logins("cli")  # the backup tasks run Compose only
    folder = kit.root / "backups" / "staging"
    folder.mkdir(parents=True, exist_ok=True)
    os.chown(folder, 1000, 1000)  # DEPLOYMENT.md's `install -d -o 1000 -g 1000 backups/staging`

    counted = visit(kit.port)
    made = at.invoke("backup", "--env", "staging")
    assert " run --rm backup shipyard backup run --target file:///backups --kind manual" in (
        made.stdout
    )
    (backup_id,) = [p.name for p in folder.iterdir()]
    assert (folder / backup_id / "manifest.json").is_file()
    assert backup_id in at.invoke("backup.list", "--env", "staging").stdout
    at.invoke("backup.verify", "--env", "staging")
    assert (folder / backup_id / "verified.json").is_file()
    assert visit(kit.port) == counted + 1
    assert visit(kit.port) == counted + 2  # two rows the backup does not hold
    at.invoke("restore", "--env", "staging", "--backup", backup_id, "--yes")
    assert visit(kit.port) == counted + 1
    pruned = at.invoke("backup.prune", "--env", "staging", "--dry-run")
    assert "would delete 0" in pruned.output
    assert kit.health() == 200
    assert ssh_docker.logins("cli") > logins


def test_backups_before_migrating_from_the_first_deploy_on(
    render: Render,
    tmp_path_factory: pytest.TempPathFactory,
    dockerd: Dockerd,
    registry: str,
    mirror_images: MirrorImages,
    backup_image: str,
) -> None:
    """An environment that backs up before each migration, as prod does, in a stack of its own:
    its first deploy has nothing to back up and takes no backup (the backup service could not
    join a stack that does not exist yet); a later release of code alone, which pushes no
    backup image, backs up with the one pushed before."""
    root = tmp_path_factory.mktemp("guarded") / "ledger"
    kits = rendered_kit(render, root, "Ledger", dockerd, registry, mirror_images)
    kit = next(kits)
    try:
        edit_yaml(
            root / "shipyard.yaml",
            lambda d: d["environments"]["staging"].update(backup_before_migrate=True),
        )
        kit.commit("staging backs up before migrating")
        folder = root / "backups" / "staging"
        folder.mkdir(parents=True)
        os.chown(folder, 1000, 1000)
        # The backup image, pushed with this commit as `invoke build/push --component backup`
        # would (the kit's own backup/Dockerfile installs shipyard from git: see backup_image).
        sha = git(root, "rev-parse", "HEAD").strip()
        repository = f"{registry}/acme/ledger-backup"
        with contextlib.closing(dockerd.client()) as client:
            client.images.get(backup_image).tag(repository, sha[:12])
        kit.invoke("push", "--env", "staging", "--component", "backup")

        release(kit)
        first = kit.invoke("deploy", "--env", "staging", "--yes")
        assert "(a first deploy): nothing to back up, so no backup before migrating" in (
            first.stdout
        )
        assert list(folder.iterdir()) == []
        assert kit.health() == 200

        kit.edit("src/main.js", "service: 'ledger'", "service: 'ledger', release: 2")
        kit.commit("a code-only release")
        release(kit)
        second = kit.invoke("deploy", "--env", "staging", "--yes")
        assert f"BACKUP_IMAGE={repository}@sha256:" in second.stdout
        (made,) = folder.iterdir()
        manifest = json.loads((made / "manifest.json").read_text())
        assert manifest["kind"] == "pre-migrate"
        assert kit.health() == 200

        # Everything stopped, the data kept (`docker compose down`, the scheduler first: it
        # holds the stack's network): the next release starts the database to back it up.
        variables = {**kit.env, "BACKUP_IMAGE": "unused", "SHOP_API_IMAGE": "unused"}
        for file, profile in (
            ("compose.backup.yaml", "schedule"),
            ("compose.prod.yaml", "migrate"),
        ):
            down = [
                "docker-compose",
                "--file",
                file,
                "--profile",
                profile,
                "down",
                "--timeout",
                "5",
            ]
            subprocess.run(down, cwd=root, env=variables, check=True, capture_output=True)
        assert kit.health() == 0
        kit.edit("src/main.js", "release: 2", "release: 3")
        kit.commit("a release after the stack was stopped")
        release(kit)
        third = kit.invoke("deploy", "--env", "staging", "--yes")
        started = [line for line in third.stdout.splitlines() if " up --detach " in line]
        assert started[0].endswith(" postgres"), third.stdout
        # A new backup, and the second deploy's still beside it: retention keeps each
        # pre-migrate backup of the day (a scheduled one would have been thinned to this one).
        kept, newest = sorted(folder.iterdir())
        assert kept == made
        assert json.loads((newest / "manifest.json").read_text())["kind"] == "pre-migrate"
        assert kit.health() == 200
    finally:
        next(kits, None)


def test_a_deploy_onto_another_environments_stack_is_refused(
    kit: Kit, dockerd: Dockerd, first: str
) -> None:
    """Every environment's stack is one Compose project: prod deployed on the daemon where
    staging runs would take staging's containers, database and volumes. Refused before
    anything changes, as is a migration."""
    release(kit)
    before = serving(dockerd)
    said = (
        "shipyard: this Docker host runs staging (project shop-api, last deployed to staging);"
        " deploying prod here would take that stack over, database and volumes included. "
        "Point DOCKER_HOST at prod's own Docker host; nothing was changed"
    )
    for task in ("deploy", "migrate", "rollback"):
        refused = kit.invoke(task, "--env", "prod", "--yes", check=False)
        assert refused.code == 2, refused.output
        assert refused.stderr.strip() == said
    assert serving(dockerd) == before
    assert kit.health() == 200


def test_files_backup_and_restore_through_the_compose_stack(
    kit: Kit, dockerd: Dockerd, first: str, backup_image: str
) -> None:
    """`invoke backup` archives the data path beside the dump (the backup service mounts its
    volume read-only); `invoke restore --files` puts the same tree back, modes and times."""
    env = {k: v for k, v in kit.env.items() if not k.startswith("PG")}
    at = Kit(kit.root, {**env, "BACKUP_IMAGE": backup_image}, kit.port)
    folder = kit.root / "backups" / "staging"
    folder.mkdir(parents=True, exist_ok=True)
    os.chown(folder, 1000, 1000)
    make = (
        f"mkdir -p {DATA}/docs/2026 && head -c 200000 /dev/urandom > {DATA}/docs/2026/scan.pdf"
        f" && printf 'private' > {DATA}/docs/key && chmod 600 {DATA}/docs/key"
        f" && chmod 750 {DATA}/docs/2026 && ln -sf docs/key {DATA}/current"
    )
    assert app_exec(dockerd, "/bin/sh", "-c", make)[0] == 0
    # Type, mode, owner, size, time (to the nanosecond) and checksum of every entry; the data
    # path's own mode and owner (a restore moves entries in and out of it: its time changes).
    listing = (
        f"cd {DATA} && stat -c '%a %u:%g' . && find . -mindepth 1 \\( -type d -printf"
        " '%y %m %U:%G %T@ %p\\n' \\) -o -printf '%y %m %U:%G %s %T@ %p %l\\n' | sort"
        " && find . -type f -exec sha256sum {} + | sort"
    )
    code, before = app_exec(dockerd, "/bin/sh", "-c", listing)
    assert code == 0, before
    existing = {p.name for p in folder.iterdir()}

    made = at.invoke("backup", "--env", "staging")
    assert f"--data-path {SERVICE}:{DATA}" in made.stdout
    (backup_id,) = {p.name for p in folder.iterdir()} - existing
    manifest = json.loads((folder / backup_id / "manifest.json").read_text())
    (entry,) = manifest["files"]
    assert (entry["component"], entry["path"]) == (SERVICE, DATA)
    assert (folder / entry["key"]).stat().st_size == entry["size"]
    at.invoke("backup.verify", "--env", "staging", "--backup", backup_id)

    damage = f"rm -r {DATA}/docs/2026 && printf changed > {DATA}/docs/key && touch {DATA}/new"
    assert app_exec(dockerd, "/bin/sh", "-c", damage)[0] == 0
    assert app_exec(dockerd, "/bin/sh", "-c", listing)[1] != before
    plan = at.invoke("restore", "--env", "staging", "--files", "--backup", backup_id, "--dry-run")
    assert "run --rm files-restore shipyard backup restore --target file:///backups" in plan.stdout
    assert f"--files --backup {backup_id} --yes --data-path {SERVICE}:{DATA}" in plan.stdout
    at.invoke("restore", "--env", "staging", "--files", "--backup", backup_id, "--yes")
    assert app_exec(dockerd, "/bin/sh", "-c", listing) == (0, before)
    assert kit.health() == 200
