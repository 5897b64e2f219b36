"""What an existing service's files answer, for `shipyard new` into its repository.

A Python or Go service given the kit with copier's defaults would get a Node.js kit: the
runtime's default is `node`. Its manifest and lockfile say what it is, so `shipyard new` takes
the runtime and the package manager from them (and a version from the file that pins it),
each only where the user gave no answer, and says what it took. Files that point two ways (a
go.mod beside a package.json, two lockfiles), or to a tool the kit does not build with (Yarn 2
or later), are refused with the answer that settles it: a kit built for the wrong one would
install from the wrong lockfile. A pin the kit does not offer is said, and left to the default.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# A runtime's markers: any of these files at the repository's root.
RUNTIMES = {
    "node": ("package.json",),
    "python": ("pyproject.toml", "requirements.txt", "uv.lock", "poetry.lock"),
    "go": ("go.mod",),
}
# The answers that apply to one runtime only (copier.yml asks them `when` it is that one): one
# given fixes the runtime, as the user's answer, whatever the files say.
RUNTIME_ANSWERS = {
    "node": ("node_version", "package_manager"),
    "python": ("python_version", "python_package_manager"),
    "go": ("go_version", "go_vendor"),
}
# A runtime's package-manager answer and the lockfile each choice installs from.
LOCKFILES = {
    "node": (
        "package_manager",
        {"package-lock.json": "npm", "pnpm-lock.yaml": "pnpm", "yarn.lock": "yarn"},
    ),
    "python": ("python_package_manager", {"uv.lock": "uv", "poetry.lock": "poetry"}),
}
# A runtime's version answer and the file that pins it. A pin is taken when the template
# offers it (the question's choices, as the template being rendered states them).
VERSIONS = {
    "node": ("node_version", ".nvmrc"),
    "python": ("python_version", ".python-version"),
    "go": ("go_version", "go.mod"),
}


@dataclass(frozen=True)
class Found:
    """The answers taken (answer -> value) with the file each came from, what was seen and
    left to the defaults (notes), or the refusal."""

    answers: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    problem: str = ""

    def describe(self) -> str:
        """`runtime=python (pyproject.toml), ...`, for the line `shipyard new` prints."""
        return ", ".join(f"{k}={v} ({self.sources[k]})" for k, v in self.answers.items())


class _Refused(Exception):
    """A refusal's line (`answer: what to change`)."""


def answers(dest: Path, given: Mapping[str, Any], offered: Mapping[str, Sequence[str]]) -> Found:
    """The answers the files at `dest`'s root give that `given` does not; `offered`: the
    template's choices of each version answer."""
    found = Found()
    try:
        runtime = _runtime(dest, given, found)
        if runtime in LOCKFILES and LOCKFILES[runtime][0] not in given:
            _package_manager(dest, runtime, found)
        if runtime in VERSIONS and VERSIONS[runtime][0] not in given:
            question, pin = VERSIONS[runtime]
            _version(dest / pin, runtime, question, offered.get(question, ()), found)
    except _Refused as exc:
        return Found(problem=str(exc))
    return found


def _take(found: Found, question: str, value: str, source: str) -> None:
    found.answers[question], found.sources[question] = value, source


def _runtime(dest: Path, given: Mapping[str, Any], found: Found) -> str:
    """The runtime given, implied by a runtime's own answer, or taken from the files ('' for
    none, or a given value copier's own checks are left to refuse)."""
    if "runtime" in given:
        return given["runtime"] if isinstance(given["runtime"], str) else ""
    implied = [rt for rt, names in RUNTIME_ANSWERS.items() if any(n in given for n in names)]
    if implied:
        return implied[0] if len(implied) == 1 else ""
    present = {rt: [m for m in marks if (dest / m).is_file()] for rt, marks in RUNTIMES.items()}
    present = {rt: marks for rt, marks in present.items() if marks}
    if len(present) > 1:
        files = " and ".join(marks[0] for marks in present.values())
        raise _Refused(f"runtime: {dest} holds {files}; answer -d runtime={'|'.join(present)}")
    if not present:
        return ""
    ((runtime, marks),) = present.items()
    _take(found, "runtime", runtime, marks[0])
    return runtime


