"""Compose options without a daemon: replicas (how many containers or pods each component
runs, and what a Compose file that cannot run them side by side is told) and maintenance
mode (its plan and refusals). Dry runs and bad input only; the real engine runs both in
test_tasks_compose.py."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shipyard.engines import compose as compose_engine
from tests.conftest import Render, edit_yaml, git, init_repo, invoke_cli

DIGEST = "sha256:" + "ab" * 32
REGISTRY = "registry.example.com/acme"
COMPOSE = {"SHIPYARD_COMPOSE": "docker-compose"}


@pytest.fixture(scope="module")
def source(render: Render, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A web component and a worker, staging and prod on Compose, with pushes recorded."""
    root = render(
        {
            "project_name": "Shop",
            "components": [
                {"name": "web", "kind": "http", "port": 8080, "health_path": "/health"},
                {"name": "jobs", "kind": "worker", "path": ".", "start": "node jobs.js"},
            ],
            "database": "none",
            "image_registry": REGISTRY,
            "staging_target": "compose",
            "production_target": "compose",
            "ci_provider": "none",
        },
        tmp_path_factory.mktemp("replicas") / "shop",
    )
    init_repo(root, "kit")
    state = root / ".shipyard"
    state.mkdir()
    (state / ".gitignore").write_text("*\n")
    record_pushes(root)
    return root


def record_pushes(root: Path) -> None:
    """Both images pushed from HEAD, as `invoke push` records them."""
    head = git(root, "rev-parse", "HEAD").strip()
    records = {
        name: {"ref": f"{REGISTRY}/shop-{name}@{DIGEST}", "digest": DIGEST, "revision": head}
        for name in ("web", "jobs")
    }
    (root / ".shipyard" / "images.json").write_text(json.dumps(records))


@pytest.fixture
def kit(source: Path, tmp_path: Path) -> Path:
    """A copy each test may edit."""
    return Path(shutil.copytree(source, tmp_path / "shop", symlinks=True))


def edit_kit(path: Path, change: Callable[[Any], None]) -> None:
    """Change a file of the kit and commit it, with pushes of the new HEAD recorded: prod
    releases come from a commit."""
    edit_yaml(path, change)
    git(path.parent, "commit", "-qam", f"edit {path.name}")
    if (path.parent / ".shipyard").is_dir():
        record_pushes(path.parent)


