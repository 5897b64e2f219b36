"""A Python service on the real engine: the sample app (uvicorn, PostgreSQL, alembic) built
with uv, pushed, migrated and deployed on a Compose host by the kit's own tasks.

The image must hold the production dependencies and the code, and none of the build's tools (no
uv, no pip in its venv or the base's interpreter, no apt or perl, no caches, no compiler); it runs
as the numeric non-root user with a read-only root filesystem (the packages' bytecode compiled as
they install, the app's own code in memory as it imports: nothing is written), and becomes
healthy through the image's own HEALTHCHECK. The base
image is Debian bookworm's CPython 3.11, served by the test registry as python:3.11-slim-bookworm
(and trixie's 3.13 as python:3.13-slim-bookworm, for one image); uv and the packages come from PyPI
through the build's host network.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import Render, git, init_repo
from tests.sample_kit import Kit, preset_kit, sample_kit, visit
from tests.servers.docker import Dockerd, MirrorImages

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("docker")]

SERVICE = "py-api"


@pytest.fixture(scope="session")
def python_kit(
    render: Render,
    tmp_path_factory: pytest.TempPathFactory,
    dockerd: Dockerd,
    registry: str,
    mirror_images: MirrorImages,
) -> Iterator[Kit]:
    """The Python sample service rendered and committed; its stack removed at the end."""
    with sample_kit(
        render,
        tmp_path_factory.mktemp("pykit") / SERVICE,
        dockerd,
        registry,
        mirror_images,
        {
            "project_name": "Py API",
            "runtime": "python",
            "python_version": "3.11",
            "python_package_manager": "uv",
            "migrations": "alembic",
        },
    ) as kit:
        yield kit


def test_python_sample_builds_migrates_and_deploys_without_build_tools(
    python_kit: Kit, dockerd: Dockerd
) -> None:
    kit = python_kit
    ref = kit.release()
    health = requests.get(f"http://127.0.0.1:{kit.port}/healthz", timeout=5)
    assert health.status_code == 200, health.text
    # "/" writes a row to the table alembic's migration created.
    assert requests.get(f"http://127.0.0.1:{kit.port}/", timeout=5).json()["visits"] >= 1

    with contextlib.closing(dockerd.client()) as client:
        image = client.images.get(ref)
        (container,) = client.containers.list(
            filters={"label": [f"com.docker.compose.service={SERVICE}"]}
        )
        state = container.attrs
    assert image.attrs["Config"]["User"] == "1000:1000"
    assert state["Config"]["Image"] == ref
    assert state["HostConfig"]["ReadonlyRootfs"] is True
    # The image's own HEALTHCHECK passes (the deploy's readiness check does not wait for it).
    assert _health(dockerd, container.id) == "healthy"
    # Prometheus scrapes the container itself (the proxy answers 404 on metrics paths).
    scrape = f"import urllib.request as u; print(u.urlopen('http://127.0.0.1:{kit.port}/metrics').read())"
    metrics = dockerd.run("exec", container.id, "python", "-c", scrape).stdout.decode()
    assert 'http_requests_total{method="GET",route="/",status="200"}' in metrics, metrics
    assert (
        "alembic_version"
        in dockerd.run(
            "exec",
            container.id,
            "python",
            "-c",
            "import sqlalchemy as sa; from app.main import engine; "
            "print(sa.inspect(engine).get_table_names())",
        ).stdout.decode()
    )

    # What the image holds: the venv's packages with their bytecode and the code (no bytecode
    # of its own: a build step would run on every release); none of uv, pip (in the venv or
    # the base's interpreter: the venv's links to it), apt, perl, download caches or a
    # compiler; dpkg lists no apt or perl.
    probe = (
        "for tool in uv gcc cc pip pip3 apt apt-get perl; do"
        " command -v $tool && echo found-$tool; done; "
        "for py in /usr/local/bin/python3 /usr/bin/python3; do"
        " [ -x $py ] && $py -m pip --version 2>&1; done; "
        "dpkg-query -W -f '${db:Status-Status} ${Package}\\n' apt perl-base 2>&1; "
        "ls /app/.venv/bin; ls -A /root/.cache 2>&1; ls /app/app/__pycache__ 2>&1; "
        "ls /app/.venv/lib/python3.11/site-packages/uvicorn/__pycache__; "
        "python -c 'import uvicorn, sqlalchemy, alembic, psycopg'; echo imports-ok"
    )
    # As root, who could read a cache the build left in its home.
    listing = dockerd.run(
        "run", "--rm", "--user", "0", "--entrypoint", "sh", ref, "-c", probe
    ).stdout.decode()
    lines = set(listing.splitlines())
    assert not {line for line in lines if line.startswith("found-")}, listing
    assert "No module named pip" in listing, listing
    assert not [line for line in lines if line.startswith("pip ")], listing  # pip's --version
    for package in ("apt", "perl-base"):
        # Purged: dpkg knows it as not installed (no config files left), or not at all.
        gone = {f"not-installed {package}", f"dpkg-query: no packages found matching {package}"}
        assert gone & lines, listing
    assert {"uvicorn", "alembic", "python"} <= lines, listing
    assert not {"pip", "pip3", "uv"} & lines, listing
    assert "ls: cannot access '/root/.cache': No such file or directory" in lines, listing
    assert "main.cpython-311.pyc" in lines, listing  # uvicorn's, compiled as uv installed it
    assert "ls: cannot access '/app/app/__pycache__': No such file or directory" in lines, listing
    assert "imports-ok" in lines, listing


@pytest.mark.parametrize(
    ("manager", "version"), [("pip", "3.11"), ("poetry", "3.11"), ("uv", "3.13")]
)
def test_each_installer_and_python_gives_a_healthy_image_on_a_read_only_root(
    manager: str,
    version: str,
    render: Render,
    tmp_path: Path,
    dockerd: Dockerd,
    registry: str,
    mirror_images: MirrorImages,
) -> None:
    """pip's, Poetry's and (on the real CPython 3.13) uv's images: the locked packages,
    compiled for the image's interpreter (the app's code is not: it compiles as it imports), in
    a venv without pip or the installer, healthy with nothing writable but a tmpfs, as the
    non-root user."""
    mirror_images.python(version)
    slug = f"{manager}-api"
    root = render(
        {
            "project_name": f"{manager.title()} API",
            "runtime": "python",
            "python_version": version,
            "python_package_manager": manager,
            "sample_app": True,
            "database": "none",
            "monitoring": "none",
            "image_mirror": mirror_images.mirror,
            "production_target": "compose",
            "image_registry": f"{registry}/acme",
            "ci_provider": "none",
        },
        tmp_path / slug,
    )
    init_repo(root, "kit")
    kit = Kit(root, dockerd.task_env, 0, slug)
    kit.invoke("build", "--env", "staging")
    image = f"{registry}/acme/{slug}-{slug}:{git(root, 'rev-parse', 'HEAD')[:12]}"

    packages = f"/app/.venv/lib/python{version}/site-packages"
    probe = (
        f"ls /app/.venv/bin {packages}/uvicorn/__pycache__; ls /app/app/__pycache__ 2>&1;"
        " command -v poetry uv || true"
    )
    listing = dockerd.run("run", "--rm", "--entrypoint", "sh", image, "-c", probe).stdout.decode()
    tag = "cpython-" + version.replace(".", "")
    assert "uvicorn" in listing.split(), listing
    assert listing.split().count(f"main.{tag}.pyc") == 1, listing  # uvicorn's; the app has none
    assert "cannot access '/app/app/__pycache__'" in listing, listing
    assert not {"pip", "pip3", "poetry", "uv"} & set(listing.split()), listing
    assert "poetry" not in listing, listing
    assert not [line for line in listing.splitlines() if line.endswith("/uv")], listing
    # /tmp is the container's own tmpfs, as compose.prod.yaml gives it.
    container = (
        dockerd.run("run", "-d", "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", image)  # noqa: S108
        .stdout.decode()
        .strip()
    )
    try:
        assert _health(dockerd, container) == "healthy", dockerd.run("logs", container).stderr
    finally:
        dockerd.run("rm", "-f", container)


def _health(dockerd: Dockerd, container: str) -> str:
    """The container's health status once it leaves `starting` (within two minutes)."""
    deadline = time.monotonic() + 120
    status = "starting"
    while status == "starting" and time.monotonic() < deadline:
        status = (
            dockerd.run("inspect", "--format", "{{.State.Health.Status}}", container)
            .stdout.decode()
            .strip()
        )
        if status == "starting":
            time.sleep(2)
    return status


