"""The real (not dry-run) Helm deploy path, end to end, against a stand-in for the cluster.

No machine here reaches a Kubernetes API server, so the cluster boundary is stood in for (the
one fake the rules allow): `kubectl` and `helm` are scripts that log their arguments and answer
as a cluster would, and the Kubernetes API the tasks read through the kubernetes client (the
environment's Secret, the rollout) is a small HTTP server. Everything on our side runs for real:
`invoke deploy --env prod --yes` in a generated kit, the registry check against the real
registry, the backup Job before the upgrade, the upgrade, the rollout check, the records.
Every call to the boundary goes into one ordered log, so the tests assert the exact sequence.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from shipyard import config
from shipyard.engines import docker as docker_engine
from tests.conftest import Render, edit_yaml, init_repo
from tests.servers.docker import Dockerd, MirrorImages
from tests.servers.webhook import Webhook, webhook

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("docker")]

NAMESPACE = "shop-api-prod"
# The chart's existingSecret (secretEnv), whose keys the deploy checks.
ENV_OBJECT = "shop-api-env"
# The digest the release ran before the deploy (what `helm get values` reports).
OLD = "sha256:" + "0" * 64
# What each stand-in does, logged as one JSON line per call: [tool, args...].
BOUNDARY = (
    f"""OLD = {OLD!r}
"""
    + """import json, os, sys
from pathlib import Path
tool = Path(sys.argv[0]).name
with Path(os.environ["BOUNDARY_LOG"]).open("a") as log:
    log.write(json.dumps([tool, *sys.argv[1:]]) + "\\n")
story = os.environ.get("BOUNDARY_STORY", "")
if tool == "kubectl":
    what = sys.argv[1:3]
    if "--filename" in sys.argv:  # what a Job was created from, read while the file exists
        made = Path(sys.argv[sys.argv.index("--filename") + 1]).read_text()
        with Path(os.environ["BOUNDARY_LOG"] + ".created").open("a") as created:
            created.write(json.dumps(made) + "\\n")
    if what == ["create", "job"] and "--dry-run=client" in sys.argv:
        # The CronJob's Job, as kubectl renders it from the chart's template (abridged).
        backup = {"name": "backup", "env": [{"name": "PGHOST", "value": "shop-api-postgres"}]}
        print(json.dumps({"kind": "Job", "apiVersion": "batch/v1",
                          "metadata": {"name": sys.argv[-4], "namespace": sys.argv[4]},
                          "spec": {"template": {"spec": {"containers": [backup]}}}}))
    elif what == ["get", "cronjob"]:
        print("cronjob.batch/" + sys.argv[3])
    elif what == ["get", "job"] and "-smoke-" in sys.argv[3]:
        print("Failed\\tBackoffLimitExceeded" if story == "smoke-fails" else "Complete\\t")
    elif what == ["get", "job"]:
        print("Failed\\tBackoffLimitExceeded" if story == "backup-fails" else "Complete\\t")
    elif what == ["get", "deployment"]:
        print(os.environ["BOUNDARY_DEPLOYMENTS"])
    elif what == ["get", "pods"]:
        print("3")  # the smoke check's exit code
    elif sys.argv[1] == "logs":
        print("checking http://shop-api/health\\nGET /health answered 500")
elif tool == "helm":
    if sys.argv[1] == "version":
        print("v4.0.0+g0000000")
    elif sys.argv[1:3] == ["get", "values"]:
        # The values the release was deployed with (`null` when none were given).
        maintenance = {"enabled": True, "retryAfter": 60, "since": "2026-12-04T09:00:00+00:00"}
        deployed = {"components": {"shop-api": {"image": {"digest": OLD}}}}
        print(json.dumps({"maintenance": maintenance} if story == "maintenance-on" else
                         deployed if story.startswith("smoke") else None))
    elif sys.argv[1] == "history":
        done = "Upgrade complete"
        print(json.dumps([{"revision": 4, "status": "superseded", "description": done},
                          {"revision": 5, "status": "deployed", "description": done}]))
    elif sys.argv[1] == "upgrade" and story == "upgrade-fails":
        print("Error: UPGRADE FAILED: context deadline exceeded", file=sys.stderr)
        sys.exit(1)
