"""The `grafana-dashboard` check: every dashboard a kit ships (the chart's grafana_dashboard
ConfigMap per values file, the Compose hosts' provisioned JSON) against Grafana's dashboard
schema as vendored, through `shipyard validate`, with the real helm."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from shipyard import validate
from tests.conftest import PRESETS, load_preset

CHECK = ["grafana-dashboard"]
# A preset with a chart (production on Kubernetes) and a Compose host with the monitoring stack.
BOTH = "python-api"
CHART_DASHBOARD = "charts/python-api/monitoring/dashboard.json"
COMPOSE_DASHBOARD = "monitoring/grafana/dashboards/python-api.json"


def _dashboards(root: Path) -> list[Path]:
    return [
        *root.glob("charts/*/monitoring/dashboard.json"),
        *root.glob("monitoring/grafana/dashboards/*.json"),
    ]


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_dashboard_passes_grafanas_schema(
    rendered: Callable[[str], Path], preset: str
) -> None:
    root = rendered(preset)
    monitored = load_preset(preset).get("monitoring", "prometheus") == "prometheus"
    # A passing check must have had something to read wherever monitoring is on.
    assert bool(_dashboards(root)) == monitored

    findings = validate.validate(root, only=CHECK)

    assert findings == [], validate.report(findings)


@pytest.fixture
def kit(rendered: Callable[[str], Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(rendered(BOTH), tmp_path / "kit", symlinks=True))


def _edit(path: Path, change: Callable[[dict[str, object]], None]) -> None:
    dashboard = json.loads(path.read_text())
    change(dashboard)
    path.write_text(json.dumps(dashboard, indent=2))


def _messages(root: Path, file: str, rule: str) -> list[str]:
    findings = validate.validate(root, only=CHECK)
    assert {f.tool for f in findings} == {"grafana-schema"}, validate.report(findings)
    return [f.message for f in findings if (f.file, f.rule) == (file, rule)]


def test_panels_of_the_wrong_type_in_the_chart_are_found_per_values_file(kit: Path) -> None:
    _edit(kit / CHART_DASHBOARD, lambda d: d.update(panels="x"))

    messages = _messages(kit, CHART_DASHBOARD, "dashboard")

    # Named by the ConfigMap the sidecar reads, the values file and the JSON path.
    assert messages == [
        "ConfigMap/python-api-dashboard python-api.json (with values-prod.yaml): "
        "$.panels: 'x' is not of type 'array'"
    ]


def test_a_gridpos_width_as_a_string_names_its_json_path(kit: Path) -> None:
    def widen(dashboard: dict[str, object]) -> None:
        panels = dashboard["panels"]
        assert isinstance(panels, list)
        panels[1]["gridPos"]["w"] = "12"

    _edit(kit / COMPOSE_DASHBOARD, widen)

    messages = _messages(kit, COMPOSE_DASHBOARD, "dashboard")

    # The panel is a Panel or a RowPanel (anyOf): the finding names the field, not the panel.
    assert messages == ["$.panels[1].gridPos.w: '12' is not of type 'integer'"]


def test_an_unknown_dashboard_field_is_found(kit: Path) -> None:
    _edit(kit / COMPOSE_DASHBOARD, lambda d: d.update(refreshh="30s"))

    messages = _messages(kit, COMPOSE_DASHBOARD, "dashboard")

    assert messages == ["$: Additional properties are not allowed ('refreshh' was unexpected)"]


def test_an_unparsable_dashboard_is_a_finding(kit: Path) -> None:
    path = kit / CHART_DASHBOARD
    path.write_text(path.read_text().rstrip().removesuffix("}"))

    messages = _messages(kit, CHART_DASHBOARD, "json")

    assert len(messages) == 1
    assert "not valid JSON" in messages[0]


def test_a_dashboard_the_chart_no_longer_renders_is_a_finding(kit: Path) -> None:
    values = kit / "charts" / "python-api" / "values.yaml"
    text = values.read_text()
    assert 'grafana_dashboard: "1"' in text
    values.write_text(text.replace('grafana_dashboard: "1"', 'dashboards: "1"'))

    messages = _messages(kit, CHART_DASHBOARD, "missing")

    assert messages == [
        "the chart ships monitoring/dashboard.json but renders no ConfigMap labelled "
        "grafana_dashboard with any values file"
    ]


def test_a_compose_grafana_without_dashboards_is_a_finding(kit: Path) -> None:
    (kit / COMPOSE_DASHBOARD).unlink()

    messages = _messages(kit, "monitoring/grafana/dashboards", "missing")

    assert messages == [
        "Grafana is provisioned from monitoring/grafana/dashboards, which holds no dashboard"
    ]


def test_the_chart_dashboard_shows_where_the_backups_come_from(
    rendered: Callable[[str], Path],
) -> None:
    """A CloudNativePG Cluster (nestjs-api) has no kit CronJob: its backup panel reads the
    operator's metrics of the Cluster's instances; elsewhere the CronJob's."""

    def exprs(preset: str) -> str:
        (chart,) = rendered(preset).glob("charts/*/monitoring/dashboard.json")
        panels = json.loads(chart.read_text())["panels"]
        return " ".join(t["expr"] for p in panels for t in p["targets"])

    assert load_preset("nestjs-api")["database_on_kubernetes"] == "cloudnativepg"
    operator, kit = exprs("nestjs-api"), exprs(BOTH)
    for metric in ("last_available_backup_timestamp", "last_archived_time", "recoverability"):
        assert metric in operator
        assert metric not in kit
    assert 'pod=~"$release-postgres-[0-9]+"' in operator
    assert "kube_cronjob_status_last_successful_time" in kit
    assert "kube_cronjob_status_last_successful_time" not in operator
