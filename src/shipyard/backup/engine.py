"""Logical PostgreSQL backups that are proven restorable.

One implementation behind `shipyard backup ...` (compose service, Kubernetes CronJob) and the
`invoke backup/restore` tasks. A backup is `<id>/dump.pgc.zst` plus `<id>/manifest.json`:

- the dump is `pg_dump -Fc -Z0` piped through `zstd`: the custom format restores with
  `pg_restore -j`, and compressing in a separate multi-threaded process is faster than pg_dump's
  built-in gzip (benchmarks/backup.py measures it); pg_dump 15 has no zstd of its own;
- per-table row counts and checksums are read in the very snapshot pg_dump dumps, so `verify`
  can prove a restore reproduces the data;
- the manifest (sizes, sha256, versions, tables) is written last: a backup without one is
  incomplete and is never listed, restored or counted by retention.

The database connection comes only from libpq's environment (PGHOST, PGPORT, PGDATABASE,
PGUSER, PGPASSWORD or PGPASSFILE): no credential is ever put on a command line or printed.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from shipyard import __version__, config
from shipyard.backup import archive as pg_archive
from shipyard.backup.storage import CHUNK, Storage, StorageError

DUMP = "dump.pgc.zst"
MANIFEST = "manifest.json"
VERIFIED = "verified.json"
FORMAT = "shipyard-backup/1"
# Level 1: on 2 cores every cycle zstd spends is taken from pg_dump (measured at pgbench scale
# 20: -3 makes the backup ~5% slower than -1 for a 25% smaller file).
ZSTD_LEVEL = 1
ID_TIME = "%Y%m%dT%H%M%SZ"
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
# Restore sessions: bigger sort memory makes index builds (most of a restore) faster, and a
# lost restore is simply rerun, so commits need not wait for the WAL flush.
RESTORE_OPTIONS = "-c maintenance_work_mem=256MB -c synchronous_commit=off"
# Leftovers of a crashed backup are removed by retention once they are this old.
STALE_INCOMPLETE = timedelta(days=1)

Log = Callable[[str], None]


class BackupError(Exception):
    """A backup, restore or verification failed; the message says what and why."""


def _log(message: str) -> None:
    print(f"shipyard backup: {message}", file=sys.stderr, flush=True)


# --- the manifest ------------------------------------------------------------------------


@dataclass(frozen=True)
class Backup:
    """One complete backup: its manifest and whether a verification passed."""

    id: str
    manifest: dict[str, Any]
    verified: dict[str, Any] | None

    @property
    def created(self) -> datetime:
        return datetime.fromisoformat(self.manifest["created_at"])


def new_id(now: datetime | None = None) -> str:
    """Sortable and unique: UTC time plus a random suffix for backups in the same second."""
    return f"{(now or datetime.now(UTC)).strftime(ID_TIME)}-{secrets.token_hex(3)}"


def id_time(backup_id: str) -> datetime | None:
    try:
        return datetime.strptime(backup_id.split("-", 1)[0], ID_TIME).replace(tzinfo=UTC)
    except ValueError:
        return None


def list_backups(storage: Storage) -> list[Backup]:
    """Complete backups (those with a valid manifest), oldest first."""
    keys = set(storage.list_keys())
    found = []
    for key in sorted(keys):
        backup_id, _, name = key.partition("/")
        if name != MANIFEST or f"{backup_id}/{DUMP}" not in keys:
            continue
        manifest = _read_json(storage, key)
        if manifest is None or config.schema_errors(manifest, "backup-manifest"):
            _log(f"ignoring {backup_id}: its manifest is unreadable or not a shipyard manifest")
            continue
        verified = (
            _read_json(storage, f"{backup_id}/{VERIFIED}")
            if (f"{backup_id}/{VERIFIED}" in keys)
            else None
        )
        found.append(Backup(backup_id, manifest, verified))
    # Creation time, not the id: ids made within one second differ only by a random suffix.
    return sorted(found, key=lambda b: (b.created, b.id))


def _read_json(storage: Storage, key: str) -> dict[str, Any] | None:
    try:
        data = json.loads(storage.get_bytes(key))
    except (StorageError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def find_backup(storage: Storage, backup_id: str | None = None) -> Backup:
    """The backup named `backup_id`, or the newest complete one."""
    backups = list_backups(storage)
    if not backups:
        raise BackupError(f"no complete backup in {storage.url}")
    if not backup_id:
        return backups[-1]
    for backup in backups:
        if backup.id == backup_id:
            return backup
    raise BackupError(f"no complete backup '{backup_id}' in {storage.url}; see `backup list`")


# --- tools and connections --------------------------------------------------------------


def tool(name: str) -> str:
    """A PostgreSQL or zstd binary on PATH, or a BackupError saying how to get it."""
    found = shutil.which(name)
    if found is None:
        raise BackupError(
            f"{name} is not installed: install the PostgreSQL client tools matching the server "
            "(Debian: postgresql-client-<version>) and zstd"
        )
    return found


def tool_version(name: str) -> str:
    out = subprocess.run([tool(name), "--version"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).strip().splitlines()[0] if out.returncode == 0 else "?"


# The engine's own sessions speak UTF-8 whatever the database's encoding or the caller's
# PGCLIENTENCODING: left to libpq, a SQL_ASCII database would hand psycopg bytes for every text
# value (the exported snapshot id among them). Only names, counts and checksums travel over
# these sessions; the data itself goes through pg_dump/pg_restore in the database's encoding.
CLIENT_ENCODING = "UTF8"


@contextmanager
def connect(dbname: str | None = None, *, autocommit: bool = True) -> Iterator[psycopg.Connection]:
    """A connection from libpq's environment, to `dbname` if given."""
    params = {"client_encoding": CLIENT_ENCODING, **({"dbname": dbname} if dbname else {})}
    try:
        conn = psycopg.connect(make_conninfo("", **params), autocommit=autocommit)
    except psycopg.OperationalError as exc:
        raise BackupError(f"cannot connect to PostgreSQL: {str(exc).strip()}") from None
    with conn:
        yield conn


