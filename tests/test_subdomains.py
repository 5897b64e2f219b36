"""Per-component hosts on the render: a component's `subdomain` reaches shipyard.yaml (its
health URL on its own host), the Caddy proxy (a site per host, adapted by the real caddy) and
nginx (a server block per host); a shipyard.yaml from before `health_urls` still reads."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from shipyard import config
from tests.conftest import Render, edit_yaml, load_preset, template_chart

# project-management serves its backend on api.<host> and its frontend on the host itself.
PRESET = "project-management"


def _kit(render: Render, tmp_path: Path, **answers: Any) -> Path:
    return render({**load_preset(PRESET), **answers}, tmp_path / "pmtool")


def _adapted_hosts(caddyfile: Path, host: str) -> list[str]:
    """The hosts of the sites `caddy adapt` makes of the proxy's Caddyfile in an environment
    whose host is `host`."""
    caddy = shutil.which("caddy")
    if caddy is None:
        pytest.fail("caddy is not on PATH: run `. .ci/setup.sh` first")
    result = subprocess.run(
        [caddy, "adapt", "--config", str(caddyfile), "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "SHIPYARD_HOST": host},
    )
    assert result.returncode == 0, result.stderr
    server = json.loads(result.stdout)["apps"]["http"]["servers"]["srv0"]
    return sorted(name for route in server["routes"] for name in route["match"][0]["host"])


def test_shipyard_yaml_gives_each_component_its_host_and_health_url(
    rendered: Any,
) -> None:
    cfg = config.load(rendered(PRESET))
    backend, frontend = cfg.components
    assert (backend.subdomain, backend.route) == ("api", "/")
    assert (frontend.subdomain, frontend.route) == ("", "/")
    assert dict(cfg.environment("prod").health_urls) == {
        "backend": "https://api.yourcompany.com/api/health",
        "frontend": "https://yourcompany.com/api/health",
    }
    assert dict(cfg.environment("staging").health_urls) == {
        "backend": "https://api.staging.yourcompany.com/api/health",
        "frontend": "https://staging.yourcompany.com/api/health",
    }
    # dev publishes each component's port on the machine.
    assert dict(cfg.environment("dev").health_urls) == {
        "backend": "http://localhost:3001/api/health",
        "frontend": "http://localhost:3000/api/health",
    }


@pytest.mark.parametrize("tls", ["acme", "files"])
def test_the_proxy_has_a_site_per_host(render: Render, tmp_path: Path, tls: str) -> None:
    root = _kit(render, tmp_path, reverse_proxy=False, tls=tls)
    caddyfile = root / "proxy" / "Caddyfile"
    assert _adapted_hosts(caddyfile, "example.org") == ["api.example.org", "example.org"]
    text = caddyfile.read_text()
    api_site = text[text.index("api.{$SHIPYARD_HOST:localhost} {") :]
    api_site = api_site[: api_site.index("\n}\n")]
    apex_site = text[text.index("\n{$SHIPYARD_HOST:localhost} {") :]
    # Each site routes to its own component only, imports maintenance mode and hides metrics.
    for site, component, other in (
        (api_site, "backend", "frontend"),
        (apex_site, "frontend", "backend"),
    ):
        assert f"import /config/upstreams/{component}/*.caddy" in site
        assert f"/upstreams/{other}/" not in site
        assert "import /config/maintenance/*.caddy" in site
        assert "@metrics path /metrics" in site
        assert ("tls /config/certs/fullchain.pem" in site) == (tls == "files")


def test_nginx_has_a_server_block_per_host(rendered: Any) -> None:
    text = (rendered(PRESET) / "nginx" / "nginx.conf").read_text()
    tls_servers = text.split("listen 8443 ssl")[1:]
    assert len(tls_servers) == 2
    api, apex = tls_servers
    assert "server_name api.staging.yourcompany.com api.yourcompany.com;" in api
    assert "proxy_pass http://backend;" in api
    assert "http://frontend" not in api
    assert apex.startswith(" default_server;")
    assert "proxy_pass http://frontend;" in apex
    assert "http://backend" not in apex


def test_a_shipyard_yaml_with_one_health_url_still_reads(rendered: Any, tmp_path: Path) -> None:
    """Files written before health_urls have one health_url, the first http component's."""
    root = tmp_path / "old"
    shutil.copytree(rendered(PRESET), root, symlinks=True)

    def older(data: Any) -> None:
        for env in data["environments"].values():
            env["health_url"] = env.pop("health_urls")["backend"]

    edit_yaml(root / "shipyard.yaml", older)
    prod = config.load(root).environment("prod")
    assert dict(prod.health_urls) == {"backend": "https://api.yourcompany.com/api/health"}