def invoke(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return invoke_cli(root, *args, env=COMPOSE)


def set_replicas(kit: Path, env: str, replicas: int, **per_component: int) -> None:
    def change(data: Any) -> None:
        data["environments"][env]["replicas"] = replicas
        if per_component:
            data["environments"][env]["component_replicas"] = per_component

    edit_kit(kit / "shipyard.yaml", change)


def test_compose_plan_runs_each_component_with_its_replicas(kit: Path) -> None:
    set_replicas(kit, "prod", 3, jobs=2)
    result = invoke(kit, "deploy", "--env", "prod", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # The new web containers start beside the three old ones, then the old ones stop.
    assert any("--no-recreate --scale web=6 " in line and line.endswith(" web") for line in lines)
    # The worker is recreated in place with its own count.
    assert any("--scale=jobs=2 " in line and line.endswith(" jobs") for line in lines), lines


def test_replicas_default_to_the_environment_for_components_not_named(kit: Path) -> None:
    set_replicas(kit, "prod", 2, web=4)
    plan = invoke(kit, "deploy", "--env", "prod", "--dry-run").stdout
    assert "--scale web=8 " in plan
    assert "--scale=jobs=2 " in plan


def test_component_replicas_must_name_a_component(kit: Path) -> None:
    set_replicas(kit, "prod", 1, wbe=3)
    result = invoke(kit, "deploy", "--env", "prod", "--dry-run")
    assert result.returncode == 2
    assert (
        "environments.prod.component_replicas.wbe: 'wbe' is not one of the components "
        "(jobs, web)" in result.stderr
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("component", "setting", "why"),
    [
        (
            "web",
            {"ports": ["8080:8080"]},
            "it publishes host port(s) 8080:8080, which only one container can bind; remove "
            "`ports:` there (the proxy publishes the port)",
        ),
        (
            "web",
            {"container_name": "shop-web"},
            "it sets container_name: shop-web, which only one container can have; remove it",
        ),
    ],
)
def test_an_http_component_that_cannot_run_twice_is_refused_before_anything(
    kit: Path, component: str, setting: dict[str, Any], why: str
) -> None:
    """Even with one replica: a release starts the new container beside the old one."""
    edit_kit(kit / "compose.prod.yaml", lambda data: data["services"][component].update(setting))
    for args in (("deploy", "--env", "prod", "--dry-run"), ("deploy", "--env", "prod", "--yes")):
        result = invoke(kit, *args)
        assert result.returncode == 1, result.stdout
        assert result.stderr.strip() == (
            f"shipyard: {component} in compose.prod.yaml cannot run several containers side by "
            f"side (a release starts the new ones beside the old, and prod asks for 1): {why}. "
            "Nothing was changed"
        )
        assert result.stdout == ""


def test_a_worker_with_a_fixed_port_is_refused_only_with_more_than_one_replica(kit: Path) -> None:
    worker_port = {"ports": ["9000:9000"]}
    edit_kit(kit / "compose.prod.yaml", lambda data: data["services"]["jobs"].update(worker_port))
    assert invoke(kit, "deploy", "--env", "prod", "--dry-run").returncode == 0
    set_replicas(kit, "prod", 1, jobs=2)
    result = invoke(kit, "deploy", "--env", "prod", "--dry-run")
    assert result.returncode == 1
    assert "shipyard: jobs in compose.prod.yaml cannot run several containers" in result.stderr
    assert "prod asks for 2): it publishes host port(s) 9000:9000" in result.stderr


@pytest.mark.parametrize(
    ("ports", "fixed"),
    [
        (["8080"], False),  # container port only: the host picks a free one
        (["127.0.0.1::8080"], False),
        ([{"target": 8080}], False),
        (["8080:8080"], True),
        (["127.0.0.1:8080:8080"], True),
        (["[::1]:8080:8080"], True),
        ([{"target": 8080, "published": "8080"}], True),
        ([8080], False),
    ],
)
def test_which_port_entries_bind_a_fixed_host_port(
    tmp_path: Path, ports: list[Any], fixed: bool
) -> None:
    file = tmp_path / "compose.yaml"
    file.write_text(json.dumps({"services": {"web": {"image": "x", "ports": ports}}}))
    assert bool(compose_engine.unscalable(file, "web")) is fixed


def test_helm_passes_component_replicas_after_the_default(render: Render, tmp_path: Path) -> None:
    root = render(
        {"project_name": "Shop API", "sample_app": True, "image_registry": REGISTRY},
        tmp_path / "shop-api",
    )
    init_repo(root, "kit")
    set_replicas(root, "prod", 3, **{"shop-api": 5})
    ref = f"{REGISTRY}/shop-api-shop-api@{DIGEST}"
    backup = f"{REGISTRY}/shop-api-backup@{DIGEST}"  # the chart's CronJob runs it by digest
    env = {"SHIPYARD_HELM": "helm", "SHOP_API_IMAGE": ref, "BACKUP_IMAGE": backup}
    result = invoke_cli(root, "deploy", "--env", "prod", "--dry-run", env=env)
    assert result.returncode == 0, result.stderr
    assert (
        "--set replicaCount=3 --set-string host=shop-api.example.com "
        "--set components.shop-api.replicaCount=5 " in result.stdout
    )


def test_maintenance_plan_names_the_file_and_the_reload(kit: Path) -> None:
    on = invoke(kit, "maintenance", "--env", "prod", "on", "--retry-after", "120", "--dry-run")
    assert on.returncode == 0, on.stderr
    assert on.stdout.splitlines() == [
        "maintenance on for shop on prod (dry run: nothing is changed)",
        "  1. write a 503 page (Retry-After: 120) to /config/maintenance/maintenance.caddy in "
        "shop's proxy, then `caddy reload`",
    ]
    off = invoke(kit, "maintenance", "--env", "prod", "off", "--dry-run")
    assert "write no maintenance page to /config/maintenance/maintenance.caddy" in off.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["maybe"], "shipyard: maintenance takes on or off, not 'maybe'"),
        (
            ["on", "--retry-after", "0"],
            "shipyard: --retry-after takes a number of seconds, at least 1",
        ),
    ],
)
def test_maintenance_refuses_what_it_cannot_do(kit: Path, args: list[str], message: str) -> None:
    result = invoke(kit, "maintenance", "--env", "prod", *args)
    assert (result.returncode, result.stderr.strip()) == (2, message)


def test_maintenance_on_helm_switches_the_deployed_release(kit: Path) -> None:
    """On Helm, maintenance is the chart's: the release upgraded with every value it was
    deployed with (images, replicas) and only maintenance switched, the page from the repo."""

    def to_helm(data: Any) -> None:
        prod = data["environments"]["prod"]
        prod.update(target="helm", namespace="shop-prod", values_file="values-prod.yaml")
        del prod["compose_file"]

    edit_kit(kit / "shipyard.yaml", to_helm)
    on = invoke(kit, "maintenance", "--env", "prod", "on", "--retry-after", "60", "--dry-run")
    assert on.returncode == 0, on.stderr
    (line,) = [line for line in on.stdout.splitlines() if " upgrade " in line]
    assert line.split(" upgrade ", 1)[1].startswith(
        "shop charts/shop --namespace shop-prod --reset-then-reuse-values "
        "--set maintenance.enabled=true --set maintenance.retryAfter=60 "
        "--set-string maintenance.since=20"
    )
    assert "--set-file maintenance.page=proxy/maintenance/index.html " in line
    off = invoke(kit, "maintenance", "--env", "prod", "off", "--dry-run")
    (line,) = [line for line in off.stdout.splitlines() if " upgrade " in line]
    assert " --reset-then-reuse-values --set maintenance.enabled=false " in line
    assert "--set-file" not in line


