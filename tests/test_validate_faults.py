"""A validator that crashes, is killed, prints nothing or fails without a report it can read
yields a finding, never a clean report.

Crashes are played by stand-in executables placed first on PATH (a real tool cannot be made to
segfault on demand); the failures the real tools can be driven into (a config they cannot
read, a document they cannot parse, a chart that renders nothing) are played by the real tools.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from shipyard import validate
from tests.conftest import stand_in

# The preset with every kind of artifact (tests/test_validate.py checks its defects).
FULL = "pe-investor-portal"
# A preset with a Compose host's monitoring stack (monitoring/).
COMPOSE_MONITORING = "project-management"
# A shell script, clean, so the shellcheck check has something to run on (the kit has none).
SCRIPT = "scripts/rotate-backups.sh"

# check -> (the executable a stand-in replaces, the tool its findings name)
STAND_INS = {
    "dockerfile": ("hadolint", "hadolint"),
    "shellcheck": ("shellcheck", "shellcheck"),
    "actionlint": ("actionlint", "actionlint"),
    "yaml": ("yamllint", "yamllint"),
    "compose": ("docker-compose", "compose"),
    "compose/caddy": ("caddy", "caddy"),
    "compose-schema": ("check-jsonschema", "check-jsonschema"),
    "workflow-schema": ("check-jsonschema", "check-jsonschema"),
    "dependabot-schema": ("check-jsonschema", "check-jsonschema"),
    "helm-lint": ("helm", "helm-lint"),
    "kubernetes": ("kubernetes-validate", "kubernetes-validate"),
    "kubernetes/helm-template": ("helm", "helm"),
    "prometheus-rules": ("promtool", "promtool"),
    "prometheus-rules/helm-template": ("helm", "helm"),
    "monitoring-crds": ("helm", "helm"),
    "cloudnativepg-crds": ("helm", "helm"),
    "grafana-dashboard": ("helm", "helm"),
    "prometheus-config": ("promtool", "promtool"),
    "alertmanager-config": ("amtool", "amtool"),
}
# How a run goes wrong: the stand-in's script, and what the finding must say.
FAILURES = {
    "traceback": (
        "echo 'Traceback (most recent call last):' >&2\necho 'RuntimeError: boom' >&2\nexit 1",
        "RuntimeError: boom",
    ),
    "silent-exit-1": ("exit 1", "exited 1 without a report"),
    "silent-exit-3": ("exit 3", "exited 3 without a report"),
    "garbage-exit-1": ("echo 'segmentation fault (core dumped)'\nexit 1", "segmentation fault"),
    "killed": ("kill -SEGV $$", "killed by signal 11 without a report"),
    "silent-exit-0": ("exit 0", "exited 0 without a report"),
}
# Tools that say nothing when clean (yamllint's parsable format, `compose config --quiet`,
# `kubernetes-validate --quiet`; helm lint's and caddy's summaries are not read): for them
# silence with exit 0 is the clean result, so only the others are asked about it.
SILENT_WHEN_CLEAN = {"yaml", "compose", "compose/caddy", "helm-lint", "kubernetes"}
# `helm template` printing nothing is a chart that renders nothing, and is said so.
SAYS = {
    (case, "silent-exit-0"): "rendered no manifests"
    for case in (
        "kubernetes/helm-template",
        "prometheus-rules/helm-template",
        "monitoring-crds",
        "cloudnativepg-crds",
        "grafana-dashboard",
    )
}


@pytest.fixture(scope="module")
def clean_kit(rendered: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The full preset plus a clean shell script and a Compose host's monitoring files (its
    environments run on Kubernetes): every check has something to run on."""
    root = Path(shutil.copytree(rendered(FULL), tmp_path_factory.mktemp("faults") / "kit"))
    shutil.copytree(rendered(COMPOSE_MONITORING) / "monitoring", root / "monitoring")
    script = root / SCRIPT
    script.parent.mkdir()
    script.write_text('#!/bin/sh\nset -eu\nrm -f -- "${BACKUP_DIR:-/backups}"/*.partial\n')
    return root


@pytest.fixture
def kit(clean_kit: Path, tmp_path: Path) -> Path:
    """A private copy of the clean kit, free to break."""
    return Path(shutil.copytree(clean_kit, tmp_path / "kit", symlinks=True))


def test_every_check_runs_clean_on_the_kit_with_the_real_tools(clean_kit: Path) -> None:
    """The findings below come from the broken tools, not from the kit."""
    assert validate.shell_scripts(clean_kit)
    findings = validate.validate(clean_kit)
    assert not findings, validate.report(findings)


def test_every_check_has_a_stand_in() -> None:
    assert {case.partition("/")[0] for case in STAND_INS} == set(validate.CHECKS) - {
        "shipyard",  # our own schemas run in process: no tool to crash
        "answers",
    }


