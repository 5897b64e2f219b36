"""HTTPS on a Compose host from a real ACME server: with `tls: acme`, the proxy gets its
certificate from pebble over a real HTTP-01/TLS-ALPN-01 challenge on the ports it publishes,
serves the environment's host with it, and redirects plain HTTP."""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from tests.conftest import Render, init_repo, invoke_cli
from tests.servers.acme import HOST_NAME, Acme
from tests.servers.docker import Dockerd, MirrorImages
from tests.servers.registry import free_port

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("docker")]

HOST = "staging.cert-api.example.net"


def invoke(root: Path, env: dict[str, str], *args: str) -> str:
    proc = invoke_cli(root, *args, env=env)
    assert proc.returncode == 0, f"invoke {' '.join(args)}:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


@pytest.fixture
def kit(
    render: Render,
    tmp_path: Path,
    dockerd: Dockerd,
    registry: str,
    mirror_images: MirrorImages,
    acme: Acme,
) -> Iterator[tuple[Path, dict[str, str]]]:
    """The sample service with tls=acme, staging on Compose, its proxy pointed at pebble."""
    root = render(
        {
            "project_name": "Cert API",
            "sample_app": True,
            "database": "none",
            "components": [
                {"name": "cert-api", "kind": "http", "port": free_port(), "health_path": "/health"}
            ],
            **mirror_images.answers(node_version="22"),
            "staging_target": "compose",
            "production_target": "compose",
            "staging_host": HOST,
            "image_registry": f"{registry}/acme",
            "ci_provider": "none",
            "monitoring": "none",
            "tls": "acme",
            "acme_email": "ops@example.net",
        },
        tmp_path / "cert-api",
    )
    # What differs from a real host: the CA's API is on this machine, under a name its own
    # certificate carries, and only the proxy trusts that certificate.
    yaml = YAML()
    path = root / "compose.prod.yaml"
    data = yaml.load(path.read_text())
    proxy = data["services"]["proxy"]
    proxy["extra_hosts"] = [f"{HOST_NAME}:host-gateway"]
    proxy["volumes"].append(f"{acme.ca_file}:/etc/test-acme-ca.pem:ro")
    proxy["environment"]["SSL_CERT_FILE"] = "/etc/test-acme-ca.pem"
    with path.open("w") as out:
        yaml.dump(data, out)
    init_repo(root, "kit")
    env = {**dockerd.task_env, "SHIPYARD_ACME_CA": acme.directory}
    try:
        yield root, env
    finally:
        subprocess.run(
            [
                "docker-compose",
                "--file",
                "compose.prod.yaml",
                "down",
                "--volumes",
                "--timeout",
                "5",
            ],
            cwd=root,
            env={**env, "CERT_API_IMAGE": "unused"},
            capture_output=True,
            check=False,
        )


def get(port: int, path: str, context: ssl.SSLContext | None) -> tuple[int, dict[str, str]]:
    """GET http(s)://HOST:port/path, with HOST resolving to this machine (as DNS would): the
    status and headers."""
    if context is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
        # SNI and the hostname check use HOST, the connection goes to the published port.
        conn.sock = context.wrap_socket(
            socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname=HOST
        )
    with contextlib.closing(conn):
        conn.request("GET", path, headers={"Host": HOST})
        answer = conn.getresponse()
        answer.read()
        return answer.status, dict(answer.getheaders())


def test_acme_certificate_is_issued_and_served(
    kit: tuple[Path, dict[str, str]], acme: Acme
) -> None:
    root, env = kit
    invoke(root, env, "build", "--env", "staging")
    invoke(root, env, "push", "--env", "staging")
    invoke(root, env, "deploy", "--env", "staging", "--yes")
    context = ssl.create_default_context(cadata=acme.issuing_root())
    deadline, last = time.monotonic() + 90, ""
    while True:
        try:
            status, headers = get(443, "/health", context)
            break
        except (OSError, ssl.SSLError) as exc:
            # Until issuance finishes Caddy has no certificate for HOST yet.
            last = str(exc)
        if time.monotonic() > deadline:
            logs = subprocess.run(
                ["docker-compose", "--file", "compose.prod.yaml", "logs", "proxy"],
                cwd=root,
                env={**env, "CERT_API_IMAGE": "unused"},
                capture_output=True,
                text=True,
                check=False,
            )
            pytest.fail(f"no certificate for {HOST} in 90 s ({last}):\n{logs.stdout[-3000:]}")
        time.sleep(2)
    assert status == 200
    assert "max-age=63072000" in headers.get("Strict-Transport-Security", "")
    with (
        contextlib.closing(socket.create_connection(("127.0.0.1", 443))) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        cert = tls.getpeercert()
    assert cert is not None
    assert ("DNS", HOST) in cert["subjectAltName"]
    # Plain HTTP is redirected to HTTPS (the ACME challenges stay on port 80).
    status, headers = get(80, "/health?x=1", None)
    assert status in (301, 308)
    assert headers["Location"] == f"https://{HOST}/health?x=1"


def test_a_certificate_that_cannot_be_issued_is_reported_by_status(
    kit: tuple[Path, dict[str, str]],
) -> None:
    """The CA cannot be reached: the release still goes out (issuance is Caddy's, in the
    background), and `invoke status` says what the proxy's last attempts ran into."""
    root, env = kit
    env = {**env, "SHIPYARD_ACME_CA": f"https://{HOST_NAME}:{free_port()}/dir"}
    invoke(root, env, "build", "--env", "staging")
    invoke(root, env, "push", "--env", "staging")
    invoke(root, env, "deploy", "--env", "staging", "--yes")
    deadline, status = time.monotonic() + 60, ""
    while "certificate errors" not in status and time.monotonic() < deadline:
        time.sleep(2)
        status = invoke(root, env, "status", "--env", "staging")
    assert "staging: the proxy's last certificate errors (newest last):" in status, status
    assert HOST in status.split("certificate errors", 1)[1]
    assert "connection refused" in status, status
