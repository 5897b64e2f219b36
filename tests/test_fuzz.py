"""Random answer sets: each renders a kit the real tools accept, or is refused cleanly.

Never a traceback from the template, never a half-written folder, never a broken file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from shipyard import validate
from tests.conftest import Render

# The template-core checks, plus the answers schema: it must accept whatever copier accepts.
CORE_CHECKS = ["dockerfile", "yaml", "compose", "compose-schema", "shipyard", "answers"]
# CI runs the 200 examples the issue asks for; a local run can lower it for speed.
EXAMPLES = int(os.environ.get("SHIPYARD_FUZZ_EXAMPLES", "200"))

text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=30)


@st.composite
def component(draw: st.DrawFn, valid: bool) -> dict[str, Any]:
    """A component; with valid=False any field may break a rule."""

    def pick(good: list[Any], bad: list[Any]) -> Any:
        return draw(st.sampled_from(good if valid or draw(st.integers(0, 3)) else bad))

    kind = pick(["http", "http", "worker"], ["cron"])
    comp: dict[str, Any] = {
        "name": pick(["api", "web", "worker", "jobs", "svc-2"], ["API", "9x", "x" * 21, ""]),
        "kind": kind,
        "path": pick([".", ".", "apps/api", "apps/web", "backend"], ["../up", "/abs"]),
    }
    if kind != "worker":
        comp["port"] = pick([3000, 3001, 8080, draw(st.integers(1, 65535))], [0, 70000, "80"])
        comp["health_path"] = pick(["/health", "/api/v1/health", "/healthz"], ["health", ""])
    elif not valid and draw(st.integers(0, 3)) == 0:
        comp["port"] = 3000
    if draw(st.booleans()):
        comp["start"] = pick(["node dist/main.js", "node server.js"], [" "])
    if kind == "http" and draw(st.integers(0, 3)) == 0:
        comp["route"] = pick(["/", "/api", "/v1/app"], ["api"])
    return comp


# answer -> (values that pass alone, values that break a rule)
FIELDS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "project_name": (st.sampled_from(["Orders API", "Ünïcode Shop", "x"]), st.just("  ")),
    "service_slug": (
        st.from_regex(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?", fullmatch=True),
        st.sampled_from(["Bad_Slug", "a" * 41, "-x", "x-"]),
    ),
    "description": (text.filter(lambda t: "\n" not in t), st.just("two\nlines")),
    "node_version": (st.sampled_from(["20", "22", "24"]), st.just("18")),
    "package_manager": (st.sampled_from(["npm", "pnpm", "yarn"]), st.just("bun")),
    "components": (
        st.lists(component(valid=True), min_size=1, max_size=4),
        st.lists(component(valid=False), min_size=0, max_size=4),
    ),
    "workspaces": (st.booleans(), st.just("maybe")),
    "database": (st.sampled_from(["postgres", "none"]), st.just("mysql")),
    "postgres_version": (st.integers(13, 17), st.sampled_from([12, 18])),
    "migrations": (st.sampled_from(["prisma", "typeorm", "knex", "custom", "none"]), st.just("x")),
    "migrate_command": (
        st.sampled_from(["node dist/migrate.js", 'npm run db:migrate && node seed.js "$X"']),
        st.just(""),
    ),
    "redis": (st.booleans(), st.just(None)),
    "elasticsearch": (st.booleans(), st.just(None)),
    "reverse_proxy": (st.booleans(), st.just(None)),
    "image_registry": (
        st.sampled_from(["ghcr.io/acme", "registry.local:5000/a/b", "docker.io/x"]),
        st.sampled_from(["Bad/x", "https://ghcr.io/a"]),
    ),
    "image_mirror": (st.sampled_from(["", "mirror.local:5000"]), st.just("http://m")),
    "staging_target": (st.sampled_from(["compose", "helm"]), st.just("k8s")),
    "production_target": (st.sampled_from(["compose", "helm"]), st.just("k8s")),
    "staging_host": (st.sampled_from(["staging.example.com", "s.a.io"]), st.just("x")),
    "production_host": (st.sampled_from(["app.example.com", "example.org"]), st.just("a b")),
    "ci_provider": (st.sampled_from(["github", "none"]), st.just("gitlab")),
    "backup_storage": (st.sampled_from(["local", "s3"]), st.just("ftp")),
    "backup_schedule": (
        st.sampled_from(["0 3 * * *", "*/30 1-5 * * 1-5", "15 2 1,15 * 0"]),
        st.sampled_from(["61 * * * *", "daily"]),
    ),
    "backup_retention_days": (st.integers(1, 3650), st.sampled_from([0, 4000])),
    "app_env": (
        st.dictionaries(
            st.sampled_from(["LOG_LEVEL", "FEATURE_X", "CORS_ORIGIN"]),
            st.one_of(text, st.integers(), st.booleans()),
            max_size=3,
        ),
        st.sampled_from([{"lower": "x"}, {"PORT": "1"}, {"A": [1]}]),
    ),
    "app_secrets": (
        st.lists(
            st.sampled_from(["JWT_SECRET", "API_KEY", "AWS_ACCESS_KEY_ID"]), max_size=3, unique=True
        ),
        st.sampled_from([["bad-name"], ["API_KEY", "API_KEY"], ["POSTGRES_PASSWORD"]]),
    ),
}


@st.composite
def answer_sets(draw: st.DrawFn) -> dict[str, Any]:
    """Half the sets draw every answer from its valid pool, so only combinations can clash."""
    clean = draw(st.booleans())
    answers: dict[str, Any] = {}
    for key, (good, bad) in FIELDS.items():
        choice = draw(st.integers(0, 9))
        if choice < 3:
            continue  # leave it to its (derived) default
        answers[key] = draw(bad if not clean and choice == 9 else good)
    return {key: value for key, value in answers.items() if value is not None}


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(answers=answer_sets())
def test_random_answers_render_valid_kits_or_are_refused(
    render: Render, answers: dict[str, Any]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / "kit"
        try:
            render(answers, dst)
        except ValueError as exc:
            refusal: ValueError | None = exc
        else:
            refusal = None
        if refusal is not None:
            # Copier's refusal: the validator's sentence (or copier's own type/choice message).
            assert str(refusal).strip(), "a refusal must say why"
            assert not dst.exists(), "a refused answer set must write nothing"
            event("refused: " + str(refusal).split(":")[0])
            return
        event("rendered")
        findings = validate.validate(dst, only=CORE_CHECKS)
        assert not findings, f"{answers}\n{validate.report(findings)}"