CASES = [
    pytest.param(case, failure, id=f"{case}-{failure}")
    for case in STAND_INS
    for failure in FAILURES
    if failure != "silent-exit-0" or case not in SILENT_WHEN_CLEAN
]


@pytest.mark.parametrize(("case", "failure"), CASES)
def test_a_broken_tool_is_a_finding_never_a_clean_report(
    clean_kit: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, failure: str
) -> None:
    executable, tool = STAND_INS[case]
    script, says = FAILURES[failure]
    says = SAYS.get((case, failure), says)
    stand_ins = tmp_path / "bin"
    stand_in(stand_ins, executable, script)
    monkeypatch.setenv("PATH", f"{stand_ins}{os.pathsep}{os.environ['PATH']}")
    assert validate.find_tool(executable) == str(stand_ins / executable)

    findings = validate.validate(clean_kit, only=[case.partition("/")[0]])

    assert findings, f"{executable} ({failure}) read as a clean kit"
    assert {f.tool for f in findings} == {tool}, validate.report(findings)
    assert all(says in f.message for f in findings), validate.report(findings)


def test_cli_fails_when_a_tool_is_killed(clean_kit: Path, tmp_path: Path) -> None:
    """`shipyard validate` as CI runs it: a killed hadolint fails the job and says so."""
    stand_ins = tmp_path / "bin"
    stand_in(stand_ins, "hadolint", FAILURES["killed"][0])
    env = {**os.environ, "PATH": f"{stand_ins}{os.pathsep}{os.environ['PATH']}"}
    argv = [sys.executable, "-m", "shipyard.cli", "validate", "--only", "dockerfile"]

    result = subprocess.run(
        [*argv, str(clean_kit)], capture_output=True, text=True, env=env, check=False
    )

    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "Dockerfile: [hadolint parse] killed by signal 11 without a report",
        "1 problem(s) found.",
    ]


# -- the real tools, driven into failing ----------------------------------------------------


def _broken_yamllint_config(root: Path) -> tuple[str, str, str]:
    (root / ".yamllint.yaml").write_text("extends: default\nrules: {line-length: {max: 100}\n")
    return "yaml", ".", "invalid config"


def _unknown_yamllint_rule(root: Path) -> tuple[str, str, str]:
    (root / ".yamllint.yaml").write_text("extends: default\nrules:\n  no-such-rule: enable\n")
    return "yaml", ".", 'no such rule: "no-such-rule"'


def _broken_hadolint_config(root: Path) -> tuple[str, str, str]:
    # hadolint says so on stderr, then lints without it and exits 0 with `[]`.
    (root / ".hadolint.yaml").write_text("failure-threshold: nonsense\n")
    return "dockerfile", "Dockerfile", "'.hadolint.yaml'"


def _broken_shellcheckrc(root: Path) -> tuple[str, str, str]:
    (root / ".shellcheckrc").write_text("disable SC2086\n")
    return "shellcheck", SCRIPT, "Failed to process"


def _document_kubernetes_validate_cannot_parse(root: Path) -> tuple[str, str, str]:
    # Helm passes a custom YAML tag through; kubernetes-validate's YAML loader refuses it
    # and exits 1 with only a sentence on stderr.
    [chart] = [c.path for c in validate.charts(root) if not c.library]
    template = chart / "templates" / "tagged.yaml"
    template.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: tagged\ndata:\n  k: !custom v\n"
    )
    return "kubernetes", str(template.relative_to(root)), "could not determine a constructor"


def _chart_that_renders_nothing(root: Path) -> tuple[str, str, str]:
    [chart] = [c.path for c in validate.charts(root) if not c.library]
    for template in (chart / "templates").glob("*.yaml"):
        template.write_text("{{- if false }}\n" + template.read_text() + "\n{{- end }}\n")
    return "kubernetes", str(chart.relative_to(root)), "rendered no manifests"


BREAKAGES = {
    "yamllint-config-unparsable": _broken_yamllint_config,
    "yamllint-unknown-rule": _unknown_yamllint_rule,
    "hadolint-config": _broken_hadolint_config,
    "shellcheckrc": _broken_shellcheckrc,
    "kubernetes-validate-unparsable-document": _document_kubernetes_validate_cannot_parse,
    "helm-template-renders-nothing": _chart_that_renders_nothing,
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_real_tool_that_fails_is_a_finding(kit: Path, breakage: str) -> None:
    check, file, says = BREAKAGES[breakage](kit)

    findings = validate.validate(kit, only=[check])

    hits = [f for f in findings if f.file == file and says in f.message]
    assert hits, f"expected {says!r} on {file} in:\n{validate.report(findings)}"
