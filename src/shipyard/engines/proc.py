"""Running external commands: exact, printable command lines and errors without tracebacks."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shipyard.engines import EngineError

# How a child reports dying of SIGINT: killed by it, or (shells, Compose) exit status 128 + 2.
INTERRUPTED = (-signal.SIGINT, 128 + signal.SIGINT)


@dataclass(frozen=True)
class Command:
    """One command line plus the environment variables it adds (never secrets: those are
    inherited from the caller's environment, so they stay out of plans and logs)."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None

    def __str__(self) -> str:
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        line = shlex.join(self.argv)
        return f"{prefix} {line}" if prefix else line


def command(*argv: str, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Command:
    """Shorthand for `Command(argv, env, cwd)`."""
    return Command(tuple(argv), dict(env or {}), cwd)


def run(cmd: Command, *, capture: bool = False, what: str = "") -> str:
    """Run `cmd`, streaming its output unless `capture`; return captured stdout.

    Raises EngineError naming the command when it is missing or exits non-zero.
    """
    try:
        proc = subprocess.run(
            cmd.argv,
            env={**os.environ, **cmd.env},
            cwd=cmd.cwd,
            check=False,
            text=True,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
        )
    except FileNotFoundError:
        needed = f" (needed for: {what})" if what else ""
        raise EngineError(f"{cmd.argv[0]} is not installed or not on PATH{needed}") from None
    if proc.returncode in INTERRUPTED:
        # Ctrl-C reaches the whole process group; when the child dies of it before Python's
        # own handler runs, the interruption must still read as one, not as a failure.
        raise KeyboardInterrupt
    if proc.returncode:
        detail = ""
        if capture:
            detail = ":\n" + ((proc.stderr or "") + (proc.stdout or "")).strip()[-2000:]
        raise EngineError(f"{what or shlex.join(cmd.argv)} failed (exit {proc.returncode}){detail}")
    return proc.stdout or ""


def succeeds(argv: Sequence[str], env: Mapping[str, str] | None = None) -> bool:
    """True when `argv` runs and exits 0 (quietly): feature probes."""
    try:
        return (
            subprocess.run(
                list(argv),
                env={**os.environ, **(env or {})},
                capture_output=True,
                check=False,
            ).returncode
            == 0
        )
    except (FileNotFoundError, PermissionError):
        return False
