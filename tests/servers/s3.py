"""A real S3-compatible server for the tests: `moto_server` on a free loopback port.

One per test session (per xdist worker): moto keeps its state in memory, so nothing outlives
it. Clients reach it the way users reach MinIO or R2: boto3 with an endpoint URL
(AWS_ENDPOINT_URL) and credentials from the environment.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests

from tests.servers import shared_or_own, start, stop

if TYPE_CHECKING:
    from tests.servers.shared import Slot

# moto accepts any credentials; these are what the clients present.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "shipyard-test",
    "AWS_SECRET_ACCESS_KEY": "shipyard-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True)
class S3Server:
    """The endpoint and the environment a client needs to use it."""

    endpoint: str

    def env(self) -> dict[str, str]:
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}


def _moto_server() -> str:
    here = Path(sys.executable).parent
    found = shutil.which("moto_server") or shutil.which("moto_server", path=str(here))
    if found is None:
        pytest.fail("moto_server is not installed: pip install 'moto[server]' (test group)")
    return found


@pytest.fixture(scope="session")
def s3_server(shared_servers: Slot | None) -> Iterator[S3Server]:
    """A running moto S3 server on 127.0.0.1: the session's own, stopped at its end, or the one
    this session claimed from a run's shared servers (tests/servers/shared.py)."""
    yield from shared_or_own(shared_servers.s3 if shared_servers else None, running)


@contextlib.contextmanager
def running() -> Iterator[S3Server]:
    """A new moto S3 server on 127.0.0.1, stopped when the block ends."""
    binary = _moto_server()
    proc, endpoint = start(
        lambda port: [binary, "-H", "127.0.0.1", "-p", str(port)], "/moto-api/", "moto_server"
    )
    try:
        yield S3Server(endpoint)
    finally:
        stop(proc, timeout=10)


@dataclass(frozen=True)
class TlsS3Server:
    """The S3 server behind HTTPS, as pgBackRest requires: `endpoint` is https://localhost:PORT
    (pgBackRest matches a host name, not an IP, against the certificate) and `ca_file` the
    private CA that signed it (AWS_CA_BUNDLE)."""

    endpoint: str
    ca_file: Path
    plain: S3Server

    def env(self) -> dict[str, str]:
        return {
            **CREDENTIALS,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_CA_BUNDLE": str(self.ca_file),
        }


@pytest.fixture(scope="session")
def tls_s3_server(s3_server: S3Server) -> Iterator[TlsS3Server]:
    """Caddy terminating TLS with its own internal CA in front of `s3_server`. Its state stays in
    a temporary folder and it never touches the machine's trust store."""
    caddy = shutil.which("caddy")
    if caddy is None:
        pytest.fail("caddy is not installed: run .ci/setup.sh")
    # Not under pytest's tmp dir, which is private to root: pgBackRest runs as postgres in the
    # tests and reads the CA from here.
    state = Path(tempfile.mkdtemp(prefix="shipyard-caddy-"))
    state.chmod(0o755)
    from tests.servers.postgres import free_port

    port = free_port()
    upstream = s3_server.endpoint.removeprefix("http://")
    (state / "Caddyfile").write_text(
        "{\n  admin off\n  skip_install_trust\n  auto_https disable_redirects\n"
        f"  storage file_system {state}\n}}\n"
        f"https://localhost:{port} {{\n  tls internal\n  reverse_proxy {upstream}\n}}\n"
    )
    proc = subprocess.Popen(
        [caddy, "run", "--config", str(state / "Caddyfile"), "--adapter", "caddyfile"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "XDG_DATA_HOME": str(state), "XDG_CONFIG_HOME": str(state)},
    )  # fmt: skip
    ca = state / "pki" / "authorities" / "local" / "root.crt"
    endpoint = f"https://localhost:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if ca.exists() and requests.get(f"{endpoint}/moto-api/", verify=str(ca), timeout=1).ok:
                break
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc, timeout=5)
            pytest.fail("caddy did not serve TLS in front of the S3 server")
        time.sleep(0.2)
    for folder in ca.relative_to(state).parents:  # readable: the CA, not its key
        (state / folder).chmod(0o755)
    ca.chmod(0o644)
    try:
        yield TlsS3Server(endpoint, ca, s3_server)
    finally:
        stop(proc, timeout=10)
        shutil.rmtree(state, ignore_errors=True)
