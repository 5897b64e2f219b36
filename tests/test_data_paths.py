"""Data paths (a component's `data_paths`): named volumes on Compose, a PersistentVolumeClaim
each on Kubernetes, owned by the images' non-root user, checked on the render by the real
validators (Compose, hadolint, helm lint, kubernetes-validate) and on the chart's refusals.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from shipyard import config, validate
from shipyard.engines import helm as helm_engine
from tests import test_chart
from tests.conftest import Render, chart_digests, invoke_cli
from tests.kubectl import Kubectl, rule
from tests.test_chart import DIGEST, Helm, _by_kind, _chart, _docs, _values_files

# The chart tests' fixtures, by name: the real helm 4 and 3, their state in a temp dir.
helm = test_chart.helm
helm_env = test_chart.helm_env

Doc = dict[str, Any]

ANSWERS = {
    "project_name": "Files Service",
    "components": [
        {
            "name": "api",
            "kind": "http",
            "port": 3000,
            "health_path": "/health",
            "data_paths": ["/app/uploads", "/srv/cache"],
        },
        {"name": "jobs", "kind": "worker", "data_paths": ["/app/uploads"]},
        {"name": "web", "kind": "http", "port": 3001, "health_path": "/health"},
    ],
    "staging_target": "compose",
    "production_target": "helm",
}
# Volume (Compose) and claim-suffix names: <component>-data-<path's slug>.
VOLUMES = {
    "api": {"api-data-app-uploads": "/app/uploads", "api-data-srv-cache": "/srv/cache"},
    "jobs": {"jobs-data-app-uploads": "/app/uploads"},
}


@pytest.fixture(scope="module")
def root(render: Render, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render(ANSWERS, tmp_path_factory.mktemp("data-paths") / "files-service")


def _yaml(path: Path) -> Doc:
    loaded: Doc = YAML(typ="safe").load(path.read_text())
    return loaded


@pytest.mark.parametrize("file", ["compose.prod.yaml", "compose.yaml"])
def test_compose_mounts_a_named_volume_at_each_data_path(root: Path, file: str) -> None:
    stack = _yaml(root / file)
    for name, volumes in VOLUMES.items():
        service = stack["services"][name]
        mounts = [m for m in service.get("volumes", []) if "-data-" in m]
        assert mounts == [f"{v}:{p}" for v, p in volumes.items()], (file, name)
        for volume in volumes:
            assert volume in stack["volumes"], (file, volume)
        if file == "compose.prod.yaml":
            # Writable there only: the rest of the container stays read-only.
            assert service["read_only"] is True
    assert not [m for m in stack["services"]["web"].get("volumes", []) if "-data-" in m]


def _stages(dockerfile: str) -> dict[str, str]:
    return dict(re.findall(r"^FROM \S+ AS (\S+)\n(.*?)(?=^FROM |\Z)", dockerfile, re.M | re.S))


def test_images_create_the_data_paths_owned_by_their_user(root: Path) -> None:
    """A new named volume copies the owner of the folder it is mounted on: each stage creates
    its paths as the user it then switches to, and the build context leaves out the folders
    whose files would land there (a local run's uploads would enter the image, and seed a new
    volume)."""
    stages = _stages((root / "Dockerfile").read_text())
    for name, volumes in VOLUMES.items():
        paths = " ".join(volumes.values())
        body = stages[name]
        # After the build stage's /app is copied (that copy would give a folder the build made
        # root's owner), emptied of what the build left there.
        made = body.index(
            f"RUN rm -rf {paths} \\\n    && mkdir -p {paths} \\\n    && chown 1000:1000 {paths}"
        )
        assert body.index("COPY --from=build_app /app /app") < made < body.index("USER 1000:1000")
    assert "chown" not in stages["web"]
    ignored = (root / ".dockerignore").read_text().splitlines()
    # /app holds the repository's folder: /app/uploads is its uploads/, /srv/cache none of it.
    assert [line for line in ignored if "uploads" in line or "cache" in line] == ["uploads"]


@pytest.mark.parametrize(
    ("runtime", "workspaces", "ignored"),
    [("python", False, ["api/uploads", "jobs/var/files"]), ("python", True, ["uploads"]),
     ("node", False, ["api/uploads", "jobs/var/files"]), ("go", False, [])],
)  # fmt: skip
def test_each_runtime_and_layout_keeps_its_data_folders_out_of_the_image(
    render: Render, tmp_path: Path, runtime: str, workspaces: bool, ignored: list[str]
) -> None:
    """The folder the image's /app comes from is the component's (`path`), or with workspaces
    the repository's; a Go image holds binaries only, so its context keeps every folder."""
    answers = {
        "project_name": "Files Service",
        "runtime": runtime,
        **({"python_package_manager": "uv", "workspaces": True} if workspaces else {}),
        "components": [
            {"name": "api", "kind": "http", "port": 3000, "health_path": "/health",
             "path": "api", "data_paths": ["/app/uploads", "/srv/cache"]},
            {"name": "jobs", "kind": "worker", "path": "jobs" if not workspaces else "api",
             "data_paths": ["/app/var/files" if not workspaces else "/app/uploads"]},
        ],
        "staging_target": "compose",
        "production_target": "compose",
    }  # fmt: skip
    root = render(answers, tmp_path / "kit")
    lines = (root / ".dockerignore").read_text().splitlines()
    heading = [i for i, line in enumerate(lines) if line.startswith("# The data paths' folders")]
    block = [] if not heading else lines[heading[0] + 2 :]  # below the comment's two lines
    block = list(itertools.takewhile(lambda line: not line.startswith("#"), block))
    assert block == ignored
    stages = _stages((root / "Dockerfile").read_text())
    for name in ("api", "jobs"):
        body = stages[name]
        made = body.index("mkdir -p" if runtime != "go" else f"COPY --from=rootfs /data/{name}/ /")
        code = body.rindex("\nCOPY ")  # each stage's last COPY: the code, or Go's binary
        # Python and Go make them below the code's layer (a code-only release does not run it
        # again); Node.js after its build's /app, which may hold them (test above).
        assert made < code if runtime != "node" else code < made, name
        assert made < body.index("USER 1000:1000"), name
    findings = validate.validate(root)
    assert not findings, validate.report(findings)


