"""Invalid answers are refused with a sentence a user can act on, and nothing is written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from shipyard import config
from tests.conftest import Render, copier_cli

HTTP = {"name": "api", "kind": "http", "port": 3000, "health_path": "/health", "path": "."}
WORKER = {"name": "jobs", "kind": "worker"}

# (answers, the sentence copier must show): each answer set breaks exactly one rule.
REJECTED: list[tuple[dict[str, Any], str]] = [
    ({"project_name": "  "}, "The project name cannot be empty."),
    ({"service_slug": "My_Service"}, "is not a valid service slug"),
    ({"service_slug": "9lives"}, "is not a valid service slug"),
    ({"service_slug": "a" * 41}, "keep it at most 40"),
    # Helm (and PyYAML) would read these as booleans or null, in Chart.yaml and values.yaml.
    ({"service_slug": "on"}, "'on' cannot be a service slug: YAML reads it as a boolean"),
    ({"project_name": "Yes"}, "'yes' cannot be a service slug: YAML reads it as a boolean"),
    ({"components": [{**HTTP, "name": "y"}]}, "'y' cannot be used: YAML reads it as a boolean"),
    ({"description": "two\nlines"}, "one line of at most 200 characters"),
    ({"description": "two\u2028lines"}, "one line of at most 200 characters"),
    ({"project_name": "Two\u2029Lines"}, "Keep the project name to one line"),
    ({"components": []}, "components must be a non-empty YAML list"),
    ({"components": "api"}, "components must be a non-empty YAML list"),
    ({"components": [HTTP, HTTP]}, "Two components are named 'api'"),
    ({"components": [{**HTTP, "name": "backup"}]}, "is taken by a service the kit runs"),
    ({"components": [{**HTTP, "name": "postgres"}]}, "is taken by a service the kit runs"),
    ({"components": [{**HTTP, "port": 0}]}, "needs a port between 1 and 65535"),
    ({"components": [{**HTTP, "port": 65536}]}, "needs a port between 1 and 65535"),
    ({"components": [{**HTTP, "port": "3000"}]}, "needs a port between 1 and 65535"),
    # `docker compose up` would fail: the dev stack publishes these ports for its services.
    ({"components": [{**HTTP, "port": 5432}]}, "has port 5432, which compose.yaml publishes"),
    (
        {"components": [{**HTTP, "port": 6379}], "redis": True},
        "has port 6379, which compose.yaml publishes",
    ),
    (
        {"components": [HTTP, {**HTTP, "name": "web", "route": "/web"}]},
        "Components share port 3000",
    ),
    (
        {"components": [HTTP, {**HTTP, "name": "web", "port": 3001, "route": "/"}]},
        "Two http components are served under route /",
    ),
    # A subdomain is one DNS label, on an http component, and no two components meet on one
    # host and route.
    ({"components": [{**HTTP, "subdomain": "API"}]}, "subdomain 'API', which is not a DNS label"),
    ({"components": [{**HTTP, "subdomain": "-api"}]}, "which is not a DNS label"),
    ({"components": [{**HTTP, "subdomain": "api.v2"}]}, "which is not a DNS label"),
    ({"components": [{**HTTP, "subdomain": "a" * 64}]}, "which is not a DNS label"),
    ({"components": [{**HTTP, "subdomain": True}]}, "which is not a DNS label"),
    (
        {"components": [HTTP, {**WORKER, "subdomain": "jobs"}]},
        "Component 'jobs' is a worker: nothing routes to a worker, so it takes no subdomain",
    ),
    (
        {
            "components": [
                {**HTTP, "subdomain": "api"},
                {**HTTP, "name": "web", "port": 3001, "subdomain": "api", "route": "/"},
            ]
        },
        "Two http components are served under route / of subdomain api, where they would collide",
    ),
    ({"components": [{**HTTP, "health_path": "health"}]}, "health_path starting with '/'"),
    ({"components": [{**HTTP, "kind": "cron"}]}, "needs kind http"),
    ({"components": [{**HTTP, "kind": "worker"}]}, "is a worker"),
    ({"components": [{**HTTP, "image": "x"}]}, "unknown key(s) image"),
    ({"components": [{**HTTP, "name": "API"}]}, "needs a name of lowercase letters"),
    ({"components": [{**HTTP, "path": "../other"}]}, "use '.' or a relative folder"),
    ({"components": [{**HTTP, "path": "/abs"}]}, "use '.' or a relative folder"),
    ({"components": [{**HTTP, "start": " "}]}, "has an empty start command"),
    ({"components": [{**HTTP, "output": "standalone"}]}, "use next-standalone"),
    (
        {"components": [{"name": "jobs", "kind": "worker", "output": "next-standalone"}]},
        "output next-standalone is a Next.js server",
    ),
    # A worker's health: a command, or a port and path; never both, never on an http component.
    ({"components": [{**WORKER, "health_port": 9000}]}, "has health_port but no health_path"),
    ({"components": [{**WORKER, "health_path": "/health"}]}, "has health_path but no health_port"),
    (
        {"components": [{**WORKER, "health_port": 9000, "health_path": "health"}]},
        "needs a health_path starting with '/'",
    ),
    (
        {"components": [{**WORKER, "health_port": 70000, "health_path": "/health"}]},
        "needs a health_port between 1 and 65535; got '70000'",
    ),
    (
        {"components": [{**WORKER, "health_port": True, "health_path": "/health"}]},
        "needs a health_port between 1 and 65535",
    ),
    (
        {"components": [{**WORKER, "health_command": "true", "health_port": 9000}]},
        "has both health_command and health_port/health_path: give one kind",
    ),
    ({"components": [{**WORKER, "health_command": " "}]}, "give a command that exits 0"),
    ({"components": [{**WORKER, "health_command": []}]}, "give a command that exits 0"),
    ({"components": [{**WORKER, "health_command": ["node", 1]}]}, "give a command that exits 0"),
    ({"components": [{**WORKER, "health_command": ["node", ""]}]}, "give a command that exits 0"),
    ({"components": [{**WORKER, "health_command": {"a": 1}}]}, "give a command that exits 0"),
    (
        {"components": [{**HTTP, "health_command": "true"}]},
        "health_command and health_port are for workers",
    ),
    (
        {"components": [{**HTTP, "health_port": 9000}]},
        "health_command and health_port are for workers",
    ),
    # One server may serve both, on different paths.
    (
        {
            "components": [
                {**WORKER, "health_port": 9464, "health_path": "/metrics", "metrics_port": 9464}
            ]
        },
        "serves its health check and its metrics on the same port and path /metrics",
    ),
    ({"database": "none", "migrations": "prisma"}, "Migrations need a database"),
    ({"postgres_version": 12}, "PostgreSQL 12 is not supported"),
    ({"migrations": "custom"}, "Give the command that applies migrations"),
    (
        {"components": [HTTP, {"name": "jobs", "kind": "worker"}], "migrate_component": "db"},
        "'db' is not a component; choose one of api, jobs",
    ),
    ({"image_registry": "https://ghcr.io/acme"}, "is not a registry path"),
    ({"image_registry": "ghcr.io/Acme"}, "is not a registry path"),
    ({"image_mirror": "mirror.internal:5000/"}, "is not a registry prefix"),
    ({"staging_host": "https://staging.example.com"}, "is not a hostname"),
    ({"production_host": "localhost"}, "is not a hostname"),
    (
        {"staging_host": "app.example.com", "production_host": "app.example.com"},
        "Production and staging need different hostnames",
    ),
    ({"backup_storage": "s3", "backup_s3_bucket": "ab"}, "is not a valid bucket name"),
    ({"backup_storage": "s3", "backup_s3_endpoint": "minio:9000"}, "is not an endpoint URL"),
    (
        {"backup_storage": "s3", "backup_s3_endpoint": "http://key:secret@minio:9000"},
        "without user or password",
    ),
    (
        {"backup_storage": "s3", "backup_s3_endpoint": "http://minio:99999"},
        "has port 99999: use a port from 1 to 65535.",
    ),
    ({"backup_schedule": "0 25 * * *"}, "is not a cron schedule"),
    ({"backup_schedule": "daily"}, "is not a cron schedule"),
    ({"backup_schedule": "*/15 * * * 8"}, "is not a cron schedule"),
    ({"backup_retention_days": 0}, "Keep backups between 1 and 3650 days"),
    ({"app_env": {"log_level": "info"}}, "is not an environment variable name"),
    ({"app_env": {"DATABASE_URL": "x"}}, "DATABASE_URL is set by the kit itself"),
    ({"app_env": {"LIMITS": {"a": 1}}}, "must be a plain value"),
    ({"app_env": ["A"]}, "app_env must be a YAML mapping"),
    ({"app_secrets": ["JWT_SECRET", "JWT_SECRET"]}, "JWT_SECRET is listed twice"),
    ({"app_secrets": ["jwt"]}, "is not an environment variable name"),
    ({"app_secrets": ["POSTGRES_PASSWORD"]}, "managed by the kit itself"),
    (
        {"components": [HTTP], "app_env": {"API_PUBLIC_URL": "x"}},
        "API_PUBLIC_URL is set by the kit itself",
    ),
    ({"components": [HTTP], "app_secrets": ["API_PUBLIC_URL"]}, "managed by the kit itself"),
    (
        {"app_env": {"API_KEY": "x"}, "app_secrets": ["API_KEY"]},
        "is both in app_env and app_secrets",
    ),
    (
        {"components": [{"name": "jobs", "kind": "worker"}], "reverse_proxy": True},
        "nginx needs an http component",
    ),
    ({"package_manager": "bun"}, "Invalid choice"),
    (
        {"reverse_proxy": True, "tls": "acme"},
        "nginx (reverse_proxy=true) already terminates TLS on ports 80 and 443",
    ),
    ({"tls": "acme", "acme_email": "nobody"}, "tls=acme needs an email"),
    ({"tls": "acme", "acme_email": ""}, "tls=acme needs an email"),
    ({"tls": "letsencrypt"}, "Invalid choice"),
    ({"components": [{**HTTP, "metrics_path": "metrics"}]}, "give a URL path starting with '/'"),
    ({"components": [{**HTTP, "metrics_path": "/health"}]}, "on the same path /health"),
    ({"components": [{**HTTP, "metrics_port": 9464}]}, "so remove metrics_port"),
    (
        {"components": [HTTP, {"name": "jobs", "kind": "worker", "metrics_port": 3000}]},
        "has metrics_port 3000, which another component already uses",
    ),
    (
        {
            "components": [
                {"name": "jobs", "kind": "worker", "metrics_port": 9464},
                {**HTTP, "port": 9464},
            ]
        },
        "Components share port 9464",
    ),
    (
        {"components": [{"name": "jobs", "kind": "worker", "metrics_port": 5432}]},
        "has metrics_port 5432, which compose.yaml publishes",
    ),
    (
        {"components": [{"name": "jobs", "kind": "worker", "metrics_port": 0}]},
        "needs a metrics_port between 1 and 65535",
    ),
    (
        {"components": [{"name": "jobs", "kind": "worker", "metrics_path": "/metrics"}]},
        "has a metrics_path but no metrics_port",
    ),
    ({"alert_latency_ms": 5}, "latency alert threshold from 10 to 60000 milliseconds"),
    # data_paths: absolute folders of the app, each once, each its own volume.
    ({"components": [{**HTTP, "data_paths": "/app/uploads"}]}, "give a YAML list of absolute"),
    ({"components": [{**HTTP, "data_paths": ["uploads"]}]}, "give an absolute folder in the"),
    ({"components": [{**HTTP, "data_paths": [7]}]}, "give an absolute folder in the"),
    ({"components": [{**HTTP, "data_paths": ["/"]}]}, "the whole filesystem cannot persist"),
    ({"components": [{**HTTP, "data_paths": ["/app/../etc"]}]}, "without '.' or '..' segments"),
    ({"components": [{**HTTP, "data_paths": ["/app/./x"]}]}, "without '.' or '..' segments"),
    ({"components": [{**HTTP, "data_paths": ["/app/up loads"]}]}, "with no spaces and no trailing"),
    ({"components": [{**HTTP, "data_paths": ["/app/uploads/"]}]}, "with no spaces and no trailing"),
    # Paths inside the container, never opened here.
    ({"components": [{**HTTP, "data_paths": ["/tmp/uploads"]}]}, "/tmp is scratch"),  # noqa: S108
    ({"components": [{**HTTP, "data_paths": ["/tmp"]}]}, "/tmp is scratch space"),  # noqa: S108
    ({"components": [{**HTTP, "data_paths": ["/etc/app"]}]}, "it is a system folder of the image"),
    ({"components": [{**HTTP, "data_paths": ["/var/run/x"]}]}, "it is a system folder"),
    ({"components": [{**HTTP, "data_paths": ["/app"]}]}, "it holds the application's code"),
    (
        {"components": [{**HTTP, "path": "api", "data_paths": ["/app/api"]}]},
        "it holds the application's code",
    ),
    (
        {"runtime": "go", "components": [{**HTTP, "data_paths": ["/app/api/files"]}]},
        "has data path '/app/api/files': /app/api is the component's binary in a Go image",
    ),
    (
        {"components": [{**HTTP, "data_paths": ["/data", "/data"]}]},
        "has data path '/data' twice; list each folder once.",
    ),
    (
        {"components": [{**HTTP, "data_paths": ["/data", "/data/x"]}]},
        "has data path '/data/x' nested with another of its data paths",
    ),
    (
        {"components": [{**HTTP, "data_paths": ["/data/a", "/data"]}]},
        "has data path '/data' nested with another of its data paths",
    ),
    (
        {"components": [{**HTTP, "data_paths": ["/srv/a-b", "/srv-a/b"]}]},
        "gives the same volume name (api-data-srv-a-b) as another of its data paths",
    ),
    ({"components": [{**HTTP, "data_paths": ["/" + "a" * 41]}]}, "at most 40 letters and digits"),
    ({"monitoring": "datadog"}, "Invalid choice"),
    # A component's own configuration: env (values), secrets (names), uses (services answered).
    ({"components": [{**HTTP, "uses": ["redis"]}]}, "Component 'api' uses redis, but redis is not"),
    (
        {"components": [{**HTTP, "uses": ["elasticsearch"]}]},
        "Component 'api' uses elasticsearch, but elasticsearch is not answered",
    ),
    (
        {"components": [{**HTTP, "uses": ["postgres"]}], "database": "none"},
        "Component 'api' uses postgres, but database is none",
    ),
    ({"components": [{**HTTP, "uses": ["mysql"]}]}, "uses 'mysql', which is not a backing service"),
    ({"components": [{**HTTP, "uses": "postgres"}]}, "give a YAML list of the backing services"),
    ({"components": [{**HTTP, "uses": ["postgres", "postgres"]}]}, "lists postgres twice in uses"),
    ({"components": [{**HTTP, "env": ["LOG_LEVEL"]}]}, "give a YAML mapping of NAME: value"),
    ({"components": [{**HTTP, "env": {"log_level": "info"}}]}, "is not an environment variable"),
    ({"components": [{**HTTP, "env": {"DATABASE_URL": "x"}}]}, "sets DATABASE_URL in env, which"),
    ({"components": [{**HTTP, "env": {"API_PUBLIC_URL": "x"}}]}, "sets API_PUBLIC_URL in env"),
    ({"components": [{**HTTP, "env": {"A": {"b": 1}}}]}, "must be a plain value"),
    (
        {"components": [{**HTTP, "env": {"LOG_LEVEL": "debug"}}], "app_env": {"LOG_LEVEL": "info"}},
        "LOG_LEVEL is in app_env and in the env or secrets of component 'api'",
    ),
    (
        {"components": [{**HTTP, "secrets": ["JWT_SECRET"]}], "app_secrets": ["JWT_SECRET"]},
        "JWT_SECRET is in app_secrets and in the env or secrets of component 'api'",
    ),
    (
        {"components": [{**HTTP, "secrets": ["JWT_SECRET"]}], "app_env": {"JWT_SECRET": "x"}},
        "JWT_SECRET is in app_env and in the env or secrets of component 'api'",
    ),
    (
        {"components": [{**HTTP, "secrets": {"STRIPE_API_KEY": "sk_live_x"}}]},
        "give secret names only, never values",
    ),
    ({"components": [{**HTTP, "secrets": ["STRIPE_API_KEY=sk"]}]}, "names only, never values"),
    ({"components": [{**HTTP, "secrets": "STRIPE_API_KEY"}]}, "give a YAML list of names"),
    ({"components": [{**HTTP, "secrets": ["REDIS_PASSWORD"]}]}, "which the kit manages itself"),
    ({"components": [{**HTTP, "secrets": ["A", "A"]}]}, "lists A twice in secrets"),
    ({"components": [{**HTTP, "env": {"A": "1"}, "secrets": ["A"]}]}, "has A in both env and"),
    ({"app_env": {"POSTGRES_PASSWORD": "x"}}, "POSTGRES_PASSWORD is set by the kit itself"),
    # Sizes: a component's resources, and Redis' maxmemory on Compose hosts.
    ({"components": [{**HTTP, "resources": "1Gi"}]}, "give a YAML mapping like {cpu: 0.5"),
    ({"components": [{**HTTP, "resources": {"mem": "1Gi"}}]}, "unknown resources key(s) mem"),
    ({"components": [{**HTTP, "resources": {"memory": "63Mi"}}]}, "below the floor of 64Mi"),
    ({"components": [{**HTTP, "resources": {"memory": "1G"}}]}, "give mebibytes or gibibytes"),
    ({"components": [{**HTTP, "resources": {"memory": 512}}]}, "give mebibytes or gibibytes"),
    ({"components": [{**HTTP, "resources": {"cpu": "half"}}]}, "give a number of CPUs like 0.5"),
    ({"components": [{**HTTP, "resources": {"cpu": True}}]}, "give a number of CPUs like 0.5"),
    ({"components": [{**HTTP, "resources": {"cpu": "0.5m"}}]}, "give a number of CPUs like 0.5"),
    ({"components": [{**HTTP, "resources": {"cpu": 0.0005}}]}, "finer than a millicore"),
    ({"components": [{**HTTP, "resources": {"cpu": "10m"}}]}, "below the floor of 50m"),
    ({"components": [{**HTTP, "resources": {"cpu": 0.01}}]}, "below the floor of 50m"),
    ({"components": [{**HTTP, "resources": {"cpu": 65}}]}, "above 64 CPUs"),
    ({"redis": True, "redis_maxmemory": "512MB"}, "is not a size Redis reads"),
    ({"redis": True, "redis_maxmemory": "2g"}, "is not a size Redis reads"),
    ({"redis": True, "redis_maxmemory": "32mb"}, "below the floor of 64mb"),
    # PostgreSQL's parameters: known names (PostgreSQL 15's pg_settings), their units and ranges.
    ({"postgres_settings": "max_connections=200"}, "postgres_settings must be a YAML mapping"),
    ({"postgres_settings": {"max_conections": 200}}, "'max_conections' is not a PostgreSQL server"),
    ({"postgres_settings": {"max_connections": "lots"}}, "max_connections takes a plain number"),
    ({"postgres_settings": {"max_connections": 0}}, "max_connections 0 is outside what PostgreSQL"),
    ({"postgres_settings": {"max_connections": 20.5}}, "takes a whole number, not 20.5"),
    ({"postgres_settings": {"max_connections": "200MB"}}, "max_connections takes a plain number"),
    ({"postgres_settings": {"shared_buffers": "1gb"}}, "shared_buffers takes a size like 256MB"),
    ({"postgres_settings": {"shared_buffers": "100ms"}}, "shared_buffers takes a size like 256MB"),
    ({"postgres_settings": {"shared_buffers": "64kB"}}, "shared_buffers 64kB is outside what"),
    ({"postgres_settings": {"log_min_duration_statement": "1GB"}}, "takes a duration like 500ms"),
    ({"postgres_settings": {"log_statement": "some"}}, "log_statement is one of none, ddl, mod"),
    ({"postgres_settings": {"log_connections": "maybe"}}, "log_connections is on or off"),
    ({"postgres_settings": {"work_mem": None}}, "work_mem takes one value, not null"),
    ({"postgres_settings": {"work_mem": ["4MB"]}}, "work_mem takes one value"),
    ({"postgres_settings": {"log_line_prefix": "a\tb"}}, "log_line_prefix contains control"),
    # The kit sets these itself, each for a reason it gives.
    ({"postgres_settings": {"port": 5433}}, "port is not yours to set: the kit decides where"),
    ({"postgres_settings": {"listen_addresses": "*"}}, "listen_addresses is not yours to set"),
    ({"postgres_settings": {"data_directory": "/d"}}, "data_directory is not yours to set"),
    ({"postgres_settings": {"hba_file": "/h"}}, "hba_file is not yours to set: the image keeps"),
    ({"postgres_settings": {"archive_command": "cp %p /x"}}, "backups and restores are the kit"),
    ({"postgres_settings": {"ssl": True}}, "ssl is not yours to set: the Compose PostgreSQL has"),
    ({"postgres_settings": {"ssl_cert_file": "x.crt"}}, "ssl_cert_file is not yours to set"),
    ({"postgres_settings": {"logging_collector": True}}, "standard error (docker compose logs)"),
    # PostgreSQL by CloudNativePG: a Kubernetes environment, PostgreSQL and object storage.
    (
        {"database_on_kubernetes": "cloudnativepg", "production_target": "compose"},
        "it needs database=postgres and staging_target or production_target helm",
    ),
    (
        {"database_on_kubernetes": "cloudnativepg", "database": "none", "migrations": "none"},
        "it needs database=postgres and staging_target or production_target helm",
    ),
    (
        {"database_on_kubernetes": "cloudnativepg", "backup_storage": "local"},
        "CloudNativePG archives WAL and base backups only to object storage",
    ),
    # Point-in-time recovery by pgBackRest: the Compose hosts' PostgreSQL, S3 over HTTPS.
    (
        {"point_in_time_recovery": True, "staging_target": "helm", "production_target": "helm"},
        "point_in_time_recovery archives the WAL of the PostgreSQL the Compose hosts run",
    ),
    (
        {"point_in_time_recovery": True, "database": "none", "migrations": "none"},
        "it needs database=postgres and staging_target or production_target compose",
    ),
    (
        {
            "backup_storage": "s3",
            "backup_s3_endpoint": "http://minio:9000",
            "staging_target": "compose",
        },
        "pgBackRest, which speaks only HTTPS: give backup_s3_endpoint as https://",
    ),
]


@pytest.mark.parametrize(("answers", "message"), REJECTED, ids=[m[:40] for _, m in REJECTED])
def test_invalid_answers_are_refused_and_nothing_is_written(
    render: Render, tmp_path: Path, answers: dict[str, Any], message: str
) -> None:
    dst = tmp_path / "service"
    with pytest.raises(ValueError, match=re.escape(message)):
        render({"project_name": "Orders API", **answers}, dst)
    assert not dst.exists()


@pytest.mark.parametrize(
    ("project_name", "slug", "component"),
    [
        # 45 characters: the slug is cut at 40, the default component's name at 20.
        (
            "Enterprise Resource Planning Backend Services",
            "enterprise-resource-planning-backend-ser",
            "enterprise-resource",
        ),
        ("日本のサービス", "service", "service"),  # no ASCII letter to make a slug of
        ("Postgres", "postgres", "app"),  # a kit service's name cannot name a component
    ],
)
def test_defaults_derived_from_any_project_name_pass_their_own_rules(
    render: Render, tmp_path: Path, project_name: str, slug: str, component: str
) -> None:
    """`copier copy --defaults` with only a project name never refuses its own defaults."""
    cfg = config.load(render({"project_name": project_name}, tmp_path / "kit"))

    assert cfg.data["service"]["name"] == slug
    assert [c.name for c in cfg.components] == [component]


def test_a_kit_service_port_is_free_when_the_service_is_not_there(
    render: Render, tmp_path: Path
) -> None:
    answers = {"components": [{**HTTP, "port": 6379}], "redis": False, "database": "none"}
    root = render({"project_name": "Orders API", **answers}, tmp_path / "kit")
    assert "127.0.0.1:6379:6379" in (root / "compose.yaml").read_text()


def test_cli_refusal_names_the_question_and_writes_nothing(
    template_dir: Path, tmp_path: Path
) -> None:
    """What a user running the copier CLI with an answers file sees."""
    answers = tmp_path / "answers.yml"
    answers.write_text("project_name: Orders\ncomponents: [{name: a, kind: http, port: 0}]\n")
    dst = tmp_path / "service"
    result = copier_cli(
        "copy", "--trust", "--defaults", "--data-file", str(answers), str(template_dir), str(dst)
    )
    assert result.returncode != 0
    assert (
        "Validation error for question 'components': Component 'a' needs a port between 1 and "
        "65535; got '0'." in result.stderr
    )
    assert not dst.exists()


def test_data_paths_reach_shipyard_yaml_typed_and_another_component_may_reuse_a_path(
    render: Render, tmp_path: Path
) -> None:
    """The same folder in two components is two volumes; the typed config carries each list."""
    components = [
        {**HTTP, "data_paths": ["/app/uploads", "/srv/cache"]},
        {**WORKER, "data_paths": ["/app/uploads"]},
        {**HTTP, "name": "web", "port": 3001},
    ]
    cfg = config.load(render({"project_name": "Orders API", "components": components}, tmp_path))

    assert [c.data_paths for c in cfg.components] == [
        ("/app/uploads", "/srv/cache"),
        ("/app/uploads",),
        (),
    ]


@pytest.mark.parametrize(
    "path",
    ["uploads", "/", "/tmp/x", "/proc/x", "/app/../etc", "/app/up loads", "/app/x/"],  # noqa: S108
)
def test_shipyard_yaml_refuses_a_data_path_the_answers_refuse(
    render: Render, tmp_path: Path, path: str
) -> None:
    """A hand-edited shipyard.yaml is held to the answers' rules before any task acts on it."""
    root = render({"project_name": "Orders API", "components": [HTTP]}, tmp_path / "kit")
    text = (root / config.CONFIG_FILE).read_text()
    edited = text.replace("    start: ", f"    data_paths: [{path!r}]\n    start: ", 1)
    (root / config.CONFIG_FILE).write_text(edited)

    with pytest.raises(config.ConfigError, match=r"components\.0\.data_paths\.0"):
        config.load(root)
