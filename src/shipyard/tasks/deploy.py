"""Releases: `migrate`, `deploy`, `status`, `rollback` and `logs` on Compose or Helm targets.

Deploys use the digests `invoke push` recorded, never a tag. A Compose rollout waits for every
container's health check and, when one fails (or Ctrl-C arrives), puts the images that were
running before back; a Helm rollout is `--atomic`, so Helm does the same.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from shipyard import config
from shipyard.engines import EngineError, state
from shipyard.engines import compose as compose_engine
from shipyard.engines import docker as docker_engine
from shipyard.engines import helm as helm_engine
from shipyard.engines.proc import Command, run
from shipyard.engines.state import BACKUP
from shipyard.tasks._run import RELEASE_ENVS, confirm, execute, failures, plan, revision, setup

HELP_ENV = "environment: dev, staging or prod ('production' works too)"
HELP_YES = "do not ask for confirmation (CI)"
HELP_DRY = "print the exact plan and change nothing"
HELP_TIMEOUT = "seconds to wait for the new version to become healthy"


def _images(cfg: config.Config, env: str) -> dict[str, str]:
    """component -> repo@digest to deploy, from (first match wins):

    1. `<COMPONENT>_IMAGE` in the environment (CI passes the digests release.yml pushed);
    2. the digest `invoke push` recorded for this commit in .shipyard/images.json;
    3. the registry: this commit's tag resolved to its digest.
    """
    records = state.pushed(cfg.root)
    rev = revision(cfg.root, env)
    images: dict[str, str] = {}
    lookups: dict[str, str] = {}
    for comp in cfg.components:
        name = comp["name"]
        given = os.environ.get(compose_engine.image_var(name), "")
        record = records.get(name, {})
        if given:
            if "@sha256:" not in given:
                raise Exit(
                    f"shipyard: {compose_engine.image_var(name)}={given} is not a digest "
                    "reference (repo@sha256:...): deploys never use a moving tag",
                    code=2,
                )
            images[name] = given
        elif record.get("ref") and record.get("revision") == rev.sha:
            images[name] = record["ref"]
        else:
            lookups[name] = f"{cfg.image_repository(name)}:{rev.image_tag}"
    if lookups:
        with (
            failures("looking up this commit's images"),
            contextlib.closing(docker_engine.client()) as client,
        ):
            for name, ref in lookups.items():
                digest = docker_engine.registry_digest(client, ref)
                if digest is None:
                    raise Exit(
                        f"shipyard: no image for this commit: {ref} is not in the registry; "
                        f"run `invoke build --env {env} && invoke push --env {env}` first",
                        code=1,
                    )
                images[name] = f"{ref.rsplit(':', 1)[0]}@{digest}"
    return images


def _missing_secrets(cfg: config.Config) -> list[str]:
    """Secrets shipyard.yaml lists that neither the environment nor a local .env provides."""
    provided = set(os.environ)
    dotenv = cfg.root / ".env"
    if dotenv.exists():
        for line in dotenv.read_text("utf-8").splitlines():
            name, sep, _ = line.partition("=")
            if sep and not line.lstrip().startswith("#"):
                provided.add(name.strip().removeprefix("export "))
    secrets: list[str] = cfg.data.get("secrets", [])
    return [name for name in secrets if name not in provided]


def _preflight(
    cfg: config.Config, env: str, settings: dict[str, Any], images: dict[str, str]
) -> None:
    """Refuse early: dirty tree, missing secrets, or images the registry does not have."""
    revision(cfg.root, env)
    if settings["target"] == "helm":
        # On Kubernetes the pods read an existing Secret: check its keys (never its values).
        with failures("checking the environment's Secret"):
            secret, missing = helm_engine.missing_secret_keys(cfg, settings)
        where = f"Secret {secret} in namespace {settings['namespace']}"
    else:
        missing, where = _missing_secrets(cfg), "the environment (or the host's .env)"
    if missing:
        raise Exit(
            f"shipyard: {env} needs the secret(s) {', '.join(missing)} in {where}; "
            "nothing was changed",
            code=1,
        )
    with (
        failures("checking the images in the registry"),
        contextlib.closing(docker_engine.client()) as client,
    ):
        for name, ref in images.items():
            if docker_engine.registry_digest(client, ref) is None:
                raise Exit(
                    f"shipyard: the registry has no {ref} ({name}): run `invoke push "
                    f"--env {env}` again; nothing was changed",
                    code=1,
                )


def _compose_file(settings: dict[str, Any]) -> str:
    return str(settings.get("compose_file", "compose.prod.yaml"))


def _backup_image(cfg: config.Config, env: str) -> str:
    """The backup image pushed for this commit (`invoke build/push --component backup`), or ''."""
    given = os.environ.get(compose_engine.image_var(BACKUP), "")
    record = state.pushed(cfg.root).get(BACKUP, {})
    if given or record.get("revision") != revision(cfg.root, env).sha:
        return given
    return record.get("ref", "")


def _backup_steps(cfg: config.Config, env: str, settings: dict[str, Any]) -> list[Command]:
    """The backup taken before a Compose production migration, by the backup engine's image
    (Helm targets take theirs in `_helm_deploy`)."""
    if not settings.get("backup_before_migrate"):
        return []
    file = compose_engine.BACKUP_FILE
    if not (cfg.root / file).is_file() or BACKUP not in compose_engine.services(cfg.root / file):
        raise Exit(
            f"shipyard: {env} takes a backup before migrating, but {file} is missing or has "
            "no `backup` service; add it (see the backup docs) or pass --skip-backup",
            code=1,
        )
    return [compose_engine.backup(cfg.root, env, _backup_image(cfg, env))]


def _migrate_steps(
    cfg: config.Config,
    env: str,
    settings: dict[str, Any],
    images: dict[str, str],
    skip_backup: bool,
) -> list[Command]:
    if not settings.get("migrate") or settings["target"] != "compose":
        return []
    backup = [] if skip_backup else _backup_steps(cfg, env, settings)
    return [*backup, compose_engine.migrate(cfg.root, _compose_file(settings), images)]


def _run_migrations(steps: list[Command]) -> None:
    for step in steps:
        what = "the backup before migrating" if BACKUP in step.argv else "the migration"
        try:
            execute(step, what)
        except EngineError as exc:
            raise Exit(
                f"shipyard: {exc}; the deploy stopped before the rollout and the running "
                "version keeps serving",
                code=1,
            ) from None


@task(
    help={
        "env": HELP_ENV,
        "yes": HELP_YES,
        "skip_backup": "migrate without taking the backup this environment asks for",
        "dry_run": HELP_DRY,
    }
)
def migrate(
    c: Context, env: str = "", yes: bool = False, skip_backup: bool = False, dry_run: bool = False
) -> None:
    """Apply database migrations with the pushed image (backup first where configured)."""
    cfg, env, settings = setup(c, env)
    with failures(f"migrate {env}"):
        if not settings.get("migrate"):
            print(f"{env}: no migrations configured in shipyard.yaml")
            return
        if settings["target"] == "helm":
            print(
                f"{env}: on Helm the chart's migration Job runs before each upgrade; "
                f"run `invoke deploy --env {env}`"
            )
            return
        images = _images(cfg, env)
        steps = _migrate_steps(cfg, env, settings, images, skip_backup)
        if dry_run:
            plan(f"migrate {cfg.service} on {env}", steps)
            return
        if settings.get("confirm"):
            confirm(f"Apply migrations to {env}?", yes)
        _run_migrations(steps)
        print(f"{env}: migrations applied")


def _compose_rollout(
    cfg: config.Config, env: str, settings: dict[str, Any], images: dict[str, str], timeout: int
) -> None:
    """`up --wait` with the new images; on failure or Ctrl-C, back to what was running."""
    file = _compose_file(settings)
    project = compose_engine.project_name(cfg.root / file, cfg.service)
    with contextlib.closing(docker_engine.client()) as client:
        running = docker_engine.running_images(client, project)
    previous = {name: running[name] for name in images if name in running}
    # Components this release adds: a rollback removes them and restarts only the others.
    added = [name for name in images if name not in running]
    up = compose_engine.up(cfg.root, file, images, timeout)
    try:
        execute(up, f"the rollout of {env}")
    except (EngineError, KeyboardInterrupt) as exc:
        reason = "interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt) else str(exc)
        if not isinstance(exc, KeyboardInterrupt):
            reason += _health_detail(project)
        state.record_deploy(cfg.root, env, {"images": images, "status": "failed"})
        if not previous:
            raise Exit(
                f"shipyard: the rollout of {env} failed: {reason}. There was no previous "
                f"version to roll back to; see `invoke logs --env {env}`",
                code=130 if isinstance(exc, KeyboardInterrupt) else 1,
            ) from None
        print(f"rollout failed ({reason}); rolling back to the previous images", flush=True)
        try:
            with contextlib.closing(docker_engine.client()) as client:
                docker_engine.settle(client, project)
            if added:
                # The file (this release's) still names every image, so all stay set.
                execute(compose_engine.remove(cfg.root, file, images, added), "the rollback")
            _restore(
                compose_engine.up(
                    cfg.root, file, {**images, **previous}, timeout, list(previous) if added else []
                )
            )
        except (EngineError, KeyboardInterrupt) as again:
            raise Exit(
                f"shipyard: the rollout of {env} failed ({reason}) and so did the rollback "
                f"({again}); see `invoke status --env {env}`",
                code=1,
            ) from None
        state.record_deploy(cfg.root, env, {"images": previous, "status": "rolled-back"})
        raise Exit(
            f"shipyard: the rollout of {env} failed ({reason}); rolled back, the previous "
            "version is serving",
            code=130 if isinstance(exc, KeyboardInterrupt) else 1,
        ) from None
    state.record_deploy(cfg.root, env, {"images": images, "status": "deployed"})


def _health_detail(project: str) -> str:
    """Why the new containers are not healthy, from their health logs; empty if unknown."""
    try:
        with contextlib.closing(docker_engine.client()) as client:
            failures = docker_engine.health_failures(client, project)
    except EngineError:
        return ""  # the rollout's own error already says what went wrong
    return "".join(f"; {service} {why}" for service, why in sorted(failures.items()))


def _restore(up: Command, attempts: int = 3) -> None:
    """Run the rollback `up`, retrying briefly: an interrupted `up` can leave the daemon still
    removing a container, which makes the next `up` fail for a few seconds."""
    for attempt in range(1, attempts + 1):
        try:
            execute(up, "the rollback")
            return
        except EngineError:
            if attempt == attempts:
                raise
            time.sleep(5 * attempt)


@task(
    help={
        "env": HELP_ENV,
        "yes": HELP_YES,
        "timeout": HELP_TIMEOUT,
        "skip_migrate": "do not run migrations before the rollout",
        "skip_backup": "migrate without taking the backup this environment asks for",
        "dry_run": HELP_DRY,
    }
)
def deploy(
    c: Context,
    env: str = "",
    yes: bool = False,
    timeout: int = 300,
    skip_migrate: bool = False,
    skip_backup: bool = False,
    dry_run: bool = False,
) -> None:
    """Migrate, roll out the pushed images by digest, wait for health, roll back on failure."""
    cfg, env, settings = setup(c, env)
    with failures(f"deploy to {env}"):
        images = _images(cfg, env)
        migrations = [] if skip_migrate else _migrate_steps(cfg, env, settings, images, skip_backup)
        if settings["target"] == "helm":
            _helm_deploy(
                cfg, env, settings, images, timeout, yes, dry_run, skip_migrate, skip_backup
            )
            return
        rollout = compose_engine.up(cfg.root, _compose_file(settings), images, timeout)
        if dry_run:
            tree = "clean tree" if env in RELEASE_ENVS else "clean tree (not needed on dev)"
            plan(
                f"deploy {cfg.service} to {env} (compose)",
                [
                    f"preflight: {tree}, "
                    f"secrets {', '.join(cfg.data.get('secrets', [])) or '(none)'} set, "
                    f"images in the registry: {', '.join(images.values())}",
                    *migrations,
                    rollout,
                    "on failure or Ctrl-C: the same `up` with the images running before "
                    "(components this release adds are stopped and removed)",
                ],
            )
            return
        _preflight(cfg, env, settings, images)
        if settings.get("confirm"):
            confirm(f"Deploy {', '.join(images.values())} to {env}?", yes)
        _run_migrations(migrations)
        _compose_rollout(cfg, env, settings, images, timeout)
        print(f"{env}: deployed and healthy")


def _helm_deploy(
    cfg: config.Config,
    env: str,
    settings: dict[str, Any],
    images: dict[str, str],
    timeout: int,
    yes: bool,
    dry_run: bool,
    skip_migrate: bool,
    skip_backup: bool,
) -> None:
    backup_job = None
    wanted = settings.get("migrate") and settings.get("backup_before_migrate")
    if wanted and not (skip_migrate or skip_backup):
        backup_job = helm_engine.backup_job(cfg.service, settings, timeout)
    # The chart's backup CronJob runs the backup image pushed with this commit, when there is one.
    backup = _backup_image(cfg, env)
    chart_images = {**images, **({BACKUP: backup} if backup else {})}
    upgrade = helm_engine.upgrade(
        cfg, env, settings, chart_images, timeout=timeout, migrate=not skip_migrate
    )
    if dry_run:
        plan(
            f"deploy {cfg.service} to {env} (helm)",
            [
                f"preflight: clean tree, images in the registry: {', '.join(images.values())}",
                *(backup_job.plan() if backup_job else []),
                upgrade,
                f"rollout check: every Deployment of release {helm_engine.release(cfg, env)} "
                f"in namespace {settings['namespace']} has its new pods available",
            ],
        )
        return
    _preflight(cfg, env, settings, images)
    if settings.get("confirm"):
        confirm(f"Deploy {', '.join(images.values())} to {env}?", yes)
    try:
        with failures(f"deploy to {env}"):
            if backup_job:
                helm_engine.run_backup(backup_job, echo=lambda cmd: print(f"$ {cmd}", flush=True))
            execute(upgrade, "helm upgrade")
            helm_engine.check_rollout(helm_engine.release(cfg, env), settings["namespace"], timeout)
    except Exit as exc:
        if exc.code != 130:
            raise
        raise Exit(
            f"shipyard: the deploy to {env} was interrupted (Ctrl-C); Helm may have left the "
            f"release pending: check `invoke status --env {env}`, then `invoke rollback --env "
            f"{env}` if it did",
            code=130,
        ) from None
    state.record_deploy(cfg.root, env, {"images": images, "status": "deployed"})
    print(f"{env}: deployed and healthy")


def _current(cfg: config.Config, env: str) -> dict[str, str]:
    """The images of the last deploy, for Compose commands that only read (ps, logs): the
    file requires every *_IMAGE to be set even when the value does not matter."""
    history = state.deploys(cfg.root, env)
    last: dict[str, str] = history[-1]["images"] if history else {}
    return {comp["name"]: last.get(comp["name"], "unknown") for comp in cfg.components}


@task(help={"env": HELP_ENV})
def status(c: Context, env: str = "") -> None:
    """Show what runs in an environment and its recent deploys."""
    cfg, env, settings = setup(c, env)
    with failures(f"status of {env}"):
        if settings["target"] == "helm":
            for cmd in helm_engine.status(cfg, env, settings):
                execute(cmd, "helm status")
        else:
            ps = compose_engine.compose(
                cfg.root, _compose_file(settings), "ps", images=_current(cfg, env)
            )
            execute(ps, "compose ps")
        for entry in state.deploys(cfg.root, env)[-5:]:
            print(f"  {entry['at']} {entry['status']}: {', '.join(entry['images'].values())}")


@task(
    help={
        "env": HELP_ENV,
        "yes": HELP_YES,
        "timeout": HELP_TIMEOUT,
        "dry_run": HELP_DRY,
    }
)
def rollback(
    c: Context, env: str = "", yes: bool = False, timeout: int = 300, dry_run: bool = False
) -> None:
    """Go back to the previous healthy release of an environment."""
    cfg, env, settings = setup(c, env)
    with failures(f"rollback of {env}"):
        if settings["target"] == "helm":
            _helm_rollback(cfg, env, settings, timeout, yes, dry_run)
            return
        target = state.rollback_target(state.deploys(cfg.root, env))
        if target is None:
            raise Exit(
                f"shipyard: {env} has no healthy release before the current one recorded in "
                f"{state.FOLDER}/deploys-{env}.json to roll back to; nothing was changed",
                code=1,
            )
        cmd = compose_engine.up(cfg.root, _compose_file(settings), target, timeout)
        if dry_run:
            plan(f"rollback {cfg.service} on {env} (compose)", [cmd])
            return
        if settings.get("confirm"):
            confirm(f"Roll {env} back to {', '.join(target.values())}?", yes)
        execute(cmd, "the rollback")
        state.record_deploy(cfg.root, env, {"images": target, "status": "rolled-back"})
        print(f"{env}: rolled back to {', '.join(target.values())}")


def _helm_rollback(
    cfg: config.Config, env: str, settings: dict[str, Any], timeout: int, yes: bool, dry_run: bool
) -> None:
    """`helm rollback` to the revision `helm_engine.rollback_revision` picks from the history
    (read even in a dry run: the plan names the revision)."""
    read = helm_engine.history(cfg, env, settings)
    revisions = json.loads(run(read, capture=True, what="helm history") or "[]")
    if not isinstance(revisions, list):
        raise Exit(f"shipyard: `{read}` printed no list of revisions; nothing was changed", code=1)
    revision = helm_engine.rollback_revision(revisions)
    if revision is None:
        raise Exit(
            f"shipyard: {env} has no healthy revision before the current one in the Helm "
            f"history of release {helm_engine.release(cfg, env)} to roll back to; nothing was "
            "changed",
            code=1,
        )
    cmd = helm_engine.rollback(cfg, env, settings, timeout, revision)
    if dry_run:
        plan(f"rollback {cfg.service} on {env} (helm) to revision {revision}", [read, cmd])
        return
    if settings.get("confirm"):
        confirm(f"Roll {env} back to Helm revision {revision}?", yes)
    execute(cmd, "helm rollback")
    print(f"{env}: rolled back to revision {revision}")


@task(
    help={
        "env": HELP_ENV,
        "component": "only this component's logs",
        "tail": "lines of history to show",
        "follow": "keep streaming new lines",
    }
)
def logs(
    c: Context, env: str = "", component: str = "", tail: int = 100, follow: bool = False
) -> None:
    """Show the service's logs in an environment."""
    cfg, env, settings = setup(c, env)
    with failures(f"logs of {env}"):
        if settings["target"] == "helm":
            cmd = helm_engine.logs(cfg, env, settings, component, tail, follow)
        else:
            args = ["logs", "--tail", str(tail), *(["--follow"] if follow else [])]
            cmd = compose_engine.compose(
                cfg.root,
                _compose_file(settings),
                *args,
                *([component] if component else []),
                images=_current(cfg, env),
            )
        execute(cmd, "reading logs")


ns = Collection("release", migrate, deploy, status, rollback, logs)