def _stabilise(conn: psycopg.Connection) -> None:
    for name, value in STABLE_SESSION.items():
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))


# How each column type is hashed by value: its default hash opclass's extended hash function
# (pg_amproc), with the cast some of them need. Values hash the same in any database they are
# restored into, and per-column hashing is about 4x cheaper than formatting the row as text.
# Enums, oids and reg* types would hash their OIDs, which a restore renumbers: a table with any
# type outside this map (or an array of one) is hashed through its row text instead.
COLUMN_HASH = {
    "bool": "hashint4extended({}::int, 0)",
    "int2": "hashint2extended({}, 0)",
    "int4": "hashint4extended({}, 0)",
    "int8": "hashint8extended({}, 0)",
    "numeric": "hash_numeric_extended({}, 0)",
    "float4": "hashfloat4extended({}, 0)",
    "float8": "hashfloat8extended({}, 0)",
    "text": "hashtextextended({}, 0)",
    "varchar": "hashtextextended({}::text, 0)",
    "bpchar": "hashbpcharextended({}, 0)",
    "bytea": "hashtextextended(encode({}, 'hex'), 0)",  # its own takes `internal`
    "uuid": "uuid_hash_extended({}, 0)",
    "jsonb": "jsonb_hash_extended({}, 0)",
    "date": "hashint4extended({} - date '2000-01-01', 0)",
    "time": "time_hash_extended({}, 0)",
    "timetz": "timetz_hash_extended({}, 0)",
    "timestamp": "timestamp_hash_extended({}, 0)",
    "timestamptz": "timestamp_hash_extended({} AT TIME ZONE 'UTC', 0)",
    "interval": "interval_hash_extended({}, 0)",
    "inet": "hashinetextended({}, 0)",
    "cidr": "hashinetextended({}::inet, 0)",
    "macaddr": "hashmacaddrextended({}, 0)",
}
ARRAY_HASH = "hash_array_extended({}, 0)"
TEXT_HASH = sql.SQL("hashtextextended(t::text, 0)")


