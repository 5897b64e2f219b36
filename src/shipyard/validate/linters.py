"""The file-format linters: hadolint on Dockerfiles, shellcheck on scripts, yamllint on YAML.

Each runs once over every file of its kind in the kit. (actionlint, the workflows' linter,
lives with the other workflow checks in `workflows`.)
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

from shipyard.validate.files import dockerfiles, rel, shell_scripts
from shipyard.validate.finding import Finding, oneline
from shipyard.validate.tools import run_tool


def check_dockerfiles(root: Path) -> list[Finding]:
    """hadolint on every Dockerfile."""
    found = dockerfiles(root)
    if not found:
        return []
    result = run_tool(["hadolint", "--format", "json", *map(str, found)], root)
    try:
        items = json.loads(result.stdout or "[]")
    except json.JSONDecodeError:
        message = oneline(result.stderr or result.stdout)
        return [Finding(rel(root, found[0]), None, "hadolint", "parse", message)]
    return [
        Finding(rel(root, i["file"]), i["line"], "hadolint", i["code"], i["message"]) for i in items
    ]


def check_shell_scripts(root: Path) -> list[Finding]:
    """shellcheck on every shell script (found by extension or #! line)."""
    scripts = shell_scripts(root)
    if not scripts:
        return []
    # -x follows `source`d files relative to each script, as the script itself would.
    argv = ["shellcheck", "--format", "json1", "--external-sources", "--source-path=SCRIPTDIR"]
    result = run_tool([*argv, *(rel(root, s) for s in scripts)], root)
    try:
        comments = json.loads(result.stdout)["comments"]
    except (json.JSONDecodeError, KeyError):
        message = oneline(result.stderr or result.stdout)
        return [Finding(rel(root, scripts[0]), None, "shellcheck", "error", message)]
    return [
        Finding(c["file"], c["line"], "shellcheck", f"SC{c['code']}", c["message"])
        for c in comments
    ]


def yamllint_config(root: Path) -> Path:
    """The repo's own .yamllint.yaml if it has one, else the one shipped with shipyard."""
    for name in (".yamllint.yaml", ".yamllint.yml", ".yamllint"):
        if (root / name).is_file():
            return root / name
    return Path(str(files("shipyard").joinpath("yamllint.yaml")))


def check_yaml(root: Path) -> list[Finding]:
    """yamllint on every YAML file (the config excludes Helm templates: they are Go templates)."""
    argv = ["yamllint", "--format", "parsable", "-c", str(yamllint_config(root)), "."]
    result = run_tool(argv, root)
    findings = []
    for line in result.stdout.splitlines():
        # ./path:LINE:COL: [level] message (rule)
        try:
            file, lineno, _col, rest = line.split(":", 3)
        except ValueError:
            continue
        message = rest.strip()
        rule = message.rsplit("(", 1)[-1].rstrip(")") if message.endswith(")") else "syntax"
        findings.append(Finding(rel(root, file), int(lineno), "yamllint", rule, message))
    if result.returncode not in (0, 1) or (result.returncode == 1 and not findings):
        findings.append(Finding(".", None, "yamllint", "error", oneline(result.stderr)))
    return findings
