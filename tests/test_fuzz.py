"""Random answer sets: a valid one renders a kit `shipyard validate` passes in full, an invalid
one is refused with a sentence and writes nothing.

Valid sets are valid by construction (every rule of copier.yml is honoured while drawing), so
a refusal of one is a failure, as is any finding of actionlint with shellcheck, hadolint,
yamllint, Compose, `helm template | kubernetes-validate` or the schemas. Invalid sets are a
valid set with one rule broken on purpose, so each must be refused, and for the right reason.
The strategies lean on what no preset covers: GitHub CI without a database, worker-only
services, Helm in one environment and Compose in the other.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml
from copier.errors import CopierError
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from shipyard import config, validate
from tests.conftest import Render

# One valid set costs a render and a full `shipyard validate` (about 15 s of CPU for a large
# kit: kubernetes-validate, promtool and check-jsonschema's three runs the most), and with the
# docker tests beside it CI's two cores are full: 20 sets (the same ones each run, see
# docs/contributing.md) keep the run inside its hour. A refusal costs a fraction of a second:
# five times as many of those. Raise it to hunt: SHIPYARD_FUZZ_EXAMPLES=200
# pytest tests/test_fuzz.py --hypothesis-profile=hunt --hypothesis-seed=N.
VALID_EXAMPLES = int(os.environ.get("SHIPYARD_FUZZ_EXAMPLES", "20"))
INVALID_EXAMPLES = 5 * VALID_EXAMPLES
# Only a hung tool should hit it, not a busy machine: one valid set (a render and every
# validator) took 171 s on a CI run that shared its 2 cores with other work, 110 s when retried.
DEADLINE = timedelta(seconds=600)

# Words YAML 1.1 (Helm, PyYAML) reads as booleans or null: copier.yml refuses them as names.
YAML_WORDS = {"y", "yes", "n", "no", "on", "off", "true", "false", "null"}
# Ports compose.yaml publishes for the kit's services (copier.yml keeps components off them).
KIT_PORTS = {5432, 5050, 6379, 8081, 9200}
text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=30)


@st.composite
def components(draw: st.DrawFn) -> list[dict[str, Any]]:
    """1-4 components with unique names, ports and routes: every rule copier.yml checks."""
    names = draw(
        st.lists(
            st.sampled_from(["api", "web", "worker", "jobs", "svc-2", "a" * 20]),
            min_size=1,
            max_size=4,
            unique=True,
        )
    )
    # A worker-only service (no preset has one) one time in four, not only by luck.
    kinds = ["worker"] if draw(st.integers(0, 3)) == 0 else ["http", "worker"]
    result: list[dict[str, Any]] = []
    ports: set[int] = set()
    routes: set[str] = set()
    for name in names:
        comp: dict[str, Any] = {"name": name, "kind": draw(st.sampled_from(kinds))}
        if draw(st.booleans()):
            comp["path"] = draw(st.sampled_from([".", "apps/api", "apps/web", "backend"]))
        if comp["kind"] == "http":
            port = draw(st.one_of(st.sampled_from([3000, 3001, 8080]), st.integers(1, 65535)))
            if port in ports | KIT_PORTS:  # taken: the next free one (a filter may give up)
                port = next(p for p in range(3000, 65536) if p not in ports | KIT_PORTS)
            comp["port"] = port
            ports.add(port)
            comp["health_path"] = draw(st.sampled_from(["/health", "/api/v1/health", "/healthz"]))
            default = "/" if not routes else f"/{name}"
            route = default
            if draw(st.integers(0, 3)) == 0:
                route = draw(st.sampled_from(["/", "/api", "/v1/app"]))
                comp["route"] = route
            if route in routes:  # an explicit route clashed: one of this component's own
                route = comp["route"] = f"/{name}-svc"
            routes.add(route)
        else:
            # A worker declares a health check, of either kind, or none.
            health = draw(st.sampled_from(["none", "command", "port"]))
            if health == "command":
                comp["health_command"] = draw(
                    st.sampled_from(
                        ['test -n "$(find /tmp/beat -newermt -60seconds)"', ["node", "health.js"]]
                    )
                )
            elif health == "port":
                comp["health_port"] = draw(st.integers(1, 65535))
                comp["health_path"] = draw(st.sampled_from(["/health", "/healthz/live"]))
        if draw(st.booleans()):
            comp["start"] = draw(st.sampled_from(["node dist/main.js", "node server.js"]))
        if draw(st.integers(0, 3)) == 0:
            # Folders that persist: volumes on Compose, claims (one pod) on Kubernetes.
            comp["data_paths"] = draw(
                st.lists(
                    st.sampled_from(["/app/uploads", "/srv/media", "/var/lib/app", "/data"]),
                    unique=True,
                    max_size=3,
                )
            )
        if draw(st.integers(0, 3)) == 0:
            # Its size: CPUs or millicores (at least 50m), memory in Mi or Gi (at least 64Mi).
            comp["resources"] = draw(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "cpu": st.sampled_from([0.05, 0.25, 1, 2.5, "50m", "1500m"]),
                        "memory": st.sampled_from(["64Mi", "768Mi", "1Gi", "3Gi"]),
                    },
                )
            )
        result.append(comp)
    return result


# answer -> every value of a finite pool that passes its own validator (each one renders in
# test_every_valid_choice_renders; the fuzz tests draw from them)
CHOICES: dict[str, list[Any]] = {
    "project_name": [
        "Orders API",
        "Ünïcode Shop",
        "x",
        "Postgres",
        "日本",
        "A" * 22 + " " + "B" * 22,
    ],
    "runtime": ["node", "python", "go"],
    "node_version": ["20", "22", "24"],
    "package_manager": ["npm", "pnpm", "yarn"],
    "python_version": ["3.11", "3.12", "3.13"],
    "python_package_manager": ["uv", "poetry", "pip"],
    "go_version": ["1.25", "1.26", "1.27"],
    "go_vendor": [False, True],
    "workspaces": [False, True],
    "database": ["postgres", "none"],
    "postgres_version": [13, 14, 15, 16, 17],
    "migrations": [
        *("prisma", "typeorm", "knex", "alembic", "django", "goose", "golang-migrate"),
        *("custom", "none"),
    ],
    "migrate_command": ["node dist/migrate.js", 'npm run db:migrate && node seed.js "$X"'],
    "redis": [False, True],
    "redis_maxmemory": ["64mb", "768mb", "2gb"],
    "elasticsearch": [False, True],
    "reverse_proxy": [False, True],
    "tls": ["acme", "files", "none"],
    "acme_email": ["ops@example.com", "a.b+certs@mail.example.org"],
    "image_registry": ["ghcr.io/acme", "registry.local:5000/a/b", "docker.io/x"],
    "image_mirror": ["", "mirror.local:5000"],
    "staging_target": ["compose", "helm"],
    "production_target": ["compose", "helm"],
    "staging_host": ["staging.example.com", "s.a.io"],
    "production_host": ["app.example.com", "example.org"],
    "ci_provider": ["github", "none"],
    "backup_storage": ["local", "s3"],
    "backup_s3_bucket": ["orders-backups", "a.b.c"],
    "backup_s3_endpoint": [
        "",
        "http://minio:9000",
        "https://s3.example.com/prefix",
        "http://[fd00::1]:9000",
    ],
    "backup_schedule": ["0 3 * * *", "*/30 1-5 * * 1-5", "15 2 1,15 * 0"],
    "backup_retention_days": [1, 14, 3650],
    "point_in_time_recovery": [False, True],
}
# answer -> values that pass its own validator
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    **{key: st.sampled_from(values) for key, values in CHOICES.items()},
    "service_slug": st.from_regex(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?", fullmatch=True).filter(
        lambda slug: slug not in YAML_WORDS
    ),
    "description": st.one_of(text, st.just("word " * 39 + "last.")),  # or the longest allowed
    "components": components(),
    "backup_retention_days": st.integers(1, 3650),
    "app_env": st.dictionaries(
        st.sampled_from(["LOG_LEVEL", "FEATURE_X", "CORS_ORIGIN"]),
        st.one_of(text, st.integers(), st.booleans(), st.just("default-src 'self'; " * 10)),
        max_size=3,
    ),
    "app_secrets": st.lists(
        st.sampled_from(["JWT_SECRET", "API_KEY", "AWS_ACCESS_KEY_ID"]), max_size=3, unique=True
    ),
}


# Migration tools of one runtime only (copier.yml refuses them on the others).
RUNTIME_MIGRATIONS = {
    "node": {"prisma", "typeorm", "knex"},
    "python": {"alembic", "django"},
    "go": {"goose", "golang-migrate"},
}
DJANGO_START = "gunicorn mysite.wsgi --bind 0.0.0.0:8000"
# A command a Go image runs without a shell: an absolute path and its arguments, naming no
# component's binary (copier.yml ties /app/<component> to migrate_component).
GO_MIGRATE_COMMAND = "/app/migrate -path /app/migrations up"


def consistent(answers: dict[str, Any]) -> dict[str, Any]:
    """`answers` with the cross-answer rules of copier.yml made to hold, in place."""
    if "runtime" not in answers:
        for runtime, tools in RUNTIME_MIGRATIONS.items():
            if runtime != "node" and answers.get("migrations") in tools:
                answers["runtime"] = runtime  # a Python or Go tool alone means that runtime
    runtime = answers.get("runtime", "node")
    others = set().union(*(v for k, v in RUNTIME_MIGRATIONS.items() if k != runtime))
    if answers.get("migrations") in others:
        answers.pop("migrations")  # the runtime's own default instead
    if runtime == "go" or (
        runtime == "python" and answers.get("python_package_manager", "uv") != "uv"
    ):
        answers.pop("workspaces", None)  # each component builds from its own folder (no uv)
    if runtime == "go":
        without_shell(answers)
    if answers.get("migrations") == "django":
        # A Django project names its own server: the default components have no start.
        answers.setdefault("components", [{**HTTP, "port": 8000, "path": "."}])
        for c in answers["components"]:
            c.setdefault("start", DJANGO_START)
    if answers.get("database", "postgres") == "none":
        answers.pop("migrations", None)  # the only answer it accepts is its default, none
    elif answers.get("migrations", "prisma") == "custom":
        answers.setdefault(
            "migrate_command", GO_MIGRATE_COMMAND if runtime == "go" else "node dist/migrate.js"
        )
    comps = answers.get("components")
    if comps and not any(c["kind"] == "http" for c in comps):
        answers["reverse_proxy"] = False
    if answers.get("reverse_proxy"):
        answers["tls"] = "none"  # nginx terminates TLS itself
    compose = "compose" in (
        answers.get("staging_target", "compose"),
        answers.get("production_target", "helm"),
    )
    plain_s3 = answers.get("backup_storage") == "s3" and str(
        answers.get("backup_s3_endpoint", "")
    ).startswith("http://")
    if answers.get("database", "postgres") == "none" or not compose:
        answers.pop("point_in_time_recovery", None)  # asked only of a Compose PostgreSQL
    elif plain_s3:
        answers["point_in_time_recovery"] = False  # pgBackRest reaches S3 over HTTPS only
    return answers


def without_shell(answers: dict[str, Any], keep: dict[str, Any] | None = None) -> None:
    """A Go image has no shell: a worker's health command becomes a list and migrate_command a
    plain command, in place, except for the answers in `keep` (a clash's own)."""
    keep = keep or {}
    if "components" not in keep:
        for comp in answers.get("components") or []:
            if isinstance(comp.get("health_command"), str):
                comp["health_command"] = [f"/app/{comp['name']}", "-healthcheck"]
    if "migrate_command" in answers and "migrate_command" not in keep:
        answers["migrate_command"] = GO_MIGRATE_COMMAND


@st.composite
def valid_answer_sets(draw: st.DrawFn) -> dict[str, Any]:
    """Each answer drawn or left to its default, then the cross-answer rules made to hold."""
    answers = {key: draw(pool) for key, pool in FIELDS.items() if draw(st.integers(0, 9)) >= 3}
    consistent(answers)
    comps = answers.get("components")
    names = [c["name"] for c in comps] if comps else None
    if names and len(names) > 1 and draw(st.booleans()):
        answers["migrate_component"] = draw(st.sampled_from(names))
    if draw(st.integers(0, 9)) == 0:
        # The sample app: one http component at '.' and its own migration: SQL run by node
        # (installed with npm), alembic for Python, or SQL run by the Go binary itself (its
        # PostgreSQL driver vendored).
        runtime = answers.get("runtime", "node")
        answers["sample_app"] = True
        if runtime == "node":
            answers["package_manager"] = "npm"
        answers.pop("components", None)
        answers.pop("migrate_component", None)
        if answers.get("database", "postgres") == "postgres":
            answers["migrations"] = "alembic" if runtime == "python" else "custom"
            answers.pop("migrate_command", None)
            if runtime == "go":
                answers["go_vendor"] = True
    return answers


WORKER = {"name": "jobs", "kind": "worker"}
HTTP = {"name": "api", "kind": "http", "port": 3000, "health_path": "/health"}


class Clash(NamedTuple):
    """A cross-answer rule broken on purpose: the answers to set, those to drop first (changing
    the components drops migrate_component and sample_app, whose own rules would otherwise
    refuse first), the question whose validator must refuse it, and the words of its sentence
    that name the clash."""

    change: dict[str, Any]
    drop: tuple[str, ...]
    question: str
    says: str


CLASHES = [
    Clash(
        {"point_in_time_recovery": True, "staging_target": "helm", "production_target": "helm"},
        ("database_on_kubernetes",),
        "point_in_time_recovery",
        "archives the WAL of the PostgreSQL the Compose hosts run",
    ),
    Clash(
        {"database": "none", "migrations": "prisma"}, (), "database", "Migrations need a database"
    ),
    Clash(
        {"components": [WORKER], "reverse_proxy": True},
        ("sample_app",),
        "reverse_proxy",
        "nginx needs an http component to route to",
    ),
    Clash(
        {"runtime": "python", "database": "postgres", "migrations": "prisma"},
        ("sample_app",),
        "migrations",
        "prisma migrates Node.js projects; for Python answer migrations=alembic",
    ),
    Clash(
        {"runtime": "node", "database": "postgres", "migrations": "alembic"},
        ("sample_app",),
        "migrations",
        "alembic migrates Python projects; for Node.js answer",
    ),
    Clash(
        {"runtime": "go", "database": "postgres", "migrations": "alembic"},
        ("sample_app",),
        "migrations",
        "alembic migrates Python projects; for Go answer migrations=goose, golang-migrate",
    ),
    Clash(
        {"runtime": "go", "database": "postgres", "migrations": "prisma"},
        ("sample_app",),
        "migrations",
        "prisma migrates Node.js projects; for Go answer migrations=goose, golang-migrate",
    ),
    Clash(
        {"runtime": "python", "database": "postgres", "migrations": "django"},
        ("sample_app", "components"),
        "migrations",
        "A Django project starts its own way",
    ),
    Clash(
        {"runtime": "python", "database": "postgres", "migrations": "goose"},
        ("sample_app",),
        "migrations",
        "goose migrates Go projects; for Python answer migrations=alembic",
    ),
    Clash(
        {"runtime": "node", "database": "postgres", "migrations": "golang-migrate"},
        ("sample_app",),
        "migrations",
        "golang-migrate migrates Go projects; for Node.js answer",
    ),
    Clash(
        {"runtime": "go", "workspaces": True},
        ("sample_app",),
        "runtime",
        "Go components build from the go.mod of their own folder",
    ),
    Clash(
        {"runtime": "go", "sample_app": True, "database": "postgres", "migrations": "goose"},
        ("components", "migrate_command", "go_vendor"),
        "migrations",
        "The Go sample app migrates itself",
    ),
    Clash(
        {"runtime": "go", "sample_app": True, "database": "postgres", "go_vendor": False},
        ("components", "migrate_command", "migrations"),
        "go_vendor",
        "The Go sample app's PostgreSQL driver is vendored",
    ),
    Clash(
        {
            "runtime": "go",
            "database": "postgres",
            "migrations": "custom",
            "migrate_command": "/app/api migrate && /app/api seed",
        },
        ("sample_app",),
        "migrate_command",
        "A Go image has no shell to run",
    ),
    Clash(
        {
            "runtime": "go",
            "database": "postgres",
            "migrations": "custom",
            "migrate_command": "goose up",
        },
        ("sample_app",),
        "migrate_command",
        "A Go image has no PATH to search for 'goose'",
    ),
    Clash(
        {
            "runtime": "go",
            "components": [{**HTTP, "name": "api"}, WORKER],
            "database": "postgres",
            "migrations": "goose",
            "migrate_command": "/app/jobs migrate",
        },
        ("sample_app",),
        "migrate_component",
        "migrate_command runs /app/jobs, which only the image of component jobs holds",
    ),
    Clash(
        {"runtime": "go", "components": [HTTP, {**WORKER, "health_command": "test -f /tmp/ok"}]},
        ("sample_app",),
        "components",
        "a Go image has none: give it as a list like [/app/jobs, -healthcheck]",
    ),
    Clash(
        {"runtime": "python", "python_package_manager": "poetry", "workspaces": True},
        ("sample_app",),
        "python_package_manager",
        "Python components share one root lockfile only as the members of a uv workspace",
    ),
    Clash(
        {"runtime": "python", "sample_app": True, "database": "postgres", "migrations": "custom"},
        ("components", "migrate_command"),
        "migrations",
        "The Python sample app brings its own alembic migration",
    ),
    Clash(
        {"runtime": "node", "sample_app": True, "package_manager": "pnpm"},
        ("components",),
        "sample_app",
        "answer package_manager=npm",
    ),
    Clash(
        {"sample_app": True, "components": [HTTP, WORKER]},
        (),
        "sample_app",
        "The sample app is one HTTP component",
    ),
    Clash(
        {"components": [HTTP, HTTP]},
        ("sample_app",),
        "components",
        "Two components are named 'api'",
    ),
    Clash(
        {"components": [HTTP, {**HTTP, "name": "web"}]},
        ("sample_app",),
        "components",
        "Components share port 3000",
    ),
    Clash(
        {"components": [HTTP, {**HTTP, "name": "web", "port": 3001, "route": "/"}]},
        ("sample_app",),
        "components",
        "Two http components are served under route /, where they would collide",
    ),
    Clash(
        {"components": [{**WORKER, "port": 3000}]},
        ("sample_app",),
        "components",
        "Component 'jobs' is a worker: workers serve no port",
    ),
    Clash(
        {"components": [{**WORKER, "health_port": 9000}]},
        ("sample_app",),
        "components",
        "Component 'jobs' has health_port but no health_path",
    ),
    Clash(
        {"components": [{**HTTP, "health_command": "true"}]},
        ("sample_app",),
        "components",
        "health_command and health_port are for workers",
    ),
    Clash(
        {"components": [{**HTTP, "port": 5432}], "database": "postgres"},
        ("sample_app",),
        "components",
        "Component 'api' has port 5432, which compose.yaml publishes",
    ),
    Clash(
        {"components": [{**HTTP, "name": "nginx"}]},
        ("sample_app",),
        "components",
        "Component name 'nginx' is taken by a service the kit runs",
    ),
    Clash(
        {"components": [{**HTTP, "path": "../up"}]},
        ("sample_app",),
        "components",
        "Component 'api' has path '../up'",
    ),
    Clash({"components": []}, ("sample_app",), "components", "must be a non-empty YAML list"),
    Clash(
        {
            "runtime": "node",
            "components": [HTTP, WORKER],
            "database": "postgres",
            "migrations": "knex",
        },
        ("sample_app",),
        "migrate_component",
        "'nope' is not a component; choose one of api, jobs",
    ),
    Clash(
        {"database": "postgres", "migrations": "custom", "migrate_command": " "},
        ("sample_app",),
        "migrate_command",
        "Give the command that applies migrations",
    ),
    Clash(
        {"staging_host": "same.example.com", "production_host": "same.example.com"},
        (),
        "production_host",
        "need different hostnames; both are 'same.example.com'",
    ),
    Clash(
        {"app_env": {"API_KEY": "x"}, "app_secrets": ["API_KEY"]},
        (),
        "app_secrets",
        "API_KEY is both in app_env and app_secrets",
    ),
]
# Questions asked only for one runtime.
RUNTIME_QUESTIONS = {
    "node_version": "node",
    "package_manager": "node",
    "python_version": "python",
    "python_package_manager": "python",
    "go_version": "go",
}

# One answer's own rule broken: answer -> (a value its validator or copier's choices refuse,
# the words of the refusal that name what is wrong with it).
BAD: dict[str, list[tuple[Any, str]]] = {
    "project_name": [
        ("  ", "The project name cannot be empty"),
        ("two\nlines", "Keep the project name to one line"),
        ("two\u2029lines", "Keep the project name to one line"),
        ("x" * 81, "Keep the project name under 80 characters"),
    ],
    "service_slug": [
        ("Bad_Slug", "'Bad_Slug' is not a valid service slug"),
        ("a" * 41, f"The service slug '{'a' * 41}' is 41 characters long"),
        ("-x", "'-x' is not a valid service slug"),
        ("x-", "'x-' is not a valid service slug"),
        ("on", "'on' cannot be a service slug: YAML reads it as a boolean"),
    ],
    "description": [
        ("two\nlines", "Keep the description to one line"),
        ("two\u2028lines", "Keep the description to one line"),
        ("x" * 201, "at most 200 characters"),
    ],
    "node_version": [("18", "'18' is not in")],
    "package_manager": [("bun", "'bun' is not in")],
    "python_version": [("3.10", "'3.10' is not in")],
    "python_package_manager": [("pdm", "'pdm' is not in")],
    "go_version": [("1.22", "'1.22' is not in")],
    "database": [("mysql", "'mysql' is not in")],
    "postgres_version": [(12, "PostgreSQL 12 is not supported"), (18, "PostgreSQL 18 is not")],
    "migrations": [("flyway", "'flyway' is not in")],
    "image_registry": [
        ("Bad/x", "'Bad/x' is not a registry path"),
        ("https://ghcr.io/a", "'https://ghcr.io/a' is not a registry path"),
    ],
    "image_mirror": [("http://m", "'http://m' is not a registry prefix")],
    "staging_target": [("k8s", "'k8s' is not in")],
    "production_target": [("k8s", "'k8s' is not in")],
    "staging_host": [
        ("x", "'x' is not a hostname"),
        ("Staging.Example.com", "'Staging.Example.com' is not a hostname"),
    ],
    "production_host": [
        ("a b", "'a b' is not a hostname"),
        ("https://example.com", "'https://example.com' is not a hostname"),
    ],
    "ci_provider": [("gitlab", "'gitlab' is not in")],
    "backup_storage": [("ftp", "'ftp' is not in")],
    "backup_s3_bucket": [
        ("ab", "'ab' is not a valid bucket name"),
        ("Bad_Bucket", "'Bad_Bucket' is not a valid bucket name"),
    ],
    "backup_s3_endpoint": [
        ("minio:9000", "'minio:9000' is not an endpoint URL"),
        ("http://minio:99999", "has port 99999"),
        ("http://key:secret@minio:9000", "without user or password"),
    ],
    "backup_schedule": [
        ("61 * * * *", "'61 * * * *' is not a cron schedule"),
        ("daily", "'daily' is not a cron schedule"),
        ("0 3 * *", "'0 3 * *' is not a cron schedule"),
    ],
    "backup_retention_days": [(0, "got 0"), (4000, "got 4000")],
    "app_env": [
        ({"lower": "x"}, "'lower' is not an environment variable name"),
        ({"PORT": "1"}, "PORT is set by the kit itself"),
        ({"A": [1]}, "app_env.A must be a plain value"),
        (["A"], "app_env must be a YAML mapping"),
    ],
    "app_secrets": [
        (["bad-name"], "'bad-name' is not an environment variable name"),
        (["API_KEY", "API_KEY"], "API_KEY is listed twice"),
        (["POSTGRES_PASSWORD"], "POSTGRES_PASSWORD is managed by the kit itself"),
        ("JWT_SECRET", "app_secrets must be a YAML list"),
    ],
}


class Invalid(NamedTuple):
    """A valid answer set with exactly one rule broken: which question must refuse it, and the
    words of its refusal that name what was broken."""

    answers: dict[str, Any]
    question: str
    says: str


@st.composite
def invalid_answer_sets(draw: st.DrawFn) -> Invalid:
    """A valid set with one rule broken (a clash between answers, or one bad answer)."""
    answers = draw(valid_answer_sets())
    if draw(st.booleans()):
        clash = draw(st.sampled_from(CLASHES))
        for key in (*clash.drop, *clash.change):
            answers.pop(key, None)
        if answers.get("migrations") == "custom":  # the sample app's own default is gone
            answers.setdefault("migrate_command", "node dist/migrate.js")
        answers.update(clash.change)
        runtime = answers.get("runtime")
        if clash.question not in ("runtime", "python_package_manager") and (
            runtime == "go"
            or (runtime == "python" and answers.get("python_package_manager", "uv") != "uv")
        ):
            answers.pop("workspaces", None)  # the runtime's own refusal would come first
        if answers.get("runtime") == "go":
            without_shell(answers, keep=clash.change)  # the drawn set's shell commands
        if "components" in clash.change:
            answers.pop("migrate_component", None)
        if clash.question == "migrate_component" and "migrate_command" not in clash.change:
            answers["migrate_component"] = "nope"
        return Invalid(answers, clash.question, clash.says)
    key = draw(st.sampled_from(sorted(BAD)))
    answers[key], says = draw(st.sampled_from(BAD[key]))
    if key in RUNTIME_QUESTIONS:  # asked (and so checked) only for its runtime
        answers["runtime"] = RUNTIME_QUESTIONS[key]
        answers.pop("sample_app", None)  # its migration and package manager follow the runtime
        consistent(answers)
    if key == "migrations":  # without a database, database's own rule would refuse first
        answers["database"] = "postgres"
    return Invalid(answers, key, says)


# Combinations a sweep found broken, run on every test run.
ONE_COMPONENT_NO_DATABASE_GITHUB = {"database": "none", "ci_provider": "github"}
WORKER_ONLY_POSTGRES_HELM = {
    "components": [WORKER],
    "database": "postgres",
    "staging_target": "helm",
    "production_target": "helm",
}
WORKER_ONLY_HELM_STAGING = {
    "components": [WORKER],
    "database": "none",
    "staging_target": "helm",
    "production_target": "compose",
}


@settings(
    max_examples=VALID_EXAMPLES,
    deadline=DEADLINE,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(answers=valid_answer_sets())
@example(answers=ONE_COMPONENT_NO_DATABASE_GITHUB)
@example(answers=WORKER_ONLY_POSTGRES_HELM)
@example(answers=WORKER_ONLY_HELM_STAGING)
def test_valid_answers_render_kits_that_pass_shipyard_validate(
    render: Render, answers: dict[str, Any]
) -> None:
    comps = answers.get("components") or [{"kind": "http"}]
    event("worker-only" if all(c["kind"] == "worker" for c in comps) else "with http")
    staging, prod = (
        answers.get("staging_target", "compose"),
        answers.get("production_target", "helm"),
    )
    event(f"staging {staging}, prod {prod}")
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / "kit"
        refusal = _refusal(lambda: render(answers, dst))
        if refusal is not None:
            pytest.fail(f"a valid answer set was refused: {refusal}\n{answers}")

        findings = validate.validate(dst)

        assert not findings, f"{answers}\n{validate.report(findings)}"


# "Validation error for question 'q': <sentence>" (our validators) or copier's own type and
# choice messages, which name the question too.
VALIDATOR = re.compile(r"Validation error for question '(\w+)': (.*)", re.DOTALL)
CHOICE = re.compile(r"Invalid choice for '(\w+)': ")


@settings(
    max_examples=INVALID_EXAMPLES,
    deadline=DEADLINE,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=invalid_answer_sets())
def test_invalid_answers_are_refused_with_a_sentence(render: Render, case: Invalid) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / "kit"
        refusal = _refusal(lambda: render(case.answers, dst))

        assert refusal is not None, f"rendered an invalid answer set: {case.answers}"
        assert not dst.exists(), "a refused answer set must write nothing"
    message = str(refusal)
    assert "Traceback" not in message, message
    assert "jinja2" not in message, message
    match = VALIDATOR.fullmatch(message) or CHOICE.match(message)
    assert match, f"not copier's refusal of one question: {message!r}"
    question = match.group(1)
    assert question == case.question, f"refused for {question!r}, not {case.question!r}: {message}"
    # The sentence names the clash itself, not merely some problem of that question.
    assert case.says in message, f"{case.says!r} not in the refusal: {message}"
    if match.re is VALIDATOR:
        sentence = match.group(2).strip()
        assert "\n" not in sentence, f"not one sentence: {sentence!r}"
        assert sentence.endswith("."), f"not one sentence: {sentence!r}"
    event(f"refused: {question}")


# Answers asked only in some context: the answers that make copier ask them.
ASKED_WHEN: dict[str, dict[str, Any]] = {
    "python_version": {"runtime": "python"},
    "python_package_manager": {"runtime": "python"},
    "go_version": {"runtime": "go"},
    "go_vendor": {"runtime": "go"},
    "migrate_command": {"migrations": "custom"},
    "workspaces": {"components": [{**HTTP, "path": "apps/api"}, {**WORKER, "path": "apps/jobs"}]},
    "backup_s3_bucket": {"backup_storage": "s3"},
    "backup_s3_endpoint": {"backup_storage": "s3"},
    "acme_email": {"tls": "acme"},
    "redis_maxmemory": {"redis": True},
}


@pytest.mark.parametrize(
    ("key", "value"),
    [(key, value) for key, values in CHOICES.items() for value in values],
    ids=[f"{key}={value!r}"[:40] for key, values in CHOICES.items() for value in values],
)
def test_every_valid_choice_renders(render: Render, tmp_path: Path, key: str, value: Any) -> None:
    """Every value of every finite pool renders (the fuzz tests draw only some of them): a
    validator that refuses one, say every `redis: true`, fails here by name and sentence."""
    answers = consistent({**ASKED_WHEN.get(key, {}), key: value})

    refusal = _refusal(lambda: render(answers, tmp_path / "kit"))

    if refusal is not None:
        pytest.fail(f"the valid answer {key}={value!r} was refused: {refusal}")
    recorded = yaml.safe_load((tmp_path / "kit" / config.ANSWERS_FILE).read_text())
    assert recorded[key] == value, f"{key} was not asked with {answers}"


def _refusal(action: Callable[[], object]) -> Exception | None:
    try:
        action()
    except (ValueError, CopierError) as exc:
        return exc
    return None
