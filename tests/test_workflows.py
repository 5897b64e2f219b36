"""The generated GitHub Actions workflows: the real linters accept them for every preset, and
their hardening rules are asserted on the parsed YAML so a later edit cannot quietly undo them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from invoke.context import Context
from invoke.exceptions import Exit
from ruamel.yaml import YAML

import tasks
from shipyard import config, validate
from tests.conftest import PRESETS, REPO, Render, git, init_repo, load_preset
from tests.servers.postgres import PostgresServer

Rendered = Callable[[str], Path]

ACTIONS_FILE = REPO / "template" / "includes" / "actions.jinja"
WORKFLOW_CHECKS = ["actionlint", "workflow-schema", "dependabot-schema"]
CI_PRESETS = [p for p in PRESETS if load_preset(p).get("ci_provider", "github") == "github"]
# Answer sets that reach the branches no preset takes: Yarn and pnpm, a registry other than
# GHCR (credentials from secrets), hyphenated component names, a worker-only service, helm
# staging with compose production, a single image (one component, no database: no backup).
VARIANTS: dict[str, dict[str, Any]] = {
    "one-image": {"project_name": "Solo", "database": "none", "ci_provider": "github"},
    "yarn-private-registry": {
        "project_name": "Order Hub",
        "package_manager": "yarn",
        "components": [
            {
                "name": "public-api",
                "kind": "http",
                "port": 8080,
                "health_path": "/healthz",
                "path": "services/api",
            },
            {"name": "jobs", "kind": "worker", "path": "services/jobs"},
        ],
        "database": "postgres",
        "migrations": "knex",
        "redis": True,
        "image_registry": "registry.example.com:5000/team",
        "staging_target": "helm",
        "production_target": "compose",
        "ci_provider": "github",
    },
    "pnpm-workspaces-workers": {
        "project_name": "Queue Runner",
        "package_manager": "pnpm",
        "components": [
            {"name": "ingest", "kind": "worker", "path": "apps/ingest"},
            {"name": "report", "kind": "worker", "path": "apps/report"},
        ],
        "workspaces": True,
        "database": "none",
        "elasticsearch": True,
        "ci_provider": "github",
    },
}
KITS = CI_PRESETS + list(VARIANTS)

USES_LINE = re.compile(r"^\s*(?:-\s+)?uses:\s*(?P<ref>\S+)(?P<rest>.*)$")
# owner/name, or owner/name/path for an action in a folder (github/codeql-action/init).
PINNED = re.compile(r"^(?P<repo>[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)+)@(?P<sha>[0-9a-f]{40})$")
VERSION_COMMENT = re.compile(r"^\s+#\s(?P<version>v\d+\.\d+\.\d+)$")
# The only write scopes any job may hold: in release.yml, pushing to GitHub Packages, an OIDC
# token for keyless signing and the image scans' reports to code scanning; in codeql.yml, its
# results.
WRITE_SCOPES = {
    "release.yml": {"packages", "id-token", "security-events"},
    "codeql.yml": {"security-events"},
}


def _yaml(path: Path) -> Any:
    # YAML 1.2 (ruamel's default) keeps the `on:` key a string, as GitHub reads it.
    return YAML(typ="safe").load(path.read_text())


def _pinned_actions() -> dict[str, tuple[str, str]]:
    """repo -> (sha, version) from the one file that pins them."""
    entries = re.findall(
        r"\('([^']+)', '([0-9a-f]{40})', '(v\d+\.\d+\.\d+)'\)", ACTIONS_FILE.read_text()
    )
    return {repo: (sha, version) for repo, sha, version in entries}


@pytest.fixture(scope="module")
def variant_root(render: Render, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("workflow-variants")
    for name, answers in VARIANTS.items():
        render(answers, root / name)
    return root


@pytest.fixture(params=KITS)
def kit(request: pytest.FixtureRequest, rendered: Rendered, variant_root: Path) -> Path:
    """A rendered kit that has GitHub workflows: every CI preset and the variants."""
    name: str = request.param
    return variant_root / name if name in VARIANTS else rendered(name)


def _workflows(kit: Path) -> dict[str, Any]:
    folder = kit / ".github" / "workflows"
    return {path.name: _yaml(path) for path in sorted(folder.glob("*.yml"))}


def _steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = job.get("steps", [])
    return steps


def test_pins_file_is_well_formed() -> None:
    pins = _pinned_actions()
    # Every entry of the ACTIONS mapping parsed: none was skipped by a malformed tuple.
    entries = re.findall(r"^\s+'[a-z-]+': \('", ACTIONS_FILE.read_text(), re.MULTILINE)
    assert len(pins) == len(entries)
    assert {"actions/checkout", "docker/build-push-action", "sigstore/cosign-installer"} <= set(
        pins
    )


def test_each_pin_is_the_commit_of_its_tag() -> None:
    """Network-free: each SHA actions.jinja pins is the commit its `# vX.Y.Z` tag names, as
    recorded from the action's own repository by `invoke action-pins` (docs/contributing.md),
    not as actions.jinja itself says."""
    recorded = json.loads(tasks.ACTION_PINS.read_text())
    for action, (sha, version) in _pinned_actions().items():
        repo = tasks.repository(action)
        tags = recorded.get(repo, {})
        assert version in tags, f"{repo} {version} is not recorded: run `invoke action-pins`"
        assert sha == tags[version], (
            f"{repo}@{sha} is pinned as {version}, which is {tags[version]}"
        )


def test_action_pins_records_each_tags_commit_from_the_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`invoke action-pins` against local repositories: a lightweight tag is its commit, an
    annotated one is peeled to its commit, and the SHA in actions.jinja is never read."""
    action = tmp_path / "remote" / "acme" / "action"
    action.mkdir(parents=True)
    (action / "action.yml").write_text("name: one\n")
    init_repo(action, "one")
    git(action, "tag", "v1.0.0")
    (action / "action.yml").write_text("name: two\n")
    git(action, "commit", "-qam", "two")
    git(action, "tag", "-a", "v2.0.0", "-m", "two")
    first, second = (
        git(action, "rev-parse", f"{t}^{{commit}}").strip() for t in ("v1.0.0", "v2.0.0")
    )
    pins = tmp_path / "actions.jinja"
    # Two actions of one repository (as github/codeql-action/init and .../analyze) and tags.
    pins.write_text(
        f"    'x': ('acme/action', '{'0' * 40}', 'v2.0.0'),\n"
        f"    'y': ('acme/action/sub', '{'0' * 40}', 'v1.0.0'),\n"
    )
    monkeypatch.setattr(tasks, "ACTIONS", pins)
    monkeypatch.setattr(tasks, "ACTION_PINS", tmp_path / "action-pins.json")
    monkeypatch.setattr(tasks, "REPO", tmp_path)

    tasks.action_pins(Context(), remote=str(tmp_path / "remote" / "{repo}"))

    assert json.loads((tmp_path / "action-pins.json").read_text()) == {
        "acme/action": {"v1.0.0": first, "v2.0.0": second}
    }
    assert tasks.tag_commit(str(action), "v1.0.0") == first
    with pytest.raises(Exit, match=r"has no tag v3\.0\.0"):
        tasks.tag_commit(str(action), "v3.0.0")
    with pytest.raises(Exit, match="cannot list the tags of"):
        tasks.tag_commit(str(tmp_path / "nowhere"), "v1.0.0")