def _column_hash(columns: list[tuple[str, str, bool]]) -> sql.Composable | None:
    """One row's hash from its columns' hashes (None when a type is not in COLUMN_HASH).

    Each column's hash is shifted by its position before the XOR, so swapped values differ;
    NULL hashes to -1.
    """
    parts: list[sql.Composable] = []
    for position, (name, type_name, builtin) in enumerate(columns):
        element = type_name.removeprefix("_")
        if not builtin or element not in COLUMN_HASH:
            return None
        template = ARRAY_HASH if type_name.startswith("_") else COLUMN_HASH[type_name]
        value = sql.SQL(template).format(sql.Identifier("t", name))
        parts.append(sql.SQL("(coalesce({}, -1) << {})").format(value, position % 64))
    return sql.SQL(" # ").join(parts) if parts else sql.SQL("0::bigint")


def _count_and_hash(
    conn: psycopg.Connection, table: sql.Identifier, row_hash: sql.Composable | None
) -> tuple[Any, ...]:
    """count(*) and the sum of row hashes (or '' without `row_hash`), in a savepoint so a
    failure leaves the surrounding snapshot transaction usable (pg_dump imports it)."""
    if row_hash is None:
        query = sql.SQL("SELECT count(*), '' FROM {} AS t").format(table)
    else:
        query = sql.SQL("SELECT count(*), coalesce(sum({}), 0)::text FROM {} AS t").format(
            row_hash, table
        )
    with conn.transaction():
        return _row(conn.execute(query).fetchone())


