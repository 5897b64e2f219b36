"""The monitoring checks: the chart's prometheus-operator objects, rendered as on a cluster
that serves monitoring.coreos.com/v1, checked by promtool (the alert rules and their unit
tests); crds.py checks them against the operator's CRD schemas.

kubernetes-validate knows only Kubernetes' own APIs, and `helm template` without
`--api-versions` renders none of these objects, so without these checks they would go unread.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shipyard.validate.files import Chart, charts, rel
from shipyard.validate.finding import Finding, oneline
from shipyard.validate.tools import each, no_report, run_tool

API_VERSION = "monitoring.coreos.com/v1"
# Where a chart keeps the promtool unit tests of its rules (beside the dashboard): the kit
# writes the cases measured in minutes to rules.test.yaml, those in hours to
# rules.hourly.test.yaml (each file has one evaluation interval); every file of the pattern runs.
RULE_TESTS = "monitoring/rules*.test.yaml"
# The rule file the tests name (rule_files: [rules.yaml]), written beside a copy of them.
RULE_FILE = "rules.yaml"


def _render(root: Path, chart: Chart, values: Path | None) -> tuple[list[dict[str, Any]], str]:
    """The chart's monitoring.coreos.com objects with `values`, or a reason it did not render."""
    documents, failed = render(root, chart, values)
    return [d for d in documents if d.get("apiVersion") == API_VERSION], failed


def render(
    root: Path, chart: Chart, values: Path | None, apis: Sequence[str] = (API_VERSION,)
) -> tuple[list[dict[str, Any]], str]:
    """Every object the chart renders with `values` on a cluster that serves `apis` (the
    prometheus-operator's), or a reason it did not render.

    Release name = chart name and namespace "default", as the unit tests expect."""
    from ruamel.yaml import YAML

    argv = ["helm", "template", chart.name, str(chart.path)]
    argv += [arg for api in apis for arg in ("--api-versions", api)]
    argv += chart.release_args()
    result = run_tool([*argv, *(["--values", str(values)] if values else [])], root)
    if result.returncode != 0:
        return [], no_report(result)
    try:
        documents = list(YAML(typ="safe", pure=True).load_all(result.stdout))
    except Exception as exc:  # the kubernetes check names the template; say it here too
        return [], oneline(str(exc))
    if not any(documents):  # an application chart always renders something
        return [], "rendered no manifests"
    return [d for d in documents if isinstance(d, dict)], ""


def runs(root: Path) -> list[tuple[Chart, Path | None]]:
    return [
        (chart, values)
        for chart in charts(root)
        if not chart.library and (chart.path / "templates").is_dir()
        for values in chart.values
    ]


def template_of(root: Path, chart: Chart, kind: str) -> str:
    """The template a kind comes from, as a finding names it."""
    name = "prometheusrule.yaml" if kind == "PrometheusRule" else "monitoring.yaml"
    return rel(root, chart.path / "templates" / name)


def values_name(values: Path | None) -> str:
    return values.name if values else "default values"


def render_failure(
    root: Path, chart: Chart, values: Path | None, why: str, apis: Sequence[str] = (API_VERSION,)
) -> Finding:
    flags = " ".join(f"--api-versions {api}" for api in apis)
    message = f"helm template {flags} with {values_name(values)}: {why}"
    return Finding(rel(root, chart.path), None, "helm", "template", message)