"""
)


@dataclass
class Cluster:
    """The stand-in's log, how the API answers (which keys the Secret holds), and the
    environment that points a task at it."""

    log: Path
    secret_keys: list[str]
    env: dict[str, str]

    def deploy(self, kit: Path, story: str = "", *args: str) -> subprocess.CompletedProcess[str]:
        """`invoke deploy --env prod --yes` in `kit`; `story` picks how the boundary answers."""
        return self.invoke(kit, story, "deploy", "--env", "prod", "--yes", "--timeout", "30", *args)

    def invoke(self, kit: Path, story: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "invoke", *argv],
            cwd=kit,
            env={**os.environ, **self.env, "BOUNDARY_STORY": story},
            capture_output=True,
            text=True,
            check=False,
        )

    def calls(self) -> list[list[str]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def created(self) -> list[Any]:
        """The manifests `kubectl create --filename` was given, in order."""
        made = Path(f"{self.log}.created")
        lines = made.read_text().splitlines() if made.exists() else []
        return [yaml.safe_load(json.loads(line)) for line in lines]

    def record(self, call: list[str]) -> None:
        with self.log.open("a") as log:
            log.write(json.dumps(call) + "\n")


def _api_handler(cluster: Cluster) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            cluster.record(["api", "GET", url.path, *parse_qs(url.query).get("labelSelector", [])])
            if url.path == f"/api/v1/namespaces/{NAMESPACE}/secrets/{ENV_OBJECT}":
                data = {key: base64.b64encode(b"set").decode() for key in cluster.secret_keys}
                self._send(200, {"kind": "Secret", "apiVersion": "v1", "data": data})
            elif url.path == f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments":
                self._send(200, _deployments())
            else:
                self._send(404, {"kind": "Status", "apiVersion": "v1", "code": 404})

        def _send(self, code: int, body: dict[str, Any]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            del format, args  # the log above is the record

    return Handler


def _deployments() -> dict[str, Any]:
    """The release's one Deployment, rolled out: every updated replica available."""
    deployment = {
        "metadata": {"name": "shop-api", "generation": 2},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "shop-api"}},
            "template": {
                "metadata": {
                    "labels": {
                        "app.kubernetes.io/instance": "shop-api",
                        "app.kubernetes.io/component": "shop-api",
                    }
                },
                "spec": {
                    "serviceAccountName": "shop-api",
                    "containers": [
                        {
                            "name": "shop-api",
                            "image": "registry.example/shop-api@sha256:new",
                            "args": ["node", "src/main.js"],
                            "envFrom": [{"secretRef": {"name": ENV_OBJECT}}],
                            "ports": [{"containerPort": 3000}],
                            "readinessProbe": {"httpGet": {"path": "/health", "port": 3000}},
                            "securityContext": {"runAsNonRoot": True},
                        }
                    ],
                },
            },
        },
        "status": {"observedGeneration": 2, "updatedReplicas": 2, "availableReplicas": 2},
    }
    return {
        "kind": "DeploymentList",
        "apiVersion": "apps/v1",
        "metadata": {},
        "items": [deployment],
    }


