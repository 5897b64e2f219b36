"""Per-component configuration on the render: each component receives the shared app_env and
app_secrets, its own env and secrets, and the URLs (with the passwords in them) of only the
backing services it `uses`; the migration job keeps what it needs. Checked on what the engines
resolve: `docker compose config` of the Compose files, `helm template` of the chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from shipyard import validate
from tests.conftest import (
    Render,
    compose_placeholder,
    compose_services,
    load_preset,
    template_chart,
)

# project-management: a NestJS backend and a Next.js frontend, on PostgreSQL, Redis and
# Elasticsearch; its frontend uses none of them (tests/presets/project-management.yml).
PRESET = "project-management"
URLS = ("DATABASE_URL", "REDIS_URL", "ELASTICSEARCH_URL")
PASSWORDS = ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "ELASTIC_PASSWORD")

# Each component's own variables (answers' env and secrets), beside the preset's shared ones.
OWN = {
    "backend": {"env": {"QUEUE_NAME": "jobs"}, "secrets": ["STRIPE_API_KEY"]},
    "frontend": {"env": {"NEXT_TELEMETRY_DISABLED": "1"}, "secrets": ["SESSION_COOKIE_SECRET"]},
}


def _secret_values(environment: dict[str, str]) -> set[str]:
    """The service passwords whose placeholders appear in an environment's values."""
    return {
        p for p in PASSWORDS if any(compose_placeholder(p) in str(v) for v in environment.values())
    }


def _with_own_variables(answers: dict[str, Any]) -> dict[str, Any]:
    components = [{**c, **OWN[c["name"]]} for c in answers["components"]]
    return {**answers, "components": components}


def test_the_frontend_gets_no_service_url_nor_password_on_compose(
    render: Render, tmp_path: Path
) -> None:
    root = render(load_preset(PRESET), tmp_path / "pmtool")

    for file in ("compose.prod.yaml", "compose.yaml"):
        services = compose_services(root, file)
        backend, frontend = services["backend"], services["frontend"]
        assert set(URLS) <= backend["environment"].keys(), file
        # (The dev stack runs Elasticsearch without security, so without a password.)
        passwords = set(PASSWORDS) - ({"ELASTIC_PASSWORD"} if file == "compose.yaml" else set())
        assert _secret_values(backend["environment"]) == passwords, file
        assert not set(URLS) & frontend["environment"].keys(), file
        assert _secret_values(frontend["environment"]) == set(), file
        # Nor does it wait for them, or reach them: the backend network is the services'.
        assert not {"postgres", "redis", "elasticsearch", "migrate"} & set(
            frontend.get("depends_on", {})
        ), file
        # The shared variables still reach both.
        for app in (backend, frontend):
            assert app["environment"]["LOG_LEVEL"] == "info", file
            assert app["environment"]["JWT_SECRET"] == compose_placeholder("JWT_SECRET"), file
        # The migration job keeps the database.
        assert "DATABASE_URL" in services["migrate"]["environment"], file
    prod = compose_services(root, "compose.prod.yaml")
    assert set(prod["frontend"]["networks"]) == {"edge"}
    assert set(prod["backend"]["networks"]) == {"edge", "backend"}


