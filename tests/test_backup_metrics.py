"""Backups report themselves: `shipyard backup run` and `verify` (the restore drill), run as the
CronJob runs them against the real PostgreSQL, push their outcome to a real Pushgateway, and the
values read back from its /metrics page (what Prometheus scrapes) are the backup's own. A push
that fails never changes the command's exit status."""

from __future__ import annotations

import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml
from invoke.config import Config
from invoke.context import Context
from invoke.exceptions import Exit

from shipyard import backup
from shipyard.backup import metrics
from shipyard.tasks import backup as backup_tasks
from tests.backup_data import shipyard_cli
from tests.conftest import REPO, Render, chart_digests, load_preset
from tests.servers.postgres import PostgresServer, free_port
from tests.servers.pushgateway import Pushgateway

SUCCESS = "shipyard_backup_last_success_timestamp_seconds"
FAILURE = "shipyard_backup_last_failure_timestamp_seconds"
VERIFY_SUCCESS = "shipyard_backup_verify_last_success_timestamp_seconds"
VERIFY_FAILURE = "shipyard_backup_verify_last_failure_timestamp_seconds"


def push_env(url: str, service: str) -> dict[str, str]:
    return {metrics.URL_VARIABLE: url, "SHIPYARD_SERVICE": service, "SHIPYARD_ENV": "prod"}


def group(service: str) -> dict[str, str]:
    """The labels of one kit's group, as Prometheus sees them (honor_labels)."""
    return {"job": metrics.JOB, "service": service, "environment": "prod"}


