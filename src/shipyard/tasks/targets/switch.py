"""The health-gated switch of a Compose release, Kamal 2's model with Caddy as the proxy.

For each http component: start the new containers beside the old ones (`up --no-recreate
--scale C=2N`, the docker-rollout technique), wait for their health checks (run every second:
engines.readiness), point the proxy at them (the upstream list written into the proxy's
volume, then `caddy reload`, which loads it gracefully or not at all), let in-flight requests
drain, then stop the old containers with SIGTERM and their stop grace period. Until the old
containers are stopped (the drain included), a failure or Ctrl-C points the proxy back at them
and removes the new ones: the old version never stops serving. Rollback is the same switch
with the previous images.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shipyard import config
from shipyard.engines import EngineError, readiness
from shipyard.engines import compose as compose_engine
from shipyard.engines import docker as docker_engine
from shipyard.engines.proc import Command
from shipyard.tasks.support import execute, say
from shipyard.tasks.targets import proxy

if TYPE_CHECKING:
    from docker.client import DockerClient

# After the reload, the time requests the old containers already had take to finish; the
# app's stop_grace_period (30 s in compose.prod.yaml) covers any that take longer.
DRAIN = 2.0


@dataclass(frozen=True)
class Stack:
    """One environment's Compose project, as the switch drives it."""

    root: Path
    file: str
    project: str
    timeout: int
    replicas: Mapping[str, int]  # containers each component runs (shipyard.yaml)
    # The file's variables besides the images (the environment's host), the same for every
    # command: Compose recreates a container whose resolved definition changed.
    variables: Mapping[str, str]

    def scale_up(self, images: Mapping[str, str], component: str, count: int) -> Command:
        return compose_engine.scale_up(
            self.root, self.file, images, component, count, self.variables
        )


def plan_steps(
    stack: Stack, images: Mapping[str, str], http: Sequence[config.Component]
) -> list[Command | str]:
    """The switch of each http component, as a dry run prints it."""
    steps: list[Command | str] = []
    for comp in http:
        steps += [
            stack.scale_up(images, comp.name, 2 * stack.replicas[comp.name]),
            f"once each new {comp.name} container passes its health check (run every second, "
            f"at most {stack.timeout} s), point the proxy at them "
            f"({proxy.upstreams_file(comp.name)} in the proxy's {proxy.VOLUME}, then `caddy "
            f"reload`), drain {DRAIN:.0f} s, stop the old ones (SIGTERM, then their "
            "stop_grace_period)",
        ]
    return steps


def switch(
    client: DockerClient,
    stack: Stack,
    comp: config.Component,
    images: Mapping[str, str],
    *,
    keep_running: bool = False,
    hold: bool = False,
) -> list[docker_engine.Replica]:
    """Replace the containers of http component `comp` by ones running images[comp.name].

    A release always starts new containers, even of the image already running: the file's
    environment may have changed (a rotated password, a new variable), and running ones keep
    the old. A rollback to containers that never stopped serving (`keep_running`) only points
    the proxy back at them. With `hold`, the old containers are left running once the proxy
    sends to the new ones, and returned: a smoke check comes first, then `finish` stops them
    (or `back` returns to them).

    Raises EngineError (with the new containers' health logs) or KeyboardInterrupt after
    removing the new containers: the old ones keep serving.
    """
    name, image, count = comp.name, images[comp.name], stack.replicas[comp.name]
    old = docker_engine.replicas(client, stack.project, name)
    if keep_running and len(old) == count and all(r.image == image for r in old):
        point(client, stack, comp, old)
        return []
    kept = {r.id for r in old}
    try:
        execute(stack.scale_up(images, name, len(old) + count), f"starting the new {name}")
        new = [r for r in docker_engine.replicas(client, stack.project, name) if r.id not in kept]
        readiness.wait_healthy(client, name, [r.id for r in new], stack.timeout)
        point(client, stack, comp, new)
    except (EngineError, KeyboardInterrupt):
        _discard(client, stack, comp, old, served=False)
        raise
    if hold:
        say(f"{name}: the proxy sends to the new containers; the old ones wait for the smoke check")
        return list(old)
    say(f"{name}: the proxy sends to the new containers; draining the old ones {DRAIN:.0f} s")
    try:
        time.sleep(DRAIN)
    except KeyboardInterrupt:
        # Nothing has stopped yet, so Ctrl-C here still leaves the old version serving; the
        # new containers had requests, so they stop gracefully.
        _discard(client, stack, comp, old, served=True)
        raise
    say(f"{name}: serving {image}; stopping the previous containers")
    docker_engine.retire(client, [r.id for r in old], graceful=True)
    return []


def finish(client: DockerClient, held: Mapping[str, Sequence[docker_engine.Replica]]) -> None:
    """After the smoke check passed: let the requests the held old containers had finish,
    then stop them (SIGTERM, then their stop_grace_period)."""
    old = [r.id for replicas in held.values() for r in replicas]
    if not old:
        return
    say(f"the smoke check passed; draining the previous containers {DRAIN:.0f} s")
    time.sleep(DRAIN)
    docker_engine.retire(client, old, graceful=True)


def back(
    client: DockerClient,
    stack: Stack,
    comp: config.Component,
    old: Sequence[docker_engine.Replica],
) -> None:
    """Undo a held switch: the proxy back on the old containers (never stopped), the new ones
    removed gracefully (they had requests)."""
    _discard(client, stack, comp, old, served=True)


def retire_component(client: DockerClient, stack: Stack, comp: config.Component) -> None:
    """Take a component the previous release did not have out of the proxy, then remove it."""
    point(client, stack, comp, [])
    running = docker_engine.replicas(client, stack.project, comp.name, every=True)
    docker_engine.retire(client, [r.id for r in running], graceful=True)


def point(
    client: DockerClient,
    stack: Stack,
    comp: config.Component,
    to: Sequence[docker_engine.Replica],
) -> None:
    """Send the component's traffic to the containers `to`; with none, the proxy answers 502.

    `caddy reload` adapts and loads the whole config: if it does not load, the running one
    stays and this raises EngineError.
    """
    listed = " ".join(f"{r.name}:{comp.port}" for r in to)
    text = f"# Written by `invoke deploy`: the {comp.name} containers serving.\n"
    text += f"to {listed}\n" if listed else ""
    proxy.apply(client, stack.project, proxy.upstreams_file(comp.name), text)


def _discard(
    client: DockerClient,
    stack: Stack,
    comp: config.Component,
    old: Sequence[docker_engine.Replica],
    *,
    served: bool,
) -> None:
    """After a failed start or Ctrl-C: the proxy back on the old containers, the new ones
    removed (gracefully if they `served` requests)."""
    kept = {r.id for r in old}
    with contextlib.suppress(EngineError):
        # The reload may have been the step that failed; the old list loads either way.
        point(client, stack, comp, old)
    docker_engine.settle(client, stack.project)
    started = docker_engine.replicas(client, stack.project, comp.name, every=True)
    docker_engine.retire(client, [r.id for r in started if r.id not in kept], graceful=served)