def _package_manager(dest: Path, runtime: str, found: Found) -> None:
    question, locks = LOCKFILES[runtime]
    present = [name for name in locks if (dest / name).is_file()]
    if len(present) > 1:
        choices = "|".join(locks[name] for name in present)
        raise _Refused(
            f"{question}: {dest} holds {' and '.join(present)}; answer -d {question}={choices}"
        )
    if runtime == "node":
        declared = _node_declared(dest)
        if _berry(dest, declared):
            raise _Refused(
                f"package_manager: {dest} uses Yarn 2 or later, which the kit does not build "
                "(it installs with npm, pnpm or Yarn classic, 1.x); move the service to one of "
                "them, then answer -d package_manager=npm|pnpm|yarn"
            )
        if present:
            _take(found, question, locks[present[0]], present[0])
        elif declared in ("npm", "pnpm", "yarn"):
            _take(found, question, declared, "package.json's packageManager")
    elif present:
        _take(found, question, locks[present[0]], present[0])
    elif _poetry_project(dest):
        _take(found, question, "poetry", "pyproject.toml's [tool.poetry]")
    elif (dest / "requirements.txt").is_file():
        # Beside a lock it is usually an export of it (`uv export`): the lock wins, above.
        _take(found, question, "pip", "requirements.txt")


def _node_declared(dest: Path) -> str:
    """package.json's `packageManager` (corepack's `pnpm@9.12.0`): the tool, with `yarn-berry`
    for Yarn 2 or later; '' when there is none."""
    try:
        declared = json.loads((dest / "package.json").read_text("utf-8")).get("packageManager")
    except (OSError, ValueError, AttributeError):
        return ""
    if not isinstance(declared, str):
        return ""
    tool, _, version = declared.partition("@")
    if tool == "yarn" and not version.startswith("1."):
        return "yarn-berry"
    return tool


def _berry(dest: Path, declared: str) -> bool:
    """Yarn 2 or later: declared so, configured (.yarnrc.yml), or its lockfile's format."""
    if declared == "yarn-berry" or (dest / ".yarnrc.yml").is_file():
        return True
    try:
        with (dest / "yarn.lock").open(encoding="utf-8", errors="replace") as lock:
            head = lock.read(4096)
    except OSError:
        return False
    return re.search(r"^__metadata:", head, re.MULTILINE) is not None


def _poetry_project(dest: Path) -> bool:
    """pyproject.toml configures Poetry or builds with it (a project whose lock is not
    committed yet)."""
    try:
        project = tomllib.loads((dest / "pyproject.toml").read_text("utf-8"))
    except (OSError, ValueError):
        return False
    backend = str(project.get("build-system", {}).get("build-backend", ""))
    return "poetry" in project.get("tool", {}) or backend.startswith("poetry")


def _version(
    pin_file: Path, runtime: str, question: str, offered: Sequence[str], found: Found
) -> None:
    version, pin = _pinned(pin_file, runtime), pin_file.name
    if not version or not offered:  # no pin, or a template that does not ask the question
        return
    if version in offered:
        _take(found, question, version, pin)
    elif runtime == "go" and _newer(version, offered):
        found.notes.append(
            f"{pin} needs Go {version}, newer than the kit's ({', '.join(offered)}): the image "
            f"builds with {question}'s Go and will refuse the module"
        )
    else:
        found.notes.append(
            f"{pin} names {version}, which the kit does not offer ({', '.join(offered)}): "
            f"{question} stays the default"
        )


def _newer(version: str, offered: Sequence[str]) -> bool:
    """`version` (major.minor) is newer than every release offered that reads as one."""
    releases = [tuple(map(int, o.split("."))) for o in offered if re.fullmatch(r"\d+\.\d+", o)]
    return bool(releases) and tuple(map(int, version.split("."))) > max(releases)


def _pinned(path: Path, runtime: str) -> str:
    """The major (Node.js) or major.minor (Python, Go) a pin file names, or ''."""
    try:
        text = path.read_text("utf-8", errors="replace")
    except OSError:
        return ""
    if runtime == "go":
        # go.mod's `go 1.26` or `go 1.26.3` line: the release the module needs (a `toolchain`
        # line only names the one its author built with).
        match = re.search(r"^go\s+(\d+\.\d+)(?:\.\d+)?\s*$", text, re.MULTILINE)
        return match.group(1) if match else ""
    # The first line that is not blank or a comment (pyenv's file may list several versions).
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()[:1] not in ("", "#")), "")
    if runtime == "python":
        # .python-version: `3.12` or `3.12.7` (pyenv, uv); a name such as `pypy3.10` is none.
        match = re.fullmatch(r"(\d+\.\d+)(?:\.\d+)?", line)
    else:
        # .nvmrc: `22`, `v22`, `22.11.0`; an alias such as `lts/*` is none.
        match = re.fullmatch(r"v?(\d+)(?:\.\d+){0,2}", line)
    return match.group(1) if match else ""