@pytest.fixture
def cluster(tmp_path: Path, dockerd: Dockerd, image: str) -> Iterator[Cluster]:
    """The stand-in cluster, with the real dockerd (for the registry check) and the image the
    kit's component deploys."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("kubectl", "helm"):
        script = bin_dir / tool
        script.write_text(f"#!{sys.executable}\n{BOUNDARY}")
        script.chmod(0o755)
    log = tmp_path / "calls"
    log.touch()
    state = Cluster(log, secret_keys=["DATABASE_URL"], env={})
    server = ThreadingHTTPServer(("127.0.0.1", 0), _api_handler(state))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}
                ],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    env = {
        **dockerd.task_env,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SHIPYARD_HELM": str(bin_dir / "helm"),
        "KUBECONFIG": str(kubeconfig),
        "BOUNDARY_LOG": str(log),
        "BOUNDARY_DEPLOYMENTS": json.dumps(_deployments()),
        "SHOP_API_IMAGE": image,
        # The backup CronJob's image (CI passes the one release.yml pushed).
        "BACKUP_IMAGE": image,
    }
    state.env = env
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def image(dockerd: Dockerd, mirror_images: MirrorImages) -> str:
    """An image the real registry holds, by digest: what the kit's component deploys (the
    stand-in cluster never runs it; the registry check before the deploy looks it up)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DOCKER_HOST", dockerd.task_env["DOCKER_HOST"])
        with contextlib.closing(docker_engine.client()) as client:
            digest = docker_engine.registry_digest(client, mirror_images.postgres)
    assert digest, mirror_images.postgres
    return f"{mirror_images.postgres.rsplit(':', 1)[0]}@{digest}"


