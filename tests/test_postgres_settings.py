"""postgres_settings: PostgreSQL server parameters, checked against the kit's list of them (a
real server's pg_settings), run by the Compose postgres and listed for a managed database.
Refusals are in test_questionnaire.py; the running Compose server reports them in
test_tasks_compose.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from shipyard.backup import pitr
from tests.conftest import REPO, Render, compose_services, load_preset
from tests.servers.postgres import PostgresServer

PARAMETERS = REPO / "src" / "shipyard" / "postgres_parameters.yaml"


def _facts() -> dict[str, Any]:
    loaded: dict[str, Any] = YAML(typ="safe").load(PARAMETERS.read_text())
    return loaded


def test_the_list_is_what_a_real_server_reports(postgres_server: PostgresServer) -> None:
    """Every parameter the answer may set (or the kit owns) exists in a real PostgreSQL with
    that type, unit, range, enum values and restart; the settable ones it leaves out are only
    read-only or developer options."""
    facts = _facts()
    with postgres_server.connect() as conn:
        rows = conn.execute(
            "SELECT name, vartype, unit, min_val, max_val, enumvals, context, category"
            " FROM pg_settings"
        ).fetchall()
    server = {r[0]: r for r in rows}
    owned = {n for group in facts["owned"] for n in group["names"]}
    assert owned <= set(server)
    assert not owned & set(facts["parameters"])
    for name, p in facts["parameters"].items():
        _, vartype, unit, low, high, enumvals, context, _ = server[name]
        assert p["type"] == vartype, name
        assert p.get("unit") == unit, name
        if vartype in ("integer", "real"):
            assert float(p["min"]) == pytest.approx(float(low)), name
            assert float(p["max"]) == pytest.approx(float(high)), name
        assert p.get("values") == enumvals, name
        assert p.get("restart", False) == (context == "postmaster"), name
    left_out = set(server) - set(facts["parameters"]) - owned
    assert {
        (server[n][6] == "internal" or server[n][7] == "Developer Options") for n in left_out
    } == {True}


# Each value as written in the answer -> as the server gets it (-c name=value).
ACCEPTED = {
    "max_connections": 200,
    "shared_buffers": "1GB",
    "work_mem": "4MB",
    "log_min_duration_statement": "500ms",
    "checkpoint_timeout": "5min",
    "idle_in_transaction_session_timeout": "1h",
    "checkpoint_completion_target": 0.9,
    "vacuum_cost_delay": "2ms",
    "log_connections": True,
    "synchronous_commit": False,
    "log_statement": "mod",
    "log_line_prefix": "%t [%p] $user ",
    "shared_preload_libraries": "pg_stat_statements",
}
EXPECTED = [
    "max_connections=200",
    "shared_buffers=1GB",
    "work_mem=4MB",
    "log_min_duration_statement=500ms",
    "checkpoint_timeout=5min",
    "idle_in_transaction_session_timeout=1h",
    "checkpoint_completion_target=0.9",
    "vacuum_cost_delay=2ms",
    "log_connections=on",
    "synchronous_commit=off",
    "log_statement=mod",
    "log_line_prefix=%t [%p] $user ",
    "shared_preload_libraries=pg_stat_statements",
]


# The archiving settings compose.prod.yaml gives its server with point_in_time_recovery: the
# engine's own (pitr.archive_settings), but archive_command, which `pitr setup` sets.
ARCHIVING = [s for s in pitr.archive_settings() if not s.startswith("archive_command=")]


@pytest.fixture(scope="module")
def tuned(render: Render, tmp_path_factory: pytest.TempPathFactory) -> Path:
    answers = {
        "project_name": "Tuned API",
        "database": "postgres",
        "staging_target": "compose",
        "production_target": "helm",
        "postgres_settings": ACCEPTED,
    }
    return render(answers, tmp_path_factory.mktemp("tuned") / "tuned-api")


@pytest.mark.parametrize("file", ["compose.yaml", "compose.prod.yaml"])
def test_compose_postgres_runs_with_the_settings(tuned: Path, file: str) -> None:
    postgres = compose_services(tuned, file)["postgres"]
    # `config` writes a literal `$` escaped as `$$`, as it must be in a Compose file: the
    # server gets `$user` (not an interpolated variable).
    argv = [a.replace("$$", "$") for a in postgres["command"] if a != "-c"]
    # On the Compose hosts, archiving for point-in-time recovery first: the answers can tune it.
    expected = [*(ARCHIVING if file == "compose.prod.yaml" else []), *EXPECTED]
    assert argv == ["postgres", *expected]
    assert postgres["command"][1::2] == ["-c"] * len(expected)
    if file == "compose.prod.yaml":
        # shared_buffers 1GB: four times it, so the server is not killed for its own cache.
        assert postgres["deploy"]["resources"]["limits"]["memory"] == str(4 * 1024**3)


def test_the_guide_lists_them_for_the_managed_database(tuned: Path) -> None:
    guide = (tuned / "DEPLOYMENT.md").read_text()
    assert "| `shared_buffers` | `1GB` | after a restart |" in guide
    assert "| `work_mem` | `4MB` | on reload |" in guide
    assert "    ALTER SYSTEM SET log_connections = 'on';" in guide
    assert "    ALTER SYSTEM SET log_line_prefix = '%t [%p] $user ';" in guide


def test_without_settings_postgres_runs_its_defaults(rendered: Any) -> None:
    root = rendered("saas-checklist")
    assert "postgres_settings" not in load_preset("saas-checklist")
    assert compose_services(root, "compose.yaml")["postgres"].get("command") is None
    prod = compose_services(root, "compose.prod.yaml")["postgres"]["command"]
    assert [a for a in prod if a != "-c"] == ["postgres", *ARCHIVING]
    limits = compose_services(root)["postgres"]["deploy"]["resources"]["limits"]
    assert limits["memory"] == str(1024**3)
    assert "PostgreSQL runs with its defaults." in (root / "DEPLOYMENT.md").read_text()


@pytest.mark.parametrize("preset", ["pe-investor-portal", "project-management", "monorepo"])
def test_presets_carry_their_guides_settings(rendered: Any, preset: str) -> None:
    """Seeds 000, 002 and 003 set connections, memory and logging: each preset's are in its
    guide, and on its Compose server when it has one."""
    settings = load_preset(preset)["postgres_settings"]
    root = rendered(preset)
    guide = (root / "DEPLOYMENT.md").read_text()
    for name in settings:
        assert f"| `{name}` |" in guide, name
    if (root / "compose.prod.yaml").exists() and "postgres" in compose_services(root):
        command = compose_services(root)["postgres"]["command"]
        answers = YAML(typ="safe").load((root / ".copier-answers.yml").read_text())
        pitr_on = answers.get("point_in_time_recovery", False)
        archiving = {a.split("=")[0] for a in ARCHIVING} if pitr_on else set()
        assert {a.split("=")[0] for a in command[2::2]} == set(settings) | archiving
