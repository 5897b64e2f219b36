"""Files backups where CloudNativePG backs the database up: the nestjs-api preset (PostgreSQL by
CloudNativePG) with a component that keeps uploads in a data path.

The operator archives WAL and base backups, not the components' files, so the chart renders
its backup and drill CronJobs in files-only mode (`shipyard backup run --files-only`): no
database Secret or PG* variable, egress to storage and DNS only. `invoke backup` takes a base
backup and runs that CronJob as a Job; `invoke restore --files` runs a Job of its pod with the
claims writable. `kubectl` is the stand-in of tests/kubectl.py (no API server is reachable
here); the CronJob and Cluster it answers with are the chart's own render (real helm).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from shipyard import validate
from shipyard.backup import engine, storage
from shipyard.engines import helm as helm_engine
from shipyard.validate.crds import CNPG_API
from tests.conftest import Render, chart_digests, init_repo, invoke_cli, load_preset, template_chart
from tests.kubectl import Kubectl, rule
from tests.servers.s3 import S3Server

NAMESPACE = "nestjs-template-prod"
CLUSTER = "nestjs-template-postgres"
CRONJOB = "nestjs-template-backup"
TARGET = "s3://nestjs-template-backups/prod/files"
S3_KEYS = "nestjs-template-backup-s3"
Doc = dict[str, Any]


def _answers(data_paths: bool) -> dict[str, Any]:
    answers = load_preset("nestjs-api")
    assert answers["database_on_kubernetes"] == "cloudnativepg"
    if data_paths:
        (api,) = answers["components"]
        api["data_paths"] = ["/app/uploads"]
    return answers


@pytest.fixture(scope="module")
def root(render: Render, tmp_path_factory: pytest.TempPathFactory) -> Path:
    kit = render(_answers(True), tmp_path_factory.mktemp("cnpg-files") / "nestjs-template")
    init_repo(kit, "kit")
    return kit


def _chart(kit: Path) -> Path:
    return kit / "charts" / "nestjs-template"


def _prod(kit: Path, *args: str) -> list[Doc]:
    """prod's objects as `invoke deploy` installs them (release nestjs-template)."""
    chart = _chart(kit)
    out = subprocess.run(
        ["helm", "template", "nestjs-template", str(chart), *chart_digests(chart),
         "--namespace", NAMESPACE, "-f", str(chart / "values-prod.yaml"), *args],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [d for d in yaml.safe_load_all(out) if d]


def _named(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _container(cronjob: Doc) -> Doc:
    (container,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return dict(container)


def test_shipyard_validate_passes_on_the_render(root: Path) -> None:
    findings = validate.validate(root)
    assert not findings, validate.report(findings)


def test_the_cronjobs_archive_the_data_paths_alone_without_the_database(root: Path) -> None:
    docs = _prod(root, "--api-versions", CNPG_API)
    cronjobs = _named(docs, "CronJob")
    assert sorted(cronjobs) == [CRONJOB, "nestjs-template-restore-drill"]
    backup = _container(cronjobs[CRONJOB])
    assert backup["args"] == [
        "shipyard", "backup", "run", "--target", TARGET, "--retention-days", "30",
        "--files-only", "--data-path", "api:/app/uploads",
    ]  # fmt: skip
    drill = _container(cronjobs["nestjs-template-restore-drill"])
    assert drill["args"] == ["shipyard", "backup", "verify", "--target", TARGET]
    for container in (backup, drill):
        # Storage credentials only: no database Secret, no libpq variable.
        assert container["envFrom"] == [{"secretRef": {"name": S3_KEYS}}]
        assert not [e for e in container["env"] if e["name"].startswith("PG")]
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "runAsGroup": 1000,
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
    pod = cronjobs[CRONJOB]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (mount,) = [m for m in backup["volumeMounts"] if m["name"].startswith("data-")]
    assert mount == {
        "name": "data-api-app-uploads", "mountPath": "/data/api/app/uploads", "readOnly": True
    }  # fmt: skip
    # The operator's Cluster still backs the database up, to the folder beside TARGET.
    (cluster,) = _named(docs, "Cluster").values()
    store = cluster["spec"]["backup"]["barmanObjectStore"]["destinationPath"]
    assert store == "s3://nestjs-template-backups/prod"
    assert f"{store}/files" == TARGET


def test_the_backup_pods_reach_storage_and_dns_only(root: Path) -> None:
    policies = _named(
        _prod(root, "--set", "backup.s3.endpoint=http://minio.storage:9000"), "NetworkPolicy"
    )
    # No policy opens PostgreSQL to the backup pods: they reach no database.
    assert "nestjs-template-backup-services-egress" not in policies
    s3 = policies["nestjs-template-backup-s3-egress"]["spec"]
    assert s3["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "backup"
    assert s3["egress"] == [{"ports": [{"port": 9000, "protocol": "TCP"}]}]
    # DNS (and public HTTPS, for AWS) as every pod of the release.
    everyone = policies["nestjs-template-egress"]["spec"]["egress"]
    assert {"port": 53, "protocol": "UDP"} in everyone[0]["ports"]
    backup_rules = [
        name
        for name, p in policies.items()
        if p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/component")
        == "backup"
    ]
    assert backup_rules == ["nestjs-template-backup-s3-egress"]


def test_without_data_paths_nothing_of_the_kits_backups_renders(
    render: Render, tmp_path: Path
) -> None:
    kit = render(_answers(False), tmp_path / "nestjs-template")
    chart = _chart(kit)
    docs = template_chart(chart, "-f", str(chart / "values-prod.yaml"))
    assert not _named(docs, "CronJob")
    assert not [
        name
        for name in _named(docs, "NetworkPolicy")
        if name.startswith("rel-nestjs-template-backup")
    ]


# --- the tasks: `invoke backup`, `invoke restore --files` ----------------------------------


@dataclass(frozen=True)
class Cluster:
    kubectl: Kubectl
    live: Doc
    cronjob: Doc


@pytest.fixture(scope="module")
def cluster(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    """prod's Cluster (with the status the operator gives it) and backup CronJob as rendered."""
    docs = _prod(root, "--api-versions", CNPG_API)
    (live,) = _named(docs, "Cluster").values()
    live["metadata"]["namespace"] = NAMESPACE
    live["status"] = {"firstRecoverabilityPoint": "2026-12-01T03:00:00Z"}
    return Cluster(
        Kubectl.install(tmp_path_factory.mktemp("kubectl")), live, _named(docs, "CronJob")[CRONJOB]
    )


def _job_from(cronjob: Doc) -> Doc:
    """The Job `kubectl create job --from=cronjob/... --dry-run=client --output json` prints."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "rendered",
            "annotations": {"cronjob.kubernetes.io/instantiate": "manual"},
        },
        "spec": cronjob["spec"]["jobTemplate"]["spec"],
    }


def _backup_rules(
    cluster: Cluster, job: str, cronjob: str = f"cronjob.batch/{CRONJOB}\n"
) -> list[Doc]:
    return [
        rule(["get", "clusters.postgresql.cnpg.io"], json.dumps(cluster.live)),
        rule(["get", "backups.postgresql.cnpg.io"], "completed\t"),
        rule(["get", "cronjob"], cronjob),
        rule(["create", "job"], json.dumps(_job_from(cluster.cronjob))),
        rule(["get", "job"], job),
    ]


def test_backup_takes_a_base_backup_then_runs_the_files_backup_job(
    root: Path, cluster: Cluster
) -> None:
    env = cluster.kubectl.env(_backup_rules(cluster, "Complete\t"))
    result = invoke_cli(root, "backup", "--env", "prod", env=env, timeout=120)

    assert result.returncode == 0, result.stderr
    ns = ["--namespace", NAMESPACE]
    commands = cluster.kubectl.commands()
    assert [c[:2] for c in commands[:3]] == [
        ["get", "clusters.postgresql.cnpg.io"], ["create", "--namespace"],
        ["get", "backups.postgresql.cnpg.io"],
    ]  # fmt: skip
    lookup, render, create, poll = commands[3:]
    assert lookup == ["get", "cronjob", CRONJOB, *ns, "--ignore-not-found", "--output", "name"]
    name = render[5]
    assert name.startswith("nestjs-template-files-")
    assert render == [
        "create", "job", *ns, f"--from=cronjob/{CRONJOB}", name,
        "--dry-run=client", "--output", "json",
    ]  # fmt: skip
    assert create[:4] == ["create", *ns, "--filename"]
    assert poll == ["get", "job", name, *ns, "--output", helm_engine.JOB_CONDITIONS]
    assert f"prod: files backup {name} of api:/app/uploads completed" in result.stdout
    # A person asked for it: the engine records it manual (retention keeps every manual backup
    # of the daily window; a second scheduled one that day would prune a scheduled one).
    (job,) = [m for m in cluster.kubectl.applied() if m["kind"] == "Job"]
    assert job["metadata"]["namespace"] == NAMESPACE
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert {"name": "SHIPYARD_BACKUP_KIND", "value": "manual"} in container["env"]
    assert _container(cluster.cronjob)["args"] == container["args"]


def test_a_failed_files_backup_fails_the_task_with_where_to_look(
    root: Path, cluster: Cluster
) -> None:
    env = cluster.kubectl.env(_backup_rules(cluster, "Failed\tBackoffLimitExceeded"))
    result = invoke_cli(root, "backup", "--env", "prod", env=env, timeout=120)

    assert result.returncode == 1
    assert "the files backup of prod failed: the files backup Job nestjs-template-files-" in (
        result.stderr
    )
    assert (
        f"(BackoffLimitExceeded); see `kubectl logs --namespace {NAMESPACE} job/" in result.stderr
    )
    assert "Traceback" not in result.stderr
    # The base backup before it completed, and says so.
    assert "prod: base backup nestjs-template-manual-" in result.stdout


def test_a_release_without_the_cronjob_is_one_sentence(root: Path, cluster: Cluster) -> None:
    env = cluster.kubectl.env(_backup_rules(cluster, "Complete\t", cronjob=""))
    result = invoke_cli(root, "backup", "--env", "prod", env=env, timeout=120)

    assert result.returncode == 1
    assert (
        f"there is no CronJob {CRONJOB} in namespace {NAMESPACE} to archive the data paths"
    ) in result.stderr
    assert not [c for c in cluster.kubectl.commands() if c[:2] == ["create", "job"]]


def test_backup_dry_run_plans_both_and_calls_nothing(root: Path, cluster: Cluster) -> None:
    env = cluster.kubectl.env([])
    result = invoke_cli(root, "backup", "--env", "prod", "--dry-run", env=env, timeout=120)

    assert result.returncode == 0, result.stderr
    assert "and the data paths (the files-only backup CronJob)" in result.stdout
    assert f"kubectl create job --namespace {NAMESPACE} --from=cronjob/{CRONJOB}" in result.stdout
    assert "with SHIPYARD_BACKUP_KIND=manual in each container>" in result.stdout
    assert cluster.kubectl.calls() == []


def test_restore_files_runs_the_files_only_cronjobs_pod(root: Path, cluster: Cluster) -> None:
    selector = "app.kubernetes.io/instance=nestjs-template,app.kubernetes.io/component=api"
    env = cluster.kubectl.env(
        [
            rule(["get", "cronjob"], json.dumps(cluster.cronjob)),
            rule(["get", "deployment", "--selector", selector], "nestjs-template-api\t3\n"),
            rule(["get", "job"], "Complete\t"),
        ]
    )
    result = invoke_cli(root, "restore", "--files", "--env", "prod", "--yes", env=env, timeout=120)

    assert result.returncode == 0, result.stderr
    (job,) = cluster.kubectl.applied()
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == [
        "shipyard", "backup", "restore", "--files", "--target", TARGET, "--yes",
        "--data-path", "api:/app/uploads",
    ]  # fmt: skip
    # No database to reach: the engine takes a files-only safety backup (backup/recovery.py).
    assert container["envFrom"] == [{"secretRef": {"name": S3_KEYS}}]
    (mount,) = [m for m in container["volumeMounts"] if m["name"].startswith("data-")]
    assert mount["readOnly"] is False
    assert [
        "scale",
        "deployment/nestjs-template-api",
        "--replicas=3",
        "--namespace",
        NAMESPACE,
    ] in (cluster.kubectl.commands())
    assert "prod: api:/app/uploads restored" in result.stdout


def test_list_and_verify_read_the_files_backups_beside_the_operators(
    root: Path,
    cluster: Cluster,
    s3_server: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What the files-only CronJob writes, on a real S3 server, where the chart points it.
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bucket, prefix = TARGET.removeprefix("s3://").split("/", 1)
    boto3.client("s3").create_bucket(Bucket=bucket)
    uploads = tmp_path / "api" / "app" / "uploads"
    uploads.mkdir(parents=True)
    (uploads / "report.pdf").write_bytes(b"%PDF-1.7 uploaded")
    files = [engine.data_path("api:/app/uploads", tmp_path)]
    made = engine.files_backup(
        storage.S3Storage(bucket, prefix, s3_server.endpoint), files, log=lambda _: None
    )
    env = {
        **s3_server.env(),
        **cluster.kubectl.env(
            [
                rule(["get", "clusters.postgresql.cnpg.io"], json.dumps(cluster.live)),
                rule(["get", "backups.postgresql.cnpg.io"], "nestjs-template-daily-1\n"),
            ]
        ),
        "PGHOST": "/nonexistent",  # no database is needed for any of it
    }

    listed = invoke_cli(root, "backup.list", "--env", "prod", env=env, timeout=120)

    assert listed.returncode == 0, listed.stderr
    assert "nestjs-template-daily-1" in listed.stdout  # the operator's
    assert f"prod: files backups (the data paths) in {TARGET}:" in listed.stdout
    (row,) = [line for line in listed.stdout.splitlines() if line.startswith(made.id)]
    assert "(files only)" in row

    verified = invoke_cli(root, "backup.verify", "--env", "prod", env=env, timeout=120)

    assert verified.returncode == 0, verified.stderr
    assert f"prod: files backup {made.id} verified: 1 archive(s) match" in verified.stdout
    record = storage.S3Storage(bucket, prefix, s3_server.endpoint).get_bytes(
        f"{made.id}/{engine.VERIFIED}"
    )
    assert json.loads(record)["files"] == 1