@pytest.fixture(scope="module")
def kit(render: Render, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample service, prod on Helm with a backup before migrations, committed."""
    root = render(
        {"project_name": "Shop API", "sample_app": True, "ci_provider": "none"},
        tmp_path_factory.mktemp("kit") / "shop-api",
    )
    init_repo(root, "kit")
    return root


def records(kit: Path) -> list[dict[str, Any]]:
    path = kit / ".shipyard" / "deploys-prod.json"
    return json.loads(path.read_text()) if path.exists() else []


def test_helm_deploy_backs_up_then_upgrades_then_checks_the_rollout(
    kit: Path, cluster: Cluster, image: str
) -> None:
    before = len(records(kit))
    result = cluster.deploy(kit)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("prod: deployed and healthy")
    calls = [c for c in cluster.calls() if c[:2] != ["helm", "version"]]  # Helm 3 or 4?
    # The order is the contract: the Secret is checked before anything changes, the backup Job
    # completes before the upgrade, and the rollout is read after it.
    kinds = [(c[0], c[1]) for c in calls]
    assert kinds == [
        ("helm", "get"),  # the deployed values: is it in maintenance mode?
        ("api", "GET"),  # the Secret's keys
        ("kubectl", "get"),  # the backup CronJob exists
        ("kubectl", "create"),  # a Job from it, rendered (client dry run)
        ("kubectl", "create"),  # that Job, a pre-migrate backup, created
        ("kubectl", "get"),  # its conditions: Complete
        ("helm", "upgrade"),
        ("api", "GET"),  # the Deployments of the release
    ], calls
    assert calls[1][2] == f"/api/v1/namespaces/{NAMESPACE}/secrets/{ENV_OBJECT}"
    assert calls[3][-3:] == ["--dry-run=client", "--output", "json"]
    assert calls[4][:4] == ["kubectl", "create", "--namespace", NAMESPACE]
    (created,) = cluster.created()
    assert created["metadata"] == {"name": calls[3][-4], "namespace": NAMESPACE}
    assert created["spec"]["template"]["spec"]["containers"][0]["env"] == [
        {"name": "PGHOST", "value": "shop-api-postgres"},
        {"name": "SHIPYARD_BACKUP_KIND", "value": "pre-migrate"},
    ]
    upgrade = next(c for c in calls if c[:2] == ["helm", "upgrade"])
    digest = image.rpartition("@")[2]
    assert ["--set-string", f"components.shop-api.image.digest={digest}"] == upgrade[
        upgrade.index(f"components.shop-api.image.digest={digest}") - 1 :
    ][:2]
    assert {"--install", "--rollback-on-failure", "--wait-for-jobs"} <= set(upgrade)
    assert calls[-1][2:] == [
        f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments",
        "app.kubernetes.io/instance=shop-api",
    ]
    added = [(entry["images"], entry["status"]) for entry in records(kit)[before:]]
    assert added == [({"shop-api": image}, "deployed")]


def test_a_failed_backup_job_stops_before_the_upgrade(kit: Path, cluster: Cluster) -> None:
    before = records(kit)
    result = cluster.deploy(kit, "backup-fails")
    assert result.returncode == 1
    assert "the backup Job shop-api-backup-pre-" in result.stderr
    assert "failed (BackoffLimitExceeded)" in result.stderr
    assert "nothing was migrated or upgraded" in result.stderr
    assert "upgrade" not in [c[1] for c in cluster.calls() if c[0] == "helm"]
    assert records(kit) == before, "a deploy that changed nothing records nothing"


def test_a_failed_upgrade_is_reported_and_not_recorded_as_deployed(
    kit: Path, cluster: Cluster
) -> None:
    before = records(kit)
    result = cluster.deploy(kit, "upgrade-fails")
    assert result.returncode == 1
    # Helm's own error streams first; ours is the last line.
    assert "Error: UPGRADE FAILED" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == "shipyard: deploy to prod failed: helm upgrade failed (exit 1)"
    # Helm's --rollback-on-failure restores the release itself; the rollout is not read.
    assert [c[1] for c in cluster.calls() if c[0] == "api"] == ["GET"]
    assert records(kit) == before


def test_a_release_without_a_backup_image_changes_nothing(kit: Path, cluster: Cluster) -> None:
    """The chart runs each image by digest: with no backup image pushed for this commit (and
    no BACKUP_IMAGE), the deploy says how to get one before it touches the cluster."""
    before = records(kit)
    env = cluster.env
    cluster.env = {k: v for k, v in env.items() if k != "BACKUP_IMAGE"}
    try:
        result = cluster.deploy(kit)
    finally:
        cluster.env = env
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "shipyard: prod's backup CronJob runs the backup image, and none was pushed for this "
        "commit: run `invoke build --component backup` and `invoke push --component backup` "
        "(CI's release.yml pushes it), or set BACKUP_IMAGE to its repo@digest; nothing was "
        "changed"
    )
    touched = cluster.calls() if cluster.log.exists() else []
    assert [c for c in touched if c[:2] != ["helm", "version"]] == []
    assert records(kit) == before


def test_a_missing_secret_key_changes_nothing(kit: Path, cluster: Cluster) -> None:
    cluster.secret_keys = []
    result = cluster.deploy(kit)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"shipyard: prod needs the secret(s) DATABASE_URL in Secret {ENV_OBJECT} in namespace "
        f"{NAMESPACE}; nothing was changed"
    )
    assert [c[0] for c in cluster.calls() if c[:2] != ["helm", "version"]] == ["helm", "api"]


def test_maintenance_mode_holds_deploys_and_a_deploy_during_it_keeps_it(
    kit: Path, cluster: Cluster
) -> None:
    before = records(kit)
    held = cluster.deploy(kit, "maintenance-on")
    assert held.returncode == 1
    assert held.stderr.strip() == (
        "shipyard: prod is in maintenance mode (since 2026-12-04T09:00:00+00:00); deploy with "
        "--during-maintenance, or first `invoke maintenance --env prod off`; nothing was changed"
    )
    assert "upgrade" not in [c[1] for c in cluster.calls() if c[0] == "helm"]
    assert records(kit) == before
    kept = cluster.deploy(kit, "maintenance-on", "--during-maintenance")
    assert kept.returncode == 0, kept.stderr
    upgrade = next(c for c in cluster.calls() if c[:2] == ["helm", "upgrade"])
    flags = " ".join(upgrade)
    assert "--install" in upgrade
    assert (
        "--set maintenance.enabled=true --set maintenance.retryAfter=60 "
        "--set-string maintenance.since=2026-12-04T09:00:00+00:00 "
        "--set-file maintenance.page=proxy/maintenance/index.html"
    ) in flags


def test_maintenance_on_and_off_upgrade_the_release_as_deployed(
    kit: Path, cluster: Cluster
) -> None:
    on = cluster.invoke(kit, "", "maintenance", "--env", "prod", "on", "--yes")
    assert on.returncode == 0, on.stderr
    assert on.stdout.strip().endswith(
        "prod: in maintenance: the Ingress/HTTPRoute send every request to the 503 page"
    )
    off = cluster.invoke(kit, "", "maintenance", "--env", "prod", "off", "--yes")
    assert off.returncode == 0, off.stderr
    upgrades = [c for c in cluster.calls() if c[:2] == ["helm", "upgrade"]]
    assert [c[2:6] for c in upgrades] == [
        ["shop-api", "charts/shop-api", "--namespace", NAMESPACE]
    ] * 2
    assert "--reset-then-reuse-values" in upgrades[0]
    assert "--install" not in upgrades[0]
    assert "maintenance.page=proxy/maintenance/index.html" in upgrades[0]
    assert upgrades[1][upgrades[1].index("--set") + 1] == "maintenance.enabled=false"


# A chat service's incoming-webhook URL is a secret: its path is the credential.
HOOK_PATH = "/services/T0001/B0001/s3cr3tT0k3n"


@pytest.fixture(scope="module")
def smoke_kit(render: Render, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample service with a smoke check in prod, committed."""
    root = render(
        {"project_name": "Shop API", "sample_app": True, "ci_provider": "none"},
        tmp_path_factory.mktemp("smoke") / "shop-api",
    )

    def smoke(data: Any) -> None:
        data["environments"]["prod"]["smoke"] = {"command": ["node", "smoke.js"], "timeout": 30}

    edit_yaml(root / "shipyard.yaml", smoke)
    init_repo(root, "kit with a smoke check")
    return root


def _announced(
    cluster: Cluster, kit: Path, story: str, status: int = 200
) -> tuple[subprocess.CompletedProcess[str], Webhook]:
    """A deploy with a webhook answering `status` in SHIPYARD_DEPLOY_WEBHOOK_URL, and the
    webhook (which stops listening when this returns)."""
    with webhook(HOOK_PATH) as hook:
        hook.status = status
        cluster.env = {**cluster.env, "SHIPYARD_DEPLOY_WEBHOOK_URL": hook.url}
        return cluster.deploy(kit, story), hook


def _versions(kit: Path, image: str) -> tuple[str, str]:
    """How notifications name the release before the deploy (OLD) and the one deployed."""
    return f"shop-api {config.load(kit).image_repository('shop-api')}@{OLD}", f"shop-api {image}"


def test_the_smoke_check_runs_as_a_job_of_the_new_pods_and_the_deploy_is_announced(
    smoke_kit: Path, cluster: Cluster, image: str
) -> None:
    result, hook = _announced(cluster, smoke_kit, "smoke-passes")
    assert result.returncode == 0, result.stderr
    assert "prod: the smoke check passed" in result.stdout
    calls = [c for c in cluster.calls() if c[:2] != ["helm", "version"]]
    after = [c[:3] for c in calls[calls.index(next(c for c in calls if c[1] == "upgrade")) :]]
    assert after == [
        ["helm", "upgrade", "--install"],
        ["api", "GET", f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments"],
        ["kubectl", "get", "deployment"],  # the component's pod template, as upgraded
        ["kubectl", "create", "--filename"],
        ["kubectl", "get", "job"],  # Complete
    ], calls
    selector = calls[-3][calls[-3].index("--selector") + 1]
    assert selector == "app.kubernetes.io/instance=shop-api,app.kubernetes.io/component=shop-api"
    manifest = json.loads(Path(calls[-2][3]).read_text())
    assert manifest["kind"] == "Job"
    assert manifest["metadata"]["name"] == calls[-1][3]
    assert manifest["metadata"]["name"].startswith("shop-api-smoke-")
    assert manifest["spec"]["backoffLimit"] == 0
    assert manifest["spec"]["activeDeadlineSeconds"] == 30
    pod = manifest["spec"]["template"]
    # Not a pod of the component's Service: no request reaches the check.
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "shop-api-smoke"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["serviceAccountName"] == "shop-api"
    [container] = pod["spec"]["containers"]
    assert container == {
        "name": "shop-api",
        "image": "registry.example/shop-api@sha256:new",
        "command": ["node", "smoke.js"],
        "envFrom": [{"secretRef": {"name": ENV_OBJECT}}],
        "securityContext": {"runAsNonRoot": True},
    }
    old, new = _versions(smoke_kit, image)
    assert hook.received == [
        {"text": f"Deploy of shop-api on prod started: {old} -> {new}"},
        {"text": f"Deploy of shop-api on prod succeeded: now serving {new} (was {old})"},
    ]
    assert HOOK_PATH not in result.stdout + result.stderr


def test_a_failing_smoke_check_rolls_the_helm_release_back(
    smoke_kit: Path, cluster: Cluster, image: str
) -> None:
    result, hook = _announced(cluster, smoke_kit, "smoke-fails")
    assert result.returncode == 1
    reason = (
        "the smoke check `node smoke.js` exited with 3; its last lines: checking "
        "http://shop-api/health | GET /health answered 500"
    )
    assert result.stderr.strip().splitlines()[-1] == (
        f"shipyard: the deploy to prod failed ({reason}); rolled back to revision 4, the "
        "previous version is serving"
    )
    calls = [c for c in cluster.calls() if c[:2] != ["helm", "version"]]
    check = calls.index(next(c for c in calls if c[:3] == ["kubectl", "get", "deployment"]))
    assert [c[:3] for c in calls[check:]] == [
        ["kubectl", "get", "deployment"],
        ["kubectl", "create", "--filename"],
        ["kubectl", "get", "job"],  # Failed
        ["kubectl", "get", "pods"],  # its exit code
        ["kubectl", "logs", calls[check + 2][3].join(("job/", ""))],
        ["helm", "history", "shop-api"],
        ["helm", "rollback", "shop-api"],
    ], calls
    assert calls[-1][3] == "4"  # the revision that served before this deploy's
    assert records(smoke_kit)[-1] == {**records(smoke_kit)[-1], "status": "failed"}
    old, new = _versions(smoke_kit, image)
    assert hook.received == [
        {"text": f"Deploy of shop-api on prod started: {old} -> {new}"},
        {
            "text": f"Deploy of shop-api on prod rolled back: {old} serving again, {new} not "
            f"kept. the deploy to prod failed ({reason}); rolled back to revision 4, the "
            "previous version is serving"
        },
    ]


def test_a_notification_that_fails_is_a_warning_and_never_shows_the_url(
    smoke_kit: Path, cluster: Cluster
) -> None:
    result, hook = _announced(cluster, smoke_kit, "smoke-passes", status=500)
    closed = hook.url
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("prod: deployed and healthy")
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warnings == [
        f"shipyard: warning: the deploy notification ({event}) was not delivered: the webhook "
        "answered HTTP 500 (the URL in SHIPYARD_DEPLOY_WEBHOOK_URL is not shown); the deploy "
        "goes on"
        for event in ("started", "succeeded")
    ]
    # Nobody listens there any more: the deploy still succeeds, and says so without the URL.
    cluster.env = {**cluster.env, "SHIPYARD_DEPLOY_WEBHOOK_URL": closed}
    unreachable = cluster.deploy(smoke_kit, "smoke-passes")
    assert unreachable.returncode == 0, unreachable.stderr
    assert "ConnectionError reaching the webhook" in unreachable.stderr
    for output in (result.stdout + result.stderr, unreachable.stdout + unreachable.stderr):
        assert "s3cr3tT0k3n" not in output
        assert closed.rpartition(":")[0] not in output  # not even the host


def test_the_plan_names_the_smoke_job_and_the_rollback(smoke_kit: Path, cluster: Cluster) -> None:
    result = cluster.deploy(smoke_kit, "", "--dry-run")
    assert result.returncode == 0, result.stderr
    steps = result.stdout.splitlines()
    assert any("kubectl get deployment --selector" in line for line in steps), steps
    assert any(
        "kubectl create --filename" in line and "smoke-job-prod.json" in line for line in steps
    ), steps
    assert steps[-1].endswith(
        "a failing smoke check rolls back like a failed health check: `helm rollback` to the "
        "revision `invoke rollback` would pick"
    )