def test_shipyard_yaml_keeps_claimed_components_at_one_pod(root: Path) -> None:
    cfg = config.load(root)
    prod = cfg.environment("prod")
    assert prod.replicas == 3
    assert dict(prod.component_replicas) == {"api": 1, "jobs": 1}
    assert cfg.component("api").data_paths == ("/app/uploads", "/srv/cache")


def test_every_generated_file_passes_its_validators(root: Path) -> None:
    findings = validate.validate(root)
    assert not findings, validate.report(findings)


def _deploy(root: Path, *extra: str) -> list[str]:
    """What `invoke deploy --env prod` passes: shipyard.yaml's replicas, a digest per image."""
    prod = config.load(root).environment("prod")
    args = ["--set", f"replicaCount={prod.replicas}"]
    for name, count in prod.component_replicas.items():
        args += ["--set", f"components.{name}.replicaCount={count}"]
    for name in ("api", "jobs", "web"):
        args += ["--set", f"components.{name}.image.digest={DIGEST}"]
    return [*args, *extra]


@pytest.fixture(scope="module")
def template(helm: Helm, root: Path) -> Callable[..., list[Doc]]:
    def _template(*args: str, check: bool = True) -> list[Doc]:
        chart = _chart(root)
        result = helm(
            "helm", "template", "rel", str(chart), *chart_digests(chart), *args, check=check
        )
        return _docs(result.stdout)

    return _template


def _deployment(docs: list[Doc], component: str) -> Doc:
    (dep,) = [d for d in _by_kind(docs, "Deployment") if d["metadata"]["name"].endswith(component)]
    return dep


