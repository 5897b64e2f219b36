"""What an existing service's files answer, for `shipyard new` into its repository.

A Python or Go service given the kit with copier's defaults would get a Node.js kit: the
runtime's default is `node`. Its manifest and lockfile say what it is, so `shipyard new` takes
the runtime and the package manager from them (and a version from the file that pins it),
each only where the user gave no answer, and says what it took. Files that point two ways (a
go.mod beside a package.json, two lockfiles) are refused with the answer that settles it:
a kit built for the wrong one would install from the wrong lockfile.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# A runtime's markers: any of these files at the repository's root.
RUNTIMES = {
    "node": ("package.json",),
    "python": ("pyproject.toml", "requirements.txt", "uv.lock", "poetry.lock"),
    "go": ("go.mod",),
}
# A runtime's package-manager answer and the lockfile each choice installs from.
LOCKFILES = {
    "node": (
        "package_manager",
        {"package-lock.json": "npm", "pnpm-lock.yaml": "pnpm", "yarn.lock": "yarn"},
    ),
    "python": ("python_package_manager", {"uv.lock": "uv", "poetry.lock": "poetry"}),
}
# A Python service with neither lock installs from its requirements.txt (pip). Beside a lock it
# is usually an export of it (`uv export`, `poetry export`): the lock wins.
PIP_FALLBACK = "requirements.txt"
# The versions copier.yml offers (its choices), which a pin must name to be taken.
VERSIONS = {
    "node": ("node_version", ".nvmrc", ("24", "22", "20")),
    "python": ("python_version", ".python-version", ("3.13", "3.12", "3.11")),
    "go": ("go_version", "go.mod", ("1.27", "1.26", "1.25")),
}


@dataclass(frozen=True)
class Found:
    """The answers taken (answer -> value) with the file each came from, or the refusal."""

    answers: dict[str, str]
    sources: dict[str, str]
    problem: str = ""

    def describe(self) -> str:
        """`runtime=python (pyproject.toml), ...`, for the line `shipyard new` prints."""
        return ", ".join(f"{k}={v} ({self.sources[k]})" for k, v in self.answers.items())


def answers(dest: Path, given: dict[str, object]) -> Found:
    """The answers `dest`'s root files give that `given` does not; nothing for a new folder."""
    taken: dict[str, str] = {}
    sources: dict[str, str] = {}
    runtime = given.get("runtime")
    if runtime is None:
        present = {rt: [m for m in marks if (dest / m).is_file()] for rt, marks in RUNTIMES.items()}
        present = {rt: marks for rt, marks in present.items() if marks}
        if len(present) > 1:
            files = " and ".join(marks[0] for marks in present.values())
            choices = "|".join(present)
            return Found({}, {}, f"runtime: {dest} holds {files}; answer -d runtime={choices}")
        if not present:
            return Found({}, {})
        ((runtime, marks),) = present.items()
        taken["runtime"], sources["runtime"] = runtime, marks[0]
    if runtime in LOCKFILES:
        question, locks = LOCKFILES[str(runtime)]
        found = [name for name in locks if (dest / name).is_file()]
        if question not in given and len(found) > 1:
            choices = "|".join(locks[name] for name in found)
            return Found(
                {},
                {},
                f"{question}: {dest} holds {' and '.join(found)}; answer -d {question}={choices}",
            )
        if question not in given and found:
            taken[question], sources[question] = locks[found[0]], found[0]
        elif question not in given and runtime == "python" and (dest / PIP_FALLBACK).is_file():
            taken[question], sources[question] = "pip", PIP_FALLBACK
    if runtime in VERSIONS:
        question, pin, offered = VERSIONS[str(runtime)]
        version = _pinned(dest / pin, str(runtime))
        if question not in given and version in offered:
            taken[question], sources[question] = version, pin
    return Found(taken, sources)


def _pinned(path: Path, runtime: str) -> str:
    """The major (Node.js) or major.minor (Python, Go) a pin file names, or ''."""
    try:
        text = path.read_text("utf-8", errors="replace")
    except OSError:
        return ""
    if runtime == "go":
        # go.mod's `go 1.26` or `go 1.26.3` line: the release the module needs.
        match = re.search(r"^go\s+(\d+\.\d+)(?:\.\d+)?\s*$", text, re.MULTILINE)
    elif runtime == "python":
        # .python-version: `3.12` or `3.12.7` (pyenv, uv); a name such as `pypy3.10` is none.
        match = re.match(r"\s*(\d+\.\d+)(?:\.\d+)?\s*$", text)
    else:
        # .nvmrc: `22`, `v22`, `22.11.0`; an alias such as `lts/*` is none.
        match = re.match(r"\s*v?(\d+)(?:\.\d+){0,2}\s*$", text)
    return match.group(1) if match else ""