def test_smoke_check_runs_in_the_new_image_after_the_rollout(kit: Path) -> None:
    def smoke(data: Any) -> None:
        data["environments"]["prod"]["smoke"] = {"command": ["node", "smoke.js", "--quick"]}

    edit_kit(kit / "shipyard.yaml", smoke)
    plan = invoke(kit, "deploy", "--env", "prod", "--dry-run").stdout.splitlines()
    runs = [line for line in plan if " run --rm --no-deps web node smoke.js --quick" in line]
    assert len(runs) == 1, plan
    # After the switch and the workers, with the new images.
    assert plan.index(runs[0]) > max(i for i, line in enumerate(plan) if "--scale" in line)
    assert f"WEB_IMAGE={REGISTRY}/shop-web@{DIGEST}" in runs[0]
    assert (
        "a failing smoke check rolls back like a failed health check: until it passes the old "
        "containers of each http component keep running" in plan[-2]
    )


@pytest.mark.parametrize(
    ("smoke", "target", "message"),
    [
        (
            {"command": ["true"], "component": "wbe"},
            "compose",
            "environments.prod.smoke.component: 'wbe' is not one of the components (jobs, web)",
        ),
        (
            {"command": ["true"], "component": "wbe"},
            "helm",
            "environments.prod.smoke.component: 'wbe' is not one of the components (jobs, web)",
        ),
        ({"command": []}, "compose", "environments.prod.smoke.command: [] should be non-empty"),
        (
            # A shell line is not an argv: the check runs without a shell.
            {"command": "npm run smoke && echo ok"},
            "helm",
            "environments.prod.smoke.command: 'npm run smoke && echo ok' is not of type 'array'",
        ),
        ({"command": ["true"], "timeout": 0}, "compose", "0 is less than the minimum of 1"),
    ],
)
def test_smoke_settings_are_checked(
    kit: Path, smoke: dict[str, Any], target: str, message: str
) -> None:
    def change(data: Any) -> None:
        prod = data["environments"]["prod"]
        prod["smoke"] = smoke
        if target == "helm":
            prod.update(target="helm", namespace="shop-prod", values_file="values-prod.yaml")
            del prod["compose_file"]

    edit_kit(kit / "shipyard.yaml", change)
    result = invoke(kit, "deploy", "--env", "prod", "--dry-run")
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_an_environment_without_the_proxy_is_not_released(kit: Path) -> None:
    """dev runs compose.yaml, which has no proxy to switch at: refused with what to run."""
    for args in (("deploy", "--env", "dev", "--dry-run"), ("rollback", "--env", "dev", "-d")):
        result = invoke(kit, *args)
        assert result.returncode == 1, result.stdout
        assert result.stderr.strip() == (
            "shipyard: compose.yaml has no `proxy` service to switch releases at, so dev is not "
            "deployed with `invoke deploy`: run `docker compose --file compose.yaml up --wait` "
            "there. Nothing was changed"
        )


def test_the_proxy_hides_metrics_paths_only_with_monitoring(
    source: Path, render: Render, tmp_path: Path
) -> None:
    caddyfile = (source / "proxy" / "Caddyfile").read_text()
    assert "@metrics path /metrics\n" in caddyfile
    assert "handle @metrics {\n\t\t\trespond 404" in caddyfile
    quiet = render(
        {"project_name": "Shop", "production_target": "compose", "monitoring": "none"},
        tmp_path / "quiet",
    )
    assert "@metrics" not in (quiet / "proxy" / "Caddyfile").read_text()


def test_deploy_puts_the_proxy_files_in_before_starting_it(kit: Path) -> None:
    """No bind mounts (a remote DOCKER_HOST has no checkout): the proxy is created, the files
    put into its volume, then the stack started."""
    plan = invoke(kit, "deploy", "--env", "prod", "--dry-run").stdout.splitlines()
    create = next(i for i, line in enumerate(plan) if "up --no-start --no-build --no-deps" in line)
    assert plan[create].endswith(" proxy")
    assert "put proxy/Caddyfile, proxy/maintenance into the volumes of proxy" in plan[create + 1]
    started = next(i for i, line in enumerate(plan) if "--remove-orphans" in line)
    assert create < started


def test_a_missing_proxy_file_is_refused_before_anything(kit: Path) -> None:
    (kit / "proxy" / "Caddyfile").unlink()
    git(kit, "commit", "-qam", "lose the Caddyfile")
    record_pushes(kit)
    for args in (["deploy", "--env", "prod", "--dry-run"], ["deploy", "--env", "prod", "--yes"]):
        result = invoke(kit, *args)
        assert result.returncode == 1
        assert "proxy/Caddyfile missing" in result.stderr
        assert "Nothing was changed" in result.stderr
        assert "Traceback" not in result.stderr
