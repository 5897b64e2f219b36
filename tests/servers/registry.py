"""A real OCI registry (Debian's docker-registry, distribution 2.8) for the tests.

`registry` is "127.0.0.1:PORT": plain HTTP on loopback, which docker and BuildKit treat as an
insecure registry without configuration (helm needs `--plain-http`). Storage is per session.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.servers import stop

BINARY = "docker-registry"

CONFIG = """\
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start a registry on a free loopback port; yields "127.0.0.1:PORT"."""
    with running_registry(tmp_path_factory.mktemp("registry")) as address:
        yield address


@contextlib.contextmanager
def running_registry(state: Path) -> Iterator[str]:
    """A registry storing under `state`, on a free loopback port, stopped on exit."""
    if not shutil.which(BINARY):
        pytest.fail(f"{BINARY} is not installed: run `. .ci/setup.sh`")
    state.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = state / "config.yml"
    config.write_text(CONFIG.format(root=state / "data", port=port))
    log = (state / "registry.log").open("wb")
    proc = subprocess.Popen([BINARY, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"registry exited: {(state / 'registry.log').read_text()[-2000:]}")
            try:
                if requests.get(f"http://{address}/v2/", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("registry did not answer within 30 s")
            time.sleep(0.2)
        yield address
    finally:
        stop(proc, timeout=30)
        log.close()