@dataclass(frozen=True)
class Kit:
    """One kit's backups: its own `service` label (so tests' groups never meet), the engine's
    environment (database and Pushgateway) and its storage."""

    service: str
    env: dict[str, str]
    target: str
    store: Path

    def shipyard(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """`shipyard backup ACTION --target ...` as the CronJob runs it."""
        action, *rest = args
        argv = ["backup", action, "--target", self.target, *rest]
        return shipyard_cli(*argv, env={**self.env, **env})


@pytest.fixture
def kit(
    database: str, postgres_server: PostgresServer, pushgateway: Pushgateway, tmp_path: Path
) -> Kit:
    service = f"shop-{secrets.token_hex(3)}"
    env = {**postgres_server.env(database), **push_env(pushgateway.url, service)}
    store = tmp_path / "store"
    return Kit(service, env, store.as_uri(), store)


def test_run_and_verify_push_the_facts_of_the_backup(kit: Kit, pushgateway: Pushgateway) -> None:
    made = kit.shipyard("run", "--retention-days", "7")
    assert made.returncode == 0, made.stderr
    assert "warning" not in made.stderr
    newest = backup.list_backups(backup.from_url(kit.target))[-1]
    pushed = pushgateway.values(**group(kit.service))
    assert pushed[SUCCESS] == newest.created.timestamp()
    archive = kit.store / newest.id / backup.engine.DUMP
    assert pushed["shipyard_backup_size_bytes"] == archive.stat().st_size
    assert pushed["shipyard_backup_duration_seconds"] == newest.manifest["duration_seconds"]
    assert FAILURE not in pushed
    assert not any(name.startswith("shipyard_backup_verify") for name in pushed)

    before = time.time()
    checked = kit.shipyard("verify")
    after = time.time()
    assert checked.returncode == 0, checked.stderr
    drilled = pushgateway.values(**group(kit.service))
    assert drilled["shipyard_backup_verify_success"] == 1
    assert before <= drilled[VERIFY_SUCCESS] <= after
    assert 0 < drilled["shipyard_backup_verify_duration_seconds"] <= after - before
    # The drill's recovery time and point, as it recorded them beside the backup.
    record = backup.list_backups(backup.from_url(kit.target))[-1].verified
    assert record is not None
    assert drilled["shipyard_backup_verify_restore_seconds"] == record["restore_seconds"]
    assert 0 < record["restore_seconds"] < drilled["shipyard_backup_verify_duration_seconds"]
    age = drilled["shipyard_backup_verify_recovery_point_age_seconds"]
    assert age == record["recovery_point_age_seconds"]
    assert before - newest.created.timestamp() <= age <= after - newest.created.timestamp()
    assert VERIFY_FAILURE not in drilled
    # The drill's push left the backup's facts as the run pushed them.
    for name in (SUCCESS, "shipyard_backup_size_bytes", "shipyard_backup_duration_seconds"):
        assert drilled[name] == pushed[name]


def test_a_failed_backup_stamps_its_failure_keeps_the_last_success_and_exits_1(
    kit: Kit, pushgateway: Pushgateway
) -> None:
    assert kit.shipyard("run").returncode == 0
    good = pushgateway.values(**group(kit.service))

    before = time.time()
    failed = kit.shipyard("run", PGDATABASE="no_such_database")
    after = time.time()
    assert failed.returncode == 1
    assert "no_such_database" in failed.stderr
    pushed = pushgateway.values(**group(kit.service))
    assert before <= pushed[FAILURE] <= after
    assert pushed[FAILURE] > pushed[SUCCESS]
    assert pushed[SUCCESS] == good[SUCCESS]
    assert pushed["shipyard_backup_size_bytes"] == good["shipyard_backup_size_bytes"]


def test_a_failed_drill_pushes_result_0_and_its_time(kit: Kit, pushgateway: Pushgateway) -> None:
    assert kit.shipyard("run").returncode == 0
    newest = backup.list_backups(backup.from_url(kit.target))[-1]
    dump = kit.store / newest.id / backup.engine.DUMP
    dump.write_bytes(dump.read_bytes()[:-1] + b"\0")  # same size, other sha256

    before = time.time()
    checked = kit.shipyard("verify")
    after = time.time()
    assert checked.returncode == 1
    assert "is corrupted" in checked.stderr
    pushed = pushgateway.values(**group(kit.service))
    assert pushed["shipyard_backup_verify_success"] == 0
    assert before <= pushed[VERIFY_FAILURE] <= after
    assert VERIFY_SUCCESS not in pushed


def test_an_unreachable_pushgateway_leaves_a_good_backup_good(
    database: str, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    env = {**postgres_server.env(database), **push_env(nobody, "shop")}
    target = (tmp_path / "store").as_uri()

    made = shipyard_cli("backup", "run", "--target", target, env=env)
    assert made.returncode == 0, made.stderr
    assert f"shipyard backup: warning: could not push the metrics to {nobody} (" in made.stderr
    assert made.stderr.rstrip().endswith("; the command's own result stands.")
    assert "Traceback" not in made.stderr
    assert len(backup.list_backups(backup.from_url(target))) == 1


@pytest.mark.parametrize(
    ("unset", "named"),
    [
        (["SHIPYARD_SERVICE"], "SHIPYARD_SERVICE"),
        (["SHIPYARD_ENV"], "SHIPYARD_ENV"),
        (["SHIPYARD_SERVICE", "SHIPYARD_ENV"], "SHIPYARD_SERVICE and SHIPYARD_ENV"),
    ],
)
def test_a_push_without_its_labels_is_a_warning_not_a_failure(
    pushgateway: Pushgateway, unset: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    service = f"shop-{secrets.token_hex(3)}"
    environ = {k: v for k, v in push_env(pushgateway.url, service).items() if k not in unset}
    report = metrics.verify_report(None, started=1.0, ended=2.0)

    metrics.push(report, environ)
    assert capsys.readouterr().err == (
        f"shipyard backup: warning: SHIPYARD_PUSHGATEWAY_URL is set but {named} is not, so the"
        " metrics were not pushed; set both to the labels the alerts select; the command's own"
        " result stands.\n"
    )
    assert pushgateway.values(service=service) == {}
    # Without a URL nothing is pushed, and nothing said.
    metrics.push(report, {})
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("scheme", ["http://", ""])
def test_a_url_with_credentials_is_never_printed(
    scheme: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not the user, not the password (an unescaped @ in it too), whether or not the URL names
    its scheme (the client then takes http)."""
    where = f"127.0.0.1:{free_port()}/"
    environ = push_env(f"{scheme}pusher-7:s3c@ret@{where}", "shop")
    metrics.push(metrics.run_report(None, failed_at=1.0), environ)
    said = capsys.readouterr().err
    assert said.startswith(
        f"shipyard backup: warning: could not push the metrics to http://{where} ("
    )
    assert "pusher-7" not in said
    assert "s3c" not in said
    assert "ret@" not in said


def test_a_pushgateway_that_never_answers_is_given_up_on(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A gateway that takes the connection and never answers costs the backup the push's
    timeout, not a hang."""
    monkeypatch.setattr(metrics, "TIMEOUT_SECONDS", 0.5)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        report = metrics.run_report(None, failed_at=1.0)
        # In a thread: without a timeout the push would hang the test run instead of failing it.
        pushing = threading.Thread(target=metrics.push, args=(report, push_env(url, "shop")))
        pushing.start()
        pushing.join(30)
        assert not pushing.is_alive(), "the push did not give up"
    said = capsys.readouterr().err
    assert said.startswith(f"shipyard backup: warning: could not push the metrics to {url} (")
    assert "timed out" in said


# Where kube-state-metrics does not exist (Compose hosts) the pushed series are the only record
# of backup runs too: the rules and their promtool tests as a Compose host's rule file has them.
COMPOSE_RULES = """
{%- import 'template/includes/monitoring.jinja' as mon with context -%}
groups:
{{ mon.rules(s) }}
"""
COMPOSE_TESTS = """
{%- import 'template/includes/monitoring-tests.jinja' as mt with context -%}
rule_files: [rules.yaml]
evaluation_interval: 1h
tests:
{{ mt.backup_tests(t) }}
"""


def _compose_rules(tmp_path: Path, max_age_hours: int = 30, drill_days: int = 8) -> Path:
    """rules.yaml (rendered with these thresholds) and rules.test.yaml (tests that expect 30
    hours and 8 days) in a new folder."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(REPO),
        undefined=jinja2.StrictUndefined,
        # YAML, not HTML: rendered as copier renders the template, without escaping.
        autoescape=jinja2.select_autoescape(default_for_string=False),
    )
    labels = {"job": metrics.JOB, "service": "shop", "environment": "prod"}
    # A Compose host's rules watch every environment pushing there: no environment matcher.
    matchers = f'job="{metrics.JOB}", service="shop"'
    s = {
        "o": "{{",
        "c": "}}",
        "runbook": "",
        "app": 'job=~"shop-api"',
        "http": "",
        # No kube-state-metrics or kubelet series on a Compose host.
        **dict.fromkeys(("pod", "hpa", "cronjob", "job", "pvc"), ""),
        "backups": matchers,
        "backup_runs": True,
        "backup_max_age_seconds": max_age_hours * 3600,
        "backup_max_age": f"{max_age_hours}h",
        "drill_max_age_seconds": drill_days * 86400,
    }
    t = {
        "labels": labels,
        "runs": True,
        "max_age_hours": 30,
        "drill_max_age_days": 8,
        "one_environment": False,
    }
    folder = tmp_path / f"rules-{max_age_hours}-{drill_days}"
    folder.mkdir()
    context = {"service_slug": "shop", "s": s, "t": t}
    (folder / "rules.yaml").write_text(env.from_string(COMPOSE_RULES).render(context))
    (folder / "rules.test.yaml").write_text(env.from_string(COMPOSE_TESTS).render(context))
    return folder


def _promtool(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], cwd=folder, capture_output=True, text=True, check=False
    )


def test_compose_backup_alerts_fire_on_pushed_series_and_their_tests_have_teeth(
    tmp_path: Path,
) -> None:
    folder = _compose_rules(tmp_path)
    checked = _promtool(folder, "check", "rules", "rules.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = _promtool(folder, "test", "rules", "rules.test.yaml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout
    rules = yaml.safe_load((folder / "rules.yaml").read_text())
    [backups] = [g for g in rules["groups"] if g["name"] == "shop.backups"]
    names = sorted(r["alert"] for r in backups["rules"])
    assert names == [
        "BackupDrillFailed",
        "BackupDrillStale",
        "BackupJobFailed",
        "BackupMissing",
    ]
    cases = yaml.safe_load((folder / "rules.test.yaml").read_text())["tests"]
    assert {a["alertname"] for c in cases for a in c["alert_rule_test"]} == set(names)
    # A threshold moved far away fails the tests of the alerts that read it, and only those.
    for moved, alerts in (
        (_compose_rules(tmp_path, max_age_hours=300), {"BackupMissing"}),
        (_compose_rules(tmp_path, drill_days=80), {"BackupDrillStale"}),
    ):
        failed = _promtool(moved, "test", "rules", "rules.test.yaml")
        assert failed.returncode == 1
        said = failed.stdout + failed.stderr
        assert {a for a in names if f"alertname: {a}," in said} == alerts, said


def test_the_rules_read_only_metrics_the_engine_pushes() -> None:
    source = (REPO / "template" / "includes" / "monitoring.jinja").read_text()
    read = set(re.findall(r"\bshipyard_backup_[a-z_]+", source))
    assert read <= set(metrics.METRICS), read - set(metrics.METRICS)
    # Each alert's and panel's fact: a metric renamed on one side only fails here.
    assert len(read) >= 7


def _chart_docs(chart: Path, *args: str) -> list[dict[str, Any]]:
    values = str(chart / "values-prod.yaml")
    out = subprocess.run(
        ["helm", "template", "shop", str(chart), *chart_digests(chart), "-f", values, *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_the_chart_pushes_and_opens_egress_only_when_a_pushgateway_is_set(
    rendered: Callable[[str], Path], tmp_path: Path
) -> None:
    [chart] = (rendered("python-api") / "charts").iterdir()
    url = "http://prometheus-pushgateway.monitoring:9091"

    def backup_env(docs: list[dict[str, Any]]) -> dict[str, str]:
        # The backups' CronJob (the restore drill's gets the same environment).
        [cron] = [
            d for d in docs if d["kind"] == "CronJob" and d["metadata"]["name"].endswith("-backup")
        ]
        [container] = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
        return {e["name"]: e.get("value", "") for e in container["env"]}

    def push_policies(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            d
            for d in docs
            if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("-push-egress")
        ]

    quiet = _chart_docs(chart, "--namespace", "shop-prod")
    assert not any(k.startswith("SHIPYARD_") for k in backup_env(quiet))
    assert push_policies(quiet) == []

    docs = _chart_docs(chart, "--namespace", "shop-prod", "--set", f"backup.pushgateway.url={url}")
    env = backup_env(docs)
    assert {k: v for k, v in env.items() if k.startswith("SHIPYARD_")} == {
        "SHIPYARD_PUSHGATEWAY_URL": url,
        "SHIPYARD_SERVICE": chart.name,
        "SHIPYARD_ENV": "shop-prod",
    }
    [policy] = push_policies(docs)
    component = {"app.kubernetes.io/component": "backup"}
    assert component.items() <= policy["spec"]["podSelector"]["matchLabels"].items()
    assert policy["spec"]["egress"] == [
        {
            "to": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                    },
                    "podSelector": {
                        "matchLabels": {"app.kubernetes.io/name": "prometheus-pushgateway"}
                    },
                }
            ],
            "ports": [{"port": 9091, "protocol": "TCP"}],
        }
    ]
    https = _chart_docs(chart, "--set", "backup.pushgateway.url=https://push.example.internal")
    assert push_policies(https)[0]["spec"]["egress"][0]["ports"][0]["port"] == 443
    # What a cluster's API server would accept, strictly.
    manifest = tmp_path / "pushing.yaml"
    manifest.write_text("---\n".join(yaml.safe_dump(d) for d in docs))
    validator = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
    assert validator is not None
    checked = subprocess.run(
        [validator, "--strict", "--quiet", "-k", "1.33.0", str(manifest)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # A URL that is not one is refused by the values schema, with the key named.
    bad = subprocess.run(
        ["helm", "lint", "--strict", str(chart), "--set", "backup.pushgateway.url=pushgateway"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode != 0
    assert "at '/backup/pushgateway/url': 'pushgateway' does not match" in bad.stdout


def test_a_drill_run_by_invoke_from_here_reports_itself(
    render: Render,
    postgres_server: PostgresServer,
    pushgateway: Pushgateway,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """On Kubernetes `invoke backup.verify` runs the engine on the operator's machine: with the
    same variables there, its drill is pushed like the image's."""
    answers = {**load_preset("minimal"), "database": "postgres", "migrations": "none"}
    repo = render({**answers, "backup_storage": "local"}, tmp_path / "repo")
    service = f"shop-{secrets.token_hex(3)}"
    database = postgres_server.create_database("svc")
    with postgres_server.connect(database) as conn:
        conn.execute("CREATE TABLE notes (id serial PRIMARY KEY, body text)")
    for key, value in {
        **postgres_server.env(database),
        **push_env(pushgateway.url, service),
    }.items():
        monkeypatch.setenv(key, value)
    c = Context(config=Config(overrides={"shipyard": {"root": str(repo)}}))
    with pytest.raises(Exit, match="no complete backup"):
        backup_tasks.verify(c, env="staging")
    assert pushgateway.values(**group(service))["shipyard_backup_verify_success"] == 0

    backup_tasks.run(c, env="staging")
    before = time.time()
    backup_tasks.verify(c, env="staging")
    pushed = pushgateway.values(**group(service))
    assert pushed["shipyard_backup_verify_success"] == 1
    assert before <= pushed[VERIFY_SUCCESS] <= time.time()