def test_chart_gives_each_data_path_a_kept_claim_mounted_whole(
    root: Path, template: Callable[..., list[Doc]]
) -> None:
    chart = _chart(root)
    for values_file in _values_files(chart):
        docs = template(*(["-f", values_file] if values_file else []), *_deploy(root))
        claims = {c["metadata"]["name"]: c for c in _by_kind(docs, "PersistentVolumeClaim")}
        expected = {f"rel-files-service-{v}" for volumes in VOLUMES.values() for v in volumes}
        # The backup CronJob's claim is the only other one (file:// backups).
        assert expected <= set(claims), claims
        assert len(set(claims) - expected) <= 1, claims
        for name in expected:
            claim = claims[name]
            assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
            assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
            assert "storageClassName" not in claim["spec"]  # the cluster's default
            assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        for component, volumes in VOLUMES.items():
            dep = _deployment(docs, component)
            pod = dep["spec"]["template"]["spec"]
            # One pod mounts a ReadWriteOnce claim: replaced, never two at once.
            assert dep["spec"]["replicas"] == 1, values_file
            assert dep["spec"]["strategy"] == {"type": "Recreate"}
            # The claims' files belong to the pod's group, so the non-root user writes them.
            assert pod["securityContext"]["fsGroup"] == 1000
            (container,) = pod["containers"]
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            claimed = {v["name"]: v for v in pod["volumes"] if "persistentVolumeClaim" in v}
            for volume, path in volumes.items():
                mount = mounts[path]
                assert "subPath" not in mount  # a kubelet-made subPath would be root's
                source = claimed[mount["name"]]["persistentVolumeClaim"]["claimName"]
                assert source == f"rel-files-service-{volume}"
        web = _deployment(docs, "web")
        assert web["spec"]["strategy"]["type"] == "RollingUpdate"
        hpas = {h["metadata"]["name"] for h in _by_kind(docs, "HorizontalPodAutoscaler")}
        assert not {n for n in hpas if n.endswith(("-api", "-jobs"))}, hpas


def test_chart_takes_a_storage_class_and_shared_access_for_more_pods(
    root: Path, template: Callable[..., list[Doc]]
) -> None:
    docs = template(
        *_deploy(root),
        "--set",
        "components.api.replicaCount=3",
        "--set",
        "components.api.persistence.accessModes={ReadWriteMany}",
        "--set",
        "components.api.persistence.storageClass=nfs",
        "--set",
        "components.api.persistence.size=50Gi",
    )
    claims = {c["metadata"]["name"]: c["spec"] for c in _by_kind(docs, "PersistentVolumeClaim")}
    spec = claims["rel-files-service-api-data-app-uploads"]
    assert spec["accessModes"] == ["ReadWriteMany"]
    assert spec["storageClassName"] == "nfs"
    assert spec["resources"]["requests"]["storage"] == "50Gi"
    api = _deployment(docs, "api")
    assert api["spec"]["replicas"] == 3
    assert api["spec"]["strategy"]["type"] == "RollingUpdate"


