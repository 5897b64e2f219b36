"""Images: `build` each component with BuildKit, `push` it and record its digest."""

from __future__ import annotations

import contextlib
import os

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from shipyard import config
from shipyard.engines import docker as engine
from shipyard.engines import state
from shipyard.engines.proc import Command
from shipyard.engines.state import BACKUP
from shipyard.tasks import pitr
from shipyard.tasks.support import (
    HELP_DRY,
    components,
    execute,
    failures,
    plan,
    revision,
    setting,
    setup,
)

HELP_IMAGE_ENV = (
    "environment the image is for (dev, staging, prod); staging/prod refuse a dirty tree"
)
HELP_COMPONENT = "only this component, or `backup` for the backup image (default: all components)"
# The backup engine's image (state.BACKUP) is built on request from its own file.
BACKUP_DOCKERFILE = "backup/Dockerfile"


def _network(c: Context, network: str) -> str:
    # Builds that reach npm through the host network (sandboxed builders) set this once in
    # invoke config or SHIPYARD_BUILD_NETWORK rather than on every call.
    return network or setting(c, "build_network") or os.environ.get("SHIPYARD_BUILD_NETWORK", "")


def _images(cfg: config.Config, only: str) -> list[tuple[str, str, str]]:
    """(name, Dockerfile, target) of each image: the components, or `backup` when asked for."""
    if only == BACKUP:
        if not (cfg.root / BACKUP_DOCKERFILE).exists():
            raise Exit(f"shipyard: there is no {BACKUP_DOCKERFILE} (the kit has no database)")
        return [(BACKUP, BACKUP_DOCKERFILE, "")]
    return [(comp.name, cfg.dockerfile, comp.name) for comp in components(cfg, only)]


@task(
    help={
        "env": HELP_IMAGE_ENV,
        "component": HELP_COMPONENT,
        "network": "network for RUN steps, e.g. host (default: the builder's)",
        "dry_run": HELP_DRY,
    }
)
def build(
    c: Context, env: str = "", component: str = "", network: str = "", dry_run: bool = False
) -> None:
    """Build each component's image with BuildKit, tagged from git."""
    cfg, environment = setup(c, env)
    env = environment.name
    rev = revision(cfg.root, env)
    build_args = {"IMAGE_MIRROR": cfg.mirror} if cfg.mirror else {}
    labels = {
        "org.opencontainers.image.source": rev.source,
        "org.opencontainers.image.revision": rev.sha,
        "org.opencontainers.image.created": rev.created,
        "org.opencontainers.image.version": rev.image_tag,
        "org.opencontainers.image.title": cfg.service,
    }
    with failures("build"):
        prefix = engine.builder()
        commands: list[Command] = []
        targets = _images(cfg, component)
        for name, dockerfile, target in targets:
            cmd = engine.build_command(
                context=".",
                dockerfile=dockerfile,
                target=target,
                tags=[f"{cfg.image_repository(name)}:{rev.image_tag}"],
                labels={**labels, "org.opencontainers.image.title": name},
                build_args=build_args,
                network=_network(c, network),
                prefix=prefix,
            )
            commands.append(Command(cmd.argv, cmd.env, cfg.root))
        if dry_run:
            plan(f"build {cfg.service} {rev.image_tag} for {env}", commands)
            return
        for cmd, (name, _, _) in zip(commands, targets, strict=True):
            execute(cmd, f"building {name}")
    print(f"built {', '.join(name for name, _, _ in targets)} as {rev.image_tag}")


@task(
    help={
        "env": HELP_IMAGE_ENV,
        "component": HELP_COMPONENT,
        "retries": "attempts per image when the registry is unreachable",
        "dry_run": HELP_DRY,
    }
)
def push(
    c: Context, env: str = "", component: str = "", retries: int = 3, dry_run: bool = False
) -> None:
    """Push the built images and record their digests for deploys."""
    cfg, environment = setup(c, env)
    env = environment.name
    rev = revision(cfg.root, env)
    refs = {
        name: (cfg.image_repository(name), rev.image_tag) for name, _, _ in _images(cfg, component)
    }
    if dry_run:
        plan(
            f"push {cfg.service} {rev.image_tag} for {env}",
            [
                f"push {repo}:{tag} (docker SDK), record its digest in {state.FOLDER}/images.json"
                + (f", and as {repo}:{pitr.SERVER_TAG}" if _serves(cfg, name) else "")
                for name, (repo, tag) in refs.items()
            ],
        )
        return
    with failures("push"), contextlib.closing(engine.client()) as client:
        for name, (repo, tag) in refs.items():
            if engine.image_id(client, f"{repo}:{tag}") is None:
                raise Exit(
                    f"shipyard: {repo}:{tag} is not built yet: run `invoke build --env {env}`"
                )
            print(f"pushing {repo}:{tag}", flush=True)
            digest = engine.push(client, repo, tag, retries=retries)
            state.record_push(
                cfg.root,
                name,
                {
                    "repository": repo,
                    "tag": tag,
                    "digest": digest,
                    "ref": f"{repo}@{digest}",
                    "revision": rev.sha,
                    "pushed_at": state.now(),
                },
            )
            print(f"pushed {repo}@{digest}")
            if _serves(cfg, name):
                # Also the Compose hosts' database server, which starts from this tag and keeps
                # its image across releases (tasks/pitr.py).
                engine.retag(client, f"{repo}:{tag}", repo, pitr.SERVER_TAG)
                engine.push(client, repo, pitr.SERVER_TAG, retries=retries)
                print(f"pushed {repo}:{pitr.SERVER_TAG} (the Compose database server's image)")


def _serves(cfg: config.Config, name: str) -> bool:
    """Whether the image `name` is also a Compose host's database server (point_in_time)."""
    return name == BACKUP and any(pitr.enabled(e) for e in cfg.environments.values())


ns = Collection("images", build, push)
