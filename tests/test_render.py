"""Every preset renders a kit that the real tools accept and that keeps its promises."""

from __future__ import annotations

import json
import re
import shutil
import socket
import socketserver
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from shipyard import config, validate
from tests.conftest import PRESETS, Render, copier_cli, load_preset
from tests.health import Health

Rendered = Callable[[str], Path]
# The checks of the template core; the chart, workflows and scripts have tests of their own.
CORE_CHECKS = ["dockerfile", "yaml", "compose", "compose-schema", "shipyard"]


def _yaml(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())


# Two components in folders of their own: one install and build per folder.
TWO_ROOTS = [
    {"name": "api", "kind": "http", "port": 3001, "health_path": "/health", "path": "apps/api"},
    {"name": "jobs", "kind": "worker", "path": "apps/jobs", "start": "node dist/worker.js"},
]

# A Next.js app built with output: 'standalone'.
NEXT_WEB = {
    "name": "web",
    "kind": "http",
    "port": 3000,
    "health_path": "/api/health",
    "path": "apps/web",
    "output": "next-standalone",
}


def _stages(dockerfile: Path) -> dict[str, list[str]]:
    """Instructions per named stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    stages: dict[str, list[str]] = {"": []}
    current = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+(?:--\S+\s+)*\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            current = match.group(1)
            stages[current] = []
        stages[current].append(line)
    return stages


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_passes_the_real_tools(rendered: Rendered, preset: str) -> None:
    findings = validate.validate(rendered(preset), only=CORE_CHECKS)
    assert not findings, validate.report(findings)


@pytest.mark.parametrize("preset", PRESETS)
def test_dockerfile_has_a_secure_target_per_component(rendered: Rendered, preset: str) -> None:
    root = rendered(preset)
    stages = _stages(root / "Dockerfile")
    preamble = stages[""]
    assert any(line.startswith("ARG IMAGE_MIRROR=") for line in preamble), "mirror ARG first"
    for comp in config.load(root).components:
        steps = stages[comp.name]
        assert "USER 1000:1000" in steps, f"{comp.name} must run as the non-root user 1000"
        cmd = next(s for s in steps if s.startswith("CMD "))
        assert json.loads(cmd[4:]) == comp.start.split(), "exec-form CMD"
        health = [s for s in steps if s.startswith("HEALTHCHECK ")]
        if comp.kind == "http":
            assert f"ENV PORT={comp.port}" in steps
            assert len(health) == 1
            assert f"127.0.0.1:{comp.port}{comp.health_path}" in health[0]
        else:
            assert not health
    install = " ".join(
        s for name, lines in stages.items() if name.startswith(("build_", "deps_")) for s in lines
    )
    assert "--mount=type=cache" in install, "dependency downloads are cached between builds"


def test_healthcheck_says_why_it_fails(rendered: Rendered) -> None:
    """The image's HEALTHCHECK, run by a real Node, prints the reason docker keeps in the
    container's health log (and `invoke deploy` reports): a closed port or an HTTP status."""
    steps = _stages(rendered("minimal") / "Dockerfile")
    check = next(s for steps in steps.values() for s in steps if s.startswith("HEALTHCHECK "))
    argv = json.loads(check[check.index("CMD ") + 4 :])
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH")
    with socketserver.TCPServer(("127.0.0.1", 0), Health) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_address[1]
        url = re.search(r"http://127\.0\.0\.1:(\d+)(/\S*?)'", argv[2])
        assert url is not None, argv
        app_port, path = url.groups()

        def run(script_port: int, script_path: str) -> subprocess.CompletedProcess[str]:
            script = argv[2].replace(f":{app_port}{path}'", f":{script_port}{script_path}'")
            return subprocess.run(
                [node, *argv[1:2], script], capture_output=True, text=True, timeout=30, check=False
            )

        healthy = run(port, "/ok")
        failing = run(port, "/health")
        with socket.socket() as probe:  # a port nothing listens on
            probe.bind(("127.0.0.1", 0))
            closed = run(probe.getsockname()[1], "/ok")
        server.shutdown()
    assert (healthy.returncode, healthy.stdout) == (0, "")
    assert failing.returncode == 1
    assert failing.stdout.strip() == f"GET http://127.0.0.1:{port}/health answered HTTP 500"
    assert closed.returncode == 1
    assert "failed: ECONNREFUSED (the app must listen on PORT=" in closed.stdout


