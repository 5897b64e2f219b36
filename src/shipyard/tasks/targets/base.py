"""The shape every deployment target has, and the checks a release passes on any of them."""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from invoke.exceptions import Exit

from shipyard import config
from shipyard.engines import docker as docker_engine
from shipyard.tasks.release import Release
from shipyard.tasks.support import confirm, failures


@dataclass(frozen=True)
class Options:
    """How the user asked a release task to run (its command-line flags)."""

    yes: bool = False
    dry_run: bool = False
    timeout: int = 300
    skip_migrate: bool = False
    skip_backup: bool = False
    during_maintenance: bool = False


class RolledBack(Exit):
    """A deploy that failed after changing the environment, and was rolled back: the previous
    version serves again (what the deploy notifications tell apart from a plain failure)."""


# Lines of a failed smoke check's output its error message quotes.
SMOKE_LINES = 5


def smoke_failure(command: Sequence[str], code: int | str, output: str) -> str:
    """Why a deploy rolls back after its smoke check: the command, how it ended, its last
    lines (on one line each, ' | ' between them)."""
    lines = [" ".join(line.split())[:200] for line in output.splitlines() if line.strip()]
    last = " | ".join(lines[-SMOKE_LINES:]) or "(it printed nothing)"
    return f"the smoke check `{shlex.join(command)}` exited with {code}; its last lines: {last}"


def smoke_component(cfg: config.Config, smoke: config.Smoke) -> str:
    """Whose new image runs the smoke check: the one it names, else the first http
    component, else the first component."""
    http = [c.name for c in cfg.components if c.kind == "http"]
    return smoke.component or (http or [cfg.components[0].name])[0]


class Target(Protocol):
    """Where an environment runs (shipyard.yaml's `target`): a Compose host or a Kubernetes
    namespace. Each target plans (dry run) or performs every release task its own way."""

    def missing_secrets(self) -> tuple[list[str], str]:
        """The secrets the environment lacks, and where they were looked for."""

    def migrate(self, opts: Options) -> None:
        """Apply the database migrations of this commit (or say how this target runs them)."""

    def running(self) -> dict[str, str]:
        """The image (repo@digest) each component runs now; empty before the first deploy."""

    def deploy(self, release: Release, opts: Options) -> None:
        """Migrate, roll out `release`, wait for health (and the smoke check); the old version
        keeps serving on failure (RolledBack when the environment had been changed)."""

    def rollback(self, opts: Options) -> None:
        """Go back to the previous healthy release."""

    def status(self) -> None:
        """Show what runs."""

    def maintenance(self, on: bool, retry_after: int, opts: Options) -> None:
        """Serve a 503 maintenance page for every request (`on`), or the service again."""

    def logs(self, component: str, tail: int, follow: bool) -> None:
        """Show (or follow) the logs of every component, or of one."""


def preflight(target: Target, release: Release) -> None:
    """Refuse early: missing secrets, or images the registry does not have (the tree was
    checked when the release was resolved)."""
    env = release.env.name
    missing, where = target.missing_secrets()
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
        for name, ref in release.images.items():
            if docker_engine.registry_digest(client, ref) is None:
                raise Exit(
                    f"shipyard: the registry has no {ref} ({name}): run `invoke push "
                    f"--env {env}` again; nothing was changed",
                    code=1,
                )


def ask(env: config.Environment, question: str, opts: Options) -> None:
    """Ask `question` where the environment wants confirmation (`confirm: true`)."""
    if env.confirm:
        confirm(question, opts.yes)


def refuse_in_maintenance(env: config.Environment, since: str, opts: Options) -> None:
    """A deploy to an environment in maintenance mode (`since` not empty) needs
    --during-maintenance: the release the maintenance is for."""
    if since and not opts.during_maintenance:
        raise Exit(
            f"shipyard: {env.name} is in maintenance mode (since {since}); deploy with "
            f"--during-maintenance, or first `invoke maintenance --env {env.name} off`; nothing "
            "was changed",
            code=1,
        )
