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
from typing import Any

from copier.errors import CopierError
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from shipyard import validate
from tests.conftest import Render

# One valid set costs a render and a full `shipyard validate` (helm template and
# kubernetes-validate for each values file dominate): 1-3 s on an idle two-core machine, so 30
# take about as long as the 200 core-only renders this test ran before. A refusal costs a
# fraction of a second: five times as many of those. Raise it to hunt:
# SHIPYARD_FUZZ_EXAMPLES=200 pytest tests/test_fuzz.py --hypothesis-seed=N.
VALID_EXAMPLES = int(os.environ.get("SHIPYARD_FUZZ_EXAMPLES", "30"))
INVALID_EXAMPLES = 5 * VALID_EXAMPLES
# Generous: only a hung tool should hit it, not a busy machine.
DEADLINE = timedelta(seconds=120)

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
        if draw(st.booleans()):
            comp["start"] = draw(st.sampled_from(["node dist/main.js", "node server.js"]))
        result.append(comp)
    return result


# answer -> values that pass its own validator
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "project_name": st.sampled_from(
        ["Orders API", "Ünïcode Shop", "x", "Postgres", "日本", "A" * 22 + " " + "B" * 22]
    ),
    "service_slug": st.from_regex(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?", fullmatch=True).filter(
        lambda slug: slug not in YAML_WORDS
    ),
    "description": st.one_of(text, st.just("word " * 39 + "last.")),  # or the longest allowed
    "node_version": st.sampled_from(["20", "22", "24"]),
    "package_manager": st.sampled_from(["npm", "pnpm", "yarn"]),
    "components": components(),
    "workspaces": st.booleans(),
    "database": st.sampled_from(["postgres", "none"]),
    "postgres_version": st.integers(13, 17),
    "migrations": st.sampled_from(["prisma", "typeorm", "knex", "custom", "none"]),
    "migrate_command": st.sampled_from(
        ["node dist/migrate.js", 'npm run db:migrate && node seed.js "$X"']
    ),
    "redis": st.booleans(),
    "elasticsearch": st.booleans(),
    "reverse_proxy": st.booleans(),
    "image_registry": st.sampled_from(["ghcr.io/acme", "registry.local:5000/a/b", "docker.io/x"]),
    "image_mirror": st.sampled_from(["", "mirror.local:5000"]),
    "staging_target": st.sampled_from(["compose", "helm"]),
    "production_target": st.sampled_from(["compose", "helm"]),
    "staging_host": st.sampled_from(["staging.example.com", "s.a.io"]),
    "production_host": st.sampled_from(["app.example.com", "example.org"]),
    "ci_provider": st.sampled_from(["github", "none"]),
    "backup_storage": st.sampled_from(["local", "s3"]),
    "backup_s3_bucket": st.sampled_from(["orders-backups", "a.b.c"]),
    "backup_s3_endpoint": st.sampled_from(
        ["", "http://minio:9000", "https://s3.example.com/prefix", "http://[fd00::1]:9000"]
    ),
    "backup_schedule": st.sampled_from(["0 3 * * *", "*/30 1-5 * * 1-5", "15 2 1,15 * 0"]),
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


@st.composite
def valid_answer_sets(draw: st.DrawFn) -> dict[str, Any]:
    """Each answer drawn or left to its default, then the cross-answer rules made to hold."""
    answers = {key: draw(pool) for key, pool in FIELDS.items() if draw(st.integers(0, 9)) >= 3}
    comps = answers.get("components")
    names = [c["name"] for c in comps] if comps else None
    if answers.get("database", "postgres") == "none":
        answers.pop("migrations", None)  # the only answer it accepts is its default, none
    elif answers.get("migrations", "prisma") == "custom":
        answers.setdefault("migrate_command", "node dist/migrate.js")
    if names and len(names) > 1 and draw(st.booleans()):
        answers["migrate_component"] = draw(st.sampled_from(names))
    if comps and not any(c["kind"] == "http" for c in comps):
        answers["reverse_proxy"] = False
    if draw(st.integers(0, 9)) == 0:
        # The sample app: one http component at '.', npm, and its own SQL migration.
        answers["sample_app"] = True
        answers["package_manager"] = "npm"
        answers.pop("components", None)
        answers.pop("migrate_component", None)
        if answers.get("database", "postgres") == "postgres":
            answers["migrations"] = "custom"
            answers.pop("migrate_command", None)
    return answers