def table_stats(
    conn: psycopg.Connection, *, checksums: bool = True, methods: Mapping[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """Row count and an order-independent checksum of every user table's rows.

    The checksum sums a 64-bit hash of each row, so it does not depend on the physical row
    order a restore produces. `methods` (table -> "columns"/"text", from a manifest) makes a
    verification hash each table exactly the way its backup did.
    """
    rows = conn.execute(
        """
        SELECT n.nspname, c.relname, a.attname, ty.typname,
               ty.typnamespace = 'pg_catalog'::regnamespace
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        LEFT JOIN pg_type ty ON ty.oid = a.atttypid
        WHERE c.relkind = 'r' AND n.nspname <> 'information_schema'
          AND n.nspname NOT LIKE 'pg\\_%'
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                          AND d.objid = c.oid AND d.deptype = 'e')
        ORDER BY 1, 2, a.attnum
        """
    ).fetchall()
    tables: dict[tuple[str, str], list[tuple[str, str, bool]]] = {}
    for schema_name, table, column, type_name, builtin in rows:
        columns = tables.setdefault((schema_name, table), [])
        if column is not None:  # a table without columns has one row of NULLs here
            columns.append((column, type_name, builtin))
    stats = {}
    for (schema_name, table), columns in tables.items():
        name = f"{schema_name}.{table}"
        by_column = _column_hash(columns)
        method = (methods or {}).get(name) or ("columns" if by_column is not None else "text")
        row_hash = by_column if method == "columns" and by_column is not None else TEXT_HASH
        ident = sql.Identifier(schema_name, table)
        try:
            row = _count_and_hash(conn, ident, row_hash if checksums else None)
        except psycopg.Error:
            # A column hash this server lacks: the row text works everywhere. Only while
            # choosing (a backup); a verification must hash exactly as its backup did.
            if method != "columns" or methods:
                raise
            method = "text"
            row = _count_and_hash(conn, ident, TEXT_HASH)
        stats[name] = {"rows": row[0], "checksum": row[1], "hash": method}
    return stats


def compare_stats(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """Every difference between the manifest's tables and a restored database's, readable.
    Checksums are compared when `actual` has them (a restore counts rows; verify hashes)."""
    problems = []
    for name in sorted(set(expected) | set(actual)):
        if name not in actual:
            problems.append(f"{name}: missing after restore")
        elif name not in expected:
            problems.append(f"{name}: not in the backup's manifest")
        elif expected[name]["rows"] != actual[name]["rows"]:
            problems.append(
                f"{name}: {actual[name]['rows']} rows, expected {expected[name]['rows']}"
            )
        elif actual[name]["checksum"] and expected[name]["checksum"] != actual[name]["checksum"]:
            problems.append(f"{name}: row checksum differs from the backup's")
    return problems


# --- backup ------------------------------------------------------------------------------


class _DumpReader:
    """zstd's output as a file object; hashes and counts it, and at its end fails the upload
    unless pg_dump, zstd and the table statistics all succeeded."""

    def __init__(
        self,
        pg_dump: subprocess.Popen[bytes],
        zstd: subprocess.Popen[bytes],
        dump_errors: IO[bytes],
        stats_done: threading.Event,
        stats_error: list[BaseException],
    ) -> None:
        self.pg_dump, self.zstd = pg_dump, zstd
        self.dump_errors = dump_errors
        self.stats_done, self.stats_error = stats_done, stats_error
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.source = _pipe(zstd.stdout)

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size if size and size > 0 else CHUNK)
        if data:
            self.sha256.update(data)
            self.size += len(data)
            return data
        self._check()
        return b""

    def _check(self) -> None:
        dump_rc, zstd_rc = self.pg_dump.wait(), self.zstd.wait()
        # A statistics query that failed ends the snapshot's transaction, so pg_dump cannot
        # import the snapshot: then the statistics' error is the one that says why (it is
        # recorded a moment after the server's error, hence the short wait).
        if dump_rc != 0 and self.stats_done.wait(timeout=2) and self.stats_error:
            raise BackupError(f"reading table statistics failed: {self.stats_error[0]}")
        if dump_rc != 0:
            self.dump_errors.seek(0)
            detail = self.dump_errors.read().decode(errors="replace").strip()
            how = f"was killed by signal {-dump_rc}" if dump_rc < 0 else f"exited {dump_rc}"
            raise BackupError(f"pg_dump {how}" + (f": {detail}" if detail else ""))
        if zstd_rc != 0:
            raise BackupError(f"zstd exited {zstd_rc}")
        self.stats_done.wait()
        if self.stats_error:
            raise BackupError(f"reading table statistics failed: {self.stats_error[0]}")


def backup(storage: Storage, *, kind: str = "manual", log: Log = _log) -> Backup:
    """Dump the database libpq's environment points at into `storage`; return the backup."""
    pg_dump, zstd = tool("pg_dump"), tool("zstd")
    started = time.monotonic()
    backup_id = new_id()
    created = datetime.now(UTC)
    with connect() as conn:
        _stabilise(conn)
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        snapshot, database, server = _one(
            conn,
            "SELECT pg_export_snapshot(), current_database(), current_setting('server_version')",
        )
        settings = _database_settings(conn, database)
        # The dump is in the database's own encoding, never PGCLIENTENCODING's: bytes a
        # SQL_ASCII database holds need not be valid in any other encoding.
        dump_encoding = f"--encoding={settings['encoding']}"
        # The statistics run beside pg_dump, whose server process is the backup's critical
        # path: parallel scan workers would take CPU from it (measured: 10% slower backups on 2
        # cores). Local to this transaction.
        conn.execute("SELECT set_config('max_parallel_workers_per_gather', '0', true)")
        log(f"backing up database {database} ({server}) to {storage.url}/{backup_id}")
        stats: dict[str, dict[str, Any]] = {}
        stats_error: list[BaseException] = []
        stats_done = threading.Event()

        def read_stats() -> None:
            # Same transaction, same snapshot as pg_dump: the counts describe the dump exactly.
            try:
                stats.update(table_stats(conn))
            except (
                psycopg.errors.CharacterNotInRepertoire,
                psycopg.errors.UntranslatableCharacter,
            ):
                # The engine reads names in UTF-8; a SQL_ASCII database may hold other bytes.
                stats_error.append(
                    BackupError(
                        f"database {database} ({settings['encoding']}) has schema, table or "
                        "column names that are not valid UTF-8; rename them to back it up"
                    )
                )
            except BaseException as exc:  # reported through the reader, never lost
                stats_error.append(exc)
            finally:
                stats_done.set()

        with tempfile.TemporaryFile() as dump_errors:
            dumper = subprocess.Popen(
                [
                    pg_dump,
                    "--format=custom",
                    "--compress=0",
                    dump_encoding,
                    f"--snapshot={snapshot}",
                ],
                stdout=subprocess.PIPE,
                stderr=dump_errors,
            )
            dump_out = _pipe(dumper.stdout)
            compressor = subprocess.Popen(
                [zstd, f"-{ZSTD_LEVEL}", "-T0", "-q", "-c"],
                stdin=dump_out,
                stdout=subprocess.PIPE,
            )
            # Only zstd reads pg_dump's output; closing our copy lets a dying zstd stop pg_dump.
            dump_out.close()
            worker = threading.Thread(target=read_stats, name="table-stats", daemon=True)
            worker.start()
            # `pg_dump --version` is a Perl wrapper on Debian (~40 ms): asked while the dump runs.
            versions: dict[str, str] = {}
            versioner = threading.Thread(
                target=lambda: versions.update({n: tool_version(n) for n in ("pg_dump", "zstd")}),
                name="tool-versions",
                daemon=True,
            )
            versioner.start()
            reader = _DumpReader(dumper, compressor, dump_errors, stats_done, stats_error)
            try:
                storage.put_stream(f"{backup_id}/{DUMP}", reader)  # type: ignore[arg-type]
            finally:
                for proc in (dumper, compressor):
                    if proc.poll() is None:
                        proc.kill()
                    proc.wait()
                _pipe(compressor.stdout).close()
                if worker.is_alive():
                    # The dump failed; do not wait for the statistics of a backup that is gone.
                    conn.cancel_safe()
                worker.join()
                versioner.join()
        conn.execute("ROLLBACK")

    manifest = {
        "format": FORMAT,
        "id": backup_id,
        "kind": kind,
        "created_at": created.isoformat(),
        "duration_seconds": round(time.monotonic() - started, 3),
        "database": database,
        "server_version": server,
        "database_settings": settings,
        "dump": {
            "key": f"{backup_id}/{DUMP}",
            "format": "pg_dump custom archive (--format=custom --compress=0) compressed by zstd",
            "compression": f"zstd -{ZSTD_LEVEL}",
            "size": reader.size,
            "sha256": reader.sha256.hexdigest(),
        },
        "tools": {
            "pg_dump": versions.get("pg_dump", "?"),
            "zstd": versions.get("zstd", "?"),
            "shipyard": __version__,
        },
        "tables": stats,
    }
    # Written last: its presence is what makes the backup complete.
    storage.put_bytes(f"{backup_id}/{MANIFEST}", json.dumps(manifest, indent=2).encode())
    log(
        f"backup {backup_id} complete: {_size(reader.size)}, {len(stats)} tables, sha256 "
        f"{reader.sha256.hexdigest()[:16]}..."
    )
    return Backup(backup_id, manifest, None)


def _one(conn: psycopg.Connection, query: str) -> tuple[Any, ...]:
    return _row(conn.execute(query).fetchone())


def _row(row: tuple[Any, ...] | None) -> tuple[Any, ...]:
    # Only for queries that always return one row (aggregates, current_database()).
    if row is None:
        raise BackupError("PostgreSQL returned no row where one was certain")
    return tuple(row)


def _pipe(stream: IO[bytes] | None) -> IO[bytes]:
    # Popen was given stdout=PIPE, so the stream exists; this narrows the type for mypy.
    if stream is None:
        raise BackupError("a pipe to a child process is missing")
    return stream


def _database_settings(conn: psycopg.Connection, database: str) -> dict[str, str]:
    owner, encoding, collate, ctype = _one(
        conn,
        "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype"
        " FROM pg_database WHERE datname = current_database()",
    )
    return {"owner": owner, "encoding": encoding, "collate": collate, "ctype": ctype}


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1024
    return f"{n} B"


# --- restore and verify ------------------------------------------------------------------


def fetch(storage: Storage, backup: Backup, workdir: Path, log: Log = _log) -> Path:
    """Download a backup, check its size and sha256 against the manifest, and return the
    decompressed archive (a seekable file, which parallel pg_restore needs)."""
    dump = backup.manifest["dump"]
    compressed = workdir / DUMP
    digest, size = hashlib.sha256(), 0
    with storage.open(dump["key"]) as source, compressed.open("wb") as out:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    if size != dump["size"] or digest.hexdigest() != dump["sha256"]:
        raise BackupError(
            f"backup {backup.id} is corrupted: {size} bytes with sha256 {digest.hexdigest()}, "
            f"the manifest says {dump['size']} bytes with sha256 {dump['sha256']}; "
            "nothing was changed"
        )
    log(f"backup {backup.id}: sha256 matches the manifest ({_size(size)})")
    archive = workdir / "dump.pgc"
    result = subprocess.run(
        [tool("zstd"), "-d", "-q", "-f", str(compressed), "-o", str(archive)],
        capture_output=True,
        text=True,
        check=False,
    )
    compressed.unlink()
    if result.returncode != 0:
        raise BackupError(f"cannot decompress backup {backup.id}: {result.stderr.strip()}")
    try:
        # A streamed archive lacks data offsets; without them every parallel pg_restore worker
        # rescans the file (measured: ~25% slower on pgbench scale 20).
        pg_archive.add_offsets(archive)
    except (pg_archive.ArchiveFormatError, OSError) as exc:
        log(f"restoring without data offsets ({exc}); pg_restore will scan for them")
    return archive


def _pg_restore(archive: Path, dbname: str, jobs: int) -> None:
    env = dict(os.environ)
    env["PGOPTIONS"] = f"{env.get('PGOPTIONS', '')} {RESTORE_OPTIONS}".strip()
    result = subprocess.run(
        [
            tool("pg_restore"),
            f"--jobs={jobs}",
            "--exit-on-error",
            "--no-password",
            f"--dbname={dbname}",
            str(archive),
        ],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if result.returncode != 0:
        raise BackupError(f"pg_restore into {dbname} failed: {result.stderr.strip()}")


def default_jobs() -> int:
    """Parallel pg_restore workers: the index builds that dominate a restore scale with them."""
    return max(2, min(4, os.cpu_count() or 2))


def _create_database(admin: psycopg.Connection, name: str, settings: Mapping[str, str]) -> None:
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    admin.execute(
        sql.SQL(
            "CREATE DATABASE {} TEMPLATE template0 OWNER {} ENCODING {} LC_COLLATE {} LC_CTYPE {}"
        ).format(
            sql.Identifier(name),
            sql.Identifier(settings["owner"]),
            sql.Literal(settings["encoding"]),
            sql.Literal(settings["collate"]),
            sql.Literal(settings["ctype"]),
        )
    )


def _drop_database(admin: psycopg.Connection, name: str) -> None:
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _restore_archive(
    admin: psycopg.Connection,
    archive: Path,
    backup: Backup,
    dbname: str,
    jobs: int,
    log: Log,
    *,
    checksums: bool,
) -> dict[str, Any]:
    """Restore a checked archive into a new database `dbname`; return its table statistics.
    On failure `dbname` is dropped again."""
    _create_database(admin, dbname, backup.manifest["database_settings"])
    try:
        log(f"restoring backup {backup.id} into database {dbname} ({jobs} parallel jobs)")
        _pg_restore(archive, dbname, jobs)
        with connect(dbname) as conn:
            _stabilise(conn)
            methods = {k: v.get("hash", "text") for k, v in backup.manifest["tables"].items()}
            return table_stats(conn, checksums=checksums, methods=methods)
    except BaseException:
        _drop_database(admin, dbname)
        raise


def verify(
    storage: Storage, backup_id: str | None = None, *, jobs: int = 0, log: Log = _log
) -> Backup:
    """Restore a backup into a scratch database, compare every table with the manifest, drop
    the scratch database, and record the result beside the backup."""
    chosen = find_backup(storage, backup_id)
    scratch = f"shipyard_verify_{secrets.token_hex(4)}"
    with (
        tempfile.TemporaryDirectory(prefix="shipyard-verify-") as work,
        connect(MAINTENANCE_DB) as admin,
    ):
        archive = fetch(storage, chosen, Path(work), log)
        try:
            stats = _restore_archive(
                admin, archive, chosen, scratch, jobs or default_jobs(), log, checksums=True
            )
        finally:
            _drop_database(admin, scratch)
    problems = compare_stats(chosen.manifest["tables"], stats)
    if problems:
        raise BackupError(
            f"backup {chosen.id} does not restore to what was backed up:\n  "
            + "\n  ".join(problems)
        )
    record = {
        "verified_at": datetime.now(UTC).isoformat(),
        "tables": len(stats),
        "rows": sum(t["rows"] for t in stats.values()),
        "shipyard": __version__,
    }
    storage.put_bytes(f"{chosen.id}/{VERIFIED}", json.dumps(record, indent=2).encode())
    log(f"backup {chosen.id} verified: {record['tables']} tables, {record['rows']} rows match")
    return Backup(chosen.id, chosen.manifest, record)


def restore(
    storage: Storage,
    backup_id: str | None = None,
    *,
    jobs: int = 0,
    safety_backup: bool = True,
    log: Log = _log,
) -> Backup | None:
    """Replace the database PGDATABASE names with a backup; return the safety backup taken.

    Order matters: the archive's checksum is checked first, then the current database is
    backed up, then the backup is restored into a new database and compared with its manifest;
    only then is the old database swapped out and dropped. A failure at any step leaves the
    current database untouched.
    """
    chosen = find_backup(storage, backup_id)
    with connect() as conn:
        current: str = _one(conn, "SELECT current_database()")[0]
    staging = f"{current[:40]}_restore_{secrets.token_hex(3)}"
    safety = None
    with (
        tempfile.TemporaryDirectory(prefix="shipyard-restore-") as work,
        connect(MAINTENANCE_DB) as admin,
    ):
        archive = fetch(storage, chosen, Path(work), log)
        if safety_backup:
            log(f"taking a safety backup of {current} before replacing it")
            safety = backup(storage, kind="safety", log=log)
        # Row counts only: the archive's sha256 already proved it is the backup, and checksums
        # would add a full read of every table (`verify` does that, on a scratch copy).
        stats = _restore_archive(
            admin, archive, chosen, staging, jobs or default_jobs(), log, checksums=False
        )
        problems = compare_stats(chosen.manifest["tables"], stats)
        if problems:
            _drop_database(admin, staging)
            raise BackupError(
                f"restored data differs from backup {chosen.id}; {current} was not changed:\n  "
                + "\n  ".join(problems)
            )
        _swap(admin, current, staging)
    log(f"database {current} now holds backup {chosen.id} ({len(stats)} tables)")
    return safety


def _swap(admin: psycopg.Connection, current: str, replacement: str) -> None:
    """Put `replacement` in place of `current` and drop the old database."""
    old = f"{current[:40]}_old_{secrets.token_hex(3)}"
    ident = sql.Identifier
    # No new sessions while it is renamed; existing ones are ended (the app reconnects to the
    # restored database under the same name).
    admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(ident(current)))
    for attempt in range(10):
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (current,),
        )
        try:
            admin.execute(
                sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident(current), ident(old))
            )
            break
        except psycopg.errors.ObjectInUse:
            if attempt == 9:
                admin.execute(
                    sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(ident(current))
                )
                _drop_database(admin, replacement)
                raise BackupError(
                    f"{current} is still in use after 10 attempts to end its sessions; "
                    "it was not changed"
                ) from None
            time.sleep(0.5)
    admin.execute(
        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident(replacement), ident(current))
    )
    _drop_database(admin, old)


