"""What every task family shares: shipyard.yaml and the environment a task acts on, the help
texts of the common options, and failures, plans and confirmations as one clear line each.

The invoke configuration keys the tasks read are declared in `CONFIG` (added to the root
collection with `ns.configure`), so `invoke --print-config`-style tools and users see them.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from invoke.context import Context
from invoke.exceptions import Exit

from shipyard import config
from shipyard.engines import EngineError, git
from shipyard.engines.proc import Command, run

# Invoke configuration the tasks read (invoke.yaml, INVOKE_SHIPYARD_* variables, -f FILE):
# root: the folder holding shipyard.yaml; build_network: the network for RUN steps of builds.
CONFIG = {"shipyard": {"root": ".", "build_network": ""}}

# Help texts of options several tasks share.
HELP_ENV = "environment: dev, staging or prod ('production' works too)"
HELP_YES = "do not ask for confirmation (CI)"
HELP_DRY = "print the exact plan and change nothing"
HELP_TIMEOUT = "seconds to wait for the new version to become healthy"

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


@contextlib.contextmanager
def config_errors() -> Iterator[None]:
    """shipyard.yaml's problems (unreadable, off-schema, an unknown environment or component)
    become one `Exit` line, exit 2: the user's input, not a failure of the task."""
    try:
        yield
    except config.ConfigError as exc:
        raise Exit(f"shipyard: {exc}", code=2) from None


def load_config(c: Context) -> config.Config:
    """shipyard.yaml from the folder invoke runs in (or `shipyard.root` in invoke config)."""
    with config_errors():
        return config.load(Path(setting(c, "root") or "."))


def setting(c: Context, key: str) -> str:
    """One of the `CONFIG` keys, as invoke's configuration sets it (its default else)."""
    section = c.config.get("shipyard") or {}
    return str(section.get(key, CONFIG["shipyard"][key]))


def setup(c: Context, env: str) -> tuple[config.Config, config.Environment]:
    """Load shipyard.yaml and the named environment, or Exit with the reason.

    One rule for every task that acts on an environment: `--env` is required, never guessed,
    so no task builds, deploys, backs up or restores a place the user did not name.
    """
    cfg = load_config(c)
    if not env:
        known = ", ".join(cfg.environments)
        raise Exit(f"shipyard: choose an environment with --env ({known})", code=2)
    with config_errors():
        return cfg, cfg.environment(env)


def components(cfg: config.Config, only: str) -> list[config.Component]:
    """All components, or the one named by --component (Exit if unknown)."""
    if not only:
        return list(cfg.components)
    with config_errors():
        return [cfg.component(only)]


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


def say(message: str) -> None:
    """The one channel tasks and the engines they drive report progress through."""
    print(message, flush=True)


def plan(title: str, steps: Sequence[Command | str]) -> None:
    """Print the exact plan: commands as they will run, other steps as sentences."""
    print(f"{title} (dry run: nothing is changed)")
    for number, step in enumerate(steps, 1):
        print(f"  {number}. {step}")


def execute(cmd: Command, what: str, *, capture: bool = False, timeout: float | None = None) -> str:
    """Echo and run one command (streamed), raising EngineError when it fails (or outlives
    `timeout` seconds)."""
    say(f"$ {cmd}")
    return run(cmd, capture=capture, what=what, timeout=timeout)


def confirm(question: str, yes: bool) -> None:
    """Ask before changing a protected environment; --yes answers for CI."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise Exit(f"shipyard: {question} Refusing without a terminal: pass --yes.", code=1)
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise Exit("shipyard: cancelled; nothing was changed.", code=1)
