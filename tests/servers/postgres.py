"""A real PostgreSQL server for the tests: a throwaway cluster per test session (per xdist worker).

`initdb` + `pg_ctl` from Debian's postgresql-15 (/usr/lib/postgresql/<ver>/bin), listening on
127.0.0.1 on a free port with password (scram) authentication, so clients get their password
the way production ones do: from PGPASSWORD, never argv. PostgreSQL refuses to run as root, so
as root the cluster runs as the `postgres` system user. Durability is switched off: a test
cluster is thrown away, and fsync would only make the suite slower.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
from psycopg import sql

from tests.servers import shared_or_own

if TYPE_CHECKING:
    from tests.servers.shared import Slot

SUPERUSER = "postgres"


def _bindir() -> Path:
    """The newest installed server's bin folder (or $SHIPYARD_PG_BINDIR); fail loudly if none."""
    configured = os.environ.get("SHIPYARD_PG_BINDIR")
    candidates = (
        [Path(configured)]
        if configured
        else sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    )
    for path in reversed(candidates):
        if (path / "initdb").exists():
            return path
    pytest.fail("no PostgreSQL server found: run .ci/setup.sh (apt-get install postgresql-15)")


def owner_wrappers(folder: Path) -> None:
    """`pg_ctl` and `pgbackrest` in `folder`, for PATH: two-line scripts that run the real
    programs as `postgres` when called as root (PostgreSQL refuses root, and pgBackRest must
    run as the data's owner), with the caller's environment; as anyone else, directly. The
    server runs archive_command through the same PATH."""
    real = {"pg_ctl": _bindir() / "pg_ctl", "pgbackrest": Path(shutil.which("pgbackrest") or "")}
    folder.mkdir(exist_ok=True)
    for name, path in real.items():
        if not path.is_file():
            pytest.fail(f"{name} is not installed: run .ci/setup.sh")
        script = folder / name
        script.write_text(
            f'#!/bin/sh\n[ "$(id -u)" = 0 ] && exec runuser -p -u postgres -- {path} "$@"\n'
            f'exec {path} "$@"\n'
        )
        script.chmod(0o755)


def free_port() -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class PostgresServer:
    """Where the test cluster listens and how a client reaches it (libpq variables)."""

    host: str
    port: int
    user: str
    password: str
    bindir: Path

    def env(self, dbname: str = "postgres") -> dict[str, str]:
        """libpq environment for `dbname`: what a backup container or CronJob receives."""
        return {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGPASSWORD": self.password,
            "PGDATABASE": dbname,
        }

    def connect(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=dbname,
            autocommit=True,
        )

    def create_database(self, prefix: str = "db") -> str:
        """A new empty database with a unique name."""
        name = f"{prefix}_{secrets.token_hex(4)}"
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def databases(self) -> set[str]:
        with self.connect() as conn:
            rows = conn.execute("SELECT datname FROM pg_database WHERE NOT datistemplate")
            return {r[0] for r in rows}


@pytest.fixture(scope="session")
def postgres_server(shared_servers: Slot | None) -> Iterator[PostgresServer]:
    """A running PostgreSQL cluster on 127.0.0.1: the session's own, removed at its end, or the
    one this session claimed from a run's shared servers (tests/servers/shared.py)."""
    yield from shared_or_own(shared_servers.postgres if shared_servers else None, running)


@contextlib.contextmanager
def running() -> Iterator[PostgresServer]:
    """A new PostgreSQL cluster on 127.0.0.1, stopped and removed when the block ends."""
    bindir = _bindir()
    as_root = os.geteuid() == 0
    # Not under pytest's tmp dir: that is private to root and the server runs as postgres.
    state = Path(tempfile.mkdtemp(prefix="shipyard-pg-"))
    data, password = state / "data", secrets.token_urlsafe(16)
    (state / "pwfile").write_text(password + "\n")
    if as_root:
        shutil.chown(state, "postgres")
        shutil.chown(state / "pwfile", "postgres")
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []

    def run(*argv: str) -> None:
        subprocess.run([*prefix, *argv], check=True, capture_output=True, cwd=state)

    run(
        str(bindir / "initdb"),
        "-D",
        str(data),
        "-U",
        SUPERUSER,
        "--auth=scram-sha-256",
        f"--pwfile={state / 'pwfile'}",
        "--no-sync",
    )
    (state / "pwfile").unlink()
    port = 0
    for _attempt in range(5):
        port = free_port()
        # Prepared transactions: one holds a database through every session kill, which is how
        # a test makes a restore's swap find its database still in use.
        options = (
            f"-p {port} -k {state} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c full_page_writes=off -c synchronous_commit=off -c max_connections=60"
            " -c max_prepared_transactions=4"
        )
        try:
            run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(state / "log"), "-w",
                "-o", options, "start")  # fmt: skip
            break
        except subprocess.CalledProcessError:
            time.sleep(0.2)
    else:
        log = (state / "log").read_text() if (state / "log").exists() else ""
        pytest.fail(f"PostgreSQL did not start:\n{log}")
    try:
        yield PostgresServer("127.0.0.1", port, SUPERUSER, password, bindir)
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            check=False,
            cwd=state,
        )
        shutil.rmtree(state, ignore_errors=True)
