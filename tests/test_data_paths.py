"""Data paths (a component's `data_paths`): named volumes on Compose, a PersistentVolumeClaim
each on Kubernetes, owned by the images' non-root user, checked on the render by the real
validators (Compose, hadolint, helm lint, kubernetes-validate) and on the chart's refusals.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from shipyard import config, validate
from tests import test_chart
from tests.conftest import Render, chart_digests
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


def test_images_create_the_data_paths_owned_by_their_user(root: Path) -> None:
    """A new named volume copies the owner of the folder it is mounted on: each stage creates
    its paths as the user it then switches to."""
    dockerfile = (root / "Dockerfile").read_text()
    stages = dict(re.findall(r"^FROM \S+ AS (\S+)\n(.*?)(?=^FROM |\Z)", dockerfile, re.M | re.S))
    for name, volumes in VOLUMES.items():
        paths = " ".join(volumes.values())
        body = stages[name]
        chown = body.index(f"RUN mkdir -p {paths} \\\n    && chown 1000:1000 {paths}")
        assert chown < body.index("USER 1000:1000"), name
    assert "chown" not in stages["web"]


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
