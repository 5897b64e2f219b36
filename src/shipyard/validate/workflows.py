"""The CI checks: actionlint on GitHub workflows, and GitHub's schemas on workflows, composite
actions and the Dependabot configuration."""

from __future__ import annotations

import json
from pathlib import Path

from shipyard.validate.files import action_files, dependabot_files, rel, workflow_files
from shipyard.validate.finding import Finding
from shipyard.validate.schemas import vendored_schema
from shipyard.validate.tools import find_tool, no_report, run_failure, run_tool


def check_workflows(root: Path) -> list[Finding]:
    """actionlint on the workflows, with shellcheck checking every `run:` script."""
    workflows = workflow_files(root)
    if not workflows:
        return []
    # Named explicitly: actionlint quietly skips `run:` scripts when it cannot find shellcheck.
    shellcheck = find_tool("shellcheck")
    argv = ["actionlint", "-shellcheck", shellcheck, "-format", "{{json .}}"]
    result = run_tool([*argv, *(rel(root, w) for w in workflows)], root)
    first = rel(root, workflows[0])
    try:
        items = json.loads(result.stdout)  # `[]` when clean: no output is no report
    except json.JSONDecodeError:
        return [Finding(first, None, "actionlint", "error", no_report(result))]
    findings = [
        Finding(rel(root, i["filepath"]), i["line"], "actionlint", i["kind"], i["message"])
        for i in items
    ]
    if problem := run_failure(result, reported=bool(findings)):
        findings.append(Finding(first, None, "actionlint", "error", problem))
    return findings


def check_workflow_schema(root: Path) -> list[Finding]:
    """GitHub's workflow (and composite action) schemas on .github/."""
    findings = vendored_schema(root, "vendor.github-workflows", workflow_files(root))
    return findings + vendored_schema(root, "vendor.github-actions", action_files(root))


def check_dependabot_schema(root: Path) -> list[Finding]:
    """The Dependabot configuration schema on .github/dependabot.yml."""
    return vendored_schema(root, "vendor.dependabot", dependabot_files(root))