@pytest.mark.parametrize("preset", PRESETS)
def test_compose_dev_stack_is_health_gated(rendered: Rendered, preset: str) -> None:
    root = rendered(preset)
    answers = load_preset(preset)
    services = _yaml(root / "compose.yaml")["services"]
    cfg = config.load(root)
    for comp in cfg.components:
        service = services[comp.name]
        assert service["build"]["target"] == comp.name
        for dep in service.get("depends_on", {}).values():
            assert dep["condition"] in {"service_healthy", "service_completed_successfully"}
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), "dev ports stay on loopback"
    if answers.get("database", "postgres") == "postgres":
        assert "healthcheck" in services["postgres"]
        assert services["pgadmin"]["profiles"] == ["tools"]
    if answers.get("redis"):
        assert "healthcheck" in services["redis"]
        assert services["redis-commander"]["profiles"] == ["tools"]
    if answers.get("elasticsearch"):
        assert "healthcheck" in services["elasticsearch"]


@pytest.mark.parametrize("preset", PRESETS)
def test_compose_prod_keeps_secrets_out_and_limits_in(rendered: Rendered, preset: str) -> None:
    root = rendered(preset)
    cfg = config.load(root)
    prod = _yaml(root / "compose.prod.yaml")
    text = (root / "compose.prod.yaml").read_text()
    for secret in cfg.secrets:
        # Each secret is only ever an interpolation that fails when the variable is unset.
        assert re.findall(rf"\${{{secret}(?=[:}}])[^}}]*}}", text)
        assert all(
            m.startswith(f"${{{secret}:?") for m in re.findall(rf"\${{{secret}[^}}]*}}", text)
        )
    for name, service in prod["services"].items():
        if {"migrate", "backup"} & set(service.get("profiles", [])):
            continue  # one-off jobs, run with `docker compose run --rm`: no restart policy
        assert service["restart"] == "unless-stopped", name
        assert service["deploy"]["resources"]["limits"]["memory"], name
        assert "no-new-privileges:true" in service["security_opt"], name
    for comp in cfg.components:
        service = prod["services"][comp.name]
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]
        assert service["image"].startswith("${" + comp.name.upper().replace("-", "_") + "_IMAGE:?")


@pytest.mark.parametrize("preset", PRESETS)
def test_compose_prod_mounts_nothing_from_the_checkout(rendered: Rendered, preset: str) -> None:
    """deploy.yml deploys with DOCKER_HOST=ssh://…, where a bind mount resolves on the server,
    which has no checkout: the files services read are listed in x-shipyard-files instead, and
    each is in the render (certificates excepted: never committed). So for the monitoring
    stack, which runs on the same host."""
    root = rendered(preset)
    stacks = [p for p in ("compose.prod.yaml", "compose.monitoring.yaml") if (root / p).exists()]
    services = {f"{p}:{n}": s for p in stacks for n, s in _yaml(root / p)["services"].items()}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.get("source", "") if isinstance(volume, dict) else volume.split(":")[0]
            assert not source.startswith((".", "/", "~")), f"{name} bind mounts {source}"
        for target, source in service.get("x-shipyard-files", {}).items():
            assert target.startswith("/"), (name, target)
            assert (root / source).exists() or source.split("/")[1] == "certs", (name, source)


