"""The Compose hosts' monitoring stack (compose.monitoring.yaml, monitoring/): its shape for
every preset that has one, and the real engines (Debian's Prometheus, Alertmanager,
Pushgateway and PostgreSQL exporter) run on loopback with the rendered rule file and config,
against the real sample app and the test's PostgreSQL."""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from shipyard import validate
from tests.conftest import PRESETS, Render, load_preset
from tests.servers.postgres import PostgresServer, free_port

FILE = "compose.monitoring.yaml"
# The checks the stack's files meet (the chart's are test_monitoring's).
CHECKS = [
    "compose",
    "compose-schema",
    "prometheus-config",
    "alertmanager-config",
    "yaml",
    "shellcheck",
]


def _has_stack(answers: dict[str, Any]) -> bool:
    targets = (answers.get("staging_target", "compose"), answers.get("production_target", "helm"))
    return answers.get("monitoring", "prometheus") == "prometheus" and "compose" in targets


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("preset", PRESETS)
def test_the_stack_is_locked_down_and_reads_the_repository_through_the_api(
    render: Render, tmp_path: Path, preset: str
) -> None:
    """With monitoring on (whatever the preset answers): loopback ports only, no bind mount,
    non-root, read-only, no capabilities; on the prod stack's networks; the chart's very
    dashboard; a rule file from the chart's source with a unit test per alert."""
    answers = {**load_preset(preset), "monitoring": "prometheus"}
    root = render(answers, tmp_path / preset)
    if not _has_stack(answers):
        assert not (root / FILE).exists()
        assert not (root / "monitoring").exists()
        return
    stack = _load(root / FILE)
    slug = stack["name"].removesuffix("-monitoring")
    services = stack["services"]
    for name, service in services.items():
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert service["user"].split(":")[0] not in ("0", "root"), name
        assert service["deploy"]["resources"]["limits"]["memory"], name
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
        for volume in service.get("volumes", []):
            assert not volume.split(":")[0].startswith((".", "/", "~")), (name, volume)
            assert volume.split(":")[0] in stack["volumes"], (name, volume)
        for target, source in service.get("x-shipyard-files", {}).items():
            assert target.startswith("/config/"), (name, target)
            assert (root / source).exists(), (name, source)
    assert {"prometheus", "alertmanager", "grafana", "pushgateway"} <= set(services)
    assert ("postgres-exporter" in services) == (answers.get("database", "postgres") == "postgres")
    assert ("redis-exporter" in services) == bool(answers.get("redis"))
    assert services["pushgateway"]["command"][-1].endswith(":9091")
    for network in ("edge", "backend"):
        if network in stack["networks"]:
            assert stack["networks"][network] == {"name": f"{slug}_{network}", "external": True}

    prometheus = _load(root / "monitoring" / "prometheus.yml")
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert jobs["pushgateway"]["honor_labels"] is True
    for c in answers.get("components") or []:
        if c["kind"] == "http" or "metrics_port" in c:
            sd = jobs[f"{slug}-{c['name']}"]["dns_sd_configs"][0]
            assert sd["names"] == [c["name"]]
            assert sd["port"] == c.get("port", c.get("metrics_port"))

    rules = _load(root / "monitoring" / "rules.yml")
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    # Each alert's runbook link lands on its entry (a Compose-only kit's backup alerts had none).
    runbook = (root / "DEPLOYMENT.md").read_text()
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        assert rule["annotations"]["runbook_url"] == f"DEPLOYMENT.md#{rule['alert'].lower()}"
        assert f"\n#### {rule['alert']}\n" in runbook, rule["alert"]
    cases = [c for t in (root / "monitoring").glob("rules*.test.yml") for c in _load(t)["tests"]]
    tested = {t["alertname"] for case in cases for t in case["alert_rule_test"]}
    assert "ServiceTargetDown" in alerts
    assert tested == alerts
    assert not any(a.startswith("ServicePod") for a in alerts)  # Kubernetes' own series

    dashboard = json.loads(
        (root / "monitoring" / "grafana" / "dashboards" / f"{slug}.json").read_text()
    )
    # The chart's dashboard, less what only Kubernetes has: the host's saturation comes from
    # the processes' metrics, and no panel reads kubelet or kube-state-metrics series.
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert not [q for q in queries if "kube_" in q or "container_" in q]
    assert any("process_cpu_seconds_total" in q for q in queries)
    # The recovery point where pgBackRest archives (the alert's series), and only there.
    postgres = answers.get("database", "postgres") == "postgres"
    pitr = postgres and answers.get("point_in_time_recovery", True)  # a Compose host's default
    assert any("pg_stat_archiver" in q for q in queries) == pitr
    assert ("WalArchivingFailed" in alerts) == pitr
    charts = [c.path for c in validate.charts(root) if not c.library]
    if charts:
        chart_board = json.loads((charts[0] / "monitoring" / "dashboard.json").read_text())
        # Panel 6: the CronJobs or the Cluster there, pgBackRest's archiving here.
        same = {p["id"]: p for p in chart_board["panels"] if p["id"] not in (4, 5, 6)}
        assert {p["id"]: p for p in dashboard["panels"] if p["id"] not in (4, 5, 6)} == same
        assert {k: v for k, v in dashboard.items() if k != "panels"} == {
            k: v for k, v in chart_board.items() if k != "panels"
        }
    assert dashboard["panels"]

    findings = validate.validate(root, only=CHECKS)
    assert findings == [], validate.report(findings)


