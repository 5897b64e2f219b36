"""What a backup is in storage: `<id>/dump.pgc.zst` and `<id>/files/...` (or, files only, the
archives alone), then `<id>/manifest.json` written last.

This module owns the layout (file names, the manifest's format, backup ids) and reading it
back: a backup without a valid manifest is incomplete and is never listed, restored or counted
by retention. `verified.json` beside them records the last verification that passed.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shipyard import config
from shipyard.backup.files import FILES
from shipyard.backup.report import BackupError, to_stderr
from shipyard.backup.storage import Storage, StorageError

DUMP = "dump.pgc.zst"
MANIFEST = "manifest.json"
VERIFIED = "verified.json"
FORMAT = "shipyard-backup/1"
# The manifest's mark of a backup of the data paths alone (no database: CloudNativePG's).
FILES_ONLY = "files_only"
ID_TIME = "%Y%m%dT%H%M%SZ"


@dataclass(frozen=True)
class DatabaseSettings:
    """What a restored database must be created with to hold the dump's bytes as they were
    (the manifest's `database_settings`)."""

    owner: str
    encoding: str
    collate: str
    ctype: str

    def as_json(self) -> dict[str, str]:
        return {
            "owner": self.owner,
            "encoding": self.encoding,
            "collate": self.collate,
            "ctype": self.ctype,
        }


@dataclass(frozen=True)
class Backup:
    """One complete backup: its manifest and whether a verification passed."""

    id: str
    manifest: dict[str, Any]
    verified: dict[str, Any] | None

    @property
    def created(self) -> datetime:
        return datetime.fromisoformat(self.manifest["created_at"])

    @property
    def files_only(self) -> bool:
        """It holds the data paths' archives and no database."""
        return bool(self.manifest.get(FILES_ONLY))

    @property
    def database_settings(self) -> DatabaseSettings:
        return DatabaseSettings(**self.manifest["database_settings"])

    @property
    def size(self) -> int:
        """Bytes in storage: the compressed dump (if any) and the archives of the data paths."""
        archives = self.manifest.get(FILES, [])
        dump = 0 if self.files_only else int(self.manifest["dump"]["size"])
        return dump + sum(int(f["size"]) for f in archives)


def new_id(now: datetime | None = None) -> str:
    """Sortable and unique: UTC time plus a random suffix for backups in the same second."""
    return f"{(now or datetime.now(UTC)).strftime(ID_TIME)}-{secrets.token_hex(3)}"


def id_time(backup_id: str) -> datetime | None:
    try:
        return datetime.strptime(backup_id.split("-", 1)[0], ID_TIME).replace(tzinfo=UTC)
    except ValueError:
        return None


def list_backups(storage: Storage) -> list[Backup]:
    """Complete backups (those with a valid manifest and everything it lists), oldest first."""
    keys = set(storage.list_keys())
    found = []
    for key in sorted(keys):
        backup_id, _, name = key.partition("/")
        if name != MANIFEST:
            continue
        manifest = _read_json(storage, key)
        if manifest is None or config.schema_errors(manifest, "backup-manifest"):
            to_stderr(
                f"ignoring {backup_id}: its manifest is unreadable or not a shipyard manifest"
            )
            continue
        stored = [] if manifest.get(FILES_ONLY) else [f"{backup_id}/{DUMP}"]
        stored += [entry["key"] for entry in manifest.get(FILES, [])]
        if not all(k in keys for k in stored):
            # Only a manifest the engine wrote last makes a backup; this one's files are gone.
            to_stderr(f"ignoring {backup_id}: files its manifest lists are missing")
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
