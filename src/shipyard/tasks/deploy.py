"""Releases: `migrate`, `deploy`, `status`, `rollback`, `maintenance` and `logs` on the
environment's target.

Deploys use the digests `invoke push` recorded, never a tag (`release.resolve`). Each target
(`targets/`) plans or performs the task its own way: a Compose rollout waits for every
container's health check and, when one fails (or Ctrl-C arrives), puts the images that were
running before back; a Helm rollout is `--atomic`, so Helm does the same.
"""

from __future__ import annotations

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from shipyard.engines import EngineError, state
from shipyard.tasks import notify, targets
from shipyard.tasks.release import resolve
from shipyard.tasks.support import HELP_DRY, HELP_ENV, HELP_TIMEOUT, HELP_YES, failures, setup

HELP_SKIP_BACKUP = "migrate without taking the backup this environment asks for"


@task(help={"env": HELP_ENV, "yes": HELP_YES, "skip_backup": HELP_SKIP_BACKUP, "dry_run": HELP_DRY})
def migrate(
    c: Context, env: str = "", yes: bool = False, skip_backup: bool = False, dry_run: bool = False
) -> None:
    """Apply database migrations with the pushed image (backup first where configured)."""
    cfg, environment = setup(c, env)
    with failures(f"migrate {environment.name}"):
        if not environment.migrate:
            print(f"{environment.name}: no migrations configured in shipyard.yaml")
            return
        opts = targets.Options(yes=yes, dry_run=dry_run, skip_backup=skip_backup)
        targets.for_environment(cfg, environment).migrate(opts)


@task(
    help={
        "env": HELP_ENV,
        "yes": HELP_YES,
        "timeout": HELP_TIMEOUT,
        "skip_migrate": "do not run migrations before the rollout",
        "skip_backup": HELP_SKIP_BACKUP,
        "during_maintenance": "deploy although the environment is in maintenance mode",
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
    # After dry_run, so that -d stays --dry-run (invoke gives a letter to the first taker).
    during_maintenance: bool = False,
) -> None:
    """Migrate, roll out the pushed images by digest, wait for health, roll back on failure."""
    cfg, environment = setup(c, env)
    opts = targets.Options(
        yes, dry_run, timeout, skip_migrate, skip_backup, during_maintenance=during_maintenance
    )
    with failures(f"deploy to {environment.name}"):
        release = resolve(cfg, environment)
        target = targets.for_environment(cfg, environment)
        if dry_run or not notify.url():
            target.deploy(release, opts)
            return
        # Only with a webhook set: reading what runs is one more call to the environment.
        news = notify.Deploy(cfg.service, environment.name, target.running(), release.images)
        notify.send(news, "started")
        try:
            target.deploy(release, opts)
        except targets.RolledBack as exc:
            notify.send(news, "rolled back", _reason(exc))
            raise
        except (Exit, EngineError, OSError, ValueError, KeyboardInterrupt) as exc:
            notify.send(news, "failed", _reason(exc))
            raise
        notify.send(news, "succeeded")


def _reason(exc: BaseException) -> str:
    """Why a deploy ended early, for its notification: the task's own sentence."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    message = exc.message if isinstance(exc, Exit) else str(exc)
    return str(message).removeprefix("shipyard: ")


@task(
    positional=["switch"],
    help={
        "switch": "on: every request gets the maintenance page (503); off: the service again",
        "env": HELP_ENV,
        "retry_after": "seconds clients are told to wait (the Retry-After header)",
        "yes": HELP_YES,
        "dry_run": HELP_DRY,
    },
)
def maintenance(
    c: Context,
    # None, not "": invoke fills a positional argument only while its value is None.
    switch: str | None = None,
    env: str = "",
    retry_after: int = 300,
    yes: bool = False,
    dry_run: bool = False,
) -> None:
    """Put an environment in maintenance mode (`on`: every request gets a 503 page) or not."""
    cfg, environment = setup(c, env)
    if switch not in ("on", "off"):
        given = f", not {switch!r}" if switch else ""
        raise Exit(f"shipyard: maintenance takes on or off{given}", code=2)
    if retry_after < 1:
        raise Exit("shipyard: --retry-after takes a number of seconds, at least 1", code=2)
    with failures(f"maintenance {switch} for {environment.name}"):
        opts = targets.Options(yes=yes, dry_run=dry_run)
        targets.for_environment(cfg, environment).maintenance(switch == "on", retry_after, opts)


@task(help={"env": HELP_ENV})
def status(c: Context, env: str = "") -> None:
    """Show what runs in an environment and its recent deploys."""
    cfg, environment = setup(c, env)
    with failures(f"status of {environment.name}"):
        targets.for_environment(cfg, environment).status()
        if environment.health_urls:
            print(f"{environment.name}: health checked at (each component on its own host)")
            for name, url in environment.health_urls.items():
                print(f"  {name}: {url}")
        for entry in state.deploys(cfg.root, environment.name)[-5:]:
            print(f"  {entry['at']} {entry['status']}: {', '.join(entry['images'].values())}")


@task(help={"env": HELP_ENV, "yes": HELP_YES, "timeout": HELP_TIMEOUT, "dry_run": HELP_DRY})
def rollback(
    c: Context, env: str = "", yes: bool = False, timeout: int = 300, dry_run: bool = False
) -> None:
    """Go back to the previous healthy release of an environment."""
    cfg, environment = setup(c, env)
    with failures(f"rollback of {environment.name}"):
        opts = targets.Options(yes=yes, dry_run=dry_run, timeout=timeout)
        targets.for_environment(cfg, environment).rollback(opts)


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
    cfg, environment = setup(c, env)
    with failures(f"logs of {environment.name}"):
        targets.for_environment(cfg, environment).logs(component, tail, follow)


ns = Collection("release", migrate, deploy, status, rollback, maintenance, logs)
