"""Is a new container ready for traffic? Its own health check, run by us every second.

Docker runs a HEALTHCHECK every `interval` (10 s in the kit's images, so a running app is
not hammered) and, before API 1.44's `start_interval`, at that pace during the start period
too: an app that is ready after one second would wait ten before a release could switch to
it. So the switch runs the container's configured check itself, through `docker exec`, once
a second until it passes, as kamal-proxy polls a new container before sending it traffic.
Docker's own verdict still counts: a container it marks unhealthy, or that exits, fails at
once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from shipyard.engines import EngineError
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
        if state.get("Status") in ("exited", "dead"):
            logs = container.logs(tail=5).decode(errors="replace")
            return "failed", f"it exited with code {state.get('ExitCode')}: {_one_line(logs)}"
        health = state.get("Health") or {}
        if health.get("Status") == "healthy":
            return "ready", ""
        if health.get("Status") == "unhealthy":
            log = health.get("Log") or [{}]
            return "failed", _one_line(str(log[-1].get("Output", ""))) or "its check failed"
        test = (container.attrs["Config"].get("Healthcheck") or {}).get("Test") or ["NONE"]
        if state.get("Status") != "running":
            return "waiting", f"it is {state.get('Status')}"
        if test[0] == "NONE":
            return "ready", ""
        argv = ["/bin/sh", "-c", test[1]] if test[0] == "CMD-SHELL" else list(test[1:])
        code, out = container.exec_run(argv)
    text = out.decode(errors="replace") if isinstance(out, bytes) else str(out)
    return ("ready", "") if code == 0 else ("waiting", _one_line(text))


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]
