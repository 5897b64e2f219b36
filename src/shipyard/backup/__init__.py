"""PostgreSQL backups that are proven restorable: dump, restore, verify, retention.

`engine` is the engine's face (its docstring maps the modules that do the work), `storage`
keeps the files (local folder or S3), `cli` is the `shipyard backup ...` command the compose
service and the Kubernetes CronJob run.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    """The names in __all__, imported on first use rather than with the package: a module of
    it that needs none of them, like pgbackrest.py (PostgreSQL's archive_command, run once per
    WAL segment), must not load the engine, psycopg and the schemas (about 0.6 s)."""
    if name in __all__:
        for home in ("shipyard.backup.engine", "shipyard.backup.storage"):
            module = importlib.import_module(home)
            if hasattr(module, name):
                return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