def test_pinned_majors_are_not_on_a_deprecated_runtime(tmp_path: Path) -> None:
    """actionlint knows which action majors run on a deprecated runtime (node20), but it cannot
    see through a SHA pin: ask it about `owner/repo@vMAJOR` of each pin instead."""
    steps = "".join(
        f"      - uses: {repo}@{version.split('.')[0]}\n"
        for repo, (_, version) in sorted(_pinned_actions().items())
    )
    workflow = tmp_path / ".github" / "workflows" / "majors.yml"
    workflow.parent.mkdir(parents=True)
    workflow.write_text(
        "on: push\npermissions: {}\njobs:\n  majors:\n    runs-on: ubuntu-24.04\n"
        f"    timeout-minutes: 5\n    steps:\n{steps}"
    )
    actionlint = validate.find_tool("actionlint")
    result = subprocess.run(
        [actionlint, "-no-color", str(workflow)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The probe itself works: a major known to be on node20 is flagged.
    workflow.write_text(workflow.read_text() + "      - uses: docker/login-action@v3\n")
    result = subprocess.run(
        [actionlint, "-no-color", str(workflow)], capture_output=True, text=True, check=False
    )
    assert 'runtime "node20" is deprecated' in result.stdout


def test_kit_renders_the_five_files(kit: Path) -> None:
    github = kit / ".github"
    assert sorted(p.name for p in (github / "workflows").iterdir()) == [
        "ci.yml",
        "codeql.yml",
        "deploy.yml",
        "release.yml",
    ]
    assert (github / "dependabot.yml").is_file()


def test_real_linters_accept_the_workflows(kit: Path) -> None:
    """actionlint (with shellcheck on every run: script) and the workflow/Dependabot schemas."""
    findings = validate.validate(kit, only=WORKFLOW_CHECKS)
    assert findings == [], validate.report(findings)
    yaml_findings = [
        f for f in validate.validate(kit, only=["yaml"]) if f.file.startswith(".github")
    ]
    assert yaml_findings == [], validate.report(yaml_findings)


def test_actionlint_reads_run_scripts_with_shellcheck(rendered: Rendered, tmp_path: Path) -> None:
    """The lint test above would pass vacuously if shellcheck were not wired in: prove it is."""
    kit = tmp_path / "kit"
    shutil.copytree(rendered(CI_PRESETS[0]), kit)
    ci = kit / ".github" / "workflows" / "ci.yml"
    text = ci.read_text()
    assert "run: nox -s lint validate" in text
    ci.write_text(
        text.replace("run: nox -s lint validate", "run: for s in $SESSIONS; do nox -s $s; done")
    )
    findings = validate.validate(kit, only=["actionlint"])
    assert any("shellcheck" in f.message and f.file.endswith("ci.yml") for f in findings), findings


def test_zizmor_finds_no_security_issue(kit: Path) -> None:
    """zizmor's audits (template injection, excessive permissions, credential persistence,
    cache poisoning, unpinned actions...) at medium severity and above, offline."""
    zizmor = validate.find_tool("zizmor")  # a missing tool fails here, loudly
    result = subprocess.run(
        [zizmor, "--offline", "--min-severity", "medium", "--no-progress", ".github"],
        cwd=kit,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_action_is_pinned_to_a_recorded_release_commit(kit: Path) -> None:
    pins = _pinned_actions()
    files = [*sorted((kit / ".github" / "workflows").glob("*.yml"))]
    seen = 0
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            match = USES_LINE.match(line)
            if not match:
                continue
            ref, rest = match["ref"], match["rest"]
            where = f"{path.name}:{number}"
            if ref.startswith("./"):
                assert ref in {"./.github/workflows/ci.yml", "./.github/workflows/deploy.yml"}
                continue
            seen += 1
            pinned = PINNED.match(ref)
            assert pinned, f"{where}: {ref} is not pinned to a full commit SHA"
            comment = VERSION_COMMENT.match(rest)
            assert comment, f"{where}: {ref} lacks its `# vX.Y.Z` version comment"
            # The SHA and version are the pair recorded in actions.jinja: one place to bump.
            assert pins.get(pinned["repo"]) == (pinned["sha"], comment["version"]), where
    assert seen >= 10


def test_token_has_least_privilege(kit: Path) -> None:
    for name, workflow in _workflows(kit).items():
        assert workflow["permissions"] == {}, f"{name}: top-level permissions must be {{}}"
        for job_id, job in workflow["jobs"].items():
            where = f"{name}:{job_id}"
            permissions = job.get("permissions")
            assert isinstance(permissions, dict), f"{where}: declare the job's permissions"
            assert permissions.get("contents") == "read", where
            writes = {scope for scope, level in permissions.items() if level == "write"}
            assert set(permissions.values()) <= {"read", "write"}, where
            allowed = WRITE_SCOPES.get(name, set())
            assert writes <= allowed, f"{where}: may not write {writes - allowed}"


def test_every_job_has_a_timeout(kit: Path) -> None:
    for name, workflow in _workflows(kit).items():
        for job_id, job in workflow["jobs"].items():
            if "uses" in job:
                # A reusable-workflow call cannot take one; the called jobs carry theirs.
                assert job["uses"].startswith("./"), f"{name}:{job_id}"
                continue
            timeout = job.get("timeout-minutes")
            assert isinstance(timeout, int), f"{name}:{job_id} has no timeout-minutes"
            assert 0 < timeout <= 60, f"{name}:{job_id}"


def test_no_expression_is_expanded_inside_a_shell_script(kit: Path) -> None:
    """Event text, inputs and outputs reach scripts only through `env:`, never `${{ }}` in run:."""
    for name, workflow in _workflows(kit).items():
        triggers = workflow["on"]
        assert "pull_request_target" not in triggers, name
        assert "workflow_run" not in triggers, name
        for job_id, job in workflow["jobs"].items():
            for step in _steps(job):
                if "run" in step:
                    assert "${{" not in step["run"], f"{name}:{job_id}: {step['run']}"


def test_checkouts_do_not_keep_the_token(kit: Path) -> None:
    for name, workflow in _workflows(kit).items():
        for job_id, job in workflow["jobs"].items():
            for step in _steps(job):
                if step.get("uses", "").startswith("actions/checkout@"):
                    assert step.get("with", {}).get("persist-credentials") is False, (
                        f"{name}:{job_id}"
                    )


def _answers(kit: Path) -> dict[str, Any]:
    answers: dict[str, Any] = _yaml(kit / ".copier-answers.yml")
    return answers


def _roots(answers: dict[str, Any]) -> list[str]:
    if answers.get("workspaces"):
        return ["."]
    return list(dict.fromkeys(c.get("path", ".") for c in answers["components"]))


def _images(answers: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(name, Dockerfile, target) of every image: the components, and the backup image."""
    images = [(c["name"], "Dockerfile", c["name"]) for c in answers["components"]]
    if answers["database"] == "postgres":
        images.append(("backup", "backup/Dockerfile", ""))
    return images


def test_ci_tests_against_health_checked_services_and_validates_the_kit(kit: Path) -> None:
    ci = _workflows(kit)["ci.yml"]
    answers = _answers(kit)
    # Main and tags run it through release.yml, before anything is pushed.
    assert set(ci["on"]) == {"pull_request", "workflow_call"}
    jobs = ci["jobs"]
    test_jobs = [job for job_id, job in jobs.items() if job_id.startswith("test")]
    assert len(test_jobs) == len(_roots(answers))
    expected = {
        name
        for name, wanted in [
            ("postgres", answers["database"] == "postgres"),
            ("redis", answers["redis"]),
            ("elasticsearch", answers["elasticsearch"]),
        ]
        if wanted
    }
    for job in test_jobs:
        services = job.get("services", {})
        assert set(services) == expected
        for service in services.values():
            assert "--health-cmd" in service["options"]
        runs = [step.get("run", "") for step in _steps(job)]
        assert any("test" in run for run in runs)
        if answers["database"] == "postgres":
            assert job["env"]["DATABASE_URL"].startswith("postgresql://")
    assert any(s.get("run") == "nox -s lint validate" for s in _steps(jobs["kit"]))
    image = jobs["image"]
    assert image["strategy"]["matrix"]["include"] == [
        {"image": name, "file": file, "target": target} for name, file, target in _images(answers)
    ]
    build = next(s for s in _steps(image) if "build-push-action" in s.get("uses", ""))
    assert build["with"]["push"] is False
    assert build["with"]["cache-from"].startswith("type=gha")
    audits = [s for s in _steps(jobs["audit"]) if s.get("name", "").startswith("Audit")]
    assert len(audits) == len(_roots(answers))


def test_the_kit_job_installs_the_validators_pip_cannot(kit: Path) -> None:
    """`shipyard validate` fails without promtool (alert rules) and, for a Compose host's
    monitoring stack, amtool: neither is on PyPI nor on the runner, so the job installs them."""
    answers = _answers(kit)
    monitoring = answers.get("monitoring", "prometheus") == "prometheus"
    compose = "compose" in (answers["staging_target"], answers["production_target"])
    runs = [s.get("run", "") for s in _steps(_workflows(kit)["ci.yml"]["jobs"]["kit"])]
    install = [r for r in runs if "apt-get install" in r]
    assert bool(install) == monitoring
    if monitoring:
        (line,) = install
        assert " prometheus" in line
        assert ("prometheus-alertmanager" in line) == compose
    assert runs.index(next(r for r in runs if r == "nox -s lint validate")) == len(runs) - 1


def test_release_builds_signs_and_pushes_every_component(kit: Path) -> None:
    release = _workflows(kit)["release.yml"]
    cfg = config.load(kit)
    assert release["on"]["push"] == {"branches": ["main"], "tags": ["v*"]}
    jobs = release["jobs"]
    assert jobs["ci"]["uses"] == "./.github/workflows/ci.yml"
    images = _images(_answers(kit))
    assert {job_id for job_id in jobs if job_id.startswith("image-")} == {
        job for name, _, _ in images for job in (f"image-{name}", f"image-{name}-scan")
    }
    for name, dockerfile, target in images:
        job = jobs[f"image-{name}"]
        assert job["needs"] == "ci"
        assert (kit / dockerfile).is_file()
        steps = {s.get("id"): s for s in _steps(job)}
        # The image lands where the tasks and the chart look for it (Config.image_repository).
        assert steps["meta"]["with"]["images"] == cfg.image_repository(name)
        tags = steps["meta"]["with"]["tags"]
        for kind in ("type=semver", "type=sha", "type=ref,event=branch"):
            assert kind in tags
        build = steps["build"]["with"]
        assert build["file"] == dockerfile
        assert build.get("target", "") == target
        assert build["platforms"] == "linux/amd64,linux/arm64"
        assert build["push"] is True
        assert build["sbom"] is True
        assert build["provenance"] == "mode=max"
        sign = next(s for s in _steps(job) if s.get("run", "").startswith("cosign sign"))
        assert sign["env"]["DIGEST"] == "${{ steps.build.outputs.digest }}"
        assert job["permissions"]["id-token"] == "write"
        assert job["outputs"]["image"].startswith(cfg.image_repository(name) + "@")
        # Each pushed image is scanned by digest; a fixable critical finding stops the release
        # before any deploy, and the report goes to code scanning.
        scan_job = jobs[f"image-{name}-scan"]
        assert scan_job["needs"] == f"image-{name}"
        assert scan_job["permissions"]["security-events"] == "write"
        assert "id-token" not in scan_job["permissions"]
        scan = {s.get("id"): s for s in _steps(scan_job)}["scan"]["with"]
        assert scan["image"] == f"${{{{ needs.image-{name}.outputs.image }}}}"
        assert (scan["fail-build"], scan["severity-cutoff"], scan["only-fixed"]) == (
            True,
            "critical",
            True,
        )
        for deploy in ("deploy-staging", "deploy-prod"):
            assert f"image-{name}-scan" in jobs[deploy]["needs"]
    helm = "helm" in {cfg.environment(env).target for env in ("staging", "prod")}
    assert ("chart" in jobs) == helm
    if helm:
        script = next(s["run"] for s in _steps(jobs["chart"]) if "run" in s)
        assert f"helm package charts/{cfg.service}" in script
        assert "helm push" in script
        assert "cosign sign" in script
    for env, condition in [("staging", "refs/heads/main"), ("prod", "refs/tags/v")]:
        call = jobs[f"deploy-{env}"]
        assert call["uses"] == "./.github/workflows/deploy.yml"
        assert call["with"]["environment"] == env
        assert condition in call["if"]


def test_deploys_run_the_same_task_as_people_one_at_a_time(kit: Path) -> None:
    deploy = _workflows(kit)["deploy.yml"]
    cfg = config.load(kit)
    assert set(deploy["on"]) == {"workflow_call", "workflow_dispatch"}
    for env in ("staging", "prod"):
        job = deploy["jobs"][env]
        assert job["if"] == f"inputs.environment == '{env}'"
        assert job["environment"]["name"] == env
        assert job["environment"]["url"] == f"https://{cfg.environment(env).host}"
        assert job["concurrency"] == {"group": f"deploy-{env}", "cancel-in-progress": False}
        runs = [s["run"] for s in _steps(job) if "run" in s]
        (run,) = [r for r in runs if r.splitlines()[-1] == f"invoke deploy --env {env} --yes"]
        if "\n" in run:
            # The Compose edge's certificate, from the environment's secrets, readable by the
            # job only (compose.prod.yaml's x-shipyard-files reads it there).
            assert run.startswith("set -euo pipefail\n"), run
            assert "umask 077" in run
            assert '"${TLS_PRIVKEY_PEM:?set the TLS_PRIVKEY_PEM secret' in run
        if env == "prod":
            guard = _steps(job)[0]
            assert guard["if"] == "!startsWith(github.ref, 'refs/tags/v')"
            assert "exit 1" in guard["run"]
        has_http = any(c.kind == "http" for c in cfg.components)
        assert any("curl --fail" in run for run in runs) == has_http
        # On Compose every secret shipyard.yaml names is handed to the task from the
        # environment's secrets, in the Deploy step's env only; on Helm the pods read the
        # cluster's Secret and the job never holds them.
        _, deploy_step = _step(job, "Deploy")
        compose = cfg.environment(env).target == "compose"
        for secret in cfg.secrets:
            given = deploy_step["env"].get(secret)
            assert given == (f"${{{{ secrets.{secret} }}}}" if compose else None), secret
            assert secret not in job.get("env", {})
            others = [s for s in _steps(job) if s is not deploy_step]
            assert not [s.get("name") for s in others if secret in str(s.get("env", {}))]
        # The deploy notifications' webhook URL is a secret too: the Deploy step's alone.
        hook = "SHIPYARD_DEPLOY_WEBHOOK_URL"
        assert deploy_step["env"][hook] == f"${{{{ secrets.{hook} }}}}"
        assert [s for s in _steps(job) if hook in str(s)] == [deploy_step]
        assert hook not in str(job.get("env", {}))


def _image_vars(kit: Path) -> dict[str, str]:
    """`<NAME>_IMAGE` (what compose.prod.yaml and `invoke deploy` read) -> `<name>_image`
    (the deploy.yml input and the resolve step's output), for every image."""
    return {
        name.upper().replace("-", "_") + "_IMAGE": name.replace("-", "_") + "_image"
        for name, _, _ in _images(_answers(kit))
    }


def _step(job: dict[str, Any], name: str) -> tuple[int, dict[str, Any]]:
    return next((i, s) for i, s in enumerate(_steps(job)) if s.get("name") == name)


def test_deploy_verifies_exactly_the_digests_it_deploys(kit: Path) -> None:
    """Every path (release.yml's digests, a rollback's, or empty inputs on a manual run) pins
    each image to a digest first, verifies that digest's signature, and hands `invoke deploy`
    that same digest: the task never sees an input or resolves a tag itself."""
    variables = _image_vars(kit)
    for env in ("staging", "prod"):
        job = _workflows(kit)["deploy.yml"]["jobs"][env]
        # No job-wide image variable: a step that was not verified has nothing to deploy.
        assert not [k for k in job.get("env", {}) if k.endswith("_IMAGE")], env
        resolve_at, resolve = _step(job, "Resolve the image digests")
        verify_at, verify = _step(job, "Verify the image signatures")
        deploy_at, deploy = _step(job, "Deploy")
        assert resolve_at < verify_at < deploy_at
        assert resolve["id"] == "images"
        assert resolve["env"] == {v: f"${{{{ inputs.{i} }}}}" for v, i in variables.items()}
        verified = {v: f"${{{{ steps.images.outputs.{i} }}}}" for v, i in variables.items()}
        assert {k: v for k, v in verify["env"].items() if k.endswith("_IMAGE")} == verified
        assert {k: v for k, v in deploy["env"].items() if k.endswith("_IMAGE")} == verified
        for step in (resolve, verify, deploy):
            # A failed resolve or verify stops the job: nothing lets it carry on.
            assert "if" not in step
            assert "continue-on-error" not in step
        script = verify["run"]
        assert script.startswith("set -euo pipefail\n")
        # One call per image: `for image in "$ONE"` is a loop shellcheck rejects (SC2066).
        calls = re.findall(r'^verify "\$(\w+)"$', script, re.MULTILINE)
        assert calls == list(variables), script
        assert 'cosign verify "$1"' in script
        assert "--certificate-identity-regexp" in script
        for escape in ("return", "exit", "continue", "break", "|| true", "||:", "if "):
            assert escape not in script, f"{env}: the verify step may not skip ({escape!r})"
        assert deploy["run"].splitlines()[-1] == f"invoke deploy --env {env} --yes"


def _run_resolve(kit: Path, inputs: dict[str, str], tmp_path: Path) -> tuple[int, str, str]:
    """Run the resolve step's script as the runner would: its env, bash -e, GITHUB_OUTPUT."""
    job = _workflows(kit)["deploy.yml"]["jobs"]["staging"]
    _, resolve = _step(job, "Resolve the image digests")
    output = tmp_path / "github-output"
    output.write_text("")
    env = {**os.environ, **inputs, "GITHUB_OUTPUT": str(output), "GITHUB_SHA": "ab" * 20}
    result = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", resolve["run"]],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr, output.read_text()


def test_resolve_step_accepts_only_each_images_own_digest(kit: Path, tmp_path: Path) -> None:
    cfg = config.load(kit)
    variables = _image_vars(kit)
    names = {v: name for (name, _, _), v in zip(_images(_answers(kit)), variables, strict=True)}
    given = {
        var: f"{cfg.image_repository(names[var])}@sha256:{number:064x}"
        for number, var in enumerate(variables)
    }
    code, log, output = _run_resolve(kit, given, tmp_path)
    assert code == 0, log
    assert output.splitlines() == [f"{variables[v]}={image}" for v, image in given.items()]
    first, *_ = variables
    bad_inputs = [
        given[first].split("@")[0] + ":latest",  # a tag: it could move after the check
        given[first].replace("@sha256:", "@sha256:zz"),
        "evil.example.com/other" + given[first][given[first].index("@") :],
    ]
    if len(given) > 1:
        # Another component's image is refused too.
        bad_inputs.append(given[list(given)[1]])
    for bad in bad_inputs:
        code, log, output = _run_resolve(kit, {**given, first: bad}, tmp_path)
        assert code != 0, bad
        assert f"::error::{variables[first]}" in log, log
        assert f"{variables[first]}=" not in output


def test_dependabot_covers_actions_docker_and_the_package_manager(kit: Path) -> None:
    dependabot = _yaml(kit / ".github" / "dependabot.yml")
    answers = _answers(kit)
    updates = {u["package-ecosystem"]: u for u in dependabot["updates"]}
    # Dependabot reads poetry.lock in its pip ecosystem.
    manager = answers.get("python_package_manager", "uv")
    ecosystem = (
        {"poetry": "pip"}.get(manager, manager)
        if answers["runtime"] == "python"
        else "gomod"
        if answers["runtime"] == "go"
        else "npm"
    )
    assert {"github-actions", "docker", ecosystem} <= set(updates)
    expected = ["/" + ("" if root == "." else root) for root in _roots(answers)]
    assert updates[ecosystem]["directories"] == expected


def test_no_ci_provider_renders_no_workflows(rendered: Rendered) -> None:
    minimal = rendered("minimal")
    assert load_preset("minimal")["ci_provider"] == "none"
    assert not (minimal / ".github").exists()
    assert "## CI pipelines" not in (minimal / "DEPLOYMENT.md").read_text()


def test_service_readme_explains_the_pipeline(kit: Path) -> None:
    readme = (kit / "DEPLOYMENT.md").read_text()
    section = readme.split("## CI pipelines", 1)[1]
    for needle in ("release.yml", "deploy.yml", "required reviewers", "invoke deploy --env"):
        assert needle in section


@pytest.mark.slow
def test_ci_test_job_runs_on_the_sample_app(
    render: Render, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """The `run:` steps of ci.yml's test job, executed in order as the runner would (bash -eo
    pipefail, the job's env and working directories), against a real PostgreSQL: the lockfile
    install, build, migrations and tests of the sample app all pass."""
    kit = render(
        {"project_name": "Sample Shop", "sample_app": True, "ci_provider": "github"},
        tmp_path / "kit",
    )
    job = _workflows(kit)["ci.yml"]["jobs"]["test"]
    database = postgres_server.create_database("ci")
    # The job service's address on a runner is localhost:5432; here it is the test cluster.
    assert job["env"]["DATABASE_URL"].startswith("postgresql://")
    env = {
        **os.environ,
        **job["env"],
        "DATABASE_URL": _database_url(postgres_server, database),
    }
    ran = _run_steps(job, kit, env)
    assert ran == [
        "Install dependencies (exactly the lockfile)",
        "Lint",
        "Build",
        "Apply migrations",
        "Test",
    ]
    with postgres_server.connect(database) as conn:
        applied = [row[0] for row in conn.execute("SELECT name FROM schema_migrations")]
    assert applied == ["001_create_visits.sql"]


@pytest.mark.slow
@pytest.mark.parametrize("manager", ["uv", "poetry"])
def test_ci_test_job_runs_on_the_python_sample_app(
    manager: str, render: Render, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """The Python test job's `run:` steps as a runner runs them, on a runner Python of its own
    (a venv first on PATH, as setup-python gives) and with $GITHUB_PATH honoured: uv or Poetry
    from the index, the lockfile's check against pyproject.toml, the locked install into .venv,
    compileall and alembic against a real PostgreSQL."""
    kit = render(
        {
            "project_name": "Py Shop",
            "runtime": "python",
            "python_package_manager": manager,
            "sample_app": True,
            "ci_provider": "github",
        },
        tmp_path / "kit",
    )
    job = _workflows(kit)["ci.yml"]["jobs"]["test"]
    database = postgres_server.create_database("pyci")
    runner = tmp_path / "runner"
    subprocess.run([sys.executable, "-m", "venv", runner], check=True, capture_output=True)
    env = {
        **os.environ,
        **job["env"],
        "PATH": os.pathsep.join([str(runner / "bin"), os.environ["PATH"]]),
        "DATABASE_URL": _database_url(postgres_server, database),
    }
    # As on a runner, no virtualenv is active: nox's own (VIRTUAL_ENV, and
    # UV_PROJECT_ENVIRONMENT, which `uv sync` would fill instead of the kit's .venv) must not leak.
    for name in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT"):
        env.pop(name, None)

    ran = _run_steps(job, kit, env)

    assert ran == [
        f"Install {manager}",
        f"Check that {manager}.lock matches pyproject.toml",
        "Install dependencies (exactly the lockfile, development ones included)",
        "Lint (ruff, when the project depends on it)",
        "Compile every module (syntax errors fail here)",
        "Apply migrations",
        "Test",
    ]
    with postgres_server.connect(database) as conn:
        applied = [row[0] for row in conn.execute("SELECT version_num FROM alembic_version")]
    assert applied == ["0001"]


@pytest.mark.slow
def test_ci_test_job_runs_on_a_uv_workspace(render: Render, tmp_path: Path) -> None:
    """The test job of a uv workspace (tests/fixtures/apps/uv-workspace, as `uv init` made it):
    one job at the root, the lock checked against every member, every member installed (the
    packaged ones importable from the job's .venv), and the audit's export of every member's
    production pins without the members themselves."""
    from tests.test_apps import FIXTURES, WORKSPACE_COMPONENTS

    kit = tmp_path / "shop"
    shutil.copytree(FIXTURES / "uv-workspace", kit)
    render(
        {
            "project_name": "shop",
            "runtime": "python",
            "workspaces": True,
            "components": WORKSPACE_COMPONENTS,
            "database": "none",
            "ci_provider": "github",
        },
        kit,
    )
    jobs = _workflows(kit)["ci.yml"]["jobs"]
    assert [name for name in jobs if name.startswith("test")] == ["test"]
    runner = tmp_path / "runner"
    subprocess.run([sys.executable, "-m", "venv", runner], check=True, capture_output=True)
    env = {
        **os.environ,
        **jobs["test"]["env"],
        "PATH": os.pathsep.join([str(runner / "bin"), os.environ["PATH"]]),
    }
    for name in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT"):
        env.pop(name, None)

    ran = _run_steps(jobs["test"], kit, env)

    assert ran == [
        "Install uv",
        "Check that uv.lock matches the workspace's pyproject.toml files",
        "Install dependencies (exactly the lockfile, development ones included)",
        "Lint (ruff, when the project depends on it)",
        "Compile every module (syntax errors fail here)",
        "Test",
    ]
    script = "import api.server, common; print(common.hello())"
    imported = subprocess.run(
        [kit / ".venv" / "bin" / "python", "-c", script],
        capture_output=True,
        text=True,
        check=False,
    )
    assert imported.stdout == "Hello from common!\n", imported.stderr
    # The audit reads the lock alone: every member's pins, no member.
    (audit,) = [s["run"] for s in _steps(jobs["audit"]) if "uv export" in s.get("run", "")]
    export = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", audit.splitlines()[0]],
        cwd=kit,
        env={**env, "RUNNER_TEMP": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert export.returncode == 0, export.stderr
    pins = (tmp_path / "requirements.txt").read_text()
    assert {line.split("==")[0] for line in pins.splitlines() if "==" in line} == {
        "click",
        "h11",
        "uvicorn",
    }, pins
    assert "-e " not in pins, pins


def _database_url(server: PostgresServer, database: str) -> str:
    """The test cluster's address for `database`, where a runner has its job service."""
    return f"postgresql://{server.user}:{server.password}@{server.host}:{server.port}/{database}"


def _run_steps(job: dict[str, Any], kit: Path, env: dict[str, str]) -> list[str]:
    """Run the job's `run:` steps in order as a runner would (bash -eo pipefail, the working
    directories, $GITHUB_PATH added to PATH for the later steps); the names of those run."""
    default_dir = job.get("defaults", {}).get("run", {}).get("working-directory", ".")
    github_path = kit.parent / "github_path"
    github_path.write_text("")
    ran = []
    for step in _steps(job):
        if "run" not in step:
            continue
        added = github_path.read_text().split()
        result = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
            cwd=kit / step.get("working-directory", default_dir),
            env={
                **env,
                "GITHUB_PATH": str(github_path),
                "PATH": os.pathsep.join([*reversed(added), env["PATH"]]),
            },
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, f"{step['run']}\n{result.stdout}\n{result.stderr}"
        ran.append(step.get("name", step["run"]))
    return ran


def test_deploy_job_hands_the_release_digests_to_invoke_deploy(kit: Path, tmp_path: Path) -> None:
    """The seam between deploy.yml and the tasks: with the `<COMPONENT>_IMAGE` variables the job
    sets, the real `invoke deploy --env staging --yes` plans a rollout of exactly those digests.
    (Staging: prod's plan differs only by its backup-before-migrate step.)"""
    repo = tmp_path / "kit"
    shutil.copytree(kit, repo)
    init_repo(repo, "kit")
    job = _workflows(repo)["deploy.yml"]["jobs"]["staging"]
    _, deploy_step = _step(job, "Deploy")
    cfg = config.load(repo)
    names = [c.name for c in cfg.components] + (["backup"] if cfg.database else [])
    images = {}
    for number, name in enumerate(names):
        # Each component's and the backup image's (the chart's CronJob runs it by digest).
        var = name.upper().replace("-", "_") + "_IMAGE"
        assert var in deploy_step["env"], var
        images[var] = f"{cfg.image_repository(name)}@sha256:{number:064x}"
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, **images, "PATH": os.pathsep.join([bindir, os.environ["PATH"]])}
    # The step's whole script as the runner runs it (with a Compose edge's certificate written
    # from its secrets first), the deploy as a dry run.
    env |= {"TLS_FULLCHAIN_PEM": "test certificate", "TLS_PRIVKEY_PEM": "test key"}
    result = subprocess.run(
        ["bash", "-e", "-c", deploy_step["run"].rstrip("\n") + " --dry-run"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for name in (c.name for c in cfg.components):
        image = images[name.upper().replace("-", "_") + "_IMAGE"]
        assert image.split("@")[1] in result.stdout


@pytest.mark.parametrize("env", ["staging", "prod"])
def test_health_check_step_reads_the_url_shipyard_yaml_gives(kit: Path, env: str) -> None:
    """The Health check step asks the shipyard package for the URLs: its lookup, run as the step
    runs it (up to the curls), prints the environment's health_urls, one per http component."""
    job = _workflows(kit)["deploy.yml"]["jobs"][env]
    if not any(c.kind == "http" for c in config.load(kit).components):
        assert "Health check" not in [s.get("name") for s in _steps(job)], "nothing serves"
        return
    _, step = _step(job, "Health check")
    lookup = re.search(r"urls=\$\((python -c '[^']*')\)", step["run"])
    assert lookup, step["run"]
    bindir = str(Path(sys.executable).parent)
    result = subprocess.run(
        ["bash", "-c", lookup.group(1)],
        cwd=kit,
        env={**os.environ, "PATH": os.pathsep.join([bindir, os.environ["PATH"]])},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    cfg = config.load(kit)
    urls = result.stdout.split()
    assert urls == list(cfg.environment(env).health_urls.values())
    assert sorted(cfg.environment(env).health_urls) == sorted(
        c.name for c in cfg.components if c.kind == "http"
    )
    assert all(url.startswith("https://") for url in urls), urls
