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

The layout and listing live in `manifest`, the tools and connections in `db`, the table
statistics in `checksums`, `BackupError` and the progress lines in `report`; this module
re-exports the names its callers use from them (`__all__`).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import psycopg
from psycopg import sql

from shipyard import __version__
from shipyard.backup import archive as pg_archive
from shipyard.backup.checksums import compare_stats, table_stats
from shipyard.backup.db import MAINTENANCE_DB, connect, one, stabilise, tool, tool_version
from shipyard.backup.manifest import (
    DUMP,
    FORMAT,
    MANIFEST,
    VERIFIED,
    Backup,
    find_backup,
    id_time,
    list_backups,
    new_id,
)
from shipyard.backup.report import BackupError, Log, human_size, to_stderr
from shipyard.backup.storage import CHUNK, Storage

# Level 1: on 2 cores every cycle zstd spends is taken from pg_dump (measured at pgbench scale
# 20: -3 makes the backup ~5% slower than -1 for a 25% smaller file).
ZSTD_LEVEL = 1
# Restore sessions: bigger sort memory makes index builds (most of a restore) faster, and a
# lost restore is simply rerun, so commits need not wait for the WAL flush.
RESTORE_OPTIONS = "-c maintenance_work_mem=256MB -c synchronous_commit=off"
# Leftovers of a crashed backup are removed by retention once they are this old.
STALE_INCOMPLETE = timedelta(days=1)


__all__ = [
    "DUMP",
    "FORMAT",
    "MANIFEST",
    "VERIFIED",
    "ZSTD_LEVEL",
    "Backup",
    "BackupError",
    "Log",
    "Retention",
    "backup",
    "compare_stats",
    "connect",
    "default_jobs",
    "fetch",
    "find_backup",
    "id_time",
    "list_backups",
    "new_id",
    "plan_retention",
    "prune",
    "restore",
    "table_stats",
    "tool",
    "tool_version",
    "verify",
]


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


def backup(storage: Storage, *, kind: str = "manual", log: Log = to_stderr) -> Backup:
    """Dump the database libpq's environment points at into `storage`; return the backup."""
    pg_dump, zstd = tool("pg_dump"), tool("zstd")
    started = time.monotonic()
    backup_id = new_id()
    created = datetime.now(UTC)
    with connect() as conn:
        stabilise(conn)
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        snapshot, database, server = one(
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
        f"backup {backup_id} complete: {human_size(reader.size)}, {len(stats)} tables, sha256 "
        f"{reader.sha256.hexdigest()[:16]}..."
    )
    return Backup(backup_id, manifest, None)


def _pipe(stream: IO[bytes] | None) -> IO[bytes]:
    # Popen was given stdout=PIPE, so the stream exists; this narrows the type for mypy.
    if stream is None:
        raise BackupError("a pipe to a child process is missing")
    return stream


def _database_settings(conn: psycopg.Connection, database: str) -> dict[str, str]:
    owner, encoding, collate, ctype = one(
        conn,
        "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype"
        " FROM pg_database WHERE datname = current_database()",
    )
    return {"owner": owner, "encoding": encoding, "collate": collate, "ctype": ctype}


# --- restore and verify ------------------------------------------------------------------


def fetch(storage: Storage, backup: Backup, workdir: Path, log: Log = to_stderr) -> Path:
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
    log(f"backup {backup.id}: sha256 matches the manifest ({human_size(size)})")
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
            stabilise(conn)
            methods = {k: v.get("hash", "text") for k, v in backup.manifest["tables"].items()}
            return table_stats(conn, checksums=checksums, methods=methods)
    except BaseException:
        _drop_database(admin, dbname)
        raise


def verify(
    storage: Storage, backup_id: str | None = None, *, jobs: int = 0, log: Log = to_stderr
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
    log: Log = to_stderr,
) -> Backup | None:
    """Replace the database PGDATABASE names with a backup; return the safety backup taken.

    Order matters: the archive's checksum is checked first, then the current database is
    backed up, then the backup is restored into a new database and compared with its manifest;
    only then is the old database swapped out and dropped. A failure at any step leaves the
    current database untouched.
    """
    chosen = find_backup(storage, backup_id)
    with connect() as conn:
        current: str = one(conn, "SELECT current_database()")[0]
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
    storage: Storage, policy: Retention, *, dry_run: bool = False, log: Log = to_stderr
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
