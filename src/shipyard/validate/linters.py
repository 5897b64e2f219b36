"""The file-format linters: hadolint on Dockerfiles, shellcheck on scripts, yamllint on YAML.

Each runs once over every file of its kind in the kit. (actionlint, the workflows' linter,
lives with the other workflow checks in `workflows`.)
"""

from __future__ import annotations

import json
import os
import re
from importlib.resources import files
from pathlib import Path

from shipyard.engines.proc import Result
from shipyard.validate.files import dockerfiles, rel, shell_scripts
from shipyard.validate.finding import Finding, oneline
from shipyard.validate.tools import no_report, run_failure, run_tool


def check_dockerfiles(root: Path) -> list[Finding]:
    """hadolint on every Dockerfile."""
    found = dockerfiles(root)
    if not found:
        return []
    first = rel(root, found[0])
    result = run_tool(["hadolint", "--format", "json", *map(str, found)], root)
    try:
        items = json.loads(result.stdout)  # `[]` when clean: no output is no report
    except json.JSONDecodeError:
        return [Finding(first, None, "hadolint", "parse", no_report(result))]
    findings = [
        Finding(rel(root, i["file"]), i["line"], "hadolint", i["code"], i["message"]) for i in items
    ]
    # A .hadolint.yaml it cannot read is said only on stderr while hadolint lints on without
    # it and exits 0: that must not read as a clean kit.
    problem = run_failure(result, reported=bool(findings)) or _hadolint_complaint(result, root)
    if problem:
        findings.append(Finding(first, None, "hadolint", "error", problem))
    return findings


def _hadolint_complaint(result: Result, root: Path) -> str:
    """hadolint's stderr as one line. A config error is a Haskell string literal (`\\n`
    escaped) holding which file, an example config, then what is wrong: keep the first and last."""
    text = result.stderr.strip().strip('"').replace("\\t", " ")
    lines = [line for line in text.split("\\n") if line.strip()]
    said = lines[:1] + lines[1:][-1:]
    return oneline(" ".join(said)).replace(f"{root}{os.sep}", "")


def check_shell_scripts(root: Path) -> list[Finding]:
    """shellcheck on every shell script (found by extension or #! line)."""
    scripts = shell_scripts(root)
    if not scripts:
        return []
    # -x follows `source`d files relative to each script, as the script itself would.
    argv = ["shellcheck", "--format", "json1", "--external-sources", "--source-path=SCRIPTDIR"]
    result = run_tool([*argv, *(rel(root, s) for s in scripts)], root)
    first = rel(root, scripts[0])
    try:
        comments = json.loads(result.stdout)["comments"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return [Finding(first, None, "shellcheck", "error", no_report(result))]
    findings = [
        Finding(c["file"], c["line"], "shellcheck", f"SC{c['code']}", c["message"])
        for c in comments
    ]
    # Exit 2 and up: some script could not be checked, whatever the report says of the rest.
    if problem := run_failure(result, reported=bool(findings)):
        findings.append(Finding(first, None, "shellcheck", "error", problem))
    return findings


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
        parsed = re.match(r"(.+?):(\d+):\d+: (.*)$", line)
        if not parsed:
            continue
        file, lineno, message = parsed.groups()
        message = message.strip()
        rule = message.rsplit("(", 1)[-1].rstrip(")") if message.endswith(")") else "syntax"
        findings.append(Finding(rel(root, file), int(lineno), "yamllint", rule, message))
    # A .yamllint.yaml it cannot read: exit 255 and a sentence on stderr.
    if problem := run_failure(result, reported=bool(findings)):
        findings.append(Finding(".", None, "yamllint", "error", problem))
    return findings
