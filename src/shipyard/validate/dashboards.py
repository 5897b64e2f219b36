"""The Grafana dashboards a kit ships, against Grafana's dashboard (v1 JSON model) schema,
vendored in schemas/grafana/ (offline): the chart's dashboard ConfigMaps as the Grafana sidecar
reads them (rendered with the prometheus-operator API, per values file), and the Compose
hosts' provisioned monitoring/grafana/dashboards/*.json.

Grafana loads a dashboard it cannot read as an empty or half-drawn one without failing the
deploy, so a dashboard that is missing, unparsable or off-schema is a finding here.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from shipyard.validate.files import Chart, rel
from shipyard.validate.finding import Finding
from shipyard.validate.monitoring import render, render_failure, runs, values_name
from shipyard.validate.tools import each

TOOL = "grafana-schema"
# The label kube-prometheus-stack's Grafana sidecar watches (the chart's default
# monitoring.dashboard.labels): a ConfigMap with it is a dashboard the sidecar loads.
SIDECAR_LABEL = "grafana_dashboard"
# Where a chart keeps the dashboard its ConfigMap carries.
CHART_DASHBOARD = Path("monitoring", "dashboard.json")
# Where Compose hosts' Grafana is provisioned from (monitoring/grafana/provisioning/dashboards
# points the file provider at it).
COMPOSE_DASHBOARDS = Path("monitoring", "grafana", "dashboards")
COMPOSE_PROVIDERS = Path("monitoring", "grafana", "provisioning", "dashboards")


def check_grafana_dashboards(root: Path) -> list[Finding]:
    """Every dashboard of the kit against the vendored schema: each violation a finding naming
    the file and the JSON path."""
    every = runs(root)
    results = each(lambda run: _chart_run(root, *run), every)
    findings = [f for found, _ in results for f in found]
    # A values file may turn the dashboard off, but a chart that ships one and renders it
    # with none of them has lost it.
    shown: dict[Path, bool] = {}
    for (chart, _), (_, rendered) in zip(every, results, strict=True):
        shown[chart.path] = shown.get(chart.path, False) or rendered
    for chart_path, rendered in shown.items():
        dashboard = chart_path / CHART_DASHBOARD
        if dashboard.is_file() and not rendered:
            message = (
                f"the chart ships {CHART_DASHBOARD} but renders no ConfigMap labelled "
                f"{SIDECAR_LABEL} with any values file"
            )
            findings.append(Finding(rel(root, dashboard), None, TOOL, "missing", message))
    return findings + _compose_dashboards(root)


def _chart_run(root: Path, chart: Chart, values: Path | None) -> tuple[list[Finding], bool]:
    """The findings of the chart's dashboard ConfigMaps with `values`, and whether it rendered
    one (a render that failed counts as rendered: its failure is the finding)."""
    documents, failed = render(root, chart, values)
    if failed:
        return [render_failure(root, chart, values, failed)], True
    source = rel(root, chart.path / CHART_DASHBOARD)
    maps = [d for d in documents if d.get("kind") == "ConfigMap" and _is_dashboard_map(d)]
    findings = []
    for config_map in maps:
        name = f"ConfigMap/{(config_map.get('metadata') or {}).get('name', '?')}"
        data = config_map.get("data") or {}
        keys = [k for k in data if str(k).endswith(".json")]
        if not keys:
            message = f"{name} (with {values_name(values)}) holds no .json dashboard"
            findings.append(Finding(source, None, TOOL, "missing", message))
        for key in keys:
            where = f"{name} {key} (with {values_name(values)})"
            findings += _check(source, where, str(data[key]))
    return findings, bool(maps)


def _is_dashboard_map(document: dict[str, Any]) -> bool:
    labels = (document.get("metadata") or {}).get("labels") or {}
    return isinstance(labels, dict) and SIDECAR_LABEL in labels


def _compose_dashboards(root: Path) -> list[Finding]:
    folder = root / COMPOSE_DASHBOARDS
    if not (root / COMPOSE_PROVIDERS).is_dir() and not folder.is_dir():
        return []  # no Compose host runs Grafana
    dashboards = sorted(folder.glob("*.json"))
    if not dashboards:
        message = f"Grafana is provisioned from {COMPOSE_DASHBOARDS}, which holds no dashboard"
        return [Finding(rel(root, folder), None, TOOL, "missing", message)]
    findings = []
    for path in dashboards:
        findings += _check(rel(root, path), "", path.read_text("utf-8"))
    return findings


def _check(file: str, where: str, text: str) -> list[Finding]:
    """`text` parsed and checked against the schema; `where` prefixes each message."""
    from jsonschema import Draft7Validator

    prefix = f"{where}: " if where else ""
    try:
        dashboard = json.loads(text)
    except ValueError as exc:
        return [Finding(file, None, TOOL, "json", f"{prefix}not valid JSON: {exc}")]
    findings = []
    for error in Draft7Validator(_schema()).iter_errors(dashboard):
        error = _deepest(error)
        message = f"{prefix}{json_path(error.absolute_path)}: {error.message}"
        findings.append(Finding(file, None, TOOL, "dashboard", message))
    return findings


def _deepest(error: Any) -> Any:
    """The branch error that explains an anyOf (a panel is a Panel or a RowPanel) best: the one
    that got deepest into the document, so a wrong gridPos.w names gridPos.w, not the panel."""
    while error.context:
        error = max(error.context, key=lambda e: len(e.absolute_path))
    return error


def json_path(path: Any) -> str:
    """A jsonschema error's path as JSONPath: $.panels[1].gridPos.w."""
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


@cache
def _schema() -> dict[str, Any]:
    """Grafana's dashboard schema, as vendored (see schemas/grafana/README.md)."""
    text = files("shipyard").joinpath("schemas", "grafana", "dashboard.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema
