"""Backups from a workstation or CI: `invoke backup`, `backup.list`, `backup.verify`,
`backup.prune` and `restore`, all with `--env ENV`.

The database is the one libpq's environment points at (PGHOST, PGPORT, PGUSER, PGPASSWORD or
PGPASSFILE; PGDATABASE and PGUSER default to shipyard.yaml's `database.name`/`user`); where
backups live comes from shipyard.yaml's `environments.<env>.backup` (a folder relative to this
repo, or an S3 bucket/prefix/endpoint). The engine is the same one the compose `backup`
service and the Kubernetes CronJob run (`shipyard backup ...`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from shipyard import config
from shipyard.tasks._run import confirm, plan, setup

if TYPE_CHECKING:
    from shipyard.backup.storage import Storage

# The backup engine (psycopg, boto3) is imported by the tasks that run it: every `invoke`
# command loads this module, and a build or deploy should not wait for database drivers.

HELP_ENV = "environment: dev, staging or prod ('production' works too)"
HELP_ID = "backup id from `invoke backup.list` (default: the newest complete one)"
HELP_JOBS = "parallel pg_restore jobs (default: 2-4 by CPU count)"


@contextlib.contextmanager
def _failures(doing: str) -> Iterator[None]:
    """Engine, storage and database errors become one `Exit` line, never a traceback."""
    import psycopg

    from shipyard.backup import engine, storage

    try:
        yield
    except (engine.BackupError, storage.StorageError) as exc:
        raise Exit(f"shipyard: {doing} failed: {exc}", code=1) from None
    except psycopg.Error as exc:
        raise Exit(f"shipyard: {doing} failed: {str(exc).strip()}", code=1) from None
    except KeyboardInterrupt:
        raise Exit(f"shipyard: {doing} interrupted (Ctrl-C)", code=130) from None


def _prepare(c: Context, env: str) -> tuple[str, dict[str, Any], Storage]:
    """Environment name, its backup settings and storage; libpq defaults from shipyard.yaml."""
    from shipyard.backup import storage

    cfg, env, settings = setup(c, env)
    settings_backup: dict[str, Any] | None = settings.get("backup")
    if not settings_backup:
        raise Exit(
            f"shipyard: {env} has no backup settings: add environments.{env}.backup to "
            f"{config.CONFIG_FILE} (storage, path or bucket, schedule, retention_days)",
            code=2,
        )
    database = cfg.data.get("database", {})
    # Only defaults: the operator's own PGDATABASE/PGUSER (and every credential) win.
    for var, key in (("PGDATABASE", "name"), ("PGUSER", "user")):
        if key in database:
            os.environ.setdefault(var, database[key])
    if settings_backup["storage"] == "s3":
        target: Storage = storage.S3Storage(
            settings_backup["bucket"],
            settings_backup.get("prefix", ""),
            settings_backup.get("endpoint") or None,
        )
    else:
        target = storage.LocalStorage(cfg.root / settings_backup["path"])
    return env, settings_backup, target


def _where() -> str:
    """The database as libpq will reach it, without credentials."""
    host = os.environ.get("PGHOST", "local socket")
    port = os.environ.get("PGPORT", "5432")
    return f"{os.environ.get('PGDATABASE', '?')} on {host}:{port}"


@task(help={"env": HELP_ENV, "dry_run": "print what would happen and change nothing"})
def run(c: Context, env: str = "", dry_run: bool = False) -> None:
    """Back up the environment's database now (a manual backup)."""
    from shipyard.backup import engine

    env, _settings, target = _prepare(c, env)
    if dry_run:
        plan(
            f"backup of {env}",
            [
                f"pg_dump --format=custom --compress=0 {_where()} | zstd -{engine.ZSTD_LEVEL}, "
                f"streamed to {target.url}/<id>/{engine.DUMP}",
                "row counts and checksums of every table, read in pg_dump's snapshot",
                f"write {target.url}/<id>/{engine.MANIFEST} last (size, sha256, versions)",
            ],
        )
        return
    with _failures(f"the backup of {env}"):
        made = engine.backup(target, kind="manual")
    print(f"{env}: backup {made.id} complete in {target.url}")


