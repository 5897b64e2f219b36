"""Recovery: a backup fetched, checked against its manifest, and restored (`verify`, `restore`).

Both restore into a new database first and compare its tables with the manifest: `verify`
into a scratch database it drops again (checksums too), `restore` into a staging database
that replaces the current one only once it matches (row counts). A failure at any step leaves
the current database untouched. A files-only backup holds no database: `verify` checks its
archives alone (no PostgreSQL needed), `restore` refuses it, `restore_files` takes it.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from shipyard import __version__
from shipyard.backup import archive as pg_archive
from shipyard.backup import files as data_files
from shipyard.backup.checksums import compare_stats, table_stats
from shipyard.backup.db import MAINTENANCE_DB, connect, one, run_tool, stabilise
from shipyard.backup.dump import backup, files_backup
from shipyard.backup.manifest import DUMP, VERIFIED, Backup, DatabaseSettings, find_backup
from shipyard.backup.report import BackupError, Log, human_duration, human_size, to_stderr
from shipyard.backup.storage import Storage, download

# Restore sessions: bigger sort memory makes index builds (most of a restore) faster, and a
# lost restore is simply rerun, so commits need not wait for the WAL flush.
RESTORE_OPTIONS = "-c maintenance_work_mem=256MB -c synchronous_commit=off"


def fetch(storage: Storage, backup: Backup, workdir: Path, log: Log = to_stderr) -> Path:
    """Download a backup, check its size and sha256 against the manifest, and return the
    decompressed archive (a seekable file, which parallel pg_restore needs)."""
    dump = backup.manifest["dump"]
    compressed = workdir / DUMP
    size, sha256 = download(storage, dump["key"], compressed)
    if size != dump["size"] or sha256 != dump["sha256"]:
        raise BackupError(
            f"backup {backup.id} is corrupted: {size} bytes with sha256 {sha256}, "
            f"the manifest says {dump['size']} bytes with sha256 {dump['sha256']}; "
            "nothing was changed"
        )
    log(f"backup {backup.id}: sha256 matches the manifest ({human_size(size)})")
    archive = workdir / "dump.pgc"
    result = run_tool("zstd", "-d", "-q", "-f", str(compressed), "-o", str(archive))
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
    options = f"{os.environ.get('PGOPTIONS', '')} {RESTORE_OPTIONS}".strip()
    result = run_tool(
        "pg_restore",
        f"--jobs={jobs}",
        "--exit-on-error",
        "--no-password",
        f"--dbname={dbname}",
        str(archive),
        env={"PGOPTIONS": options},
    )
    if result.returncode != 0:
        raise BackupError(f"pg_restore into {dbname} failed: {result.stderr.strip()}")


def default_jobs() -> int:
    """Parallel pg_restore workers: the index builds that dominate a restore scale with them."""
    return max(2, min(4, os.cpu_count() or 2))


def _create_database(admin: psycopg.Connection, name: str, settings: DatabaseSettings) -> None:
    _drop_database(admin, name)
    admin.execute(
        sql.SQL(
            "CREATE DATABASE {} TEMPLATE template0 OWNER {} ENCODING {} LC_COLLATE {} LC_CTYPE {}"
        ).format(
            sql.Identifier(name),
            sql.Identifier(settings.owner),
            sql.Literal(settings.encoding),
            sql.Literal(settings.collate),
            sql.Literal(settings.ctype),
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
    _create_database(admin, dbname, backup.database_settings)
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
    if chosen.files_only:
        return _verify_files_only(storage, chosen, log)
    scratch = f"shipyard_verify_{secrets.token_hex(4)}"
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="shipyard-verify-") as work,
        connect(MAINTENANCE_DB) as admin,
    ):
        archive = fetch(storage, chosen, Path(work), log)
        try:
            stats = _restore_archive(
                admin, archive, chosen, scratch, jobs or default_jobs(), log, checksums=True
            )
            # What a restore of this backup costs (download, sha256, pg_restore, and reading
            # every table back): the drill's measure of the recovery time.
            restore_seconds = time.monotonic() - started
        finally:
            _drop_database(admin, scratch)
    problems = compare_stats(chosen.manifest["tables"], stats)
    if problems:
        raise BackupError(
            f"backup {chosen.id} does not restore to what was backed up:\n  "
            + "\n  ".join(problems)
        )
    archives = data_files.verify(storage, chosen.manifest, log)
    checked = {
        "tables": len(stats),
        "rows": sum(t["rows"] for t in stats.values()),
        **({"files": archives} if archives else {}),
    }
    record, age = _record(storage, chosen, checked, restore_seconds)
    log(f"backup {chosen.id} verified: {record['tables']} tables, {record['rows']} rows match")
    log(
        f"restore drill: restored in {restore_seconds:.1f} s (recovery time); the backup is"
        f" {human_duration(age)} old (recovery point)"
    )
    return Backup(chosen.id, chosen.manifest, record)


def _record(
    storage: Storage, chosen: Backup, checked: dict[str, Any], restore_seconds: float
) -> tuple[dict[str, Any], float]:
    """Write `<id>/verified.json`: what the drill checked, its recovery time, and its recovery
    point (the backup's age: how much a restore from it, now, would lose); return both."""
    verified_at = datetime.now(UTC)
    age = (verified_at - chosen.created).total_seconds()
    record = {
        "verified_at": verified_at.isoformat(),
        **checked,
        "restore_seconds": round(restore_seconds, 3),
        "recovery_point_age_seconds": round(age, 3),
        "shipyard": __version__,
    }
    storage.put_bytes(f"{chosen.id}/{VERIFIED}", json.dumps(record, indent=2).encode())
    return record, age


def _verify_files_only(storage: Storage, chosen: Backup, log: Log) -> Backup:
    """The drill of a backup without a database: every archive downloaded, its sha256 checked
    and read through (entry count), recorded like a full drill's so the alerts read it too."""
    started = time.monotonic()
    archives = data_files.verify(storage, chosen.manifest, log)
    restore_seconds = time.monotonic() - started
    record, age = _record(storage, chosen, {"files": archives}, restore_seconds)
    log(f"backup {chosen.id} verified (files only, no database): {archives} archive(s) match")
    log(
        f"restore drill: archives read in {restore_seconds:.1f} s; the backup is"
        f" {human_duration(age)} old (recovery point)"
    )
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
    if chosen.files_only:
        # Refused before any connection: nothing of the database is in it to restore.
        raise BackupError(
            f"backup {chosen.id} holds only files, no database (CloudNativePG backs the "
            "database up): restore its files with `restore --files`; nothing was changed"
        )
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


def restore_files(
    storage: Storage,
    wanted: list[data_files.DataPath],
    backup_id: str | None = None,
    *,
    safety_backup: bool = True,
    log: Log = to_stderr,
) -> Backup | None:
    """Replace the content of the `wanted` data paths with a backup's archives of them; return
    the safety backup taken first (the database and these data paths as they were)."""
    if not wanted:
        raise BackupError("name the data paths to restore (--data-path COMPONENT:/PATH)")
    chosen = find_backup(storage, backup_id)
    archived = {(e["component"], e["path"]) for e in chosen.manifest.get(data_files.FILES, [])}
    missing = [d.name for d in wanted if (d.component, d.path) not in archived]
    if missing:
        raise BackupError(
            f"backup {chosen.id} holds no files of {', '.join(missing)}; nothing was changed"
        )
    safety = None
    if safety_backup and chosen.files_only:
        # A files-only backup is taken where the kit has no database to reach (CloudNativePG's
        # Cluster): its safety backup is files only too.
        log("taking a safety backup of the data paths (files only) before replacing them")
        safety = files_backup(storage, wanted, kind="safety", log=log)
    elif safety_backup:
        log("taking a safety backup of the database and the data paths before replacing them")
        safety = backup(storage, kind="safety", files=wanted, log=log)
    data_files.restore(storage, chosen.manifest, wanted, log)
    return safety