# Cross-answer rules, each broken on purpose: (answers to set, answers to drop, questions whose
# validator may refuse it). Changing the components drops migrate_component and sample_app,
# whose own rules would otherwise refuse first.
WORKER = {"name": "jobs", "kind": "worker"}
HTTP = {"name": "api", "kind": "http", "port": 3000, "health_path": "/health"}
Clash = tuple[dict[str, Any], tuple[str, ...], set[str]]
CLASHES: list[Clash] = [
    ({"database": "none", "migrations": "prisma"}, (), {"database"}),
    ({"components": [WORKER], "reverse_proxy": True}, ("sample_app",), {"reverse_proxy"}),
    ({"sample_app": True, "package_manager": "pnpm"}, ("components",), {"sample_app"}),
    ({"sample_app": True, "components": [HTTP, WORKER]}, (), {"sample_app"}),
    ({"components": [HTTP, HTTP]}, ("sample_app",), {"components"}),
    ({"components": [HTTP, {**HTTP, "name": "web"}]}, ("sample_app",), {"components"}),
    (
        {"components": [HTTP, {**HTTP, "name": "web", "port": 3001, "route": "/"}]},
        ("sample_app",),
        {"components"},
    ),
    ({"components": [{**WORKER, "port": 3000}]}, ("sample_app",), {"components"}),
    (
        {"components": [{**HTTP, "port": 5432}], "database": "postgres"},
        ("sample_app",),
        {"components"},
    ),
    ({"components": [{**HTTP, "name": "nginx"}]}, ("sample_app",), {"components"}),
    ({"components": [{**HTTP, "path": "../up"}]}, ("sample_app",), {"components"}),
    ({"components": []}, ("sample_app",), {"components"}),
    (
        {"components": [HTTP, WORKER], "database": "postgres", "migrations": "knex"},
        ("sample_app",),
        {"migrate_component"},
    ),
    (
        {"database": "postgres", "migrations": "custom", "migrate_command": " "},
        ("sample_app",),
        {"migrate_command"},
    ),
    (
        {"staging_host": "same.example.com", "production_host": "same.example.com"},
        (),
        {"production_host"},
    ),
    ({"app_env": {"API_KEY": "x"}, "app_secrets": ["API_KEY"]}, (), {"app_secrets"}),
]
# One answer's own rule broken: answer -> values its validator (or copier's type) refuses.
BAD: dict[str, list[Any]] = {
    "project_name": ["  ", "two\nlines", "two\u2029lines", "x" * 81],
    "service_slug": ["Bad_Slug", "a" * 41, "-x", "x-", "on"],
    "description": ["two\nlines", "two\u2028lines", "x" * 201],
    "node_version": ["18"],
    "package_manager": ["bun"],
    "database": ["mysql"],
    "postgres_version": [12, 18],
    "migrations": ["flyway"],
    "image_registry": ["Bad/x", "https://ghcr.io/a"],
    "image_mirror": ["http://m"],
    "staging_target": ["k8s"],
    "production_target": ["k8s"],
    "staging_host": ["x", "Staging.Example.com"],
    "production_host": ["a b", "https://example.com"],
    "ci_provider": ["gitlab"],
    "backup_storage": ["ftp"],
    "backup_s3_bucket": ["ab", "Bad_Bucket"],
    "backup_s3_endpoint": ["minio:9000", "http://minio:99999", "http://key:secret@minio:9000"],
    "backup_schedule": ["61 * * * *", "daily", "0 3 * *"],
    "backup_retention_days": [0, 4000],
    "app_env": [{"lower": "x"}, {"PORT": "1"}, {"A": [1]}, ["A"]],
    "app_secrets": [["bad-name"], ["API_KEY", "API_KEY"], ["POSTGRES_PASSWORD"], "JWT_SECRET"],
}


@st.composite
def invalid_answer_sets(draw: st.DrawFn) -> tuple[dict[str, Any], set[str]]:
    """A valid set with one rule broken, and the questions whose validator may say so."""
    answers = draw(valid_answer_sets())
    if draw(st.booleans()):
        change, drop, questions = draw(st.sampled_from(CLASHES))
        for key in (*drop, *change):
            answers.pop(key, None)
        if answers.get("migrations") == "custom":  # the sample app's own default is gone
            answers.setdefault("migrate_command", "node dist/migrate.js")
        answers.update(change)
        if "components" in change:
            answers.pop("migrate_component", None)
        if "migrate_component" in questions:
            answers["migrate_component"] = "nope"
        return answers, questions
    key = draw(st.sampled_from(sorted(BAD)))
    answers[key] = draw(st.sampled_from(BAD[key]))
    if key == "migrations":  # without a database, database's own rule would refuse first
        answers["database"] = "postgres"
    return answers, {key}


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
        dst = render(answers, Path(tmp) / "kit")  # a refusal of a valid set fails here

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
def test_invalid_answers_are_refused_with_a_sentence(
    render: Render, case: tuple[dict[str, Any], set[str]]
) -> None:
    answers, questions = case
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / "kit"
        refusal = _refusal(lambda: render(answers, dst))

        assert refusal is not None, f"rendered an invalid answer set: {answers}"
        assert not dst.exists(), "a refused answer set must write nothing"
    message = str(refusal)
    assert "Traceback" not in message, message
    assert "jinja2" not in message, message
    match = VALIDATOR.fullmatch(message) or CHOICE.match(message)
    assert match, f"not copier's refusal of one question: {message!r}"
    question = match.group(1)
    assert question in questions, f"refused for {question!r}, not {questions}: {message}"
    if match.re is VALIDATOR:
        sentence = match.group(2).strip()
        assert "\n" not in sentence, f"not one sentence: {sentence!r}"
        assert sentence.endswith("."), f"not one sentence: {sentence!r}"
    event(f"refused: {question}")


def _refusal(action: Callable[[], object]) -> Exception | None:
    try:
        action()
    except (ValueError, CopierError) as exc:
        return exc
    return None