# --- retention ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Retention:
    """Keep the newest backup of each of the last `daily` days, `weekly` ISO weeks and
    `monthly` months (UTC calendar); the newest backup and the newest verified one always."""

    daily: int
    weekly: int = 0
    monthly: int = 0


def plan_retention(
    backups: list[Backup], policy: Retention, now: datetime | None = None
) -> dict[str, str]:
    """backup id -> why it is kept; every other complete backup may be deleted."""
    now = now or datetime.now(UTC)
    keep: dict[str, str] = {}
    newest_first = sorted(backups, key=lambda b: (b.created, b.id), reverse=True)
    if newest_first:
        keep[newest_first[0].id] = "newest"
    verified = [b for b in newest_first if b.verified]
    if verified:
        keep.setdefault(verified[0].id, "newest verified")

    def bucket_rule(count: int, bucket: Callable[[datetime], tuple[int, ...]], what: str) -> None:
        if count <= 0:
            return
        current = bucket(now)
        allowed = _last_buckets(current, count, bucket, now)
        seen: set[tuple[int, ...]] = set()
        for b in newest_first:
            key = bucket(b.created)
            if key in allowed and key not in seen:
                seen.add(key)
                keep.setdefault(b.id, what)

    bucket_rule(policy.daily, lambda t: (t.year, t.month, t.day), "daily")
    bucket_rule(policy.weekly, lambda t: tuple(t.isocalendar())[:2], "weekly")
    bucket_rule(policy.monthly, lambda t: (t.year, t.month), "monthly")
    return keep