def test_health_urls_must_name_http_components(rendered: Any, tmp_path: Path) -> None:
    root = tmp_path / "typo"
    shutil.copytree(rendered(PRESET), root, symlinks=True)
    edit_yaml(
        root / "shipyard.yaml",
        lambda data: data["environments"]["prod"]["health_urls"].update(backnd="https://x.org/"),
    )
    with pytest.raises(config.ConfigError, match=r"health_urls.backnd: 'backnd' is not one of"):
        config.load(root)


PROFILE = ("--profile", "migrate")  # with the migration job


def _compose_environment(root: Path, host: str) -> dict[str, dict[str, str]]:
    """Each service's environment in compose.prod.yaml as `docker compose config` resolves it
    for an environment whose host is `host` (every required variable set to a placeholder)."""
    text = (root / "compose.prod.yaml").read_text()
    required = dict.fromkeys(re.findall(r"\$\{([A-Z0-9_]+):\?", text), "x")
    result = subprocess.run(
        ["docker-compose", "--file", "compose.prod.yaml", *PROFILE, "config", "--format", "json"],
        cwd=root,
        env={"PATH": os.environ["PATH"], **required, "SHIPYARD_HOST": host},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    return {name: s.get("environment", {}) for name, s in services.items()}


def test_each_component_is_told_where_browsers_reach_every_http_component(
    render: Render, tmp_path: Path
) -> None:
    """<NAME>_PUBLIC_URL, per http component, on its own host: on Compose from the deploy's
    SHIPYARD_HOST (the dev stack: the published ports), on Kubernetes from the chart's host
    and each component's subdomain and route; the migration job does without."""
    root = _kit(render, tmp_path, production_target="helm")
    urls = {
        "BACKEND_PUBLIC_URL": "https://api.staging.yourcompany.com",
        "FRONTEND_PUBLIC_URL": "https://staging.yourcompany.com",
    }
    environment = _compose_environment(root, "staging.yourcompany.com")
    for app in ("backend", "frontend"):
        assert urls.items() <= environment[app].items(), environment[app]
    assert "BACKEND_PUBLIC_URL" not in environment["migrate"]

    chart = root / "charts" / "pmtool"
    (config_map,) = (
        doc
        for doc in template_chart(chart, "-f", str(chart / "values-prod.yaml"))
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].endswith("-env")
    )
    assert config_map["data"]["BACKEND_PUBLIC_URL"] == "https://api.yourcompany.com"
    assert config_map["data"]["FRONTEND_PUBLIC_URL"] == "https://yourcompany.com"


def test_a_component_under_a_route_has_it_in_its_public_url(render: Render, tmp_path: Path) -> None:
    root = _kit(
        render,
        tmp_path,
        components=[
            *load_preset(PRESET)["components"],
            {"name": "admin", "kind": "http", "port": 3002, "health_path": "/health"},
        ],
    )
    environment = _compose_environment(root, "example.org")
    assert environment["admin"]["ADMIN_PUBLIC_URL"] == "https://example.org/admin"
    assert environment["backend"]["ADMIN_PUBLIC_URL"] == "https://example.org/admin"
