"""The engine's tools and connections: PostgreSQL client binaries and zstd found on PATH, and
sessions opened from libpq's environment.

The database connection comes only from libpq's environment (PGHOST, PGPORT, PGDATABASE,
PGUSER, PGPASSWORD or PGPASSFILE): no credential is ever put on a command line or printed.
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import IO, Any

import psycopg
from psycopg.conninfo import make_conninfo

from shipyard.backup.report import BackupError
from shipyard.engines import EngineError
from shipyard.engines.proc import Result, capture, command

# Where CREATE/DROP/ALTER DATABASE run from: every cluster has it.
MAINTENANCE_DB = "postgres"
# Row text must not depend on the session's locale settings, or checksums would differ
# between the backup and the verifying session.
STABLE_SESSION = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "extra_float_digits": "3",
    "bytea_output": "hex",
}
# The engine's own sessions speak UTF-8 whatever the database's encoding or the caller's
# PGCLIENTENCODING: left to libpq, a SQL_ASCII database would hand psycopg bytes for every text
# value (the exported snapshot id among them). Only names, counts and checksums travel over
# these sessions; the data itself goes through pg_dump/pg_restore in the database's encoding.
CLIENT_ENCODING = "UTF8"
# Timeouts the server, the role or PGOPTIONS set for the app's sessions, off in the engine's as
# pg_dump and pg_restore turn them off in theirs: a count waits for a migration's lock as
# pg_dump does, the snapshot's session stays in its transaction for as long as pg_dump dumps
# from it, and a restore's admin session idles through the download and pg_restore. Only those
# the server has (idle_session_timeout is 14's, transaction_timeout 17's).
TIMEOUTS = (
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "transaction_timeout",
)


def tool(name: str) -> str:
    """A PostgreSQL or zstd binary on PATH, or a BackupError saying how to get it."""
    found = shutil.which(name)
    if found is None:
        raise BackupError(
            f"{name} is not installed: install the PostgreSQL client tools matching the server "
            "(Debian: postgresql-client-<version>) and zstd"
        )
    return found


def pipe(stream: IO[bytes] | None) -> IO[bytes]:
    """A child's stdout/stdin that Popen was given PIPE for (this narrows the type for mypy)."""
    if stream is None:
        raise BackupError("a pipe to a child process is missing")
    return stream


def ended(returncode: int) -> str:
    """How a child process ended, for a message: `exited 2`, `was killed by SIGKILL`."""
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited {returncode}"


def run_tool(name: str, *args: str, env: Mapping[str, str] | None = None) -> Result:
    """Run a PostgreSQL or zstd tool quietly (through engines.proc, like every command the
    package runs, pipelines excepted) and return how it ended; BackupError if it cannot start."""
    try:
        return capture(command(tool(name), *args, env=env), what=name)
    except EngineError as exc:
        raise BackupError(str(exc)) from None


def tool_version(name: str) -> str:
    out = run_tool(name, "--version")
    return (out.stdout or out.stderr).strip().splitlines()[0] if out.returncode == 0 else "?"


@contextmanager
def connect(dbname: str | None = None) -> Iterator[psycopg.Connection]:
    """A connection (autocommit) from libpq's environment, to `dbname` if given, with the
    app's timeouts off (TIMEOUTS)."""
    params = {"client_encoding": CLIENT_ENCODING, **({"dbname": dbname} if dbname else {})}
    try:
        conn = psycopg.connect(make_conninfo("", **params), autocommit=True)
    except psycopg.OperationalError as exc:
        raise BackupError(f"cannot connect to PostgreSQL: {str(exc).strip()}") from None
    with conn:
        conn.execute(
            "SELECT set_config(name, '0', false) FROM pg_settings WHERE name = ANY(%s)",
            (list(TIMEOUTS),),
        )
        yield conn


def stabilise(conn: psycopg.Connection) -> None:
    """Give `conn` the STABLE_SESSION settings, so row text is the same in every session."""
    for name, value in STABLE_SESSION.items():
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))


def one(conn: psycopg.Connection, query: str) -> tuple[Any, ...]:
    """The single row of a query that always returns one."""
    return row(conn.execute(query).fetchone())


def row(found: tuple[Any, ...] | None) -> tuple[Any, ...]:
    # Only for queries that always return one row (aggregates, current_database()).
    if found is None:
        raise BackupError("PostgreSQL returned no row where one was certain")
    return tuple(found)