def _last_buckets(
    current: tuple[int, ...],
    count: int,
    bucket: Callable[[datetime], tuple[int, ...]],
    now: datetime,
) -> set[tuple[int, ...]]:
    """The `count` calendar buckets ending with now's, found by stepping back a day at a time."""
    found = {current}
    day = now
    while len(found) < count:
        day -= timedelta(days=1)
        found.add(bucket(day))
    return found


def prune(
    storage: Storage, policy: Retention, *, dry_run: bool = False, log: Log = _log
) -> list[str]:
    """Delete complete backups the policy does not keep and stale incomplete leftovers."""
    backups = list_backups(storage)
    keep = plan_retention(backups, policy)
    complete = {b.id for b in backups}
    doomed = [b.id for b in backups if b.id not in keep]
    now = datetime.now(UTC)
    keys = storage.list_keys()
    # Only a backup that never wrote its manifest is a crashed leftover. One whose manifest
    # exists but could not be read or checked (a passing storage error, a newer format) may
    # be a good backup: it is never deleted on that guess.
    with_manifest = {k.split("/", 1)[0] for k in keys if k.endswith(f"/{MANIFEST}")}
    for backup_id in sorted({k.split("/", 1)[0] for k in keys} - complete):
        if backup_id in with_manifest:
            log(f"keeping {backup_id}: it has a manifest this run could not read")
            continue
        started = id_time(backup_id)
        if started and now - started > STALE_INCOMPLETE:
            doomed.append(backup_id)
    for backup_id in doomed:
        log(f"{'would delete' if dry_run else 'deleting'} {backup_id}")
        if not dry_run:
            storage.delete_prefix(f"{backup_id}/")
    log(
        f"retention kept {len(keep)} backup(s), {'would delete' if dry_run else 'deleted'} "
        f"{len(doomed)}"
    )
    return doomed
