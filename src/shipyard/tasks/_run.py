"""Helpers the task families share: failures as one clear message, plans, confirmation."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from invoke.context import Context
from invoke.exceptions import Exit

from shipyard import config
from shipyard.engines import EngineError, git
from shipyard.engines.proc import Command, run
from shipyard.tasks.common import environment, load_config

# Environments whose images must come from a clean, committed tree.
RELEASE_ENVS = ("staging", "prod")


@contextlib.contextmanager
def failures(doing: str) -> Iterator[None]:
    """Turn engine errors, unreadable files and Ctrl-C into one `Exit` line instead of a
    traceback (OSError: a file or folder we read or write; ValueError: its content)."""
    try:
        yield
    except (EngineError, OSError, ValueError) as exc:
        raise Exit(f"shipyard: {doing} failed: {exc}", code=1) from None
    except KeyboardInterrupt:
        raise Exit(f"shipyard: {doing} interrupted (Ctrl-C)", code=130) from None


def env_name(env: str) -> str:
    """The canonical environment name ('production' -> 'prod')."""
    return config.ENV_ALIASES.get(env, env)


def setup(c: Context, env: str) -> tuple[config.Config, str, dict[str, Any]]:
    """Load shipyard.yaml and the named environment, or Exit with the reason.

    One rule for every task that acts on an environment: `--env` is required, never guessed,
    so no task builds, deploys, backs up or restores a place the user did not name.
    """
    cfg = load_config(c)
    if not env:
        known = ", ".join(cfg.data["environments"])
        raise Exit(f"shipyard: choose an environment with --env ({known})", code=2)
    settings = environment(cfg, env)
    return cfg, env_name(env), settings


def components(cfg: config.Config, only: str) -> list[dict[str, Any]]:
    """All components, or the one named by --component (Exit if unknown)."""
    if not only:
        return cfg.components
    chosen = [comp for comp in cfg.components if comp["name"] == only]
    if not chosen:
        names = ", ".join(comp["name"] for comp in cfg.components)
        raise Exit(f"shipyard: unknown component '{only}': choose one of {names}", code=2)
    return chosen


def revision(root: Path, env: str) -> git.Revision:
    """HEAD's revision; a dirty tree is refused for staging and prod."""
    with failures("reading the git revision"):
        rev = git.revision(root)
    if rev.dirty and env in RELEASE_ENVS:
        raise Exit(
            f"shipyard: the working tree has uncommitted changes; {env} images must come from "
            "a commit (commit or stash them, or use --env dev)",
            code=1,
        )
    return rev


def plan(title: str, steps: Sequence[Command | str]) -> None:
    """Print the exact plan: commands as they will run, other steps as sentences."""
    print(f"{title} (dry run: nothing is changed)")
    for number, step in enumerate(steps, 1):
        print(f"  {number}. {step}")


def execute(cmd: Command, what: str, *, capture: bool = False) -> str:
    """Echo and run one command (streamed), raising EngineError when it fails."""
    print(f"$ {cmd}", flush=True)
    return run(cmd, capture=capture, what=what)


def confirm(question: str, yes: bool) -> None:
    """Ask before changing a protected environment; --yes answers for CI."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise Exit(f"shipyard: {question} Refusing without a terminal: pass --yes.", code=1)
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise Exit("shipyard: cancelled; nothing was changed.", code=1)
