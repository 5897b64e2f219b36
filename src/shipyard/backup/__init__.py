"""PostgreSQL backups that are proven restorable: dump, restore, verify, retention.

`engine` is the engine's face (its docstring maps the modules that do the work), `storage`
keeps the files (local folder or S3), `cli` is the `shipyard backup ...` command the compose
service and the Kubernetes CronJob run.
"""

from shipyard.backup.engine import (
    Backup,
    BackupError,
    Retention,
    backup,
    find_backup,
    list_backups,
    plan_retention,
    prune,
    restore,
    verify,
)
from shipyard.backup.storage import LocalStorage, S3Storage, Storage, StorageError, from_url

__all__ = [
    "Backup",
    "BackupError",
    "LocalStorage",
    "Retention",
    "S3Storage",
    "Storage",
    "StorageError",
    "backup",
    "find_backup",
    "from_url",
    "list_backups",
    "plan_retention",
    "prune",
    "restore",
    "verify",
]