@pytest.mark.parametrize("preset", PRESETS)
def test_env_example_declares_every_variable(rendered: Rendered, preset: str) -> None:
    root = rendered(preset)
    declared = {
        line.split("=", 1)[0]
        for line in (root / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    used: set[str] = set()
    for path in validate.compose_files(root):
        used |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", path.read_text()))
    assert used <= declared, f"missing from .env.example: {sorted(used - declared)}"


@pytest.mark.parametrize("preset", PRESETS)
def test_shipyard_yaml_mirrors_the_answers(rendered: Rendered, preset: str) -> None:
    root = rendered(preset)
    answers = load_preset(preset)
    cfg = config.load(root)
    default = [cfg.service]
    expected = [c["name"] for c in answers["components"]] if "components" in answers else default
    assert [c.name for c in cfg.components] == expected
    envs = cfg.data["environments"]
    assert set(envs) == {"dev", "staging", "prod"}
    assert envs["staging"]["target"] == answers.get("staging_target", "compose")
    assert envs["prod"]["target"] == answers.get("production_target", "helm")
    assert envs["prod"]["confirm"] is True
    assert cfg.environment("production") == cfg.environments["prod"], "production is prod"
    for secret in answers.get("app_secrets", []):
        assert secret in cfg.secrets
        assert secret not in (root / "shipyard.yaml").read_text().split("secrets:")[0]
    if answers.get("database", "postgres") == "postgres":
        backup = envs["prod"]["backup"]
        assert backup["retention_days"] == answers.get("backup_retention_days", 14)
        assert backup["schedule"] == answers.get("backup_schedule", "0 3 * * *")


def test_mirror_redirects_every_image(render: Render, tmp_path: Path) -> None:
    root = render(
        {
            "project_name": "Mirror",
            "image_mirror": "mirror.internal:5000",
            "redis": True,
            "elasticsearch": True,
            "reverse_proxy": True,
        },
        tmp_path / "mirror",
    )
    for path in validate.compose_files(root):
        for service in _yaml(path)["services"].values():
            image = service.get("image", "")
            if image and not image.startswith("${") and "build" not in service:
                assert image.startswith("mirror.internal:5000/"), image
    assert "ARG IMAGE_MIRROR=mirror.internal:5000\n" in (root / "Dockerfile").read_text()


def test_longest_answers_make_a_kit_that_passes_its_own_lint(
    render: Render, tmp_path: Path
) -> None:
    """The kit's `nox -s lint` right after `copier copy`: answers at their longest (a 40-character
    slug twice in DATABASE_URL, a 200-character description, a long app_env value) are data
    on one line, which the kit's line-length limit must not refuse."""
    answers = {
        "project_name": "Long",
        "service_slug": "s" * 40,
        "description": "word " * 39 + "last.",
        "app_env": {"CONTENT_SECURITY_POLICY": "default-src 'self'; " * 10},
        "production_target": "helm",
    }
    root = render(answers, tmp_path / "long")
    assert len(answers["description"]) == 200

    findings = validate.validate(root, only=["yaml"])

    assert not findings, validate.report(findings)


@pytest.mark.parametrize("package_manager", ["npm", "pnpm", "yarn"])
@pytest.mark.parametrize("workspaces", [False, True])
def test_every_package_manager_layout_passes(
    render: Render, tmp_path: Path, package_manager: str, workspaces: bool
) -> None:
    root = render(
        {
            "project_name": "Layouts",
            "package_manager": package_manager,
            "workspaces": workspaces,
            "components": [*TWO_ROOTS, NEXT_WEB],
            "redis": True,
        },
        tmp_path / "kit",
    )
    dockerfile = (root / "Dockerfile").read_text()
    lockfile = {"npm": "package-lock.json", "pnpm": "pnpm-lock.yaml", "yarn": "yarn.lock"}
    if not workspaces:
        assert f"source=apps/api/{lockfile[package_manager]}" in dockerfile
    # The Next.js server ships alone: where `next build` traced it depends on the trace root,
    # the repository in a workspace and the app's folder otherwise.
    web = _stages(root / "Dockerfile")["web"]
    standalone = (
        "COPY --from=build_app /app/apps/web/.next/standalone /app"
        if workspaces
        else "COPY --from=build_apps_web /app/.next/standalone /app"
    )
    assert standalone in web
    assert not [s for s in web if "node_modules" in s], "its node_modules come traced"
    assert "ENV HOSTNAME=0.0.0.0" in web
    assert web[-1] == 'CMD ["node", "server.js"]'
    findings = validate.validate(root, only=CORE_CHECKS)
    assert not findings, validate.report(findings)


@pytest.mark.parametrize(
    ("answers", "schema"),
    [
        (
            {"database": "postgres", "migrations": "prisma", "migrate_component": "jobs"},
            "apps/jobs",
        ),
        ({"database": "postgres", "migrations": "knex"}, None),
        # No database: `migrations` is never asked, and its default must not mount a schema.
        ({"database": "none"}, None),
    ],
    ids=["prisma", "knex", "no-database"],
)
def test_prisma_client_is_generated_from_the_migrating_components_schema(
    render: Render, tmp_path: Path, answers: dict[str, str], schema: str | None
) -> None:
    root = render({"project_name": "Schemas", "components": TWO_ROOTS, **answers}, tmp_path / "k")
    stages = _stages(root / "Dockerfile")
    for name, lines in stages.items():
        text = " ".join(lines)
        generates = "prisma generate" in text
        if schema and name in ("prod_deps_apps_jobs", "build_deps_apps_jobs"):
            assert f"source={schema}/prisma,target=prisma" in text, name
            assert generates, name
        else:
            assert "prisma" not in text, f"{name} must not touch a Prisma schema"


def test_readme_main_command_scaffolds_from_defaults(template_dir: Path, tmp_path: Path) -> None:
    """`copier copy --trust --defaults . my-service`, as the README says."""
    result = copier_cli(
        "copy", "--trust", "--defaults", str(template_dir), str(tmp_path / "my-service")
    )
    assert result.returncode == 0, result.stderr
    root = tmp_path / "my-service"
    cfg = config.load(root)
    assert cfg.service == "my-service"
    assert cfg.components[0].port == 3000
    findings = validate.validate(root, only=CORE_CHECKS)
    assert not findings, validate.report(findings)