@pytest.mark.parametrize(
    "args",
    [
        ["--set", "components.api.replicaCount=2"],
        ["--set", "components.jobs.autoscaling.enabled=true"],
        [
            "--set",
            "components.api.replicaCount=2",
            "--set",
            "components.api.persistence.accessModes={ReadWriteOncePod}",
        ],
    ],
    ids=["replicas", "autoscaling", "once-pod"],
)
@pytest.mark.parametrize("binary", ["helm", "helm3"])
def test_chart_refuses_more_pods_than_a_read_write_once_claim_holds(
    root: Path, helm: Helm, binary: str, args: list[str]
) -> None:
    chart = _chart(root)
    result = helm(binary, "template", "rel", str(chart), *chart_digests(chart), *args, check=False)
    assert result.returncode != 0
    assert re.search(
        r"files-service: components\.(api|jobs) keeps files on claims only one pod can mount "
        r".*run 1 replica without autoscaling, or set persistence\.accessModes to "
        r"\[ReadWriteMany\]",
        result.stderr,
    ), result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "components.api.dataPaths.x=relative"], "dataPaths"),
        (["--set", "components.api.dataPaths.Bad_Name=/srv/x"], "'Bad_Name' does not match"),
        (["--set", "components.api.persistence.accessModes={Sometimes}"], "accessModes"),
    ],
)
def test_chart_schema_refuses_bad_data_values(
    root: Path, helm: Helm, args: list[str], message: str
) -> None:
    result = helm("helm", "lint", "--strict", str(_chart(root)), *args, check=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


def _cronjob_pod(docs: list[Doc], name: str) -> Doc:
    (cron,) = [c for c in _by_kind(docs, "CronJob") if c["metadata"]["name"] == f"rel-{name}"]
    pod: Doc = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return pod


def test_backups_archive_every_data_path_from_its_claim_read_only(
    root: Path, template: Callable[..., list[Doc]]
) -> None:
    docs = template("-f", str(_chart(root) / "values-prod.yaml"), *_deploy(root))
    pod = _cronjob_pod(docs, "files-service-backup")
    (container,) = pod["containers"]
    args = container["args"]
    specs = [args[i + 1] for i, a in enumerate(args) if a == "--data-path"]
    assert sorted(specs) == ["api:/app/uploads", "api:/srv/cache", "jobs:/app/uploads"]
    # Where the engine looks for COMPONENT:/PATH (backup/files.py): /data/COMPONENT/PATH.
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    claims = {
        v["name"]: v["persistentVolumeClaim"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    for component, volumes in VOLUMES.items():
        for volume, path in volumes.items():
            mount = mounts[f"/data/{component}{path}"]
            assert mount["readOnly"] is True
            assert claims[mount["name"]] == {
                "claimName": f"rel-files-service-{volume}",
                "readOnly": True,
            }
    # ReadWriteOnce claims are mounted from their pods' node: the backup pod goes there.
    terms = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    beside = sorted(t["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] for t in terms)
    assert beside == ["api", "jobs"]
    assert {t["topologyKey"] for t in terms} == {"kubernetes.io/hostname"}
    # The drill restores into a scratch database only: no data paths.
    drill = _cronjob_pod(docs, "files-service-restore-drill")
    assert "affinity" not in drill
    assert not [v for v in drill["volumes"] if v["name"].startswith("data-")]
    assert "--data-path" not in drill["containers"][0]["args"]


def test_backups_of_shared_claims_run_on_any_node(
    root: Path, template: Callable[..., list[Doc]]
) -> None:
    docs = template(
        "-f", str(_chart(root) / "values-prod.yaml"), *_deploy(root),
        "--set", "components.api.persistence.accessModes={ReadWriteMany}",
    )  # fmt: skip
    terms = _cronjob_pod(docs, "files-service-backup")["affinity"]["podAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert [t["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] for t in terms] == [
        "jobs"
    ]


@pytest.mark.parametrize("binary", ["helm", "helm3"])
def test_backups_refuse_claims_no_other_pod_may_mount(root: Path, helm: Helm, binary: str) -> None:
    chart = _chart(root)
    result = helm(
        binary, "template", "rel", str(chart), *chart_digests(chart),
        "-f", str(chart / "values-prod.yaml"),
        "--set", "components.jobs.persistence.accessModes={ReadWriteOncePod}", check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert (
        "components.jobs keeps files on ReadWriteOncePod claims, which no pod but its own may "
        "mount, so the backups cannot archive them"
    ) in result.stderr


# `invoke restore --files` on Kubernetes: a Job from the backup CronJob (engines/files_job.py),
# run against the kubectl stand-in (tests/kubectl.py) that answers with the chart's own CronJob.
NAMESPACE = "files-service-prod"


def _selector(component: str) -> str:
    return f"app.kubernetes.io/instance=files-service,app.kubernetes.io/component={component}"


@pytest.fixture(scope="module")
def backup_cronjob(root: Path) -> Doc:
    """The backup CronJob of prod as `invoke deploy` installs it (release files-service)."""
    chart = _chart(root)
    out = subprocess.run(
        ["helm", "template", "files-service", str(chart), *chart_digests(chart),
         "--namespace", NAMESPACE, "-f", str(chart / "values-prod.yaml")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    (cron,) = [
        d
        for d in _docs(out)
        if d["kind"] == "CronJob" and d["metadata"]["name"].endswith("-backup")
    ]
    return cron


def _files_rules(cronjob: Doc, conditions: str) -> list[dict[str, Any]]:
    return [
        rule(["get", "cronjob"], json.dumps(cronjob)),
        rule(["get", "deployment", "--selector", _selector("api")], "files-service-api\t1\n"),
        rule(["get", "deployment", "--selector", _selector("jobs")], "files-service-jobs\t1\n"),
        rule(["get", "job"], conditions),
    ]


def test_restore_files_on_kubernetes_stops_the_writers_restores_and_starts_them(
    root: Path, backup_cronjob: Doc, tmp_path: Path
) -> None:
    kubectl = Kubectl.install(tmp_path)
    env = kubectl.env(_files_rules(backup_cronjob, "Complete\t"))
    result = invoke_cli(
        root, "restore", "--files", "--env", "prod", "--backup", "20261204T101500Z", "--yes",
        env=env,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    ns = ["--namespace", NAMESPACE]
    (job,) = kubectl.applied()
    name = job["metadata"]["name"]
    jsonpath = "jsonpath={range .items[*]}{.metadata.name}{'\\t'}{.spec.replicas}{'\\n'}{end}"
    manifest = str(root / ".shipyard" / "files-restore-job-prod.json")
    assert kubectl.commands() == [
        ["get", "cronjob", "files-service-backup", "--output", "json", *ns],
        ["get", "deployment", "--selector", _selector("api"), "--output", jsonpath, *ns],
        ["get", "deployment", "--selector", _selector("jobs"), "--output", jsonpath, *ns],
        ["scale", "deployment/files-service-api", "--replicas=0", *ns],
        ["scale", "deployment/files-service-jobs", "--replicas=0", *ns],
        ["wait", "pod", "--for=delete", "--selector", _selector("api"), "--timeout=3600s", *ns],
        ["wait", "pod", "--for=delete", "--selector", _selector("jobs"), "--timeout=3600s", *ns],
        ["create", "--filename", manifest, *ns],
        ["get", "job", name, "--output", helm_engine.JOB_CONDITIONS, *ns],
        ["scale", "deployment/files-service-api", "--replicas=1", *ns],
        ["scale", "deployment/files-service-jobs", "--replicas=1", *ns],
    ]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == [
        "shipyard", "backup", "restore", "--files", "--target", "file:///backups",
        "--yes", "--backup", "20261204T101500Z",
        "--data-path", "api:/app/uploads", "--data-path", "api:/srv/cache",
        "--data-path", "jobs:/app/uploads",
    ]  # fmt: skip
    # The CronJob's pod (image, Secrets, labels for its NetworkPolicies) with the claims writable.
    cron_pod = backup_cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert container["image"] == cron_pod["containers"][0]["image"]
    assert container["envFrom"] == cron_pod["containers"][0]["envFrom"]
    data = [m for m in container["volumeMounts"] if m["name"].startswith("data-")]
    assert len(data) == 3
    assert all(m["readOnly"] is False for m in data)
    claims = [v["persistentVolumeClaim"] for v in pod["volumes"] if v["name"].startswith("data-")]
    assert len(claims) == 3
    assert all(c["readOnly"] is False for c in claims)
    assert "affinity" not in pod  # the components are stopped: their claims are free
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "backup"
    validator = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
    assert validator is not None
    checked = subprocess.run(
        [validator, "--strict", "--quiet", "-k", "1.28.0", manifest],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "prod: api:/app/uploads, api:/srv/cache, jobs:/app/uploads restored" in result.stdout


def test_a_failed_files_restore_starts_the_components_again_and_says_so(
    root: Path, backup_cronjob: Doc, tmp_path: Path
) -> None:
    kubectl = Kubectl.install(tmp_path)
    env = kubectl.env(_files_rules(backup_cronjob, "Failed\tBackoffLimitExceeded"))
    result = invoke_cli(root, "restore", "--files", "--env", "prod", "--yes", env=env)

    assert result.returncode == 1
    assert "failed (BackoffLimitExceeded; see `kubectl logs" in result.stderr
    assert "the data paths are as they were" in result.stderr
    assert "Traceback" not in result.stderr
    assert kubectl.commands()[-2:] == [
        ["scale", "deployment/files-service-api", "--replicas=1", "--namespace", NAMESPACE],
        ["scale", "deployment/files-service-jobs", "--replicas=1", "--namespace", NAMESPACE],
    ]
    # No backup named: the engine's newest.
    assert (
        "--backup" not in kubectl.applied()[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    )


def test_restore_files_dry_run_changes_nothing(root: Path, tmp_path: Path) -> None:
    kubectl = Kubectl.install(tmp_path)
    result = invoke_cli(
        root, "restore", "--files", "--env", "prod", "--dry-run", env=kubectl.env([])
    )

    assert result.returncode == 0, result.stderr
    assert "restore the files of prod from the newest complete backup (a Job in " in result.stdout
    assert "scale api, jobs to 0 and wait until their pods are gone" in result.stdout
    assert kubectl.calls() == []