def test_a_components_own_variables_reach_it_alone_on_compose(
    render: Render, tmp_path: Path
) -> None:
    root = render(_with_own_variables(load_preset(PRESET)), tmp_path / "pmtool")

    services = compose_services(root, "compose.prod.yaml")
    backend, frontend = services["backend"]["environment"], services["frontend"]["environment"]
    assert backend["QUEUE_NAME"] == "jobs"
    assert backend["STRIPE_API_KEY"] == compose_placeholder("STRIPE_API_KEY")
    assert frontend["NEXT_TELEMETRY_DISABLED"] == "1"
    assert frontend["SESSION_COOKIE_SECRET"] == compose_placeholder("SESSION_COOKIE_SECRET")
    assert not {"NEXT_TELEMETRY_DISABLED", "SESSION_COOKIE_SECRET"} & backend.keys()
    assert not {"QUEUE_NAME", "STRIPE_API_KEY"} & frontend.keys()
    # The migration job runs the backend's image, with the backend's configuration.
    migrate = services["migrate"]["environment"]
    assert migrate["STRIPE_API_KEY"] == compose_placeholder("STRIPE_API_KEY")
    assert "SESSION_COOKIE_SECRET" not in migrate
    # Every environment must provide them, and the dev stack's .env names them.
    shipyard = YAML(typ="safe").load((root / "shipyard.yaml").read_text())
    assert {"STRIPE_API_KEY", "SESSION_COOKIE_SECRET"} <= set(shipyard["secrets"])
    example = (root / ".env.example").read_text()
    assert "\nSTRIPE_API_KEY=change-me\n" in example
    assert "\nSESSION_COOKIE_SECRET=change-me\n" in example


def _helm_template(root: Path, tmp_path: Path) -> list[dict[str, Any]]:
    chart = root / "charts" / "pmtool"
    home = {
        f"HELM_{d}_HOME": str(tmp_path / "helm" / d.lower()) for d in ("CACHE", "CONFIG", "DATA")
    }
    return template_chart(chart, "-f", str(chart / "values-prod.yaml"), env=home)


def _container_env(doc: dict[str, Any]) -> dict[str, Any]:
    """A workload's container env by name: a value, or the Secret key it reads."""
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    return {
        e["name"]: e.get("value", e.get("valueFrom", {}).get("secretKeyRef", {}).get("key"))
        for e in container.get("env", [])
    }


def test_on_kubernetes_each_pod_reads_only_its_own_and_its_services_keys(
    render: Render, tmp_path: Path
) -> None:
    answers = {**_with_own_variables(load_preset(PRESET)), "production_target": "helm"}
    root = render(answers, tmp_path / "pmtool")

    docs = _helm_template(root, tmp_path)
    pods = {
        d["metadata"]["name"].removeprefix("rel-pmtool-"): _container_env(d)
        for d in docs
        if d["kind"] in ("Deployment", "Job")
    }
    backend, frontend, migrate = pods["backend"], pods["frontend"], pods["migrate"]
    # Every service URL, each from the Secret key of its name, reaches the backend alone.
    assert {k: backend[k] for k in URLS} == {k: k for k in URLS}
    assert not set(URLS) & frontend.keys()
    assert (backend["QUEUE_NAME"], backend["STRIPE_API_KEY"]) == ("jobs", "STRIPE_API_KEY")
    assert (frontend["NEXT_TELEMETRY_DISABLED"], frontend["SESSION_COOKIE_SECRET"]) == (
        "1",
        "SESSION_COOKIE_SECRET",
    )
    assert not {"NEXT_TELEMETRY_DISABLED", "SESSION_COOKIE_SECRET"} & backend.keys()
    assert not {"QUEUE_NAME", "STRIPE_API_KEY"} & frontend.keys()
    # The shared secrets reach both; the shared ConfigMap holds no component's own variable.
    shared_key = "JWT_SECRET"  # a name: the Secret key each pod reads
    assert backend[shared_key] == frontend[shared_key] == shared_key
    (shared,) = (
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "rel-pmtool-env"
    )
    assert shared["data"]["LOG_LEVEL"] == "info"
    assert not {"QUEUE_NAME", "NEXT_TELEMETRY_DISABLED"} & shared["data"].keys()
    # The migration job runs the backend's image with the backend's configuration.
    assert migrate["DATABASE_URL"] == "DATABASE_URL"
    assert migrate["STRIPE_API_KEY"] == "STRIPE_API_KEY"
    assert "SESSION_COOKIE_SECRET" not in migrate

    # What the validators of a generated repo say of it (`shipyard validate`).
    checks = ["helm-lint", "kubernetes", "compose", "yaml", "shipyard", "answers"]
    findings = validate.validate(root, only=checks)
    assert not findings, validate.report(findings)
