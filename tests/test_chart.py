"""The generated Helm chart, checked with the real helm binaries (v4 `helm`, v3.18 `helm3`)
and kubernetes-validate's schemas of the oldest and newest Kubernetes we support.

Every preset with a helm target is linted (schema enforced), rendered with each values file
and validated; objects are asserted on; bad values must fail with a sentence naming the key;
the chart is packaged and pushed to a real OCI registry. A test against a live cluster runs
only when KUBECONFIG is set.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from ruamel.yaml import YAML

from shipyard import validate
from tests.conftest import PRESETS, REPO, Render, chart_digests, git, init_repo, load_preset
from tests.servers.docker import CADDY_LOCAL, Dockerd, MirrorImages
from tests.servers.registry import free_port

HELMS = ("helm", "helm3")
# Oldest and newest Kubernetes the chart supports (Chart.yaml kubeVersion is >=1.28).
KUBE_VERSIONS = ("1.28.0", "1.33.0")
DIGEST = "sha256:" + "ab" * 32
LIBRARY = REPO / "charts" / "shipyard-common"
Doc = dict[str, Any]


def _copier_default(question: str) -> Any:
    return YAML(typ="safe").load((REPO / "copier.yml").read_text())[question]["default"]


def _helm_envs(preset: str) -> list[str]:
    answers = load_preset(preset)
    targets = {
        "staging": answers.get("staging_target", _copier_default("staging_target")),
        "prod": answers.get("production_target", _copier_default("production_target")),
    }
    return [env for env, target in targets.items() if target == "helm"]


HELM_PRESETS = [p for p in PRESETS if _helm_envs(p)]
# PostgreSQL as a CloudNativePG Cluster the chart creates.
CLOUDNATIVEPG_PRESETS = [
    p for p in PRESETS if load_preset(p).get("database_on_kubernetes") == "cloudnativepg"
]
CNPG_API = "postgresql.cnpg.io/v1"
PROD_HELM_PRESETS = [p for p in PRESETS if "prod" in _helm_envs(p)]
# Helm presets with something to route to (queue-worker has workers only: no Ingress or route);
# a preset without components has copier.yml's default, one http component.
ROUTED_HELM_PRESETS = [
    p
    for p in HELM_PRESETS
    if any(c["kind"] == "http" for c in load_preset(p).get("components", [{"kind": "http"}]))
]
# Helm presets with the service's PostgreSQL, which the backup CronJobs dump.
BACKED_UP_HELM_PRESETS = [
    p
    for p in HELM_PRESETS
    if load_preset(p).get("database", _copier_default("database")) == "postgres"
]
# Backups on, to a volume, as values-<env>.yaml turn them on (the presets that have a database).
BACKUPS_ON = ["--set", "backup.enabled=true", "--set", "backup.target=file:///backups"]


# Maintenance mode as `invoke maintenance --env ENV on` sets it.
MAINTENANCE_ON = [
    "--set",
    "maintenance.enabled=true",
    "--set",
    "maintenance.retryAfter=120",
    "--set-string",
    "maintenance.since=2026-12-04T10:00:00+00:00",
]
# Both kinds of route (kubernetes-validate has no HTTPRoute schema: rendered, not validated).
ROUTES = ["--set", "host=app.example.org", "--set", "ingress.enabled=true"]
ROUTES += ["--set", "gateway.enabled=true"]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        # Never a silent skip: CI must have every tool (`. .ci/setup.sh` installs them).
        pytest.fail(f"{name} is not on PATH: run `. .ci/setup.sh` first")
    return path


def _kubernetes_validate() -> str:
    here = Path(sys.executable).parent
    path = shutil.which("kubernetes-validate") or shutil.which(
        "kubernetes-validate", path=str(here)
    )
    if path is None:
        pytest.fail("kubernetes-validate is not installed: pip install kubernetes-validate")
    return path


@pytest.fixture(scope="session")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment helm runs in: its cache/config/data under a temp dir, never ~."""
    home = tmp_path_factory.mktemp("helm-home")
    env = dict(os.environ)
    for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env[var] = str(home / var.lower())
    return env