def check_prometheus_rules(root: Path) -> list[Finding]:
    """`promtool check rules` on each PrometheusRule the chart renders (per values file), and
    `promtool test rules` on the chart's monitoring/rules*.test.yaml against the default render."""

    def one(run: tuple[Chart, Path | None]) -> list[Finding]:
        chart, values = run
        objects, failed = _render(root, chart, values)
        where = rel(root, chart.path)
        if failed:
            return [render_failure(root, chart, values, failed)]
        groups = [g for o in objects if o.get("kind") == "PrometheusRule" for g in _groups(o)]
        if not groups:
            if list(chart.path.glob(RULE_TESTS)) and values == chart.values[0]:
                message = f"{RULE_TESTS} tests rules, but the chart renders no PrometheusRule"
                return [Finding(where, None, "promtool", "test", message)]
            return []
        findings: list[Finding] = []
        with tempfile.TemporaryDirectory(prefix="shipyard-rules-") as tmp:
            rule_file = Path(tmp, RULE_FILE)
            rule_file.write_text(json.dumps({"groups": groups}, indent=1), "utf-8")
            source = template_of(root, chart, "PrometheusRule")
            result = run_tool(["promtool", "check", "rules", str(rule_file)], Path(tmp))
            if result.returncode != 0 or "SUCCESS" not in result.stdout:
                said = no_report(result).replace(str(rule_file), RULE_FILE)
                message = f"with {values_name(values)}: {said}"
                findings.append(Finding(source, None, "promtool", "check-rules", message))
            # The tests hold the default values' names and thresholds: run them once, on
            # rules that parse (a parse error would repeat in every test).
            if not findings and values == chart.values[0]:
                findings += _unit_tests(root, chart, rule_file, values)
        return findings

    return [f for found in each(one, runs(root)) for f in found]


def _unit_tests(root: Path, chart: Chart, rule_file: Path, values: Path | None) -> list[Finding]:
    tests = sorted(chart.path.glob(RULE_TESTS))
    if not tests:
        message = (
            f"the chart renders a PrometheusRule but has no promtool unit tests ({RULE_TESTS})"
        )
        return [Finding(rel(root, chart.path), None, "promtool", "test", message)]
    if values is not None:  # the first environment's render: tests need the defaults'
        objects, failed = _render(root, chart, None)
        groups = [g for o in objects if o.get("kind") == "PrometheusRule" for g in _groups(o)]
        if failed or not groups:
            return []  # the default render's own run reports it
        rule_file.write_text(json.dumps({"groups": groups}, indent=1), "utf-8")
    findings: list[Finding] = []
    for test in tests:
        copy = rule_file.parent / test.name
        copy.write_text(test.read_text("utf-8"), "utf-8")
        result = run_tool(["promtool", "test", "rules", copy.name], rule_file.parent)
        # promtool says SUCCESS when every test passed: a silent exit 0 proves nothing.
        if result.returncode != 0 or "SUCCESS" not in result.stdout:
            said = oneline(result.stdout + " " + result.stderr) if result.returncode > 0 else ""
            findings.append(
                Finding(rel(root, test), None, "promtool", "test", said or no_report(result))
            )
    if not findings and (missing := untested(rule_file, tests)):
        message = f"{', '.join(missing)}: no promtool unit test in {RULE_TESTS} fires it"
        findings.append(Finding(rel(root, chart.path), None, "promtool", "test", message))
    return findings


def untested(rule_file: Path, tests: list[Path]) -> list[str]:
    """The alerts of `rule_file` (YAML or JSON, which promtool has read) that no case of the
    promtool test files `tests` checks (by its alertname), sorted: a file whose alerts are
    partly untested passes promtool."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    def load(path: Path) -> Any:
        return YAML(typ="safe", pure=True).load(path.read_text("utf-8"))

    rules = load(rule_file) or {}
    groups = (rules.get("groups") or []) if isinstance(rules, dict) else []
    found = [r for g in groups if isinstance(g, dict) for r in g.get("rules") or []]
    alerts = {r["alert"] for r in found if isinstance(r, dict) and "alert" in r}
    tested: set[str] = set()
    for test in tests:
        try:
            checks = [a for case in load(test)["tests"] for a in case.get("alert_rule_test") or []]
            tested |= {a["alertname"] for a in checks}
        except (YAMLError, KeyError, TypeError, AttributeError):
            continue  # promtool reports a file it cannot read
    return sorted(alerts - tested)


def _groups(rule: dict[str, Any]) -> list[Any]:
    spec = rule.get("spec")
    groups = spec.get("groups") if isinstance(spec, dict) else None
    return groups if isinstance(groups, list) else []