def test_the_task_plans_the_files_then_the_stack_and_refuses_kubernetes(
    rendered: Callable[[str], Path],
) -> None:
    from tests.conftest import invoke_cli

    root = rendered("saas-checklist")  # staging on Compose, prod on Kubernetes

    # Compose as the package installs it, beside this interpreter.
    path = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    planned = invoke_cli(root, "monitoring.up", "--env", "staging", "--dry-run", env=path)
    refused = invoke_cli(root, "monitoring.up", "--env", "prod", env=path)
    without_compose = invoke_cli(
        root, "monitoring.up", "--env", "staging", "--dry-run", env={"PATH": "/nonexistent"}
    )

    assert planned.returncode == 0, planned.stderr
    steps = planned.stdout.splitlines()
    assert "up --no-start --no-build --no-deps prometheus alertmanager grafana" in steps[1]
    assert "put monitoring/prometheus.yml, monitoring/rules.yml" in steps[2]
    assert f"--file {FILE} up --detach" in steps[3]
    assert "--wait" in steps[3]
    assert refused.returncode == 1
    assert "runs on Kubernetes" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert without_compose.returncode == 1
    assert "Docker Compose v2 is not installed" in without_compose.stderr
    assert "Traceback" not in without_compose.stderr


def test_each_compose_alert_test_fails_when_its_rule_moves(
    rendered: Callable[[str], Path], tmp_path: Path
) -> None:
    """The unit tests are no formality: a threshold or a job moved in rules.yml fails the
    test of exactly that alert."""
    root = Path(shutil.copytree(rendered("project-management"), tmp_path / "kit"))
    rules = root / "monitoring" / "rules.yml"
    original = rules.read_text()
    assert validate.validate(root, only=["prometheus-config"]) == []
    moved = {
        "ServiceHighErrorRate": ("[5m])) > 0.05", "[5m])) > 0.5"),
        "ServiceHighLatency": ("[5m]))) > 0.5", "[5m]))) > 50"),
        "ServiceTargetDown": ('up{job=~"pmtool-backend|', 'up{job=~"pmtool-elsewhere|'),
        "WalArchivingFailed": (
            'failed_count{job="pmtool-postgres-exporter"}[5m]) > 0',
            'failed_count{job="pmtool-postgres-exporter"}[5m]) > 50',
        ),
        # The alerts measured in hours are tested in a file evaluated each hour.
        "BackupMissing": ('service="pmtool"})) > 108000', 'service="pmtool"})) > 1080000'),
        "BackupDrillStale": ('service="pmtool"})) > 691200', 'service="pmtool"})) > 6912000'),
    }
    for alert, (old, new) in moved.items():
        assert original.count(old) == 1, old
        rules.write_text(original.replace(old, new))
        findings = validate.validate(root, only=["prometheus-config"])
        tests = "rules.hourly.test.yml" if alert.startswith("Backup") else "rules.test.yml"
        assert [(f.file, f.rule) for f in findings] == [(f"monitoring/{tests}", "test")]
        assert f"alertname: {alert}," in findings[0].message, findings[0].message
    rules.write_text(original)
    # An alert no case fires is a finding, though every case passes.
    (root / "monitoring" / "rules.hourly.test.yml").unlink()
    findings = validate.validate(root, only=["prometheus-config"])
    assert [(f.file, f.rule) for f in findings] == [("monitoring/rules.yml", "test")]
    assert findings[0].message == (
        "BackupDrillFailed, BackupDrillStale, BackupJobFailed, BackupMissing: no promtool unit"
        " test in monitoring/rules*.test.yml fires it"
    )
    # Without its tests, a rule file is a finding, not a clean report.
    for test_file in (root / "monitoring").glob("rules*.test.yml"):
        test_file.unlink()
    findings = validate.validate(root, only=["prometheus-config"])
    assert [(f.file, f.rule) for f in findings] == [("monitoring/rules.yml", "test")]
    assert "has alert rules but no promtool unit tests" in findings[0].message


