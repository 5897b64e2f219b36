"""Check every artifact of a deployment kit with the real tool that consumes it.

Each check wraps one tool and returns structured findings; `validate` runs the checks that
apply to a folder concurrently (they are independent processes) and `report` prints them.
A missing tool is an error that says how to install it, never a silent skip.

This module is the face: the registry of checks (`CHECKS`, `GROUPS`), `validate` and the
reports. The checks live by domain (`linters`, `workflows`, `compose`, `kubernetes`,
`monitoring`, `crds`, `compose_monitoring`, `dashboards`, `schemas`); `tools` finds and runs the
binaries, `files` finds what each check looks at, `yaml_lines` maps a tool's key path to a
line, `finding` is what they all return.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shipyard.validate.compose import check_compose, check_compose_schema
from shipyard.validate.compose_monitoring import (
    check_alertmanager_config,
    check_prometheus_config,
)
from shipyard.validate.crds import check_cloudnativepg_crds, check_monitoring_crds
from shipyard.validate.dashboards import check_grafana_dashboards
from shipyard.validate.files import charts, compose_files, shell_scripts, workflow_files
from shipyard.validate.finding import Finding
from shipyard.validate.kubernetes import (
    KUBERNETES_VERSIONS,
    check_helm_lint,
    check_kubernetes,
    kubernetes_version,
)
from shipyard.validate.linters import check_dockerfiles, check_shell_scripts, check_yaml
from shipyard.validate.monitoring import check_prometheus_rules
from shipyard.validate.schemas import check_answers, check_shipyard_yaml
from shipyard.validate.tools import ToolMissingError, find_tool, record_commands
from shipyard.validate.workflows import (
    check_dependabot_schema,
    check_workflow_schema,
    check_workflows,
)

__all__ = [
    "CHECKS",
    "GROUPS",
    "KUBERNETES_VERSIONS",
    "Check",
    "Finding",
    "ToolMissingError",
    "charts",
    "compose_files",
    "find_tool",
    "github_annotations",
    "kubernetes_version",
    "record_commands",
    "report",
    "shell_scripts",
    "validate",
    "workflow_files",
]

Check = Callable[[Path], list[Finding]]
CHECKS: dict[str, Check] = {
    "dockerfile": check_dockerfiles,
    "shellcheck": check_shell_scripts,
    "actionlint": check_workflows,
    "yaml": check_yaml,
    "compose": check_compose,
    "compose-schema": check_compose_schema,
    "workflow-schema": check_workflow_schema,
    "dependabot-schema": check_dependabot_schema,
    "helm-lint": check_helm_lint,
    "kubernetes": check_kubernetes,
    "prometheus-rules": check_prometheus_rules,
    "monitoring-crds": check_monitoring_crds,
    "cloudnativepg-crds": check_cloudnativepg_crds,
    "grafana-dashboard": check_grafana_dashboards,
    "prometheus-config": check_prometheus_config,
    "alertmanager-config": check_alertmanager_config,
    "shipyard": check_shipyard_yaml,
    "answers": check_answers,
}
# Linters judge how files are written; the other checks ask each file's consumer whether it
# accepts them. Generated repos run them as two nox sessions, `lint` and `validate`.
_LINTERS = ("dockerfile", "shellcheck", "actionlint", "yaml")
GROUPS: dict[str, tuple[str, ...]] = {
    "lint": _LINTERS,
    "schema": tuple(name for name in CHECKS if name not in _LINTERS),
}
# The slowest check first, so its processes start while the others queue.
_ORDER = ("kubernetes", "helm-lint", "compose-schema", "workflow-schema", "dependabot-schema")


def validate(root: Path | str = ".", only: Iterable[str] | None = None) -> list[Finding]:
    """Run the named checks (default: all) on `root` concurrently; findings sorted by file."""
    root = Path(root).resolve()
    names = list(dict.fromkeys(only)) if only is not None else list(CHECKS)
    unknown = sorted(set(names) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown check(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}")
    names.sort(key=lambda name: _ORDER.index(name) if name in _ORDER else len(_ORDER))
    # Threads suffice: each check spends its time waiting on a child process.
    missing: list[str] = []
    findings: list[Finding] = []
    with ThreadPoolExecutor(max_workers=len(names) or 1) as pool:
        futures = [pool.submit(CHECKS[name], root) for name in names]
        for future in futures:
            try:
                findings += future.result()
            except ToolMissingError as exc:
                missing.append(str(exc))
    if missing:
        # Every missing tool at once, so one install round fixes them all.
        raise ToolMissingError("\n".join(dict.fromkeys(missing)))
    # set(): a chart that fails to render fails the same way for every Kubernetes version.
    return sorted(set(findings), key=lambda f: (f.file, f.line or 0, f.tool, f.rule, f.message))


def report(findings: Sequence[Finding]) -> str:
    """One line per finding and a count, or a short all-clear."""
    if not findings:
        return "All checks passed."
    lines = [str(f) for f in findings]
    lines.append(f"{len(findings)} problem(s) found.")
    return "\n".join(lines)


def github_annotations(findings: Sequence[Finding]) -> str:
    """GitHub Actions `::error` commands: each finding shows on its file in the pull request."""

    def escape(text: str, *, prop: bool = False) -> str:
        # The workflow-command encoding; properties also reserve ':' and ','.
        text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
        return text.replace(":", "%3A").replace(",", "%2C") if prop else text

    lines = []
    for f in findings:
        where = f"file={escape(f.file, prop=True)}"
        if f.line:
            where += f",line={f.line}"
        title = escape(f"{f.tool} {f.rule}", prop=True)
        lines.append(f"::error {where},title={title}::{escape(f.message)}")
    return "\n".join(lines)
