"""Running external commands: exact, printable command lines and errors without tracebacks.

The package runs its commands here (`run` streams or returns output and fails on a non-zero
exit, `capture` returns how a command ended, `succeeds` probes), so a missing tool and Ctrl-C
read the same whichever part of shipyard ran the command. Only pipelines that stream one
child into another (backup's pg_dump | zstd) start their processes themselves.
"""

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


@dataclass(frozen=True)
class Result:
    """How a command ended: its exit status and what it printed."""

    returncode: int
    stdout: str
    stderr: str


def _spawn(
    cmd: Command, *, capture: bool, what: str, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    """Start `cmd` and wait for it: `run`, `capture` and `succeeds` all come through here.

    A missing or unrunnable program is an EngineError naming `what` it was needed for; a child
    killed by Ctrl-C is a KeyboardInterrupt, whichever caller started it.
    """
    try:
        proc = subprocess.run(
            cmd.argv,
            env={**os.environ, **cmd.env},
            cwd=cmd.cwd,
            check=False,
            text=True,
            # A tool's stray non-UTF-8 byte must not turn its report into a traceback.
            errors="replace",
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise EngineError(f"{what or cmd.argv[0]} did not finish within {timeout:.0f}s") from None
    except (FileNotFoundError, PermissionError) as exc:
        needed = f" (needed for: {what})" if what else ""
        problem = "is not installed or not on PATH"
        if isinstance(exc, PermissionError):
            problem = "is not executable (check its permissions)"
        raise EngineError(f"{cmd.argv[0]} {problem}{needed}") from None
    if proc.returncode in INTERRUPTED:
        # Ctrl-C reaches the whole process group; when the child dies of it before Python's
        # own handler runs, the interruption must still read as one, not as a failure.
        raise KeyboardInterrupt
    return proc


def run(
    cmd: Command, *, capture: bool = False, what: str = "", timeout: float | None = None
) -> str:
    """Run `cmd`, streaming its output unless `capture`; return captured stdout.

    Raises EngineError naming the command when it is missing, exits non-zero or runs longer
    than `timeout` seconds (then it is killed).
    """
    proc = _spawn(cmd, capture=capture, what=what, timeout=timeout)
    if proc.returncode:
        detail = ""
        if capture:
            detail = ":\n" + ((proc.stderr or "") + (proc.stdout or "")).strip()[-2000:]
        raise EngineError(f"{what or shlex.join(cmd.argv)} failed (exit {proc.returncode}){detail}")
    return proc.stdout or ""


def capture(cmd: Command, *, what: str = "", timeout: float | None = None) -> Result:
    """Run `cmd` quietly and return how it ended, whatever its exit status.

    For callers that read a failing command's output (validators report it as findings, git
    probes treat "no such ref" as an answer). Raises EngineError only when it cannot start (or
    outlives `timeout` seconds).
    """
    proc = _spawn(cmd, capture=True, what=what, timeout=timeout)
    return Result(proc.returncode, proc.stdout or "", proc.stderr or "")


def succeeds(argv: Sequence[str], env: Mapping[str, str] | None = None) -> bool:
    """True when `argv` runs and exits 0 (quietly): feature probes."""
    try:
        return capture(command(*argv, env=env)).returncode == 0
    except EngineError:
        return False
