"""Real servers for the tests, one module each, registered in tests/conftest.py."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import TypeVar

import pytest
import requests


def stop(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Ask a server to exit (SIGTERM); kill it if it has not within `timeout` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start(
    argv: Callable[[int], list[str]], ready_path: str, name: str
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `argv(port)` on a free loopback port, retried on another port if it does not come
    up; return it and its base URL once GET `ready_path` answers 2xx (within 30 s)."""
    from tests.servers.postgres import free_port

    for _attempt in range(5):
        port = free_port()
        # A session of its own: a terminal's Ctrl-C reaches the tests, which stop it in order,
        # not the server under them.
        proc = subprocess.Popen(
            argv(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if requests.get(f"{url}{ready_path}", timeout=1).ok:
                    return proc, url
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        stop(proc, timeout=10)
    pytest.fail(f"{name} did not start on 127.0.0.1")


Server = TypeVar("Server")


def shared_or_own(
    shared: Server | None, own: Callable[[], AbstractContextManager[Server]]
) -> Iterator[Server]:
    """A session fixture's server: the run's shared one (tests/servers/shared.py) if there is
    one, else the session's own, stopped at its end."""
    if shared is not None:
        yield shared
        return
    with own() as server:
        yield server
