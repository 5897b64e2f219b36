"""The backup engine's face: the API behind `shipyard backup ...` (compose service, Kubernetes
CronJob) and the `invoke backup/restore` tasks, re-exported from the modules that own each
part. A backup is `<id>/dump.pgc.zst`, `<id>/files/...` (the data paths) and
`<id>/manifest.json`:

- `manifest`: that layout, backup ids, listing and finding complete backups;
- `kinds`: why a backup was taken (the manifest's `kind`), and the variable `run` reads it from;
- `db`: the PostgreSQL client tools and zstd on PATH, and sessions from libpq's environment
  (no credential is ever put on a command line or printed);
- `checksums`: per-table row counts and checksums, read in the very snapshot pg_dump dumps, so
  `verify` can prove a restore reproduces the data;
- `dump`: `backup`, pg_dump piped through zstd into the storage, the manifest written last;
  `files_backup`, the data paths alone (the database backed up by CloudNativePG);
- `files`: the components' data paths, archived (tar | zstd) beside the dump, checked by
  `verify` and put back by `restore_files`;
- `recovery`: `verify` and `restore`, each through a new database compared with the manifest
  (not `restore.py`: a module of that name would clash with the function on the package), and
  `restore_files`, after a safety backup;
- `retention`: which backups a policy keeps, and `prune`;
- `report`: `BackupError` and the progress lines.

Nothing is defined here: import from this module or from `shipyard.backup`; a new name goes
in the module that owns it.
"""

from shipyard.backup.checksums import compare_stats, table_stats
from shipyard.backup.db import connect, tool, tool_version
from shipyard.backup.dump import ZSTD_LEVEL, backup, files_backup
from shipyard.backup.files import DataPath, data_path
from shipyard.backup.manifest import (
    DUMP,
    FILES_ONLY,
    FORMAT,
    MANIFEST,
    VERIFIED,
    Backup,
    find_backup,
    id_time,
    list_backups,
    new_id,
)
from shipyard.backup.recovery import default_jobs, fetch, restore, restore_files, verify
from shipyard.backup.report import BackupError, Log
from shipyard.backup.retention import Retention, plan_retention, prune

__all__ = [
    "DUMP",
    "FILES_ONLY",
    "FORMAT",
    "MANIFEST",
    "VERIFIED",
    "ZSTD_LEVEL",
    "Backup",
    "BackupError",
    "DataPath",
    "Log",
    "Retention",
    "backup",
    "compare_stats",
    "connect",
    "data_path",
    "default_jobs",
    "fetch",
    "files_backup",
    "find_backup",
    "id_time",
    "list_backups",
    "new_id",
    "plan_retention",
    "prune",
    "restore",
    "restore_files",
    "table_stats",
    "tool",
    "tool_version",
    "verify",
]
