"""Is a new container ready for traffic? Its own health check, run by us every second.

Docker runs a HEALTHCHECK every `interval` (10 s in the kit's images, so a running app is
not hammered) and, before API 1.44's `start_interval`, at that pace during the start period
too: an app that is ready after one second would wait ten before a release could switch to
it. So the switch runs the container's configured check itself, through `docker exec`, once
a second until it passes, as kamal-proxy polls a new container before sending it traffic.
Docker's own verdict still counts: a container it marks unhealthy, that exits or that is
restarted (its restart policy after a crash) fails at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from shipyard.engines import EngineError
from shipyard.engines import docker as docker_engine
from shipyard.engines.docker import sdk_errors

if TYPE_CHECKING:
    from docker.client import DockerClient


def wait_healthy(
    cli: DockerClient, service: str, ids: Sequence[str], timeout: float, every: float = 1.0
) -> None:
    """Return once every container in `ids` (of Compose service `service`) passes its health
    check (or runs, when it has none). Raises EngineError ending in `; SERVICE unhealthy: WHY`
    or `; SERVICE not healthy in time: WHY`, WHY being the check's last output."""
    pending = list(ids)
    last: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while pending:
        for ident in list(pending):
            verdict, why = _probe(cli, ident)
            if verdict == "ready":
                pending.remove(ident)
            elif verdict == "failed":
                raise EngineError(f"a new {service} container failed; {service} unhealthy: {why}")
            else:
                last[ident] = why
        if pending and time.monotonic() > deadline:
            why = last.get(pending[0]) or "no health check has passed yet"
            raise EngineError(
                f"the new {service} containers were not healthy within {timeout:.0f}s; "
                f"{service} not healthy in time: {why}"
            )
        if pending:
            time.sleep(every)


def _probe(cli: DockerClient, ident: str) -> tuple[str, str]:
    """('ready' | 'failed' | 'waiting', why) for one container, right now."""
    with sdk_errors("checking a new container's health"):
        container = cli.containers.get(ident)
        state: dict[str, Any] = container.attrs["State"]
        # With `restart: unless-stopped`, an app that crashes at start comes back as a fresh
        # container whose health starts over: a restart is the crash, not a retry to wait on.
        if (
            state.get("Status") in ("exited", "dead")
            or state.get("Restarting")
            or (container.attrs.get("RestartCount", 0) > 0)
        ):
            logs = docker_engine.decoded(container.logs(tail=5))
            # A container its restart policy brought back runs again: its exit code is gone.
            how = (
                f"it exited with code {state.get('ExitCode')}"
                if state.get("Status") in ("exited", "dead")
                else "it stopped and was restarted by its restart policy"
            )
            return "failed", f"{how}: {docker_engine.one_line(logs, end=True)}"
        health = state.get("Health") or {}
        if health.get("Status") == "healthy":
            return "ready", ""
        if health.get("Status") == "unhealthy":
            return "failed", docker_engine.last_health_output(health) or "its check failed"
        check = container.attrs["Config"].get("Healthcheck") or {}
    test = check.get("Test") or ["NONE"]
    if state.get("Status") != "running":
        return "waiting", f"it is {state.get('Status')}"
    if test[0] == "NONE":
        return "ready", ""
    argv = ["/bin/sh", "-c", test[1]] if test[0] == "CMD-SHELL" else list(test[1:])
    # Docker kills its own check after the HEALTHCHECK timeout; ours gets as long.
    limit = check.get("Timeout", 0) / 1e9 or 30.0
    code, out = _exec(container, argv, limit)
    return ("ready", "") if code == 0 else ("waiting", docker_engine.one_line(out))


def _exec(container: Any, argv: list[str], limit: float) -> tuple[int, str]:
    """Run `argv` in the container, giving up on it after `limit` seconds (an app that accepts
    a connection and never answers must not stall the release past its own timeout)."""
    result: list[tuple[int, str]] = []

    def run() -> None:
        try:
            code, out = container.exec_run(argv)
            result.append((int(code), docker_engine.decoded(out)))
        except docker_engine.sdk_failures() as exc:  # stopped or restarting: wait on
            result.append((-1, str(exc).splitlines()[0] if str(exc) else type(exc).__name__))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(limit)
    return result[0] if result else (-1, f"the check did not answer within {limit:.0f}s")
