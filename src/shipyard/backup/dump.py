"""`backup`: one streamed dump of the database libpq's environment points at.

The dump is `pg_dump -Fc -Z0` piped through `zstd` into the storage: the custom format restores
with `pg_restore -j`, and compressing in a separate multi-threaded process is faster than
pg_dump's built-in gzip (benchmarks/backup.py measures it); pg_dump 15 has no zstd of its own.
The table statistics are read beside it in the same exported snapshot, so they describe the
dump exactly, and the manifest is written last.

`files_backup` is the same backup without the database: the data paths' archives and a
manifest that says it holds no database, for a service whose PostgreSQL someone else backs up
(CloudNativePG on Kubernetes). It needs no PostgreSQL at all.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import IO, Any

import psycopg

from shipyard import __version__
from shipyard.backup import files as data_files
from shipyard.backup.checksums import table_stats
from shipyard.backup.db import connect, ended, one, pipe, stabilise, tool, tool_version
from shipyard.backup.manifest import (
    DUMP,
    FILES_ONLY,
    FORMAT,
    MANIFEST,
    Backup,
    DatabaseSettings,
    new_id,
)
from shipyard.backup.report import BackupError, Log, human_size, to_stderr
from shipyard.backup.storage import HashingReader, Storage

# Level 1: on 2 cores every cycle zstd spends is taken from pg_dump (measured at pgbench scale
# 20: -3 makes the backup ~5% slower than -1 for a 25% smaller file).
ZSTD_LEVEL = 1


class _DumpReader(HashingReader):
    """zstd's output as a file object; at its end it fails the upload unless pg_dump, zstd and
    the table statistics all succeeded."""

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
        super().__init__(pipe(zstd.stdout))

    def finish(self) -> None:
        dump_rc, zstd_rc = self.pg_dump.wait(), self.zstd.wait()
        # A statistics query that failed ends the snapshot's transaction, so pg_dump cannot
        # import the snapshot: then the statistics' error is the one that says why (it is
        # recorded a moment after the server's error, hence the short wait).
        if dump_rc != 0 and self.stats_done.wait(timeout=2) and self.stats_error:
            raise BackupError(f"reading table statistics failed: {self.stats_error[0]}")
        if dump_rc != 0:
            self.dump_errors.seek(0)
            detail = self.dump_errors.read().decode(errors="replace").strip()
            raise BackupError(f"pg_dump {ended(dump_rc)}" + (f": {detail}" if detail else ""))
        if zstd_rc != 0:
            raise BackupError(f"zstd {ended(zstd_rc)}")
        self.stats_done.wait()
        if self.stats_error:
            raise BackupError(f"reading table statistics failed: {self.stats_error[0]}")


def backup(
    storage: Storage,
    *,
    kind: str = "manual",
    files: Sequence[data_files.DataPath] = (),
    log: Log = to_stderr,
) -> Backup:
    """Dump the database libpq's environment points at into `storage`, with an archive of
    each data path in `files`; return the backup."""
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
        settings = _database_settings(conn)
        # The dump is in the database's own encoding, never PGCLIENTENCODING's: bytes a
        # SQL_ASCII database holds need not be valid in any other encoding.
        dump_encoding = f"--encoding={settings.encoding}"
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
                        f"database {database} ({settings.encoding}) has schema, table or "
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
            dump_out = pipe(dumper.stdout)
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
                pipe(compressor.stdout).close()
                if worker.is_alive():
                    # The dump failed; do not wait for the statistics of a backup that is gone.
                    conn.cancel_safe()
                worker.join()
                versioner.join()
        conn.execute("ROLLBACK")
    # After the dump: the files are as of a moment after the database's snapshot, so a restore
    # of both never has rows pointing at files that are missing (only, at worst, files newer
    # than the rows).
    archived = [data_files.archive(storage, backup_id, data, log) for data in files]

    manifest = {
        "format": FORMAT,
        "id": backup_id,
        "kind": kind,
        "created_at": created.isoformat(),
        "duration_seconds": round(time.monotonic() - started, 3),
        "database": database,
        "server_version": server,
        "database_settings": settings.as_json(),
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
        **({data_files.FILES: archived} if archived else {}),
    }
    # Written last: its presence is what makes the backup complete.
    storage.put_bytes(f"{backup_id}/{MANIFEST}", json.dumps(manifest, indent=2).encode())
    log(
        f"backup {backup_id} complete: {human_size(reader.size)}, {len(stats)} tables"
        + (f", {len(archived)} data path(s)" if archived else "")
        + ", sha256 "
        f"{reader.sha256.hexdigest()[:16]}..."
    )
    return Backup(backup_id, manifest, None)


def files_backup(
    storage: Storage,
    files: Sequence[data_files.DataPath],
    *,
    kind: str = "manual",
    log: Log = to_stderr,
) -> Backup:
    """Archive each data path in `files` into `storage`, with no database; return the backup.
    The manifest, written last, is what makes it complete, as for a backup with a dump."""
    if not files:
        raise BackupError(
            "a files-only backup needs the data paths to archive (--data-path COMPONENT:/PATH)"
        )
    started = time.monotonic()
    backup_id = new_id()
    created = datetime.now(UTC)
    log(f"backing up {len(files)} data path(s), no database, to {storage.url}/{backup_id}")
    archived = [data_files.archive(storage, backup_id, data, log) for data in files]
    manifest = {
        "format": FORMAT,
        "id": backup_id,
        "kind": kind,
        FILES_ONLY: True,
        "created_at": created.isoformat(),
        "duration_seconds": round(time.monotonic() - started, 3),
        "tools": {n: tool_version(n) for n in ("tar", "zstd")} | {"shipyard": __version__},
        data_files.FILES: archived,
    }
    storage.put_bytes(f"{backup_id}/{MANIFEST}", json.dumps(manifest, indent=2).encode())
    size = sum(int(entry["size"]) for entry in archived)
    log(
        f"backup {backup_id} complete (files only, no database): {len(archived)} data path(s), "
        f"{human_size(size)}"
    )
    return Backup(backup_id, manifest, None)


def _database_settings(conn: psycopg.Connection) -> DatabaseSettings:
    owner, encoding, collate, ctype = one(
        conn,
        "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype"
        " FROM pg_database WHERE datname = current_database()",
    )
    return DatabaseSettings(owner, encoding, collate, ctype)
