"""Health-check test helpers shared by several test files: a tiny HTTP health endpoint for the
probes' own tests, and the wait for compose.prod.yaml's watchdog to restart a hung worker.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

# 3 failures 10 s apart, the 5 s grace after SIGTERM and a restart, with room for a busy machine.
RESTART_WITHIN = 150.0


class Health(http.server.BaseHTTPRequestHandler):
    """Answers /ok with 200, /moved with a redirect to /ok and anything else with 500."""

    def do_GET(self) -> None:
        self.send_response({"/ok": 200, "/moved": 302}.get(self.path, 500))
        if self.path == "/moved":
            self.send_header("Location", "/ok")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


def wait_restarted_healthy(
    service: str,
    state: Callable[[], dict[str, Any]],
    logs: Callable[[], str],
    within: float = RESTART_WITHIN,
) -> tuple[dict[str, Any], bool]:
    """Poll `state` (the `docker inspect` of the service's container) every 2 s until the
    container has restarted and is healthy again; its last state and whether a failing check
    was seen on the way. After `within` seconds the test fails with the state and `logs()`."""
    deadline = time.monotonic() + within
    seen_failing = False
    now: dict[str, Any] = {}
    while time.monotonic() < deadline:
        time.sleep(2)
        with contextlib.suppress(ValueError):  # between processes while it restarts
            now = state()
        health = now.get("State", {}).get("Health", {})
        seen_failing = seen_failing or health.get("FailingStreak", 0) > 0
        if now.get("RestartCount", 0) >= 1 and health.get("Status") == "healthy":
            return now, seen_failing
    pytest.fail(
        f"{service} was not restarted healthy within {within:.0f}s: "
        f"{json.dumps(now.get('State'), indent=1)}\n{logs()}"
    )
