"""`invoke backup/restore` in a generated repo: shipyard.yaml's storage settings, libpq's
environment for the database, confirmation, dry runs, and clear `Exit` messages."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest
from invoke.config import Config
from invoke.context import Context
from invoke.exceptions import Exit

from shipyard import backup
from shipyard.tasks import backup as tasks
from tests.conftest import Render, load_preset
from tests.servers.postgres import PostgresServer
from tests.servers.s3 import S3Server


@pytest.fixture(autouse=True)
def libpq_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tasks set PGDATABASE/PGUSER in this process (defaults for pg_dump, from
    shipyard.yaml); monkeypatch puts them back afterwards, so no later test inherits them."""
    for var in ("PGDATABASE", "PGUSER"):
        # setenv first: monkeypatch records (and so undoes) only a variable that was set.
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)


def context(repo: Path) -> Context:
    return Context(config=Config(overrides={"shipyard": {"root": str(repo)}}))


@pytest.fixture
def local_repo(render: Render, tmp_path: Path) -> Path:
    """A generated repo with PostgreSQL and local backups (backups/<env>)."""
    answers = {**load_preset("minimal"), "database": "postgres", "migrations": "none"}
    return render({**answers, "backup_storage": "local"}, tmp_path / "repo")


@pytest.fixture
def app_db(postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> str:
    name = postgres_server.create_database("svc")
    with postgres_server.connect(name) as conn:
        conn.execute("CREATE TABLE notes (id serial PRIMARY KEY, body text)")
        conn.execute("INSERT INTO notes (body) SELECT 'note ' || g FROM generate_series(1, 300) g")
    for key, value in postgres_server.env(name).items():
        monkeypatch.setenv(key, value)
    return name


def count(server: PostgresServer, db: str) -> int:
    with server.connect(db) as conn:
        row = conn.execute("SELECT count(*) FROM notes").fetchone()
    assert row is not None
    return int(row[0])


def test_backup_list_verify_restore_on_local_storage(
    local_repo: Path,
    app_db: str,
    postgres_server: PostgresServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    c = context(local_repo)
    tasks.run(c, env="staging")
    store = backup.LocalStorage(local_repo / "backups" / "staging")
    (made,) = backup.list_backups(store)
    tasks.list_(c, env="staging")
    assert made.id in capsys.readouterr().out

    tasks.verify(c, env="staging")
    assert "300 rows match its manifest" in capsys.readouterr().out

    with postgres_server.connect(app_db) as conn:
        conn.execute("DELETE FROM notes WHERE id > 100")
    tasks.restore(c, env="staging", dry_run=True)
    out = capsys.readouterr().out
    assert f"restore staging from backup {made.id} (dry run" in out
    assert "check its sha256" in out
    assert "pg_restore --jobs=" in out
    assert postgres_server.password not in out
    assert count(postgres_server, app_db) == 100  # the dry run changed nothing

    with pytest.raises(Exit, match="Refusing without a terminal: pass --yes"):
        tasks.restore(c, env="staging")
    assert count(postgres_server, app_db) == 100
    tasks.restore(c, env="staging", yes=True)
    assert count(postgres_server, app_db) == 300
    assert "the previous data is backup" in capsys.readouterr().out
    kinds = [b.manifest["kind"] for b in backup.list_backups(store)]
    assert kinds == ["manual", "safety"]


def test_s3_environment_from_shipyard_yaml(
    rendered: Callable[[str], Path],
    app_db: str,
    s3_server: S3Server,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The project-management preset keeps prod backups in s3://pmtool-backups/prod/."""
    repo = rendered("project-management")
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    s3 = boto3.client("s3")
    if "pmtool-backups" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket="pmtool-backups")
    tasks.run(context(repo), env="production")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="pmtool-backups")["Contents"]]
    assert any(k.startswith("prod/") and k.endswith("/manifest.json") for k in keys)
    tasks.prune(context(repo), env="prod", dry_run=True)
    assert "would delete nothing" in capsys.readouterr().out


def test_clear_exits(local_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = context(local_repo)
    with pytest.raises(Exit, match=r"dev has no backup settings: add environments\.dev\.backup"):
        tasks.run(c, env="dev")
    with pytest.raises(Exit, match="unknown environment 'qa'"):
        tasks.run(c, env="qa")
    with pytest.raises(Exit, match="no complete backup in"):
        tasks.restore(c, env="prod", yes=True)
    monkeypatch.setenv("PGHOST", "127.0.0.1")
    monkeypatch.setenv("PGPORT", "1")
    with pytest.raises(Exit, match="the backup of prod failed: cannot connect to PostgreSQL"):
        tasks.run(c, env="prod")


def test_every_task_runs_from_the_repo_root_as_the_readme_says(
    local_repo: Path, app_db: str, postgres_server: PostgresServer
) -> None:
    """`invoke ...` in the repo with nothing configured: shipyard.yaml's root is ".", so its
    `backups/staging` is relative until resolved."""

    def invoke(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "invoke", *args],
            cwd=local_repo,
            env=dict(os.environ),  # app_db's libpq variables
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        return result.stdout

    folder = (local_repo / "backups" / "staging").resolve()
    assert "backup of staging (dry run" in invoke("backup", "--env", "staging", "--dry-run")
    assert f"complete in {folder.as_uri()}" in invoke("backup", "--env", "staging")
    (made,) = backup.list_backups(backup.LocalStorage(folder))
    assert made.id in invoke("backup.list", "--env", "staging")
    assert "300 rows match its manifest" in invoke("backup.verify", "--env", "staging")
    assert "would delete nothing" in invoke("backup.prune", "--env", "staging", "--dry-run")
    with postgres_server.connect(app_db) as conn:
        conn.execute("DELETE FROM notes")
    assert f"from backup {made.id}" in invoke("restore", "--env", "staging", "--yes")
    assert count(postgres_server, app_db) == 300