def test_a_code_change_rebuilds_one_layer_deploys_and_rolls_back(
    python_kit: Kit, dockerd: Dockerd
) -> None:
    """A release that changes only code: the new image shares every layer with the last one
    but the code's (so a push and a pull move just that layer), deploys, and `invoke
    rollback` puts the previous release back."""
    kit = python_kit

    def layers(ref: str) -> list[str]:
        with contextlib.closing(dockerd.client()) as client:
            found: list[str] = client.images.get(ref).attrs["RootFS"]["Layers"]
        return found

    def served() -> dict[str, object]:
        answer: dict[str, object] = requests.get(f"http://127.0.0.1:{kit.port}/", timeout=5).json()
        return answer

    first = kit.release()
    assert "release" not in served()

    old = f'body = {{"service": "{SERVICE}", "visits": visits}}'
    kit.commit_change("app/main.py", old, old[:-1] + ', "release": 2}')
    second = kit.release()

    before, after = layers(first), layers(second)
    assert len(before) == len(after)
    # Base, user, dependencies: the same layers; only the code's (the top one) is new.
    assert before[:-1] == after[:-1]
    assert before[-1] != after[-1]
    assert served()["release"] == 2

    kit.invoke("rollback", "--env", "staging", "--yes")
    assert "release" not in served()
    with contextlib.closing(dockerd.client()) as client:
        (container,) = client.containers.list(
            filters={"label": [f"com.docker.compose.service={SERVICE}"]}
        )
        assert container.attrs["Config"]["Image"] == first


def test_the_python_api_preset_builds_migrates_deploys_and_rolls_back(
    render: Render,
    tmp_path: Path,
    dockerd: Dockerd,
    registry: str,
    mirror_images: MirrorImages,
) -> None:
    """tests/presets/python-api.yml (uv on CPython 3.13, alembic, uvicorn with
    --proxy-headers answering /healthz on 8000, an app secret) with an application of its
    kind: released to staging (migrated first: its table answers), released again with a code
    change, and rolled back."""
    app = ["app", "alembic", "alembic.ini", "pyproject.toml", "uv.lock"]
    with preset_kit(
        render, tmp_path / "python-api", dockerd, registry, mirror_images, "python-api", app
    ) as kit:
        first = kit.release()
        counted = visit(kit.port)
        assert visit(kit.port) == counted + 1  # the migrated table keeps the rows

        kit.commit_change("app/main.py", '"visits": visits}', '"visits": visits, "release": 2}')
        second = kit.release()
        assert second != first
        assert requests.get(f"http://127.0.0.1:{kit.port}/", timeout=5).json()["release"] == 2

        kit.invoke("rollback", "--env", "staging", "--yes")
        body = requests.get(f"http://127.0.0.1:{kit.port}/", timeout=5).json()
        assert "release" not in body
        # Each answer to "/" commits a row: none lost across the two releases and the rollback.
        assert body["visits"] == counted + 3
