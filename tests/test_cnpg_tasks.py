"""Backups and point-in-time recovery where CloudNativePG runs PostgreSQL (engines/cnpg.py,
tasks/operator.py), run as a user runs them: `invoke backup|backup.list|restore --at` in a
generated kit.

No Kubernetes API server is reachable here, so `kubectl` is a stand-in (the one fake the rules
allow) that logs each call, with the manifest it was given, and answers as the operator would.
The live Cluster it reports is the chart's own render for prod (`helm template` with the
operator's API), and every manifest the tasks apply is checked against the vendored
CloudNativePG CRD schemas.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from shipyard.validate.crds import CNPG_API, strict_schema
from tests.conftest import Render, chart_digests, init_repo, invoke_cli, load_preset
from tests.kubectl import Kubectl, rule

NAMESPACE = "nestjs-template-prod"
CLUSTER = "nestjs-template-postgres"
FIRST_POINT = "2026-12-01T03:00:00Z"

PHASE = "jsonpath={.status.phase}{'\\t'}{.status.error}"


@dataclass(frozen=True)
class Run:
    result: subprocess.CompletedProcess[str]
    calls: list[dict[str, Any]]
    commands: list[list[str]]
    applied: list[dict[str, Any]]


@dataclass(frozen=True)
class Kit:
    root: Path
    kubectl: Kubectl
    live: dict[str, Any]

    def invoke(self, *args: str, story: str = "") -> Run:
        cluster = "" if story == "no-cluster" else json.dumps(self.live)
        phases = {
            "backup-fails": ["failed\tcan't upload to s3://backups: AccessDenied"],
            "backup-slow": ["running\t", "completed\t"],
        }.get(story, ["completed\t"])
        listing = (
            "NAME                      AGE   CLUSTER                    PHASE\n"
            "nestjs-template-daily-1   2d    nestjs-template-postgres   completed\n"
        )
        env = self.kubectl.env(
            [
                rule(["get", "clusters.postgresql.cnpg.io"], cluster),
                rule(["get", "backups.postgresql.cnpg.io", "--namespace"], listing),
                rule(["get", "backups.postgresql.cnpg.io"], phases),
            ]
        )
        result = invoke_cli(self.root, *args, env=env, timeout=120)
        return Run(result, self.kubectl.calls(), self.kubectl.commands(), self.kubectl.applied())


@pytest.fixture(scope="module")
def kit(render: Render, tmp_path_factory: pytest.TempPathFactory) -> Kit:
    """The nestjs-api preset (PostgreSQL by CloudNativePG), and prod's Cluster as the chart
    renders it, with the status the operator gives it after its first base backup."""
    answers = load_preset("nestjs-api")
    assert answers["database_on_kubernetes"] == "cloudnativepg"
    root = render(answers, tmp_path_factory.mktemp("cnpg") / "nestjs-template")
    init_repo(root, "kit")
    chart = root / "charts" / "nestjs-template"
    out = subprocess.run(
        ["helm", "template", "nestjs-template", str(chart), *chart_digests(chart),
         "--namespace", NAMESPACE, "-f", str(chart / "values-prod.yaml"),
         "--api-versions", CNPG_API],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    [cluster] = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "Cluster"]
    cluster["metadata"]["namespace"] = NAMESPACE
    cluster["status"] = {
        "firstRecoverabilityPoint": FIRST_POINT,
        "phase": "Cluster in healthy state",
    }
    return Kit(root, Kubectl.install(tmp_path_factory.mktemp("kubectl")), cluster)


def _valid(manifest: dict[str, Any]) -> None:
    errors = [
        e.message for e in Draft7Validator(strict_schema(manifest["kind"])).iter_errors(manifest)
    ]
    assert errors == [], errors


def test_the_kit_says_where_postgresql_runs(kit: Kit) -> None:
    data = yaml.safe_load((kit.root / "shipyard.yaml").read_text())
    assert data["database"]["on_kubernetes"] == "cloudnativepg"
    assert kit.live["metadata"]["name"] == CLUSTER
    assert kit.live["spec"]["backup"]["barmanObjectStore"]["destinationPath"]


def test_backup_asks_the_operator_for_a_base_backup_and_waits(kit: Kit) -> None:
    run = kit.invoke("backup", "--env", "prod", story="backup-slow")

    assert run.result.returncode == 0, run.result.stderr
    lookup, create, poll, again = run.commands
    assert lookup == ["get", "clusters.postgresql.cnpg.io", CLUSTER, "--namespace", NAMESPACE,
                      "--ignore-not-found", "--output", "json"]  # fmt: skip
    assert create[:4] == ["create", "--namespace", NAMESPACE, "--filename"]
    [backup] = run.applied
    _valid(backup)
    name = backup["metadata"]["name"]
    assert name.startswith("nestjs-template-manual-")
    assert backup["spec"] == {"cluster": {"name": CLUSTER}, "method": "barmanObjectStore"}
    assert poll == again == ["get", "backups.postgresql.cnpg.io", name, "--namespace", NAMESPACE,
                             "--output", PHASE]  # fmt: skip
    assert f"prod: base backup {name} of Cluster {CLUSTER} completed" in run.result.stdout
    # The manifest went through a private temporary file, deleted once applied.
    assert not Path(create[-1]).exists()


def test_a_failed_base_backup_fails_the_task_with_the_operators_error(kit: Kit) -> None:
    run = kit.invoke("backup", "--env", "prod", story="backup-fails")

    assert run.result.returncode == 1
    assert "failed: can't upload to s3://backups: AccessDenied" in run.result.stderr
    assert "Traceback" not in run.result.stderr
    assert "base backup nestjs-template-manual" not in run.result.stdout


def test_backup_before_the_first_deploy_says_there_is_nothing_yet(kit: Kit) -> None:
    run = kit.invoke("backup", "--env", "prod", story="no-cluster")

    assert run.result.returncode == 1
    assert f"no Cluster {CLUSTER} in namespace {NAMESPACE} yet" in run.result.stdout
    assert "nothing was backed up: deploy prod first" in run.result.stderr
    assert [c[0] for c in run.commands] == ["get"]


def test_list_shows_the_backups_and_the_recoverable_window(kit: Kit) -> None:
    run = kit.invoke("backup.list", "--env", "prod")

    assert run.result.returncode == 0, run.result.stderr
    assert run.commands[-1] == ["get", "backups.postgresql.cnpg.io", "--namespace", NAMESPACE]
    assert "nestjs-template-daily-1" in run.result.stdout
    assert f"recoverable window of Cluster {CLUSTER}: {FIRST_POINT} to now" in run.result.stdout


def test_restore_at_a_time_creates_a_recovery_cluster_beside_the_live_one(kit: Kit) -> None:
    run = kit.invoke("restore", "--env", "prod", "--at", "2026-12-02T10:15:00+01:00",
                     "--yes")  # fmt: skip

    assert run.result.returncode == 0, run.result.stderr
    [recovered] = run.applied
    _valid(recovered)
    name = recovered["metadata"]["name"]
    assert name.startswith(f"{CLUSTER}-pitr-")
    assert len(name) <= 50  # CloudNativePG's limit
    spec, live = recovered["spec"], kit.live["spec"]
    assert spec["bootstrap"] == {
        "recovery": {
            "source": "origin",
            "database": live["bootstrap"]["initdb"]["database"],
            "owner": live["bootstrap"]["initdb"]["owner"],
            "recoveryTarget": {"targetTime": "2026-12-02T09:15:00Z"},
        }
    }
    # It reads the live Cluster's archive (its folder, by serverName) and writes none of its own.
    [origin] = spec["externalClusters"]
    assert origin == {
        "name": "origin",
        "barmanObjectStore": {**live["backup"]["barmanObjectStore"], "serverName": CLUSTER},
    }
    assert "backup" not in spec
    for key in ("imageName", "storage", "resources"):
        assert spec[key] == live[key], key
    assert spec["instances"] == 1
    # Only reads and the new Cluster: nothing names the live one but the lookup.
    assert run.commands[-1] == ["wait", f"clusters.postgresql.cnpg.io/{name}", "--namespace",
                                NAMESPACE, "--for=condition=Ready", "--timeout=3600s"]  # fmt: skip
    assert [c[0] for c in run.commands] == ["get", "create", "wait"]
    assert f"{CLUSTER} is untouched" in run.result.stdout
    assert f"Secret {name}-app" in run.result.stdout


def test_restore_at_latest_replays_every_archived_wal(kit: Kit) -> None:
    run = kit.invoke("restore", "--env", "prod", "--at", "latest", "--yes")

    assert run.result.returncode == 0, run.result.stderr
    [recovered] = run.applied
    _valid(recovered)
    assert recovered["spec"]["bootstrap"]["recovery"].keys() == {"source", "database", "owner"}


@pytest.mark.parametrize(
    ("at", "message"),
    [
        ("2026-11-30T23:00:00Z", "2026-11-30T23:00:00Z is before the oldest base backup kept: "
         f"the recoverable window is {FIRST_POINT} to now (the last archived WAL)"),
        ("2999-01-01T00:00:00Z", "2999-01-01T00:00:00Z is in the future: the recoverable "
         f"window is {FIRST_POINT} to now"),
        ("yesterday", "--at 'yesterday' is not a time: give one like 2026-12-04T10:15:00Z"),
        ("2026-12-02T10:15:00", "--at '2026-12-02T10:15:00' is not a time"),
    ],
)  # fmt: skip
def test_restore_at_outside_the_window_is_refused_and_changes_nothing(
    kit: Kit, at: str, message: str
) -> None:
    run = kit.invoke("restore", "--env", "prod", "--at", at, "--yes")

    assert run.result.returncode == 1
    assert message in run.result.stderr
    assert "Traceback" not in run.result.stderr
    assert [c[0] for c in run.commands] == ["get"]


def test_restore_dry_run_prints_the_cluster_it_would_create(kit: Kit) -> None:
    run = kit.invoke("restore", "--env", "prod", "--at", "2026-12-02T09:15:00Z",
                     "--dry-run")  # fmt: skip

    assert run.result.returncode == 0, run.result.stderr
    assert "(dry run: nothing is changed)" in run.result.stdout
    shown = yaml.safe_load(run.result.stdout.split("--timeout=3600s\n", 1)[1])
    _valid(shown)
    assert shown["spec"]["bootstrap"]["recovery"]["recoveryTarget"] == {
        "targetTime": "2026-12-02T09:15:00Z"
    }
    assert [c[0] for c in run.commands] == ["get"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["restore", "--env", "prod", "--yes"], "restore without --at applies to the kit's dumps"),
        (["backup.verify", "--env", "prod"], "backup.verify applies to the kit's dumps"),
        (["backup.prune", "--env", "prod"], "its retentionPolicy prunes"),
    ],
)
def test_the_dump_tasks_point_to_the_operators(kit: Kit, args: list[str], message: str) -> None:
    run = kit.invoke(*args)

    assert run.result.returncode == 2
    assert message in run.result.stderr
    assert "`invoke restore --env prod --at TIME|latest`" in run.result.stderr
    assert run.calls == []


def test_the_deploy_takes_a_base_backup_before_migrating(kit: Kit) -> None:
    digest = "sha256:" + "ab" * 32
    env = {"SHIPYARD_HELM": "helm", "API_IMAGE": f"ghcr.io/acme/nestjs-template-api@{digest}",
           "BACKUP_IMAGE": f"ghcr.io/acme/nestjs-template-backup@{digest}"}  # fmt: skip
    result = invoke_cli(kit.root, "deploy", "--env", "prod", "--dry-run", env=env)

    assert result.returncode == 0, result.stderr
    steps = result.stdout.splitlines()
    assert steps[2] == (
        f"  2. kubectl get clusters.postgresql.cnpg.io {CLUSTER} --namespace {NAMESPACE} "
        "--ignore-not-found --output json  (no Cluster: a first install, nothing to back up)"
    )
    assert steps[3].startswith(f"  3. kubectl create --namespace {NAMESPACE} --filename <a Backup ")
    assert f"of Cluster {CLUSTER}, method barmanObjectStore>" in steps[3]
    assert "until completed, or stop on failed; at most 300s" in steps[4]
    assert "cronjob" not in result.stdout


def test_restore_at_where_the_kit_dumps_is_refused(render: Render, tmp_path: Path) -> None:
    answers = {**load_preset("nestjs-api"), "database_on_kubernetes": "external"}
    root = render(answers, tmp_path / "kit")

    result = invoke_cli(root, "restore", "--env", "prod", "--at", "latest", "--yes")

    assert result.returncode == 2
    assert "--at (point-in-time recovery) needs PostgreSQL run by CloudNativePG" in result.stderr


def test_recovery_cluster_names_fit_cloudnativepgs_limit() -> None:
    from datetime import UTC, datetime

    from shipyard.engines import cnpg

    # The longest slug copier accepts (40) gives the longest Cluster name the chart renders.
    name = cnpg.recovered_name(
        cnpg.cluster("s" * 39 + "-", "ns"), datetime(2026, 12, 4, tzinfo=UTC)
    )
    assert len(name) <= cnpg.CLUSTER_NAME_MAX == 50
    assert name.endswith("-pitr-20261204000000")
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name


@pytest.mark.cluster
@pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="set KUBECONFIG to run on a cluster")
def test_a_clusters_api_server_accepts_the_objects_the_tasks_create(
    kit: Kit, tmp_path: Path
) -> None:
    """With CloudNativePG installed in the cluster KUBECONFIG names, its API server and webhook
    accept the Backup and the recovery Cluster (server-side dry run: nothing is created)."""
    from shipyard.engines import cnpg

    live = cnpg.Cluster(CLUSTER, "default")
    found = {**kit.live, "metadata": {**kit.live["metadata"], "namespace": "default"}}
    objects = [
        cnpg.backup_manifest(live, "shipyard-test-backup"),
        cnpg.recovery_manifest(found, cnpg.recovered_name(live), None),
    ]
    for manifest in objects:
        path = tmp_path / f"{manifest['kind']}.yaml"
        path.write_text(yaml.safe_dump(manifest))
        subprocess.run(
            ["kubectl", "create", "--dry-run=server", "--filename", str(path)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