Helm = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def helm(helm_env: dict[str, str]) -> Helm:
    """helm(binary, *args, check=True): run one helm command; failures show its output."""

    def _helm(binary: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [_tool(binary), *args], capture_output=True, text=True, env=helm_env, check=False
        )
        if check and result.returncode != 0:
            pytest.fail(f"{binary} {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    return _helm


def _config(root: Path) -> Doc:
    loaded: Doc = YAML(typ="safe").load((root / "shipyard.yaml").read_text())
    return loaded


def _chart(root: Path) -> Path:
    name: str = _config(root)["service"]["name"]
    return root / "charts" / name


def _values_files(chart: Path) -> list[str]:
    """Each way the chart is installed: bare, and layered with each environment's file."""
    return ["", *sorted(str(p) for p in chart.glob("values-*.yaml"))]


def _values_args(values_file: str) -> list[str]:
    return ["-f", values_file] if values_file else []


def _template_chart(
    helm: Helm, chart: Path, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`helm template` of `chart` (Helm 4) with a digest per image, then `args`."""
    return helm("helm", "template", "rel", str(chart), *chart_digests(chart), *args, check=check)


def _deploy_args(root: Path, env: str = "prod") -> list[str]:
    """What `invoke deploy` passes: replicas from shipyard.yaml, a digest per image."""
    cfg = _config(root)
    args = ["--set", f"replicaCount={cfg['environments'][env]['replicas']}"]
    for c in cfg["components"]:
        args += ["--set", f"components.{c['name']}.image.digest={DIGEST}"]
    return [*args, "--set", f"backup.image.digest={DIGEST}"]


def _docs(text: str) -> list[Doc]:
    return [d for d in YAML(typ="safe").load_all(text) if d]


@pytest.fixture(scope="module")
def template(helm: Helm, rendered: Callable[[str], Path]) -> Callable[..., list[Doc]]:
    """template(preset, *helm_args) -> the objects `helm template` renders (Helm 4)."""

    def _template(preset: str, *args: str, release: str = "rel") -> list[Doc]:
        chart = _chart(rendered(preset))
        argv = ["template", release, str(chart), "--namespace", "ns", *chart_digests(chart), *args]
        result = helm("helm", *argv)
        return _docs(result.stdout)

    return _template


def _by_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def _pod_specs(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    for d in docs:
        if d["kind"] in ("Deployment", "Job"):
            yield d["metadata"]["name"], d["spec"]["template"]["spec"]
        elif d["kind"] == "CronJob":
            yield d["metadata"]["name"], d["spec"]["jobTemplate"]["spec"]["template"]["spec"]


# --- Which repos get a chart ----------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_chart_rendered_only_for_helm_targets(preset: str, rendered: Callable[[str], Path]) -> None:
    root = rendered(preset)
    envs = _config(root)["environments"]
    helm_envs = sorted(e for e, v in envs.items() if v["target"] == "helm")
    assert (root / "charts").exists() == bool(helm_envs)
    if helm_envs:
        chart = _chart(root)
        assert sorted(p.name for p in chart.glob("values-*.yaml")) == [
            f"values-{e}.yaml" for e in helm_envs
        ]
        for e in helm_envs:
            assert (root / envs[e]["values_file"]).is_file()
        # The library chart is a real copy (copier followed the template's symlink).
        vendored = chart / "charts" / "shipyard-common"
        assert not vendored.is_symlink()
        assert (vendored / "Chart.yaml").read_text() == (LIBRARY / "Chart.yaml").read_text()


# --- The real tools accept every preset's chart ---------------------------------------------


@pytest.mark.parametrize("binary", HELMS)
@pytest.mark.parametrize("preset", HELM_PRESETS)
def test_helm_lint_strict(
    preset: str, binary: str, helm: Helm, rendered: Callable[[str], Path]
) -> None:
    chart = _chart(rendered(preset))
    for values_file in _values_files(chart):
        result = helm(binary, "lint", "--strict", str(chart), *_values_args(values_file))
        assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("preset", HELM_PRESETS)
def test_templates_pass_kubernetes_validate(
    preset: str, helm: Helm, rendered: Callable[[str], Path], tmp_path: Path
) -> None:
    root = rendered(preset)
    chart = _chart(root)
    validator = _kubernetes_validate()
    cases: list[tuple[str, list[str]]] = [(f, []) for f in _values_files(chart)]
    if preset in ROUTED_HELM_PRESETS:
        cases.append((_values_files(chart)[-1], MAINTENANCE_ON))
    for values_file, extra in cases:
        args = [*_values_args(values_file), *_deploy_args(root), *extra]
        for version in KUBE_VERSIONS:
            # Rendered for that version (.Capabilities, Chart.yaml kubeVersion), then checked.
            out = _template_chart(helm, chart, *args, "--kube-version", version)
            name = f"{Path(values_file).name or 'values'}{'-maintenance' if extra else ''}"
            manifest = tmp_path / f"{name}-{version}.yaml"
            manifest.write_text(out.stdout)
            result = subprocess.run(
                [validator, "--strict", "--quiet", "-k", version, str(manifest)],
                capture_output=True,
                text=True,
                check=False,
                cwd=chart,
            )
            # --quiet leaves only warnings and errors: an unknown kind would be a WARN.
            assert result.returncode == 0, result.stdout + result.stderr
            assert result.stdout.strip() == "", result.stdout


def test_older_kubernetes_is_refused(helm: Helm, rendered: Callable[[str], Path]) -> None:
    chart = _chart(rendered("minimal"))
    result = helm(
        "helm",
        "template",
        "rel",
        str(chart),
        *chart_digests(chart),
        "--kube-version",
        "1.27.0",
        check=False,
    )
    assert result.returncode != 0
    assert ">=1.28.0-0" in result.stderr


@pytest.mark.parametrize("preset", ROUTED_HELM_PRESETS)
def test_httproute_alternative(preset: str, template: Callable[..., list[Doc]]) -> None:
    root_args = ["--set", "host=app.example.org", "--set", "gateway.enabled=true"]
    docs = template(preset, *root_args)
    assert not _by_kind(docs, "Ingress")
    (route,) = _by_kind(docs, "HTTPRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["hostnames"] == ["app.example.org"]
    services = {s["metadata"]["name"]: s for s in _by_kind(docs, "Service")}
    for rule in route["spec"]["rules"]:
        (backend,) = rule["backendRefs"]
        assert backend["port"] == services[backend["name"]]["spec"]["ports"][0]["port"]


@pytest.mark.parametrize("preset", HELM_PRESETS)
def test_helm3_and_helm4_render_the_same(
    preset: str, helm: Helm, rendered: Callable[[str], Path]
) -> None:
    root = rendered(preset)
    chart = _chart(root)
    for values_file in _values_files(chart):
        args = ["template", "rel", str(chart), *_values_args(values_file), *_deploy_args(root)]
        assert helm("helm", *args).stdout == helm("helm3", *args).stdout


@pytest.mark.parametrize("preset", HELM_PRESETS)
def test_install_dry_run_client(preset: str, helm: Helm, rendered: Callable[[str], Path]) -> None:
    """`helm install --dry-run=client` per environment, as a deploy would run it.

    Helm 4 only: Helm 3 contacts the cluster even with --dry-run=client
    (https://github.com/helm/helm/issues/13144); its client-side install is `helm3 template`,
    which test_helm3_and_helm4_render_the_same covers.
    """
    root = rendered(preset)
    chart = _chart(root)
    for env in (p.stem.removeprefix("values-") for p in chart.glob("values-*.yaml")):
        result = helm(
            "helm",
            "install",
            _config(root)["service"]["name"],
            str(chart),
            "--namespace",
            _config(root)["environments"][env]["namespace"],
            "-f",
            str(chart / f"values-{env}.yaml"),
            *_deploy_args(root, env),
            "--dry-run=client",
        )
        assert "STATUS: pending-install" in result.stdout
        assert _by_kind(
            _docs(result.stdout.split("MANIFEST:", 1)[1].split("NOTES:")[0]), "Deployment"
        )


# --- Bad values fail with a sentence naming the key -----------------------------------------

# Values the schema rejects: `helm lint --strict`, `template` and `install` all refuse them.
SCHEMA_ERRORS = [
    pytest.param(["--set-string", "replicaCount=three"], r"replicaCount", id="string-replicas"),
    pytest.param(["--set", "replicaCont=3"], r"replicaCont", id="unknown-top-level-key"),
    pytest.param(["--set", "components.web.prot=3000"], r"prot", id="unknown-component-key"),
    pytest.param(["--set", "components.web.port=-1"], r"port", id="negative-port"),
    pytest.param(["--set", "components.web.port=70000"], r"port", id="port-too-big"),
    pytest.param(
        ["--set", "components.web.image.digest=latest"], r"digest", id="digest-not-sha256"
    ),
    pytest.param(
        ["--set", "components.api.subdomain=API"], r"subdomain", id="subdomain-not-a-dns-label"
    ),
    pytest.param(
        ["--set", "migrations.component=nope"], r"migrations.component", id="unknown-migrator"
    ),
]
# Combinations only validateValues catches, when templates render (`helm lint` reports them
# as INFO and passes, so `template`/`install` are what must fail).
TEMPLATE_ERRORS = [
    pytest.param(["--set", "ingress.enabled=true"], r"need host", id="ingress-without-host"),
    pytest.param(
        ["--set", "backup.enabled=true", "--set", "backup.target=ftp://x"],
        r"backup.target must be s3://BUCKET/PREFIX or file:///backups",
        id="bad-backup-target",
    ),
    pytest.param(
        [
            "--set",
            "components.web.autoscaling.enabled=true",
            "--set",
            "components.web.autoscaling.maxReplicas=1",
            "--set",
            "replicaCount=3",
        ],
        r"maxReplicas \(1\) is below its minimum replica count \(3\)",
        id="hpa-max-below-min",
    ),
    pytest.param(
        [
            "--set",
            "components.api.subdomain=api",
            "--set",
            "components.web.subdomain=api",
            "--set",
            "components.api.route=/",
            "--set",
            "host=app.example.org",
        ],
        r"components.api and components.web are both routed to api.app.example.org/: give one "
        r"another route or subdomain",
        id="two-components-on-one-host-and-route",
    ),
]


@pytest.mark.parametrize("binary", HELMS)
@pytest.mark.parametrize(("args", "message"), SCHEMA_ERRORS)
def test_schema_rejects_bad_values(
    args: list[str], message: str, binary: str, helm: Helm, rendered: Callable[[str], Path]
) -> None:
    # monorepo: three components (web, api, worker), migrations, backups.
    chart = _chart(rendered("monorepo"))
    lint = helm(binary, "lint", "--strict", str(chart), *args, check=False)
    assert lint.returncode != 0
    assert "schema" in lint.stdout + lint.stderr
    assert re.search(message, lint.stdout + lint.stderr)
    result = helm(binary, "template", "rel", str(chart), *chart_digests(chart), *args, check=False)
    assert result.returncode != 0
    assert re.search(message, result.stderr), result.stderr


@pytest.mark.parametrize("binary", HELMS)
@pytest.mark.parametrize(("args", "message"), TEMPLATE_ERRORS)
def test_validate_values_fails_clearly(
    args: list[str], message: str, binary: str, helm: Helm, rendered: Callable[[str], Path]
) -> None:
    chart = _chart(rendered("monorepo"))
    result = helm(binary, "template", "rel", str(chart), *chart_digests(chart), *args, check=False)
    assert result.returncode != 0
    # "<chart>: <what to change>" on a line of its own, after helm's template location.
    assert re.search(rf"(^|\\n|\n){chart.name}: .*{message}", result.stderr), result.stderr


# --- What the objects say --------------------------------------------------------------------


@pytest.mark.parametrize("preset", HELM_PRESETS)
def test_labels_selectors_and_names(preset: str, template: Callable[..., list[Doc]]) -> None:
    docs = template(preset)
    for d in docs:
        labels = d["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "rel"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/name"]
        assert len(d["metadata"]["name"]) <= 63
    services = {s["metadata"]["name"]: s for s in _by_kind(docs, "Service")}
    for dep in _by_kind(docs, "Deployment"):
        selector = dep["spec"]["selector"]["matchLabels"]
        # Selectors are immutable: only name, instance and component, never a version.
        assert set(selector) == {
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/component",
        }
        assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
        if dep["metadata"]["name"] in services:
            assert services[dep["metadata"]["name"]]["spec"]["selector"] == selector


@pytest.mark.parametrize("preset", HELM_PRESETS)
def test_deployments_follow_shipyard_yaml(
    preset: str, template: Callable[..., list[Doc]], rendered: Callable[[str], Path]
) -> None:
    root = rendered(preset)
    cfg = _config(root)
    docs = template(preset, *_deploy_args(root))
    deployments = {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d
        for d in _by_kind(docs, "Deployment")
    }
    assert set(deployments) == {c["name"] for c in cfg["components"]}
    registry = cfg["image"]["registry"]
    for c in cfg["components"]:
        dep = deployments[c["name"]]
        spec = dep["spec"]
        assert spec["replicas"] == cfg["environments"]["prod"]["replicas"]
        assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        pod = spec["template"]["spec"]
        assert {t["topologyKey"] for t in pod["topologySpreadConstraints"]} == {
            "topology.kubernetes.io/zone",
            "kubernetes.io/hostname",
        }
        (container,) = pod["containers"]
        assert container["image"] == f"{registry}/{cfg['service']['name']}-{c['name']}@{DIGEST}"
        assert container["resources"]["requests"]["cpu"]
        assert "checksum/config" in spec["template"]["metadata"]["annotations"]
        if c["kind"] == "http":
            assert container["ports"] == [
                {"name": "http", "containerPort": c["port"], "protocol": "TCP"}
            ]
            assert {"name": "PORT", "value": str(c["port"])} in container["env"]
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert container[probe]["httpGet"] == {"path": c["health_path"], "port": "http"}
        else:
            # A worker serves nothing but, with a metrics_port, its metrics.
            assert [port["name"] for port in container.get("ports", [])] in ([], ["metrics"])
            # A worker is probed by what it declares (shipyard.yaml), else not at all.
            check = (
                {"exec": {"command": c["health_command"]}}
                if "health_command" in c
                else {"httpGet": {"path": c["health_path"], "port": c["health_port"]}}
                if "health_port" in c
                else None
            )
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if check is None:
                    assert probe not in container
                else:
                    assert {k: container[probe][k] for k in check} == check, probe


@pytest.mark.parametrize("preset", HELM_PRESETS)
def test_restricted_pod_security_everywhere(
    preset: str, template: Callable[..., list[Doc]]
) -> None:
    backed_up = preset in BACKED_UP_HELM_PRESETS
    docs = template(
        preset,
        *(BACKUPS_ON if backed_up else []),
        *(MAINTENANCE_ON if preset in ROUTED_HELM_PRESETS else []),
    )
    specs = dict(_pod_specs(docs))
    if preset in ROUTED_HELM_PRESETS:
        assert any(name.endswith("-maintenance") for name in specs)
    # + the backup and restore drill CronJobs
    assert len(specs) >= len(_by_kind(docs, "Deployment")) + (2 if backed_up else 0)
    for name, pod in specs.items():
        assert pod["automountServiceAccountToken"] is False, name
        ctx = pod["securityContext"]
        assert ctx["runAsNonRoot"] is True
        assert ctx["runAsUser"] == 1000
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
        tmp_volumes = [v for v in pod["volumes"] if v["name"] == "tmp"]
        assert tmp_volumes
        assert "emptyDir" in tmp_volumes[0]
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["runAsNonRoot"] is True
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]  # noqa: S108 (a path inside the pod)
            # Secrets only by reference: every env entry is a literal the chart owns or a
            # secretKeyRef, never a secret's value.
            for var in container.get("env", []):
                assert "value" in var or "secretKeyRef" in var["valueFrom"], var
    (account,) = _by_kind(docs, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False


@pytest.mark.parametrize("preset", HELM_PRESETS)
def test_pdb_only_with_more_than_one_pod(preset: str, template: Callable[..., list[Doc]]) -> None:
    one = template(preset, "--set", "replicaCount=1")
    assert not _by_kind(one, "PodDisruptionBudget")
    three = template(preset, "--set", "replicaCount=3")
    pdbs = {p["metadata"]["name"]: p for p in _by_kind(three, "PodDisruptionBudget")}
    for dep in _by_kind(three, "Deployment"):
        pdb = pdbs[dep["metadata"]["name"]]
        assert pdb["spec"]["selector"] == dep["spec"]["selector"]
        assert pdb["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("preset", PROD_HELM_PRESETS)
def test_hpa_owns_replicas_when_enabled(
    preset: str, template: Callable[..., list[Doc]], rendered: Callable[[str], Path]
) -> None:
    root = rendered(preset)
    chart = _chart(root)
    docs = template(preset, "-f", str(chart / "values-prod.yaml"), "--set", "replicaCount=3")
    http = [c["name"] for c in _config(root)["components"] if c["kind"] == "http"]
    hpas = _by_kind(docs, "HorizontalPodAutoscaler")
    targets = sorted(h["metadata"]["labels"]["app.kubernetes.io/component"] for h in hpas)
    assert targets == sorted(http)
    for hpa in hpas:
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["minReplicas"] == 3
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    for dep in _by_kind(docs, "Deployment"):
        scaled = dep["metadata"]["labels"]["app.kubernetes.io/component"] in http
        assert ("replicas" in dep["spec"]) is not scaled


@pytest.mark.parametrize("preset", HELM_PRESETS)
def test_migration_hook(
    preset: str, template: Callable[..., list[Doc]], rendered: Callable[[str], Path]
) -> None:
    cfg = _config(rendered(preset))
    docs = template(preset, *_deploy_args(rendered(preset)))
    jobs = _by_kind(docs, "Job")
    migrations = cfg.get("database", {}).get("migrations")
    if not migrations:
        assert not jobs
        return
    (job,) = jobs
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    assert job["spec"]["backoffLimit"] >= 0
    assert job["spec"]["activeDeadlineSeconds"] > 0
    (container,) = job["spec"]["template"]["spec"]["containers"]
    if load_preset(preset).get("runtime") == "go":
        # A Go image has no shell: the command's words run as they are.
        assert container["command"] == migrations["command"].split()
    else:
        assert container["command"] == ["/bin/sh", "-c", migrations["command"]]
    image = f"{cfg['image']['registry']}/{cfg['service']['name']}-{migrations['component']}"
    assert container["image"] == f"{image}@{DIGEST}"
    # The hook runs before the release's ServiceAccount and ConfigMap exist.
    assert "serviceAccountName" not in job["spec"]["template"]["spec"]
    assert "envFrom" not in container
    env = {v["name"]: v.get("value") for v in container["env"]}
    assert "DATABASE_URL" in env
    # npx/npm need a writable HOME for their cache and logs.
    assert env["HOME"] == "/tmp"  # noqa: S108 (a path inside the pod)


@pytest.mark.parametrize("preset", HELM_PRESETS)
def test_the_runtime_is_told_it_runs_in_production(
    preset: str, template: Callable[..., list[Doc]], rendered: Callable[[str], Path]
) -> None:
    """Node.js gets NODE_ENV=production, Python faulthandler's tracebacks, Go one goroutine's
    stack on a crash (and neither NODE_ENV): in every component's ConfigMap and in the migration
    job, which runs without it."""
    expected = {
        "python": ("PYTHONFAULTHANDLER", "1"),
        "go": ("GOTRACEBACK", "single"),
    }.get(load_preset(preset).get("runtime", "node"), ("NODE_ENV", "production"))
    docs = template(preset, *_deploy_args(rendered(preset)))
    (configmap,) = [
        c for c in _by_kind(docs, "ConfigMap") if c["metadata"]["name"].endswith("-env")
    ]
    names = {"NODE_ENV", "PYTHONFAULTHANDLER", "GOTRACEBACK"}
    runtime = names & configmap["data"].keys()
    assert {(k, configmap["data"][k]) for k in runtime} == {expected}
    for job in _by_kind(docs, "Job"):
        (container,) = job["spec"]["template"]["spec"]["containers"]
        env = {v["name"]: v.get("value") for v in container["env"]}
        assert {(k, env[k]) for k in names & env.keys()} == {expected}


@pytest.mark.parametrize("preset", HELM_PRESETS)
def test_backup_cronjob_runs_the_backup_engine(
    preset: str, template: Callable[..., list[Doc]], rendered: Callable[[str], Path]
) -> None:
    root = rendered(preset)
    cfg = _config(root)
    chart = _chart(root)
    env = "prod" if (chart / "values-prod.yaml").exists() else "staging"
    docs = template(preset, "-f", str(chart / f"values-{env}.yaml"), *_deploy_args(root, env))
    cronjobs = _by_kind(docs, "CronJob")
    if "database" not in cfg or preset in CLOUDNATIVEPG_PRESETS:  # CloudNativePG backs up
        assert not cronjobs
        return
    backup = cfg["environments"][env]["backup"]
    # The backups, and the weekly restore drill: the same engine, image, secrets and storage.
    cron, drill = cronjobs
    name = cron["metadata"]["name"]
    assert name.endswith("-backup")
    assert drill["metadata"]["name"] == name.removesuffix("-backup") + "-restore-drill"
    assert cron["spec"]["schedule"] == backup["schedule"]
    assert drill["spec"]["schedule"] == "30 5 * * 0"
    if backup["storage"] == "s3":
        target = f"s3://{backup['bucket']}/{backup['prefix']}"
    else:
        target = "file:///backups"
    args = {
        "backup": ["shipyard", "backup", "run", "--target", target,
                   "--retention-days", str(backup["retention_days"])],
        "drill": ["shipyard", "backup", "verify", "--target", target],
    }  # fmt: skip
    for name, job in (("backup", cron), ("drill", drill)):
        assert job["spec"]["concurrencyPolicy"] == "Forbid"
        # The backup NetworkPolicies select the drill's pods too.
        labels = job["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == "backup"
        pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        image = f"{cfg['image']['registry']}/{cfg['service']['name']}-backup"
        assert container["image"] == f"{image}@{DIGEST}"
        assert container["args"] == args[name]
        secrets = [s["secretRef"]["name"] for s in container["envFrom"]]
        assert secrets[0].endswith("-backup-db")
        assert (len(secrets) == 2) == (backup["storage"] == "s3")
        env_names = {v["name"] for v in container["env"]}
        assert ("AWS_ENDPOINT_URL" in env_names) == bool(backup.get("endpoint"))

    off = template(preset, "-f", str(chart / f"values-{env}.yaml"), *_deploy_args(root, env),
                   "--set", "backup.drill.enabled=false")  # fmt: skip
    assert [c["metadata"]["name"] for c in _by_kind(off, "CronJob")] == [cron["metadata"]["name"]]


def test_backups_are_refused_without_a_database(
    helm: Helm, rendered: Callable[[str], Path]
) -> None:
    """minimal has no PostgreSQL: backups on are refused with what to do, not rendered as
    CronJobs that could reach nothing."""
    assert "minimal" not in BACKED_UP_HELM_PRESETS
    result = _template_chart(helm, _chart(rendered("minimal")), *BACKUPS_ON, check=False)
    assert result.returncode != 0
    assert (
        "backup.enabled needs the service's PostgreSQL, and this chart has none (no "
        "networkPolicy.egress.postgres says where it is): leave backup.enabled false, or add "
        "networkPolicy.egress.postgres for an external one"
    ) in result.stderr


@pytest.mark.parametrize("preset", BACKED_UP_HELM_PRESETS)
def test_local_backups_get_a_kept_volume(preset: str, template: Callable[..., list[Doc]]) -> None:
    docs = template(preset, *BACKUPS_ON)
    (claim,) = _by_kind(docs, "PersistentVolumeClaim")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # The backups and the restore drill use the one claim.
    assert len(_by_kind(docs, "CronJob")) == 2
    for cron in _by_kind(docs, "CronJob"):
        pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        volume = next(v for v in pod["volumes"] if v["name"] == "backups")
        assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        assert {"name": "backups", "mountPath": "/backups"} in pod["containers"][0]["volumeMounts"]


@pytest.mark.parametrize("preset", ROUTED_HELM_PRESETS)
def test_ingress_routes_each_http_component(
    preset: str, template: Callable[..., list[Doc]], rendered: Callable[[str], Path]
) -> None:
    root = rendered(preset)
    cfg = _config(root)
    chart = _chart(root)
    for env in (p.stem.removeprefix("values-") for p in chart.glob("values-*.yaml")):
        docs = template(preset, "-f", str(chart / f"values-{env}.yaml"))
        (ingress,) = _by_kind(docs, "Ingress")
        host = cfg["environments"][env]["host"]
        assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"]
        expected = _expected_routes(cfg, host)
        assert ingress["spec"]["tls"][0]["hosts"] == sorted(expected)
        assert _ingress_routes(ingress) == expected


def _expected_routes(cfg: Doc, host: str) -> dict[str, dict[str, str]]:
    """{host: {route: Service}} as shipyard.yaml says: each http component on its own host."""
    expected: dict[str, dict[str, str]] = {}
    for c in cfg["components"]:
        if c["kind"] == "http":
            own = f"{c['subdomain']}.{host}" if c.get("subdomain") else host
            expected.setdefault(own, {})[c["route"]] = f"rel-{cfg['service']['name']}-{c['name']}"
    return expected


def _ingress_routes(ingress: Doc) -> dict[str, dict[str, str]]:
    return {
        rule["host"]: {p["path"]: p["backend"]["service"]["name"] for p in rule["http"]["paths"]}
        for rule in ingress["spec"]["rules"]
    }


def test_each_subdomain_gets_its_own_host_in_ingress_tls_and_httproutes(
    template: Callable[..., list[Doc]],
    helm: Helm,
    rendered: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    """monorepo with its API on api.<host>: an Ingress rule per host and every host in the one
    certificate; an HTTPRoute per host (Gateway API matches hostnames per route), each with
    only its components; the objects pass kubernetes-validate."""
    root = rendered("monorepo")
    subdomain = ["--set", "components.api.subdomain=api"]
    routed = ["--set", "host=app.example.org", "--set", "ingress.enabled=true"]
    docs = template("monorepo", *subdomain, *routed, "--set", "gateway.enabled=true")
    (ingress,) = _by_kind(docs, "Ingress")
    assert _ingress_routes(ingress) == {
        "api.app.example.org": {"/api": "rel-mustache-api"},
        "app.example.org": {"/": "rel-mustache-web"},
    }
    assert ingress["spec"]["tls"][0]["hosts"] == ["api.app.example.org", "app.example.org"]
    routes = {r["metadata"]["name"]: r["spec"] for r in _by_kind(docs, "HTTPRoute")}
    assert {name: spec["hostnames"] for name, spec in routes.items()} == {
        "rel-mustache-api": ["api.app.example.org"],
        "rel-mustache": ["app.example.org"],
    }
    backends = {
        name: [
            (match["path"]["value"], ref["name"], ref["port"])
            for rule in spec["rules"]
            for match in rule["matches"]
            for ref in rule["backendRefs"]
        ]
        for name, spec in routes.items()
    }
    assert backends == {
        "rel-mustache-api": [("/api", "rel-mustache-api", 3001)],
        "rel-mustache": [("/", "rel-mustache-web", 3000)],
    }
    # Without subdomains everything stays on host: one rule, one HTTPRoute named as before.
    plain = template("monorepo", *routed, "--set", "gateway.enabled=true")
    assert list(_ingress_routes(_by_kind(plain, "Ingress")[0])) == ["app.example.org"]
    assert [r["metadata"]["name"] for r in _by_kind(plain, "HTTPRoute")] == ["rel-mustache"]
    # The Ingress with its rules and TLS hosts passes Kubernetes' own schemas (kubernetes-validate
    # has none for the Gateway API, whose shape is asserted above).
    chart = _chart(root)
    args = [*subdomain, *routed, *_deploy_args(root)]
    helm("helm", "lint", "--strict", str(chart), *args)
    manifest = tmp_path / "subdomains.yaml"
    manifest.write_text(
        helm("helm", "template", "rel", str(chart), *chart_digests(chart), *args).stdout
    )
    for version in KUBE_VERSIONS:
        result = subprocess.run(
            [_kubernetes_validate(), "--strict", "--quiet", "-k", version, str(manifest)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == "", result.stdout


# The port the chart opens for each backing service (its default networkPolicy.egress).
SERVICE_PORTS = {"postgres": 5432, "redis": 6379, "elasticsearch": 9200}


def _egress_ports(policy: Doc) -> set[int]:
    return {port["port"] for rule in policy["egress"] for port in rule["ports"]}


@pytest.mark.parametrize("preset", HELM_PRESETS)
def test_network_policies_default_deny(
    preset: str, template: Callable[..., list[Doc]], rendered: Callable[[str], Path]
) -> None:
    """Deny all, then DNS and public HTTPS for every pod, and to each backing service only the
    pods that use it: a component its `uses` (every service answered when it gives none), the
    migration job PostgreSQL and its component's, the backup pods PostgreSQL."""
    root = rendered(preset)
    cfg = _config(root)
    chart = _chart(root)
    values_file = [f for f in _values_files(chart) if f][-1]  # prod's when it is on Helm
    docs = template(preset, "-f", values_file)
    policies = {p["metadata"]["name"]: p["spec"] for p in _by_kind(docs, "NetworkPolicy")}
    deny = next(p for n, p in policies.items() if n.endswith("-default-deny"))
    assert deny["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny
    assert "egress" not in deny
    # The deny-all selects every pod of the release: components and jobs alike.
    assert set(deny["podSelector"]["matchLabels"]) == {
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
    }
    shared = next(p for n, p in policies.items() if n == f"rel-{cfg['service']['name']}-egress")
    assert shared["podSelector"] == deny["podSelector"]
    assert _egress_ports(shared) == {53, 443}
    answered = [
        s
        for s, on in [
            ("postgres", "database" in cfg),
            ("redis", cfg["services"]["redis"]),
            ("elasticsearch", cfg["services"]["elasticsearch"]),
        ]
        if on
    ]
    answers = {c["name"]: c for c in load_preset(preset).get("components", [])}
    reaches: dict[str, set[int]] = {}
    for name, policy in policies.items():
        if name.endswith("-services-egress"):
            assert policy["policyTypes"] == ["Egress"]
            selector = policy["podSelector"]
            if "matchExpressions" in selector:
                # A component's pods and its smoke check's (invoke deploy's Job of its pod).
                (expression,) = selector["matchExpressions"]
                assert expression["key"] == "app.kubernetes.io/component"
                component, smoke = expression["values"]
                assert smoke == f"{component}-smoke"
            else:  # the migration and backup jobs
                component = selector["matchLabels"]["app.kubernetes.io/component"]
            assert name == f"rel-{cfg['service']['name']}-{component}-services-egress"
            reaches[component] = _egress_ports(policy)
    expected = {}
    for c in cfg["components"]:
        uses = answers.get(c["name"], {}).get("uses", answered)
        if uses:
            expected[c["name"]] = {SERVICE_PORTS[s] for s in uses}
    jobs = {j["metadata"]["labels"]["app.kubernetes.io/component"] for j in _by_kind(docs, "Job")}
    jobs |= {
        j["metadata"]["labels"]["app.kubernetes.io/component"] for j in _by_kind(docs, "CronJob")
    }
    if "migrate" in jobs:
        migrator = cfg["database"]["migrations"]["component"]
        expected["migrate"] = {5432} | expected.get(migrator, set())
    if "backup" in jobs:
        expected["backup"] = {5432}
    assert reaches == expected
    http = [c for c in cfg["components"] if c["kind"] == "http"]
    ingress_policies = [p for n, p in policies.items() if n.endswith("-ingress")]
    assert len(ingress_policies) == len(http)
    for policy in ingress_policies:
        (rule,) = policy["ingress"]
        assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
        assert "namespaceSelector" in rule["from"][0]
        # The release's own pods, smoke checks included (they keep the release's labels).
        assert rule["from"][1]["podSelector"] == deny["podSelector"]
    smoke = policies.get(f"rel-{cfg['service']['name']}-smoke-egress")
    assert (smoke is not None) == bool(http)
    if smoke:
        # Every component's smoke check may call the release's http ports, and nothing else.
        assert smoke["podSelector"]["matchLabels"] == deny["podSelector"]["matchLabels"]
        (expression,) = smoke["podSelector"]["matchExpressions"]
        assert sorted(expression["values"]) == sorted(
            f"{c['name']}-smoke" for c in cfg["components"]
        )
        (rule,) = smoke["egress"]
        assert rule == {
            "to": [{"podSelector": deny["podSelector"]}],
            "ports": [{"port": "http", "protocol": "TCP"}],
        }


def test_component_egress_follows_uses_and_widens_by_values(
    template: Callable[..., list[Doc]],
) -> None:
    """An operator points a service at its addresses and port, widens one component with its
    extraEgress, narrows its uses; a name networkPolicy.egress does not define is refused."""
    docs = template(
        "monorepo",
        "--set-json",
        'networkPolicy.egress.postgres={"port": 6432, "cidrs": ["10.1.0.0/16"]}',
        "--set-json",
        "components.web.uses=[]",
        "--set-json",
        'components.web.extraEgress=[{"ports": [{"port": 8080, "protocol": "TCP"}]}]',
    )
    policies = {p["metadata"]["name"]: p["spec"] for p in _by_kind(docs, "NetworkPolicy")}
    assert policies["rel-mustache-web-services-egress"]["egress"] == [
        {"ports": [{"port": 8080, "protocol": "TCP"}]}
    ]
    assert policies["rel-mustache-worker-services-egress"]["egress"] == [
        {
            "ports": [{"port": 6432, "protocol": "TCP"}],
            "to": [{"ipBlock": {"cidr": "10.1.0.0/16"}}],
        },
        {"ports": [{"port": 6379, "protocol": "TCP"}]},
    ]
    # Nothing to reach: no policy, so the component has DNS and public HTTPS alone.
    bare = template("monorepo", "--set-json", "components.web.uses=[]")
    names = {p["metadata"]["name"] for p in _by_kind(bare, "NetworkPolicy")}
    assert "rel-mustache-web-services-egress" not in names
    assert "rel-mustache-api-services-egress" in names


def test_component_uses_an_undefined_service_is_refused(
    helm: Helm, rendered: Callable[[str], Path]
) -> None:
    chart = _chart(rendered("monorepo"))
    args = ["--set-json", 'components.worker.uses=["postgres", "rabbitmq"]']
    result = helm("helm", "template", "rel", str(chart), *chart_digests(chart), *args, check=False)
    assert result.returncode != 0
    assert (
        'components.worker.uses names "rabbitmq", which networkPolicy.egress does not define'
        in result.stderr
    )


# A worker-only service on PostgreSQL with migrations, Helm in staging too (the queue-worker
# preset stages on Compose, where a worker-only chart once rendered an Ingress with no paths).
WORKER_ONLY = {
    "project_name": "Queue Runner",
    "components": [{"name": "jobs", "kind": "worker"}, {"name": "mailer", "kind": "worker"}],
    "database": "postgres",
    "migrations": "knex",
    "staging_target": "helm",
    "production_target": "helm",
}


@pytest.fixture(scope="module")
def worker_root(render: Render, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render(WORKER_ONLY, tmp_path_factory.mktemp("worker-only") / "queue-runner")


def test_worker_only_service_has_no_route_and_migrates_in_its_first_image(
    helm: Helm, worker_root: Path
) -> None:
    """Nothing serves requests: no Ingress, HTTPRoute, Service or ingress NetworkPolicy in any
    environment, and the migration Job runs in the first component's image."""
    chart = _chart(worker_root)
    for values_file in _values_files(chart):
        args = [*_values_args(values_file), *_deploy_args(worker_root)]
        docs = _docs(
            helm("helm", "template", "rel", str(chart), *chart_digests(chart), *args).stdout
        )
        kinds = {d["kind"] for d in docs}
        assert not kinds & {"Ingress", "HTTPRoute", "Service"}, (values_file, kinds)
        assert len(_by_kind(docs, "Deployment")) == 2
        policies = [p["metadata"]["name"] for p in _by_kind(docs, "NetworkPolicy")]
        assert not [n for n in policies if n.endswith("-ingress")], policies
        (job,) = _by_kind(docs, "Job")
        (container,) = job["spec"]["template"]["spec"]["containers"]
        assert container["image"] == f"ghcr.io/example/queue-runner-jobs@{DIGEST}"
    # Turning a route on anyway is refused with a sentence, not rendered with no paths.
    for route in ("ingress.enabled=true", "gateway.enabled=true"):
        args = ["--set", route, "--set", "host=q.example.com"]
        result = helm(
            "helm", "template", "rel", str(chart), *chart_digests(chart), *args, check=False
        )
        assert result.returncode != 0
        assert re.search(rf"{chart.name}: .*need a component of kind http", result.stderr)
    findings = validate.validate(worker_root, only=["helm-lint", "kubernetes"])
    assert not findings, validate.report(findings)


def _probes(docs: list[Doc], component: str) -> Doc:
    """The probes of the component's container, by name."""
    (dep,) = [
        d
        for d in _by_kind(docs, "Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    return {k: v for k, v in container.items() if k.endswith("Probe")}


def test_worker_probes_take_shared_timings_and_their_own_overrides(
    template: Callable[..., list[Doc]],
) -> None:
    """A component's own `probes` override the shared timings for it alone; a worker that
    declares health gets all three probes, like an http component."""
    docs = template(
        "queue-worker",
        "--set",
        "components.consumer.probes.liveness.failureThreshold=7",
        "--set",
        "probes.readiness.periodSeconds=9",
    )
    consumer, scheduler = _probes(docs, "consumer"), _probes(docs, "scheduler")
    assert set(consumer) == set(scheduler) == {"startupProbe", "readinessProbe", "livenessProbe"}
    assert consumer["livenessProbe"]["failureThreshold"] == 7
    assert consumer["livenessProbe"]["periodSeconds"] == 10  # the rest stays shared
    assert scheduler["livenessProbe"]["failureThreshold"] == 3
    assert consumer["readinessProbe"]["periodSeconds"] == 9
    assert scheduler["readinessProbe"]["periodSeconds"] == 9
    assert consumer["startupProbe"]["failureThreshold"] == 60
    # Values alone can give a worker a probe the answers did not.
    docs = template("monorepo", "--set-json", 'components.worker.healthCommand=["true"]')
    assert _probes(docs, "worker")["livenessProbe"]["exec"] == {"command": ["true"]}


@pytest.mark.parametrize(
    ("values", "where"),
    [
        # A command beside a port and path: one kind of health check.
        ('components.consumer.healthCommand=["true"]', "/components/consumer': 'not' failed"),
        # A port without a path.
        ("components.consumer.healthPath=null", "'healthPath' required, if 'healthPort' exists"),
        ("components.scheduler.healthPort=9000", "'healthPath' required, if 'healthPort' exists"),
        ('components.consumer.probes={"liveness": {"periodSeconds": 0}}', "/periodSeconds"),
        ('components.consumer.probes={"liveness": {"period": 5}}', "additional properties"),
    ],
)
def test_schema_refuses_bad_worker_health(
    helm: Helm, rendered: Callable[[str], Path], values: str, where: str
) -> None:
    chart = _chart(rendered("queue-worker"))
    result = _template_chart(helm, chart, "--set-json", values, check=False)
    assert result.returncode != 0
    assert where in result.stderr, result.stderr


def test_schema_refuses_worker_health_on_an_http_component(
    helm: Helm, rendered: Callable[[str], Path]
) -> None:
    chart = _chart(rendered("monorepo"))
    for values in ('components.api.healthCommand=["true"]', "components.api.healthPort=9000"):
        result = _template_chart(helm, chart, "--set-json", values, check=False)
        assert result.returncode != 0, values
        assert "at '/components/api'" in result.stderr, result.stderr


def test_text_outside_the_basic_plane_reaches_the_pods_unchanged(
    helm: Helm, render: Render, tmp_path: Path
) -> None:
    """JSON escapes 🚀 as a surrogate pair, which Helm's YAML parser refuses: values.yaml and
    Chart.yaml carry such text literally."""
    answers = {"description": "Orders 🚀", "app_env": {"GREETING": "héllo 🚀"}}
    chart = _chart(render({**load_preset("minimal"), **answers}, tmp_path / "kit"))

    docs = _docs(helm("helm", "template", "rel", str(chart), *chart_digests(chart)).stdout)

    (configmap,) = _by_kind(docs, "ConfigMap")
    assert configmap["data"]["GREETING"] == "héllo 🚀"
    assert YAML(typ="safe").load((chart / "Chart.yaml").read_text())["description"] == "Orders 🚀"


# A preset variant whose backups go to a MinIO inside the network, on a non-HTTPS port.
MINIO_PRESET = "nestjs-api"
MINIO_ENDPOINT = "http://minio.internal:9000"


@pytest.fixture(scope="module")
def minio_root(render: Render, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The kit's own backup pods (an external PostgreSQL): CloudNativePG's own reach is
    # test_cloudnativepg_reaches_a_custom_s3_endpoint's.
    answers = {**load_preset(MINIO_PRESET), "backup_s3_endpoint": MINIO_ENDPOINT}
    answers["database_on_kubernetes"] = "external"
    assert answers["backup_storage"] == "s3"
    return render(answers, tmp_path_factory.mktemp("minio") / MINIO_PRESET)


def _policies(helm: Helm, chart: Path, *args: str) -> dict[str, Doc]:
    out = _template_chart(helm, chart, "-f", str(chart / "values-prod.yaml"), *args)
    return {p["metadata"]["name"]: p["spec"] for p in _by_kind(_docs(out.stdout), "NetworkPolicy")}


def test_backup_pods_reach_a_custom_s3_endpoint(helm: Helm, minio_root: Path) -> None:
    chart = _chart(minio_root)
    values = YAML(typ="safe").load((chart / "values.yaml").read_text())
    assert values["backup"]["s3"]["endpoint"] == MINIO_ENDPOINT
    with_endpoint = _policies(helm, chart)
    without = _policies(helm, chart, "--set", "backup.s3.endpoint=")
    # Exactly one policy more; every policy the app pods had is unchanged (nothing broader).
    (extra,) = set(with_endpoint) - set(without)
    assert {n: p for n, p in with_endpoint.items() if n != extra} == without
    backup = with_endpoint[extra]
    assert backup["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "backup"
    assert backup["policyTypes"] == ["Egress"]
    # The endpoint's port, from any address unless the operator narrows it.
    assert backup["egress"] == [{"ports": [{"port": 9000, "protocol": "TCP"}]}]
    narrowed = _policies(helm, chart, "--set", "networkPolicy.backupS3Endpoint.cidrs={10.0.5.0/24}")
    assert narrowed[extra]["egress"] == [
        {"ports": [{"port": 9000, "protocol": "TCP"}], "to": [{"ipBlock": {"cidr": "10.0.5.0/24"}}]}
    ]
    # No port in the URL: the scheme's. Local (file://) backups or AWS: no extra rule.
    https = _policies(helm, chart, "--set", "backup.s3.endpoint=https://s3.example.internal")
    assert https[extra]["egress"] == [{"ports": [{"port": 443, "protocol": "TCP"}]}]
    local = _policies(helm, chart, "--set", "backup.target=file:///backups")
    assert extra not in local


@pytest.mark.parametrize("binary", HELMS)
def test_custom_s3_endpoint_chart_lints(binary: str, helm: Helm, minio_root: Path) -> None:
    chart = _chart(minio_root)
    for values_file in _values_files(chart):
        result = helm(binary, "lint", "--strict", str(chart), *_values_args(values_file))
        assert "0 chart(s) failed" in result.stdout


def test_custom_s3_endpoint_passes_kubernetes_validate(
    helm: Helm, minio_root: Path, tmp_path: Path
) -> None:
    chart = _chart(minio_root)
    args = ["-f", str(chart / "values-prod.yaml"), *_deploy_args(minio_root)]
    for version in KUBE_VERSIONS:
        out = _template_chart(helm, chart, *args, "--kube-version", version)
        assert "backup-s3-egress" in out.stdout
        manifest = tmp_path / f"minio-{version}.yaml"
        manifest.write_text(out.stdout)
        result = subprocess.run(
            [_kubernetes_validate(), "--strict", "--quiet", "-k", version, str(manifest)],
            capture_output=True,
            text=True,
            check=False,
            cwd=chart,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == "", result.stdout


@pytest.mark.parametrize("preset", HELM_PRESETS)
def test_config_change_rolls_pods(preset: str, template: Callable[..., list[Doc]]) -> None:
    def checksums(*args: str) -> set[str]:
        return {
            d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            for d in _by_kind(template(preset, *args), "Deployment")
        }

    before = checksums()
    after = checksums("--set", "env.LOG_LEVEL=debug")
    assert len(before) == 1
    assert len(after) == 1
    assert before != after
    # A rotated Secret is announced by the deploy through podAnnotations.
    docs = template(preset, "--set-string", "podAnnotations.checksum/secret=abc")
    for dep in _by_kind(docs, "Deployment"):
        assert dep["spec"]["template"]["metadata"]["annotations"]["checksum/secret"] == "abc"


def test_image_mirror_replaces_the_registry(template: Callable[..., list[Doc]]) -> None:
    docs = template("monorepo", "--set", "image.mirror=mirror.internal:5000")
    for dep in _by_kind(docs, "Deployment"):
        image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
        assert re.fullmatch(r"mirror\.internal:5000/[-a-z0-9]+@sha256:0{64}", image), image


@pytest.mark.parametrize("binary", ["helm", "helm3"])
def test_an_image_without_a_digest_is_refused_unless_a_tag_is_set(
    binary: str, helm: Helm, rendered: Callable[[str], Path]
) -> None:
    """A chart installed by hand without the digests `invoke deploy` passes would run a moving
    tag: refused, naming the value to set; with image.tag set on purpose, the tag runs and the
    install notes warn. `helm lint` of the defaults (which carry no digest) still passes."""
    chart = _chart(rendered("monorepo"))
    refused = helm(binary, "template", "rel", str(chart), check=False)
    assert refused.returncode != 0
    assert re.search(r"components\.\w+\.image\.digest is empty", refused.stderr), refused.stderr
    assert "set image.tag explicitly" in refused.stderr
    helm(binary, "lint", "--strict", str(chart))
    docs = _docs(helm(binary, "template", "rel", str(chart), "--set", "image.tag=v1.2.3").stdout)
    for dep in _by_kind(docs, "Deployment"):
        image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
        assert re.fullmatch(r"ghcr\.io/[-a-z0-9/]+:v1\.2\.3", image), image
    if binary == "helm":  # Helm 3's client-side install contacts the cluster (see above)
        notes = helm(
            binary, "install", "rel", str(chart), "--dry-run=client", "--set", "image.tag=v1.2.3"
        ).stdout
        assert "WARNING: api, web, worker run the tag v1.2.3, not a digest" in notes, notes


def test_long_release_names_are_truncated(template: Callable[..., list[Doc]]) -> None:
    release = "a-release-name-of-the-longest-length-helm-allows-53ch"
    assert len(release) == 53
    docs = template("monorepo", "--set", "replicaCount=3", release=release)
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert all(len(n) <= 63 and not n.endswith("-") for _, n in names), names
    assert len(set(names)) == len(names)
    # The component suffix survives the truncation.
    assert {n.rsplit("-", 1)[1] for k, n in names if k == "Deployment"} == {"web", "api", "worker"}


# --- values.yaml and values.schema.json ------------------------------------------------------


def _schema_properties(
    schema: Doc, node: Doc, path: str, shared: bool = False
) -> Iterator[tuple[str, Doc, bool]]:
    """(path, property, shared): shared properties come from a $ref'd definition, so their
    default is generic rather than this chart's value."""
    if "$ref" in node:
        target = schema
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        shared = True
    for name, prop in node.get("properties", {}).items():
        yield f"{path}.{name}", prop, shared
        yield from _schema_properties(schema, prop, f"{path}.{name}", shared)


@pytest.mark.parametrize("preset", HELM_PRESETS)
def test_schema_describes_every_property(preset: str, rendered: Callable[[str], Path]) -> None:
    chart = _chart(rendered(preset))
    schema = json.loads((chart / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    values = YAML(typ="safe").load((chart / "values.yaml").read_text())
    properties = list(_schema_properties(schema, schema, ""))
    assert len(properties) > 50
    for path, prop, shared in properties:
        assert prop.get("description"), f"{path} has no description"
        assert "default" in prop, f"{path} has no default"
        if shared:
            continue
        # A default that is a leaf must be what values.yaml says.
        node: Any = values
        for part in path.strip(".").split("."):
            node = node.get(part, KeyError) if isinstance(node, dict) else KeyError
        if node is not KeyError and not isinstance(node, dict):
            assert prop["default"] == node, (
                f"{path}: schema default {prop['default']!r} != values.yaml {node!r}"
            )


@pytest.mark.parametrize("preset", HELM_PRESETS)
def test_values_yaml_documents_every_key(preset: str, rendered: Callable[[str], Path]) -> None:
    """Each key has a comment right above it, or sits under a key that has one."""
    chart = _chart(rendered(preset))
    for values_file in ["values.yaml", *(p.name for p in chart.glob("values-*.yaml"))]:
        undocumented = []
        documented_at: dict[int, bool] = {}
        previous = ""
        for line in (chart / values_file).read_text().splitlines():
            stripped = line.strip()
            if not stripped:
                previous = ""
                continue
            indent = len(line) - len(line.lstrip())
            match = re.match(r"(- )?([A-Za-z0-9_.\-/]+):( |$)", stripped)
            if match and not stripped.startswith("#"):
                parent = any(v for k, v in documented_at.items() if k < indent)
                here = previous.startswith("#")
                documented_at = {k: v for k, v in documented_at.items() if k < indent}
                documented_at[indent] = here or parent
                if not (here or parent):
                    undocumented.append(stripped)
            previous = stripped
        assert not undocumented, f"{values_file}: keys without a comment: {undocumented}"


# --- The library chart -----------------------------------------------------------------------


@pytest.mark.parametrize("binary", HELMS)
def test_library_chart_lints(binary: str, helm: Helm) -> None:
    result = helm(binary, "lint", "--strict", str(LIBRARY))
    assert "0 chart(s) failed" in result.stdout


def test_every_library_define_has_a_usage_comment() -> None:
    defines = 0
    for tpl in sorted((LIBRARY / "templates").glob("*.tpl")):
        text = tpl.read_text()
        for match in re.finditer(r'\{\{- define "([^"]+)" -\}\}', text):
            defines += 1
            comment = text[: match.start()].rsplit("{{/*", 1)[-1]
            assert comment.lstrip().startswith("Usage:"), f"{match.group(1)} has no Usage comment"
    assert defines >= 10


# --- Packaging and an OCI registry -----------------------------------------------------------


@pytest.mark.parametrize("binary", HELMS)
def test_package_and_push_to_oci_registry(
    binary: str, helm: Helm, rendered: Callable[[str], Path], registry: str, tmp_path: Path
) -> None:
    chart = _chart(rendered("monorepo"))
    helm(binary, "package", str(chart), "--destination", str(tmp_path))
    (archive,) = tmp_path.glob("*.tgz")
    pushed = helm(binary, "push", str(archive), f"oci://{registry}/charts-{binary}", "--plain-http")
    assert "Digest: sha256:" in pushed.stdout + pushed.stderr
    name = chart.name
    pulled = tmp_path / "pulled"
    pulled.mkdir()
    helm(
        binary,
        "pull",
        f"oci://{registry}/charts-{binary}/{name}",
        "--version",
        "0.1.0",
        "--plain-http",
        "--destination",
        str(pulled),
    )
    (got,) = pulled.glob("*.tgz")
    assert got.read_bytes() == archive.read_bytes()
    # The archive carries the vendored library chart: installs need no repository.
    shown = helm(binary, "template", "rel", str(got), *chart_digests(chart)).stdout
    assert _by_kind(_docs(shown), "Deployment")


# --- A real cluster, only when one is configured ---------------------------------------------


@pytest.mark.cluster
@pytest.mark.skipif(
    not os.environ.get("KUBECONFIG"),
    reason="KUBECONFIG is not set: no Kubernetes cluster to validate against",
)
@pytest.mark.parametrize("preset", HELM_PRESETS)
def test_server_side_dry_run_on_a_cluster(
    preset: str, helm: Helm, rendered: Callable[[str], Path]
) -> None:
    """The API server (and its admission: PSS, CRDs) accepts the manifests."""
    root = rendered(preset)
    chart = _chart(root)
    for env in (p.stem.removeprefix("values-") for p in chart.glob("values-*.yaml")):
        helm(
            "helm",
            "upgrade",
            "--install",
            f"shipyard-test-{env}",
            str(chart),
            "--namespace",
            "default",
            "-f",
            str(chart / f"values-{env}.yaml"),
            *_deploy_args(root, env),
            "--dry-run=server",
        )


# --- The vendored library chart through git and `copier update` ------------------------------


def test_vendored_library_survives_copier_update(
    helm: Helm, tmp_path: Path, template_dir: Path
) -> None:
    """The template's symlink travels through git; copy and update both vendor real files."""
    from copier import run_copy, run_update

    template = tmp_path / "shipyard"
    shutil.copytree(template_dir, template)
    # template_dir followed the symlink; put it back, as a clone of the template has it.
    link = next((template / "template").glob("*charts*/*/charts/shipyard-common"))
    link_target = next((REPO / "template").glob("*charts*/*/charts/shipyard-common"))
    assert link_target.is_symlink()
    shutil.rmtree(link)
    link.symlink_to(link_target.readlink())
    init_repo(template, "v1")
    git(template, "tag", "v1.0.0")

    dst = tmp_path / "service"
    answers = load_preset("nestjs-api")
    run_copy(str(template), dst, data=answers, defaults=True, unsafe=True, quiet=True)
    init_repo(dst, "generated")
    chart = _chart(dst)
    vendored = chart / "charts" / "shipyard-common"
    assert vendored.is_dir()
    assert not vendored.is_symlink()

    # v1.1.0 changes the library chart only: the generated repo must receive it.
    labels = template / "charts" / "shipyard-common" / "templates" / "_labels.tpl"
    anchor = "app.kubernetes.io/managed-by: {{ .context.Release.Service }}\n"
    assert anchor in labels.read_text()
    labels.write_text(
        labels.read_text().replace(anchor, anchor + "shipyard.dev/kit: shipyard\n", 1)
    )
    git(template, "commit", "-qam", "v1.1: a kit label")
    git(template, "tag", "v1.1.0")
    run_update(dst, data=answers, defaults=True, unsafe=True, quiet=True, overwrite=True)

    assert not vendored.is_symlink()
    assert "shipyard.dev/kit" in (vendored / "templates" / "_labels.tpl").read_text()
    helm("helm", "lint", "--strict", str(chart))
    docs = _docs(helm("helm", "template", "rel", str(chart), *chart_digests(chart)).stdout)
    assert all(d["metadata"]["labels"]["shipyard.dev/kit"] == "shipyard" for d in docs)


# --- PostgreSQL by CloudNativePG ------------------------------------------------------------


def _env_vars(docs: list[Doc], name: str) -> list[Doc]:
    """The `name` variable of every container of the Deployments and Jobs."""
    return [
        v
        for _, pod in _pod_specs(docs)
        for container in pod["containers"]
        for v in container.get("env", [])
        if v["name"] == name
    ]


def _kubernetes_api(api_version: str) -> bool:
    """One of Kubernetes' own APIs (what kubernetes-validate knows): a group without a dot
    ("apps/v1", "v1") or a *.k8s.io one."""
    group = api_version.rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


@pytest.mark.parametrize("preset", CLOUDNATIVEPG_PRESETS)
def test_cloudnativepg_objects_render_only_where_the_operator_is(
    preset: str, template: Callable[..., list[Doc]], rendered: Callable[[str], Path]
) -> None:
    """Without postgresql.cnpg.io/v1 nothing of CloudNativePG renders (an install never fails
    on a missing CRD); the app still reads DATABASE_URL from the operator's Secret, and the
    kit's backup CronJob stays off: CloudNativePG backs up."""
    root = rendered(preset)
    chart = _chart(root)
    docs = template(preset, "-f", str(chart / "values-prod.yaml"), *_deploy_args(root))
    assert not [d for d in docs if d["apiVersion"].startswith("postgresql.cnpg.io/")]
    assert not [p for p in _by_kind(docs, "NetworkPolicy") if "cnpg.io/cluster" in str(p)]
    assert not _by_kind(docs, "CronJob")
    refs = [v["valueFrom"]["secretKeyRef"] for v in _env_vars(docs, "DATABASE_URL")]
    assert refs
    assert {(r["name"], r["key"]) for r in refs} == {("rel-nestjs-template-postgres-app", "uri")}
    # Off (the defaults), the kit's own Secret as for an external server.
    bare = template(preset, *_deploy_args(root))
    refs = [v["valueFrom"]["secretKeyRef"] for v in _env_vars(bare, "DATABASE_URL")]
    assert {(r["name"], r["key"]) for r in refs} == {("nestjs-template-env", "DATABASE_URL")}


@pytest.mark.parametrize("preset", CLOUDNATIVEPG_PRESETS)
def test_cloudnativepg_cluster_archives_to_the_backup_bucket(
    preset: str, template: Callable[..., list[Doc]], rendered: Callable[[str], Path], tmp_path: Path
) -> None:
    root = rendered(preset)
    chart = _chart(root)
    answers = load_preset(preset)
    backup = _config(root)["environments"]["prod"]["backup"]
    args = ["-f", str(chart / "values-prod.yaml"), *_deploy_args(root), "--api-versions", CNPG_API]
    docs = template(preset, *args)

    (cluster,) = _by_kind(docs, "Cluster")
    name = cluster["metadata"]["name"]
    assert name == "rel-nestjs-template-postgres"
    spec = cluster["spec"]
    assert spec["instances"] == 3
    assert spec["imageName"] == f"ghcr.io/cloudnative-pg/postgresql:{answers['postgres_version']}"
    assert spec["bootstrap"] == {
        "initdb": {"database": "nestjs_template", "owner": "nestjs_template"}
    }
    assert spec["storage"] == {"size": "10Gi"}
    assert spec["resources"]["limits"]["memory"] == "1Gi"
    store = spec["backup"]["barmanObjectStore"]
    assert store["destinationPath"] == f"s3://{backup['bucket']}/prod"
    assert spec["backup"]["retentionPolicy"] == f"{answers['backup_retention_days']}d"
    creds = store["s3Credentials"]
    assert {(c["name"], c["key"]) for c in creds.values()} == {
        ("nestjs-template-backup-s3", "AWS_ACCESS_KEY_ID"),
        ("nestjs-template-backup-s3", "AWS_SECRET_ACCESS_KEY"),
    }
    assert "endpointURL" not in store  # AWS
    # Monitoring on, but no prometheus-operator: no PodMonitor asked of CloudNativePG.
    assert "monitoring" not in spec

    (scheduled,) = _by_kind(docs, "ScheduledBackup")
    assert scheduled["spec"]["cluster"] == {"name": name}
    assert scheduled["spec"]["schedule"] == "0 " + answers["backup_schedule"]
    assert scheduled["spec"]["method"] == "barmanObjectStore"

    assert not _by_kind(docs, "CronJob")
    refs = [v["valueFrom"]["secretKeyRef"] for v in _env_vars(docs, "DATABASE_URL")]
    assert {(r["name"], r["key"]) for r in refs} == {(f"{name}-app", "uri")}
    (migrate,) = _by_kind(docs, "Job")
    assert migrate["metadata"]["annotations"]["helm.sh/hook"] == "post-install,pre-upgrade"

    (policy,) = [p for p in _by_kind(docs, "NetworkPolicy") if p["metadata"]["name"] == name]
    assert policy["spec"]["podSelector"] == {"matchLabels": {"cnpg.io/cluster": name}}
    app, operator = policy["spec"]["ingress"]
    assert app["ports"] == [{"port": 5432, "protocol": "TCP"}]
    assert app["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "rel"
    assert operator["ports"] == [{"port": 8000, "protocol": "TCP"}]
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 5432, 8000, 443, 6443}

    staging = template(preset, "-f", str(chart / "values-staging.yaml"), "--api-versions", CNPG_API)
    assert [c["spec"]["instances"] for c in _by_kind(staging, "Cluster")] == [1]
    assert (
        _by_kind(staging, "Cluster")[0]["spec"]["backup"]["barmanObjectStore"]["destinationPath"]
        == f"s3://{backup['bucket']}/staging"
    )

    # With the prometheus-operator too, CloudNativePG makes a PodMonitor and Prometheus
    # reaches the metrics port; the rest of the render passes kubernetes-validate.
    both = template(preset, *args, "--api-versions", "monitoring.coreos.com/v1")
    (cluster,) = _by_kind(both, "Cluster")
    assert cluster["spec"]["monitoring"] == {"enablePodMonitor": True}
    (policy,) = [p for p in _by_kind(both, "NetworkPolicy") if p["metadata"]["name"] == name]
    assert policy["spec"]["ingress"][2]["ports"] == [{"port": 9187, "protocol": "TCP"}]
    manifest = tmp_path / "cnpg.yaml"
    core = [d for d in docs if _kubernetes_api(d["apiVersion"])]
    manifest.write_text("---\n".join(json.dumps(d) + "\n" for d in core))
    result = subprocess.run(
        [_kubernetes_validate(), "--strict", "--quiet", "-k", KUBE_VERSIONS[-1], str(manifest)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("preset", CLOUDNATIVEPG_PRESETS)
def test_deployment_md_recovery_cluster_passes_the_cluster_schema(
    preset: str, rendered: Callable[[str], Path]
) -> None:
    """The point-in-time recovery manifest DEPLOYMENT.md tells a user to apply is a valid
    CloudNativePG Cluster that recovers from the chart's Cluster's archive."""
    from jsonschema import Draft7Validator

    from shipyard.validate.crds import strict_schema

    root = rendered(preset)
    text = (root / "DEPLOYMENT.md").read_text()
    start = text.index("    apiVersion: postgresql.cnpg.io/v1\n")
    block = re.match(r"((?:    .*\n|\n)+)", text[start:])
    assert block
    cluster = YAML(typ="safe").load("\n".join(line[4:] for line in block[1].splitlines()))
    errors = [e.message for e in Draft7Validator(strict_schema("Cluster")).iter_errors(cluster)]
    assert not errors
    (origin,) = cluster["spec"]["externalClusters"]
    assert origin["barmanObjectStore"]["serverName"] == "nestjs-template-postgres"
    assert cluster["spec"]["bootstrap"]["recovery"]["recoveryTarget"]["targetTime"]


@pytest.mark.parametrize("preset", CLOUDNATIVEPG_PRESETS)
def test_cloudnativepg_reaches_a_custom_s3_endpoint(
    preset: str, template: Callable[..., list[Doc]], rendered: Callable[[str], Path]
) -> None:
    chart = _chart(rendered(preset))
    args = ["-f", str(chart / "values-prod.yaml"), "--api-versions", CNPG_API]
    args += ["--set", f"backup.s3.endpoint={MINIO_ENDPOINT}"]
    docs = template(preset, *args, "--set", "networkPolicy.backupS3Endpoint.cidrs={10.0.5.0/24}")
    (cluster,) = _by_kind(docs, "Cluster")
    assert cluster["spec"]["backup"]["barmanObjectStore"]["endpointURL"] == MINIO_ENDPOINT
    name = cluster["metadata"]["name"]
    (policy,) = [p for p in _by_kind(docs, "NetworkPolicy") if p["metadata"]["name"] == name]
    # The endpoint's port, narrowed as the kit's backup pods' is; no public HTTPS for S3.
    assert policy["spec"]["egress"][-1] == {
        "ports": [{"port": 9000, "protocol": "TCP"}],
        "to": [{"ipBlock": {"cidr": "10.0.5.0/24"}}],
    }
    assert "0.0.0.0/0" not in str(policy)


@pytest.mark.parametrize(
    ("schedule", "cnpg"),
    [("0 4 * * 7", "0 0 4 * * 0"), ("*/15 * * * 1-5", "0 */15 * * * 1-5")],
)
def test_cloudnativepg_schedule_has_seconds_and_weekdays_0_to_6(
    template: Callable[..., list[Doc]], rendered: Callable[[str], Path], schedule: str, cnpg: str
) -> None:
    (preset,) = CLOUDNATIVEPG_PRESETS
    chart = _chart(rendered(preset))
    args = ["-f", str(chart / "values-prod.yaml"), "--api-versions", CNPG_API]
    docs = template(preset, *args, "--set-string", f"backup.schedule={schedule}")
    assert [b["spec"]["schedule"] for b in _by_kind(docs, "ScheduledBackup")] == [cnpg]


@pytest.mark.parametrize(
    ("values", "says"),
    [
        (["backup.schedule=0 4 * * 5-7"], "CloudNativePG's schedule knows weekdays 0-6"),
        (["backup.target=file:///backups"], "CloudNativePG archives to object storage"),
    ],
)
def test_cloudnativepg_refuses_what_it_cannot_run(
    helm: Helm, rendered: Callable[[str], Path], values: list[str], says: str
) -> None:
    (preset,) = CLOUDNATIVEPG_PRESETS
    chart = _chart(rendered(preset))
    sets = [arg for v in values for arg in ("--set-string", v)]
    result = _template_chart(helm, chart, "-f", str(chart / "values-prod.yaml"), *sets, check=False)
    assert result.returncode != 0
    assert says in result.stderr


@pytest.mark.parametrize("preset", ROUTED_HELM_PRESETS)
def test_maintenance_mode_sends_every_route_to_the_page(
    preset: str, template: Callable[..., list[Doc]]
) -> None:
    """Every Ingress path and HTTPRoute rule goes to the maintenance Service, which only the
    ingress controller reaches; the components keep their Deployments (so `off` is instant)."""
    normal = template(preset, *ROUTES)
    docs = template(preset, *ROUTES, *MAINTENANCE_ON)
    (page,) = [
        d["metadata"]["name"]
        for d in _by_kind(docs, "Service")
        if d["metadata"]["name"].endswith("-maintenance")
    ]
    (ingress,) = _by_kind(docs, "Ingress")
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert paths
    assert {p["backend"]["service"]["name"] for p in paths} == {page}
    assert {p["backend"]["service"]["port"]["number"] for p in paths} == {8080}
    routes = _by_kind(docs, "HTTPRoute")
    assert routes
    refs = [
        ref for route in routes for rule in route["spec"]["rules"] for ref in rule["backendRefs"]
    ]
    assert {(r["name"], r["port"]) for r in refs} == {(page, 8080)}
    (service,) = [s for s in _by_kind(docs, "Service") if s["metadata"]["name"] == page]
    assert service["spec"]["ports"][0]["port"] == 8080
    deployments = {d["metadata"]["name"] for d in _by_kind(docs, "Deployment")}
    assert deployments == {d["metadata"]["name"] for d in _by_kind(normal, "Deployment")} | {page}
    (config,) = [c for c in _by_kind(docs, "ConfigMap") if c["metadata"]["name"] == page]
    assert "header Retry-After 120" in config["data"]["Caddyfile"]
    assert config["metadata"]["annotations"]["shipyard.dev/maintenance-since"].startswith("2026")
    policies = {p["metadata"]["name"]: p["spec"] for p in _by_kind(docs, "NetworkPolicy")}
    (rule,) = policies[f"{page}-ingress"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    # Off (the default), nothing of it renders and the routes go to the components.
    assert not [d for d in normal if d["metadata"]["name"] == page]


def test_maintenance_needs_something_to_route(helm: Helm, rendered: Callable[[str], Path]) -> None:
    chart = _chart(rendered("queue-worker"))
    result = helm(
        "helm", "template", "rel", str(chart), *chart_digests(chart), *MAINTENANCE_ON, check=False
    )
    assert result.returncode != 0
    assert "maintenance.enabled needs a component of kind http" in result.stderr


@pytest.mark.slow
@pytest.mark.xdist_group("docker")
def test_maintenance_page_is_served_as_the_chart_runs_it(
    helm: Helm,
    rendered: Callable[[str], Path],
    dockerd: Dockerd,
    mirror_images: MirrorImages,
    tmp_path: Path,
) -> None:
    """The Caddyfile and page the chart renders, run by Caddy the way its Deployment runs it
    (its args and env, non-root, read-only root, the ConfigMap mounted read-only, /tmp only
    writable): every path answers 503 with Retry-After and the page, /healthz 200."""
    del mirror_images  # builds CADDY_LOCAL, Caddy 2.6 standing in for caddy:2-alpine
    page = tmp_path / "index.html"
    page.write_text("<!doctype html><p>Back at noon.</p>\n")
    chart = _chart(rendered("minimal"))
    flags = [*MAINTENANCE_ON, "--set", "maintenance.retryAfter=90"]
    out = helm(
        "helm",
        "template",
        "rel",
        str(chart),
        *chart_digests(chart),
        *flags,
        "--set-file",
        f"maintenance.page={page}",
    )
    docs = _docs(out.stdout)
    (config,) = [
        d for d in _by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-maintenance")
    ]
    (deployment,) = [
        d for d in _by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-maintenance")
    ]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "site"]
    site = tmp_path / "site"
    site.mkdir(mode=0o755)
    for name, text in config["data"].items():
        (site / name).write_text(text)
        (site / name).chmod(0o644)
    port = free_port()
    with contextlib.closing(dockerd.client()) as client:
        caddy = client.containers.run(
            CADDY_LOCAL,
            command=container["args"],
            environment={e["name"]: e["value"] for e in container["env"]},
            user=f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}",
            read_only=True,
            tmpfs={"/tmp": ""},  # noqa: S108 (a path inside the container)
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            volumes={str(site): {"bind": mount["mountPath"], "mode": "ro"}},
            ports={"8080/tcp": ("127.0.0.1", port)},
            detach=True,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    health = requests.get(base + "/healthz", timeout=2)
                    break
                except requests.ConnectionError:
                    if time.monotonic() > deadline:
                        pytest.fail(caddy.logs().decode(errors="replace"))
                    time.sleep(0.5)
            assert health.status_code == 200
            for path in ("/", "/api/orders?page=2", "/index.html"):
                answer = requests.get(base + path, timeout=5)
                assert answer.status_code == 503, path
                assert answer.headers["Retry-After"] == "90"
                assert answer.headers["Cache-Control"] == "no-store"
                assert "Back at noon." in answer.text
        finally:
            caddy.remove(force=True)