@task(name="list", help={"env": HELP_ENV})
def list_(c: Context, env: str = "") -> None:
    """List the environment's complete backups, oldest first."""
    from shipyard.backup import cli, engine

    env, _settings, target = _prepare(c, env)
    with _failures(f"listing the backups of {env}"):
        print(cli.format_table(engine.list_backups(target)))


@task(help={"env": HELP_ENV, "backup": HELP_ID, "jobs": HELP_JOBS})
def verify(c: Context, env: str = "", backup: str = "", jobs: int = 0) -> None:
    """Restore a backup into a scratch database, compare every table, drop it, report."""
    from shipyard.backup import engine

    env, _settings, target = _prepare(c, env)
    with _failures(f"verifying a backup of {env}"):
        checked = engine.verify(target, backup or None, jobs=jobs)
    record = checked.verified or {}
    print(
        f"{env}: backup {checked.id} verified: {record.get('tables')} tables and "
        f"{record.get('rows')} rows match its manifest"
    )


@task(
    help={
        "env": HELP_ENV,
        "dry_run": "print what would be deleted and delete nothing",
        "yes": "do not ask for confirmation",
    }
)
def prune(c: Context, env: str = "", dry_run: bool = False, yes: bool = False) -> None:
    """Apply retention (retention_days in shipyard.yaml); the newest verified backup stays."""
    from shipyard.backup import engine

    env, settings, target = _prepare(c, env)
    policy = engine.Retention(daily=settings["retention_days"])
    with _failures(f"pruning the backups of {env}"):
        doomed = engine.prune(target, policy, dry_run=True, log=lambda _m: None)
        if dry_run or not doomed:
            print(f"{env}: would delete {', '.join(doomed) or 'nothing'}")
            return
        confirm(f"Delete {len(doomed)} backup(s) of {env}: {', '.join(doomed)}?", yes)
        engine.prune(target, policy)


@task(
    help={
        "env": HELP_ENV,
        "backup": HELP_ID,
        "yes": "do not ask for confirmation (CI)",
        "dry_run": "print the exact plan and change nothing",
        "jobs": HELP_JOBS,
    }
)
def restore(
    c: Context,
    env: str = "",
    backup: str = "",
    yes: bool = False,
    dry_run: bool = False,
    jobs: int = 0,
) -> None:
    """Replace the environment's database with a backup (a safety backup is taken first)."""
    from shipyard.backup import engine

    env, _settings, target = _prepare(c, env)
    with _failures(f"finding the backup of {env}"):
        chosen = engine.find_backup(target, backup or None)
    manifest = chosen.manifest
    database = os.environ.get("PGDATABASE", "?")
    jobs = jobs or engine.default_jobs()
    steps = [
        f"download {target.url}/{chosen.id} ({manifest['dump']['size']} bytes, database "
        f"{manifest['database']}, taken {manifest['created_at']}) and check its sha256",
        f"safety backup of {_where()} into {target.url}",
        f"create a new database and pg_restore --jobs={jobs} into it",
        f"compare row counts and checksums of {len(manifest['tables'])} tables with the manifest",
        f"end the sessions on {database}, swap the restored database in, drop the old one",
    ]
    if dry_run:
        plan(f"restore {env} from backup {chosen.id}", steps)
        return
    confirm(
        f"Replace database {_where()} ({env}) with backup {chosen.id} of {manifest['created_at']}?",
        yes,
    )
    with _failures(f"the restore of {env}"):
        safety = engine.restore(target, chosen.id, jobs=jobs)
    undo = f"; the previous data is backup {safety.id}" if safety else ""
    print(f"{env}: database {database} restored from backup {chosen.id}{undo}")


ns = Collection("backup")
ns.add_task(run, default=True)
ns.add_task(list_)
ns.add_task(verify)
ns.add_task(prune)
