"""The CI checks: actionlint on GitHub workflows, and GitHub's schemas on workflows, composite
actions and the Dependabot configuration."""

from __future__ import annotations

import json
from pathlib import Path

from shipyard.validate.files import action_files, dependabot_files, rel, workflow_files
from shipyard.validate.finding import Finding, oneline
from shipyard.validate.schemas import vendored_schema
from shipyard.validate.tools import find_tool, run_tool


def check_workflows(root: Path) -> list[Finding]:
    """actionlint on the workflows, with shellcheck checking every `run:` script."""
    workflows = workflow_files(root)
    if not workflows:
        return []
    # Named explicitly: actionlint quietly skips `run:` scripts when it cannot find shellcheck.
    shellcheck = find_tool("shellcheck")
    argv = ["actionlint", "-shellcheck", shellcheck, "-format", "{{json .}}"]
    result = run_tool([*argv, *(rel(root, w) for w in workflows)], root)
    try:
        items = json.loads(result.stdout or "[]")
    except json.JSONDecodeError:
        message = oneline(result.stderr or result.stdout)
        return [Finding(rel(root, workflows[0]), None, "actionlint", "error", message)]
    findings = [
        Finding(rel(root, i["filepath"]), i["line"], "actionlint", i["kind"], i["message"])
        for i in items
    ]
    if result.returncode not in (0, 1) or (result.returncode == 1 and not findings):
        message = oneline(result.stderr) or f"exit status {result.returncode}"
        findings.append(Finding(rel(root, workflows[0]), None, "actionlint", "error", message))
    return findings


def check_workflow_schema(root: Path) -> list[Finding]:
    """GitHub's workflow (and composite action) schemas on .github/."""
    findings = vendored_schema(root, "vendor.github-workflows", workflow_files(root))
    return findings + vendored_schema(root, "vendor.github-actions", action_files(root))


def check_dependabot_schema(root: Path) -> list[Finding]:
    """The Dependabot configuration schema on .github/dependabot.yml."""
    return vendored_schema(root, "vendor.dependabot", dependabot_files(root))