# -- the real engines -------------------------------------------------------------------------


def _wait(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    """check()'s first truthy result, polled; fail saying `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except requests.RequestException as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}; last: {last!r}")


@contextmanager
def _running(
    argv: list[str], env: dict[str, str], log: Path, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """An HTTP receiver for Alertmanager's webhook: its URL and each notification's JSON."""
    received: list[dict[str, Any]] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test reads the notifications, not the server's log."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    response = requests.get(f"{base}/api/v1/query", params={"query": expr}, timeout=5)
    response.raise_for_status()
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


@pytest.mark.slow
def test_the_real_prometheus_scrapes_the_app_and_exporter_and_evaluates_the_rendered_rules(
    render: Render,
    tmp_path: Path,
    postgres_server: PostgresServer,
    webhook: tuple[str, list[dict[str, Any]]],
) -> None:
    """Prometheus with the rendered prometheus.yml (its targets moved to loopback, its
    intervals to 1 s) and the rendered rules.yml as they are; the rendered exporter variables
    given to the real exporter, logging in as the service's own role; alertmanager.sh starting
    the real Alertmanager with a webhook from the environment."""
    for binary in ("prometheus", "prometheus-alertmanager", "prometheus-pushgateway"):
        assert shutil.which(binary), f"{binary} is needed: run .ci/setup.sh"
    exporter_bin = shutil.which("prometheus-postgres-exporter")
    assert exporter_bin, "prometheus-postgres-exporter is needed: run .ci/setup.sh"
    answers = {
        "project_name": "Shop API",
        "sample_app": True,
        "database": "postgres",
        "staging_target": "compose",
    }
    root = render(answers, tmp_path / "kit")
    slug, role = "shop-api", "shop_api"
    stack = _load(root / FILE)
    monitoring = root / "monitoring"

    # The service's database and role, as compose.prod.yaml's postgres creates them.
    password = "s3cret-" + os.urandom(4).hex()
    with postgres_server.connect() as conn:
        conn.autocommit = True
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        conn.execute(f"CREATE DATABASE {role} OWNER {role}")
    database_url = f"postgresql://{role}:{password}@127.0.0.1:{postgres_server.port}/{role}"

    npm = shutil.which("npm")
    assert npm, "npm is needed"
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=root, check=True)
    subprocess.run([npm, "run", "build"], cwd=root, check=True, capture_output=True)

    ports = {name: free_port() for name in ("api", "exporter", "prom", "am", "push")}
    host = {
        slug: ports["api"],  # the component (named after the service) and its Compose service
        "postgres-exporter": ports["exporter"],
        "alertmanager": ports["am"],
        "pushgateway": ports["push"],
        "localhost": ports["prom"],
    }
    config = _load(monitoring / "prometheus.yml")
    config["global"].update(scrape_interval="1s", evaluation_interval="1s", scrape_timeout="1s")
    for job in config["scrape_configs"]:
        names = [(sd["names"][0], sd["port"]) for sd in job.pop("dns_sd_configs", [])] or [
            tuple(t.split(":")) for t in job["static_configs"][0]["targets"]
        ]
        job["static_configs"] = [{"targets": [f"127.0.0.1:{host[n]}" for n, _ in names]}]
    config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [
        f"127.0.0.1:{ports['am']}"
    ]
    # Beside the rendered rules.yml, which it loads by its relative name.
    (monitoring / "prometheus.test-loopback.yml").write_text(yaml.safe_dump(config))

    exporter_env = dict(stack["services"]["postgres-exporter"]["environment"])
    assert set(exporter_env) == {"DATA_SOURCE_URI", "DATA_SOURCE_USER", "DATA_SOURCE_PASS"}
    exporter_env["DATA_SOURCE_URI"] = exporter_env["DATA_SOURCE_URI"].replace(
        "postgres:5432", f"127.0.0.1:{postgres_server.port}"
    )
    exporter_env["DATA_SOURCE_PASS"] = password  # ${POSTGRES_PASSWORD}, the app's secret

    bin_dir = tmp_path / "bin"  # the image's name for Alertmanager
    bin_dir.mkdir()
    (bin_dir / "alertmanager").symlink_to(shutil.which("prometheus-alertmanager") or "")
    hook_url, received = webhook
    secret_url = f"{hook_url}/hook?token={password}"
    am_tmp = tmp_path / "am-tmp"
    am_tmp.mkdir()
    base_env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    logs = tmp_path / "logs"
    logs.mkdir()
    prom = f"http://127.0.0.1:{ports['prom']}"

    with (
        _running(
            ["node", "dist/main.js"],
            {**base_env, "PORT": str(ports["api"]), "DATABASE_URL": database_url},
            logs / "app.log",
            cwd=root,
        ) as app,
        _running(
            [exporter_bin, f"--web.listen-address=127.0.0.1:{ports['exporter']}"],
            {**base_env, **exporter_env},
            logs / "exporter.log",
        ),
        _running(
            ["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{ports['push']}"],
            base_env,
            logs / "pushgateway.log",
        ),
        _running(
            [
                "sh",
                str(monitoring / "alertmanager.sh"),
                f"--storage.path={tmp_path / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{ports['am']}",
                "--cluster.listen-address=",
            ],
            {
                **base_env,
                "PATH": f"{bin_dir}{os.pathsep}{base_env['PATH']}",
                "TMPDIR": str(am_tmp),
                "ALERTMANAGER_WEBHOOK_URL": secret_url,
            },
            logs / "alertmanager.log",
        ) as alertmanager,
        _running(
            [
                "prometheus",
                f"--config.file={monitoring / 'prometheus.test-loopback.yml'}",
                f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                f"--web.listen-address=127.0.0.1:{ports['prom']}",
            ],
            base_env,
            logs / "prometheus.log",
        ),
    ):
        # Every target of the rendered scrape config answers.
        def targets_up() -> list[str]:
            active = requests.get(f"{prom}/api/v1/targets", timeout=5).json()["data"]
            health = {t["labels"]["job"]: t["health"] for t in active["activeTargets"]}
            if health and set(health.values()) == {"up"}:
                return sorted(health)
            errors = {t["labels"]["job"]: t["lastError"] for t in active["activeTargets"]}
            raise requests.RequestException(f"targets: {errors}")  # what _wait reports

        jobs = _wait("every target up", targets_up)
        api_job = f"{slug}-{slug}"
        assert jobs == sorted(
            [api_job, f"{slug}-postgres-exporter", "pushgateway", "alertmanager", "prometheus"]
        )
        # The service's targets carry the Compose project as their namespace (the dashboard's).
        assert _query(prom, f'up{{job="{api_job}", namespace="{slug}"}} == 1')
        # The exporter logged in with the service's role and password.
        assert _wait("pg_up", lambda: _query(prom, f'pg_up{{job="{slug}-postgres-exporter"}} == 1'))
        # The app's request metrics, under the job the alerts and dashboard read.
        api = f"http://127.0.0.1:{ports['api']}"
        # (503 here: no migration made its table; counted all the same.)
        requests.get(f"{api}/health", timeout=5)
        _wait(
            "request metrics",
            lambda: _query(prom, f'http_requests_total{{job="{api_job}", route="/health"}}'),
        )

        # Every panel of the host's dashboard shows the app (the pushed backups' once pushed):
        # none reads a series only Kubernetes has.
        board = json.loads((monitoring / "grafana" / "dashboards" / f"{slug}.json").read_text())
        # (pgBackRest's recovery point: the age of the last archived segment, which this
        # server, archiving nothing, lacks; its alert's counters are checked below.)
        shown = [
            p for p in board["panels"] if not re.search(r"\(pushed\)|\(pgBackRest\)", p["title"])
        ]
        assert len(shown) == 5
        assert len(board["panels"]) == 10
        for panel in shown:
            for target in panel["targets"]:
                expr = target["expr"].replace("$namespace", slug).replace("$job", api_job)
                _wait(f"data for {panel['title']!r}: {expr}", functools.partial(_query, prom, expr))

        # The rendered rules load and evaluate; while everything is up, no alert.
        def evaluated() -> list[dict[str, Any]]:
            groups = requests.get(f"{prom}/api/v1/rules", timeout=5).json()["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            done = all(r["health"] == "ok" and r["lastEvaluation"][:4] != "0001" for r in rules)
            return rules if rules and done else []

        rules = _wait("the rules evaluated", evaluated)
        backups = {"BackupMissing", "BackupJobFailed", "BackupDrillFailed", "BackupDrillStale"}
        assert {r["name"] for r in rules} == {
            "ServiceTargetDown",
            "ServiceHighErrorRate",
            "ServiceHighLatency",
            "WalArchivingFailed",
            *backups,
        }
        # WalArchivingFailed's series, as the real exporter names them.
        for counter in ("archived_count", "failed_count"):
            series = f'pg_stat_archiver_{counter}{{job="{slug}-postgres-exporter"}}'
            assert _query(prom, series), series
        # While everything is up, no alert: on this new host no backup or drill is due yet
        # (Prometheus has held data for less than their thresholds).
        alerts = requests.get(f"{prom}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
        assert alerts == []

        # A backup's fact pushed to the Pushgateway keeps its own job label (honor_labels).
        push = f"http://127.0.0.1:{ports['push']}/metrics/job/backup/instance/prod"
        requests.put(push, data="shipyard_test_backup_success 1\n", timeout=5).raise_for_status()
        _wait(
            "the pushed fact",
            lambda: _query(prom, 'shipyard_test_backup_success{job="backup", instance="prod"}'),
        )

        # Alertmanager runs the config alertmanager.sh wrote on TMPDIR, webhook included,
        # readable by its owner only, and the secret URL is in no process's arguments.
        written = am_tmp / "alertmanager.yml"
        assert secret_url in written.read_text()
        assert written.stat().st_mode & 0o077 == 0
        assert password not in Path(f"/proc/{alertmanager.pid}/cmdline").read_text()
        check = subprocess.run(["amtool", "check-config", str(written)], capture_output=True)
        assert check.returncode == 0, check.stdout + check.stderr

        # The app stops: ServiceTargetDown is pending on its job (firing after its 5 minutes).
        app.terminate()
        app.wait(timeout=10)

        def pending() -> list[dict[str, Any]]:
            alerts = requests.get(f"{prom}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
            return [
                a
                for a in alerts
                if a["labels"]["alertname"] == "ServiceTargetDown"
                and a["labels"]["job"] == api_job
                and a["state"] == "pending"
            ]

        [alert] = _wait("ServiceTargetDown pending", pending)
        assert alert["labels"]["severity"] == "critical"
        assert alert["labels"]["service"] == slug
        assert alert["annotations"]["runbook_url"] == "DEPLOYMENT.md#servicetargetdown"

        # An alert given to Alertmanager reaches the webhook from the environment (after
        # the route's group_wait).
        am = f"http://127.0.0.1:{ports['am']}"
        firing = [{"labels": {**alert["labels"], "alertname": "ServiceTargetDown"}}]
        requests.post(f"{am}/api/v2/alerts", json=firing, timeout=5).raise_for_status()
        [notification] = _wait("the webhook", lambda: list(received), timeout=90)
        assert notification["status"] == "firing"
        assert notification["commonLabels"]["job"] == api_job
