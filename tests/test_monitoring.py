"""Monitoring in the chart: prometheus-operator objects only where their API exists, one
monitor per scraped component, alert rules that promtool accepts and whose unit tests pass,
and every preset valid with monitoring on and off. The sample app's metrics are scraped for
real from the running app."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from shipyard import validate
from tests.conftest import PRESETS, Render, chart_digests, load_preset

API = "monitoring.coreos.com/v1"
# The checks a chart's monitoring can break (the Compose and CI checks do not read it).
CHART_CHECKS = [
    "helm-lint",
    "kubernetes",
    "prometheus-rules",
    "monitoring-crds",
    "grafana-dashboard",
    "answers",
]


def _chart(root: Path) -> Path:
    [chart] = [c.path for c in validate.charts(root) if not c.library]
    return chart


def _template(chart: Path, *args: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        ["helm", "template", chart.name, str(chart), *chart_digests(chart), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def _helm_presets() -> list[str]:
    return [
        p
        for p in PRESETS
        if "helm" in (load_preset(p).get(k, d) for k, d in _TARGET_DEFAULTS.items())
    ]


_TARGET_DEFAULTS = {"staging_target": "compose", "production_target": "helm"}


@pytest.mark.parametrize("preset", _helm_presets())
def test_monitoring_objects_render_only_where_the_operator_api_exists(
    rendered: Callable[[str], Path], preset: str
) -> None:
    answers = load_preset(preset)
    chart = _chart(rendered(preset))
    values = sorted(chart.glob("values-*.yaml"))[-1]  # prod where there is one

    without = _template(chart, "-f", str(values))
    with_api = _template(chart, "-f", str(values), "--api-versions", API)

    assert not [d for d in without if d["apiVersion"] == API]
    monitors = {d["metadata"]["name"]: d["kind"] for d in with_api if d["apiVersion"] == API}
    if answers.get("monitoring", "prometheus") == "none":
        assert monitors == {}
        assert not (chart / "monitoring").exists()
        return
    components = answers.get("components") or [{"name": "x", "kind": "http"}]
    slug = chart.name
    expected = {
        f"{slug}-{c['name']}": "ServiceMonitor" if c["kind"] == "http" else "PodMonitor"
        for c in components
        if c["kind"] == "http" or "metrics_port" in c
    }
    [rule] = [d for d in with_api if d["kind"] == "PrometheusRule"]
    assert {k: v for k, v in monitors.items() if v != "PrometheusRule"} == expected
    assert rule["metadata"]["name"] == slug
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    for alert in alerts:
        assert alert["labels"]["severity"] in {"critical", "warning"}
        assert set(alert["annotations"]) == {"summary", "description", "runbook_url"}
        anchor = alert["annotations"]["runbook_url"].split("#")[1]
        assert f"#### {alert['alert']}\n" in (chart.parent.parent / "DEPLOYMENT.md").read_text()
        assert anchor == alert["alert"].lower()
    # The dashboard reaches Grafana's sidecar with or without the operator.
    [dashboard] = [d for d in without if d["metadata"]["name"].endswith("-dashboard")]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    titles = [p["title"] for p in json.loads(next(iter(dashboard["data"].values())))["panels"]]
    for word in ("Traffic", "Errors", "Latency", "Saturation", "Pods", "Backups"):
        assert any(t.startswith(word) for t in titles), titles


@pytest.mark.parametrize("cnpg", [False, True])
def test_backup_rules_follow_where_postgresql_runs(
    render: Render, tmp_path: Path, cnpg: bool
) -> None:
    """Backups by the kit's CronJob are watched through kube-state-metrics; a CloudNativePG
    Cluster's through the operator's metrics, its WAL archiving too. (promtool cases in
    monitoring/rules*.test.yaml, run by `shipyard validate`, check what each rule does.)"""
    answers = {**load_preset("nestjs-api"), "monitoring": "prometheus"}
    answers["database_on_kubernetes"] = "cloudnativepg" if cnpg else "external"
    chart = _chart(render(answers, tmp_path / "cnpg"))
    [rule] = [
        d
        for d in _template(chart, "-f", str(chart / "values-prod.yaml"), "--api-versions", API)
        if d["kind"] == "PrometheusRule"
    ]
    [backups] = [g for g in rule["spec"]["groups"] if g["name"].endswith(".backups")]
    rules = {(r["alert"], r["labels"].get("source")): r["expr"] for r in backups["rules"]}
    assert "kube_cronjob_status_last_successful_time" in rules[("BackupMissing", None)]
    if not cnpg:
        assert not [r for r in rules if r[1] == "cloudnativepg" or r[0] == "WalArchivingFailed"]
        return
    selector = f'namespace="default", pod=~"{chart.name}-postgres-[0-9]+"'
    for name in ("BackupMissing", "BackupJobFailed", "WalArchivingFailed"):
        source = None if name == "WalArchivingFailed" else "cloudnativepg"
        assert selector in rules[(name, source)], name
    assert "cnpg_pg_stat_archiver_last_failed_time" in rules[("WalArchivingFailed", None)]
    [storage] = [g for g in rule["spec"]["groups"] if g["name"].endswith(".storage")]
    assert f"{chart.name}-postgres-[0-9]+" in storage["rules"][0]["expr"]


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_validates_with_monitoring_switched(
    render: Render, tmp_path: Path, preset: str
) -> None:
    """The presets run `shipyard validate` as they are (test_validate); here each with the
    other monitoring answer, through the checks monitoring touches."""
    answers = load_preset(preset)
    flipped = "none" if answers.get("monitoring", "prometheus") == "prometheus" else "prometheus"
    root = render({**answers, "monitoring": flipped}, tmp_path / preset)

    # and the Compose hosts' stack's (tests/test_compose_monitoring.py has it on everywhere).
    compose = ["compose", "prometheus-config", "alertmanager-config"]
    findings = validate.validate(root, only=[*CHART_CHECKS, *compose])

    assert findings == [], validate.report(findings)
    assert (root / "package.json").exists() == bool(answers.get("sample_app"))


def test_a_worker_with_a_metrics_port_gets_a_pod_monitor_and_its_own_tests(
    render: Render, tmp_path: Path
) -> None:
    components = [
        {"name": "api", "kind": "http", "port": 3000, "health_path": "/health", "path": "."},
        {"name": "jobs", "kind": "worker", "path": ".", "metrics_port": 9464},
        {"name": "cron", "kind": "worker", "path": "."},
    ]
    root = render({"project_name": "Shop", "components": components}, tmp_path / "kit")
    chart = _chart(root)

    docs = _template(chart, "--api-versions", API)

    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs if d["apiVersion"] == API}
    assert kinds == {
        ("ServiceMonitor", "shop-api"),
        ("PodMonitor", "shop-jobs"),
        ("PrometheusRule", "shop"),
    }
    [jobs] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "shop-jobs"]
    container = jobs["spec"]["template"]["spec"]["containers"][0]
    assert container["ports"] == [{"name": "metrics", "containerPort": 9464, "protocol": "TCP"}]
    assert {"name": "METRICS_PORT", "value": "9464"} in container["env"]
    policies = {d["metadata"]["name"] for d in docs if d["kind"] == "NetworkPolicy"}
    assert {"shop-api-metrics", "shop-jobs-metrics"} <= policies
    assert "shop-cron-metrics" not in policies
    tests = yaml.safe_load((chart / "monitoring" / "rules.test.yaml").read_text())
    series = [s["series"] for case in tests["tests"] for s in case["input_series"]]
    assert 'up{namespace="default", job="shop-jobs", instance="10.0.0.1:9464"}' in series
    findings = validate.validate(root, only=CHART_CHECKS)
    assert findings == [], validate.report(findings)


def _seconds(duration: str) -> int:
    """A promtool duration of one unit ("30m", "12h") in seconds."""
    return int(duration[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[duration[-1]]


@pytest.mark.parametrize("preset", PRESETS)
def test_each_unit_test_case_costs_promtool_few_evaluations(
    rendered: Callable[[str], Path], preset: str
) -> None:
    """promtool evaluates every rule at each evaluation_interval of a case up to its last
    eval_time: a case of 30 hours at one minute (1,800 evaluations) took 1.3 s, and four of
    them cost every `shipyard validate` 7 s. Cases in hours go in rules.hourly.test.*,
    evaluated each hour; and each eval_time falls on an evaluation (between two, promtool
    reads the state of the one before: a quiet check could pass for the wrong reason)."""
    root = rendered(preset)
    files = [
        *root.glob("monitoring/rules*.test.yml"),
        *root.glob("charts/*/monitoring/rules*.test.yaml"),
    ]
    monitoring = load_preset(preset).get("monitoring", "prometheus") == "prometheus"
    assert bool(files) == monitoring, files
    for tests in files:
        doc = yaml.safe_load(tests.read_text())
        step = _seconds(doc["evaluation_interval"])
        for case in doc["tests"]:
            times = [_seconds(t["eval_time"]) for t in case["alert_rule_test"]]
            assert all(at % step == 0 for at in times), (tests.name, case["name"], times)
            assert max(times) // step <= 240, (tests.name, case["name"], max(times) // step)


def test_every_alert_has_a_unit_test_that_fails_when_its_threshold_moves(
    render: Render, tmp_path: Path
) -> None:
    """Each test fires its alert near the threshold's default: moving a threshold far away
    (in the chart's defaults, which the tests run against) fails exactly that alert's test."""
    root = render({"project_name": "Shop", "database": "postgres"}, tmp_path / "kit")
    chart = _chart(root)
    cases = [
        case
        for tests in (chart / "monitoring").glob("rules*.test.yaml")
        for case in yaml.safe_load(tests.read_text())["tests"]
    ]
    tested = {t["alertname"] for case in cases for t in case["alert_rule_test"]}
    rule = _template(chart, "--api-versions", API)
    [rules] = [d for d in rule if d["kind"] == "PrometheusRule"]
    alerts = {r["alert"] for g in rules["spec"]["groups"] for r in g["rules"]}
    assert tested == alerts
    assert validate.validate(root, only=["prometheus-rules"]) == []

    moved = {
        "errorRatio": ("0.5", "ServiceHighErrorRate"),
        "latencySeconds": ("50", "ServiceHighLatency"),
        "restartsPerHour": ("100", "ServicePodRestarting"),
        "backupMaxAgeHours": ("1000", "BackupMissing"),
        "drillMaxAgeDays": ("100", "BackupDrillStale"),
        "volumeFreeRatio": ("0.01", "VolumeAlmostFull"),
    }
    values = chart / "values.yaml"
    original = values.read_text()
    for key, (value, alert) in moved.items():
        lines = [
            f"    {key}: {value}" if line.startswith(f"    {key}: ") else line
            for line in original.splitlines()
        ]
        values.write_text("\n".join(lines) + "\n")
        findings = validate.validate(root, only=["prometheus-rules"])
        # The alerts measured in hours are tested in the file evaluated each hour.
        tests = "rules.hourly.test.yaml" if key.endswith(("Hours", "Days")) else "rules.test.yaml"
        where = f"charts/{chart.name}/monitoring/{tests}"
        assert [(f.file, f.rule) for f in findings] == [(where, "test")], validate.report(findings)
        assert f"alertname: {alert}," in findings[0].message
    values.write_text(original)
    # An alert no case fires is a finding, though every case passes.
    (chart / "monitoring" / "rules.hourly.test.yaml").unlink()
    findings = validate.validate(root, only=["prometheus-rules"])
    assert [(f.file, f.rule) for f in findings] == [(f"charts/{chart.name}", "test")]
    assert findings[0].message == (
        "BackupDrillStale, BackupMissing: no promtool unit test in monitoring/rules*.test.yaml"
        " fires it"
    )
    # Without its tests, a chart's rules are a finding, not a clean report.
    for test_file in (chart / "monitoring").glob("rules*.test.yaml"):
        test_file.unlink()
    findings = validate.validate(root, only=["prometheus-rules"])
    assert [(f.file, f.rule) for f in findings] == [(f"charts/{chart.name}", "test")]
    assert "has no promtool unit tests" in findings[0].message


@pytest.mark.slow
def test_the_sample_app_serves_its_request_metrics(render: Render, tmp_path: Path) -> None:
    """The real app, installed from its lockfile (`npm ci`), answers requests and then shows
    them on /metrics, by route and status, beside the process metrics."""
    root = render(
        {"project_name": "Shop API", "sample_app": True, "database": "none"}, tmp_path / "kit"
    )
    npm = shutil.which("npm")
    assert npm, "npm is needed"
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=root, check=True)
    subprocess.run([npm, "run", "build"], cwd=root, check=True, capture_output=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = subprocess.Popen(
        ["node", "dist/main.js"], cwd=root, env={**os.environ, "PORT": str(port)}
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                requests.get(f"{base}/health", timeout=1).raise_for_status()
                break
            except requests.RequestException:
                time.sleep(0.1)
        assert requests.get(f"{base}/", timeout=2).status_code == 200
        assert requests.get(f"{base}/no-such-page?id=1", timeout=2).status_code == 404
        response = requests.get(f"{base}/metrics", timeout=2)
        assert response.headers["content-type"].startswith("text/plain")
        metrics = response.text
    finally:
        app.terminate()
        app.wait(timeout=10)
    assert 'http_requests_total{method="GET",route="/",status="200"} 1' in metrics
    assert 'http_requests_total{method="GET",route="unmatched",status="404"} 1' in metrics
    bucket = 'http_request_duration_seconds_bucket{le="+Inf",method="GET",route="/",status="200"}'
    assert f"{bucket} 1" in metrics
    assert "process_resident_memory_bytes" in metrics
    assert "/metrics" not in metrics  # scrapes are not counted as requests
