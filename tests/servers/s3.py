"""A real S3-compatible server for the tests: `moto_server` on a free loopback port.

One per test session (per xdist worker): moto keeps its state in memory, so nothing outlives
it. Clients reach it the way users reach MinIO or R2: boto3 with an endpoint URL
(AWS_ENDPOINT_URL) and credentials from the environment.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import start, stop

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
def s3_server() -> Iterator[S3Server]:
    """A running moto S3 server on 127.0.0.1, stopped at the end of the session."""
    binary = _moto_server()
    proc, endpoint = start(
        lambda port: [binary, "-H", "127.0.0.1", "-p", str(port)], "/moto-api/", "moto_server"
    )
    try:
        yield S3Server(endpoint)
    finally:
        stop(proc, timeout=10)
