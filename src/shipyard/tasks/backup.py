"""Backups from a workstation or CI: `invoke backup`, `backup.list`, `backup.verify`,
`backup.prune` and `restore`, all with `--env ENV`.

The engine is the same one the compose `backup` service and the Kubernetes CronJob run
(`shipyard backup ...`). Where it runs:

- a Compose environment's database sits on the stack's internal network with no published
  port, so there the engine runs in compose.backup.yaml's `backup` service, on that network,
  with the file's own connection and storage (`docker compose -f compose.backup.yaml run --rm
  backup shipyard backup ...`, through DOCKER_HOST like every Compose task): no PGHOST needed;
- otherwise (a Helm environment, or PGHOST set: "I reach the database myself") it runs here,
  on the database libpq's environment points at (PGHOST, PGPORT, PGUSER, PGPASSWORD or
  PGPASSFILE; PGDATABASE and PGUSER default to shipyard.yaml's `database.name`/`user`), with
  backups where shipyard.yaml's `environments.<env>.backup` says (a folder relative to this
  repo, or an S3 bucket/prefix/endpoint).

Longer than most modules on purpose: the five tasks share how they find where the engine
runs (the two cases above), and each one's plan and refusals read best beside the others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from shipyard import config
from shipyard.engines import compose as compose_engine
from shipyard.engines import state
from shipyard.engines.proc import Command
from shipyard.engines.state import BACKUP
from shipyard.tasks import operator, pitr
from shipyard.tasks.release import last_backup_image
from shipyard.tasks.support import (
    HELP_DRY,
    HELP_ENV,
    HELP_YES,
    confirm,
    execute,
    failures,
    plan,
    say,
    setup,
)

if TYPE_CHECKING:
    from shipyard.backup.storage import Storage

# The backup engine (psycopg, boto3) is imported by the tasks that run it: every `invoke`
# command loads this module, and a build or deploy should not wait for database drivers.

HELP_ID = "backup id from `invoke backup.list` (default: the newest complete one)"
HELP_JOBS = "parallel pg_restore jobs (default: 2-4 by CPU count)"
# Where compose.backup.yaml mounts the environment's backups folder (./backups/<env>).
COMPOSE_FOLDER = "file:///backups"
# compose.backup.yaml's service with the data paths writable (`restore --files`).
FILES_RESTORE = "files-restore"
# How long a task waits for work it starts in a cluster (a CloudNativePG base backup or
# recovery, a files restore Job) before it gives up waiting.
CLUSTER_TIMEOUT = 3600


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


def _settings(
    c: Context, env: str
) -> tuple[config.Config, config.Environment, config.BackupSettings]:
    """shipyard.yaml, the environment and its backup settings (Exit when it has none)."""
    cfg, environment = setup(c, env)
    if environment.backup is None:
        name = environment.name
        raise Exit(
            f"shipyard: {name} has no backup settings: add environments.{name}.backup to "
            f"{config.CONFIG_FILE} (storage, path or bucket, schedule, retention_days)",
            code=2,
        )
    return cfg, environment, environment.backup


def _in_compose(environment: config.Environment) -> bool:
    """Run the engine in the Compose stack's `backup` service (see the module's docstring)."""
    return environment.target == "compose" and not os.environ.get("PGHOST")


def _data_args(cfg: config.Config) -> list[str]:
    """The engine's --data-path options: every component's data paths (shipyard.yaml)."""
    return [
        arg
        for comp in cfg.components
        for path in comp.data_paths
        for arg in ("--data-path", f"{comp.name}:{path}")
    ]


def _compose_engine(
    cfg: config.Config,
    env: str,
    settings: config.BackupSettings,
    action: str,
    *args: str,
    service: str = BACKUP,
) -> Command:
    """`shipyard backup ACTION --target T ARGS` in a compose.backup.yaml service (`backup`).

    T is where that service keeps the environment's backups: its /backups mount or the bucket.
    The image is BACKUP_IMAGE, else the last pushed backup image (any commit's: the engine
    reads every backup format it wrote), else the file's own requirement (e.g. from .env).
    """
    file = compose_engine.BACKUP_FILE
    with failures(f"reading {file}"):
        found = (cfg.root / file).is_file() and service in compose_engine.services(cfg.root / file)
    if not found:
        raise Exit(
            f"shipyard: {env} runs on Compose, where backups run in the `{service}` service of "
            f"{file}, which is missing or has no such service; add it (see DEPLOYMENT.md, Backups"
            f"{'; `copier update` adds it for data paths' if service != BACKUP else ''}) "
            "or set PGHOST to reach the database from here",
            code=1,
        )
    if settings.storage == "s3":
        target = f"s3://{settings.bucket}/{settings.prefix.strip('/')}".rstrip("/")
    else:
        target = COMPOSE_FOLDER
    image = last_backup_image(cfg.root)
    engine_args = ("shipyard", "backup", action, "--target", target, *args)
    # Finding Compose itself can fail (not installed): one line, not a traceback.
    with failures(f"preparing the {file} backup service"):
        return compose_engine.backup(cfg.root, env, image, *engine_args, service=service)


def _choice(backup: str, jobs: int) -> list[str]:
    """The engine's --backup/--jobs options for what the task was given (its defaults else)."""
    return [*(["--backup", backup] if backup else []), *(["--jobs", str(jobs)] if jobs else [])]


def _run_compose(cmd: Command, doing: str) -> None:
    with failures(doing):
        execute(cmd, doing)


def _storage(cfg: config.Config, settings: config.BackupSettings) -> Storage:
    """The environment's backup storage as seen from here; libpq defaults from shipyard.yaml."""
    from shipyard.backup import storage

    if cfg.database:
        # Only defaults: the operator's own PGDATABASE/PGUSER (and every credential) win.
        os.environ.setdefault("PGDATABASE", cfg.database.name)
        os.environ.setdefault("PGUSER", cfg.database.user)
    if settings.storage == "s3":
        return storage.S3Storage(settings.bucket, settings.prefix, settings.endpoint or None)
    return storage.LocalStorage(cfg.root / settings.path)


def _files_only(settings: config.BackupSettings) -> config.BackupSettings:
    """Where the chart's files-only CronJob keeps its backups when CloudNativePG backs the
    database up: a folder beside the operator's (templates/backup-cronjob.yaml)."""
    return dataclasses.replace(
        settings, prefix=f"{settings.prefix.rstrip('/')}/{operator.FILES_FOLDER}"
    )


def _where() -> str:
    """The database as libpq will reach it, without credentials."""
    host = os.environ.get("PGHOST", "local socket")
    port = os.environ.get("PGPORT", "5432")
    return f"{os.environ.get('PGDATABASE', '?')} on {host}:{port}"


@task(
    help={
        "env": HELP_ENV,
        "dry_run": "print what would happen and change nothing",
        "full": "with point-in-time recovery: a full base backup, not a differential one",
    }
)
def run(c: Context, env: str = "", dry_run: bool = False, full: bool = False) -> None:
    """Back up the environment's database now (a manual backup)."""
    from shipyard.backup import engine

    cfg, environment, settings = _settings(c, env)
    if full and not (pitr.enabled(environment) and _in_compose(environment)):
        # Where no base backup would follow the dump (no pgBackRest, or PGHOST: the engine runs
        # here, on the dump alone), --full would be dropped without a word.
        raise Exit(
            f"shipyard: --full is pgBackRest's full base backup, taken on a Compose host whose"
            f" {config.CONFIG_FILE} environment has point_in_time, with PGHOST unset;"
            f" {environment.name} is not one",
            code=2,
        )
    if operator.by_operator(cfg, environment):
        operator.backup(cfg, environment, dry_run, CLUSTER_TIMEOUT)
        return
    env = environment.name
    if _in_compose(environment):
        cmd = _compose_engine(cfg, env, settings, "run", "--kind", "manual", *_data_args(cfg))
        base = pitr.enabled(environment)
        kind = "full" if full else "diff"
        if dry_run:
            steps: list[Command | str] = [cmd]
            if base:
                steps.append(
                    f"a {'full' if full else 'differential'} base backup in the running"
                    f" {pitr.SERVICE} container (pgBackRest"
                    + ("" if full else "; a full one when there is none yet")
                    + ")"
                )
            plan(f"backup of {env} (in the Compose stack's backup service)", steps)
            return
        _run_compose(cmd, f"the backup of {env}")
        print(f"{env}: backup complete (its id is in the engine's last line above)")
        if base:
            pitr.base_backup(cfg, environment, kind)
        return
    target = _storage(cfg, settings)
    if _data_args(cfg):
        # The data volumes live in the cluster (or on the Compose host), not here.
        where = (
            f"the chart's backup CronJob archives them (one now: `kubectl create job --namespace "
            f"{environment.namespace} --from=cronjob/{cfg.service}-backup {cfg.service}-now`)"
            if environment.is_helm
            else "the Compose stack's backup service archives them (unset PGHOST)"
        )
        print(f"{env}: the data paths' files are not reachable from here and are not in this "
              f"backup; {where}")  # fmt: skip
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

    cfg, environment, settings = _settings(c, env)
    if operator.by_operator(cfg, environment):
        operator.list_backups(cfg, environment)
        if operator.keeps_files(cfg):
            target = _storage(cfg, _files_only(settings))
            print(f"{environment.name}: files backups (the data paths) in {target.url}:")
            with _failures(f"listing the files backups of {environment.name}"):
                print(cli.format_table(engine.list_backups(target)))
        return
    env = environment.name
    if _in_compose(environment):
        cmd = _compose_engine(cfg, env, settings, "list")
        _run_compose(cmd, f"listing the backups of {env}")
        if pitr.enabled(environment):
            pitr.show_window(cfg, environment)
        return
    target = _storage(cfg, settings)
    with _failures(f"listing the backups of {env}"):
        print(cli.format_table(engine.list_backups(target)))


@task(help={"env": HELP_ENV, "backup": HELP_ID, "jobs": HELP_JOBS})
def verify(c: Context, env: str = "", backup: str = "", jobs: int = 0) -> None:
    """Restore a backup into a scratch database, compare every table, drop it, report."""
    from shipyard.backup import engine, metrics

    cfg, environment, settings = _settings(c, env)
    if operator.by_operator(cfg, environment):
        if not operator.keeps_files(cfg):
            raise operator.refuse(cfg, environment, "backup.verify")
        # The operator's backups have no drill here; the files-only ones do (no database).
        settings = _files_only(settings)
    env = environment.name
    if _in_compose(environment):
        cmd = _compose_engine(cfg, env, settings, "verify", *_choice(backup, jobs))
        _run_compose(cmd, f"verifying a backup of {env}")
        print(f"{env}: backup verified: every table matches its manifest")
        if pitr.enabled(environment) and not backup:
            pitr.drill(cfg, environment)
        return
    target = _storage(cfg, settings)
    # A drill run from here reports itself like one in the backup image (SHIPYARD_PUSHGATEWAY_URL,
    # SHIPYARD_SERVICE, SHIPYARD_ENV in this environment; nothing pushed without them).
    started = time.time()
    try:
        with _failures(f"verifying a backup of {env}"):
            checked = engine.verify(target, backup or None, jobs=jobs)
    except Exit:
        metrics.push(metrics.verify_report(None, started=started, ended=time.time()), os.environ)
        raise
    metrics.push(metrics.verify_report(checked, started=started, ended=time.time()), os.environ)
    record = checked.verified or {}
    if checked.files_only:
        print(
            f"{env}: files backup {checked.id} verified: {record.get('files')} archive(s)"
            " match their sha256 and entries"
        )
        return
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

    cfg, environment, settings = _settings(c, env)
    if operator.by_operator(cfg, environment):
        raise operator.refuse(cfg, environment, "backup.prune (its retentionPolicy prunes)")
    env = environment.name
    if _in_compose(environment):
        days = str(settings.retention_days)
        if dry_run or not yes:
            check = _compose_engine(
                cfg, env, settings, "prune", "--retention-days", days, "--dry-run"
            )
            _run_compose(check, f"pruning the backups of {env}")
            if dry_run:
                return
            confirm(f"Delete the backups of {env} listed above (retention: {days} days)?", yes)
        cmd = _compose_engine(cfg, env, settings, "prune", "--retention-days", days)
        _run_compose(cmd, f"pruning the backups of {env}")
        return
    target = _storage(cfg, settings)
    policy = engine.Retention(daily=settings.retention_days)
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
        "yes": HELP_YES,
        "dry_run": HELP_DRY,
        "jobs": HELP_JOBS,
        "files": "restore the components' data paths (their files) instead of the database",
        "at": "point-in-time recovery: to this time (2026-12-04T10:15:00Z) or 'latest' (a "
        "CloudNativePG Cluster: into a new one; point_in_time on Compose: swapped in)",
    }
)
def restore(
    c: Context,
    env: str = "",
    backup: str = "",
    yes: bool = False,
    dry_run: bool = False,
    jobs: int = 0,
    files: bool = False,
    at: str = "",
) -> None:
    """Replace the environment's database (or, with --files, its data paths) with a backup;
    with --at, recover it to a point in time (CloudNativePG, or pgBackRest on Compose)."""
    from shipyard.backup import engine

    cfg, environment, settings = _settings(c, env)
    env = environment.name
    if operator.by_operator(cfg, environment) and not files:
        if backup or not at:
            raise operator.refuse(cfg, environment, "restore without --at")
        operator.recover(cfg, environment, at, yes, dry_run, CLUSTER_TIMEOUT)
        return
    if at and pitr.enabled(environment) and not files:
        if backup:
            raise Exit(
                "shipyard: --at recovers to a point in time and --backup restores a dump: give one",
                code=2,
            )
        pitr.recover(cfg, environment, at, yes, dry_run)
        return
    if at:
        raise Exit(
            f"shipyard: --at (point-in-time recovery) needs PostgreSQL run by CloudNativePG "
            f"(the database_on_kubernetes answer) or, on Compose, point_in_time in "
            f"{config.CONFIG_FILE} (the point_in_time_recovery answer); {env} restores the "
            "kit's backups: drop --at and choose one with --backup (`invoke backup.list`)",
            code=2,
        )
    if files:
        _restore_files(cfg, environment, settings, backup, yes, dry_run)
        return
    if _in_compose(environment):
        _compose_restore(cfg, env, settings, backup, yes, dry_run, jobs)
        return
    target = _storage(cfg, settings)
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


def _compose_restore(
    cfg: config.Config,
    env: str,
    settings: config.BackupSettings,
    backup: str,
    yes: bool,
    dry_run: bool,
    jobs: int,
) -> None:
    """`restore` through the Compose stack's backup service; the engine takes the same steps."""
    chosen = backup or "the newest complete backup"
    cmd = _compose_engine(cfg, env, settings, "restore", *_choice(backup, jobs), "--yes")
    if dry_run:
        plan(
            f"restore {env} from {chosen} (in the Compose stack's backup service)",
            [
                cmd,
                "in it: download the backup and check its sha256, take a safety backup, "
                "pg_restore into a new database, compare row counts with the manifest, end the "
                "sessions, swap the restored database in, drop the old one",
            ],
        )
        return
    confirm(f"Replace the database of {env} (its Compose stack's) with {chosen}?", yes)
    _run_compose(cmd, f"the restore of {env}")
    print(f"{env}: database restored from {chosen} (the safety backup's id is above)")


def _restore_files(
    cfg: config.Config,
    environment: config.Environment,
    settings: config.BackupSettings,
    backup: str,
    yes: bool,
    dry_run: bool,
) -> None:
    """`restore --files`: in compose.backup.yaml's files-restore service, the only place the
    data volumes are mounted writable for the engine."""
    env = environment.name
    data = _data_args(cfg)
    if not data:
        raise Exit(
            f"shipyard: no component of {config.CONFIG_FILE} has data_paths: there are no files "
            "to restore",
            code=2,
        )
    chosen = backup or "the newest complete backup"
    paths = ", ".join(data[1::2])
    if environment.is_helm:
        _restore_files_in_cluster(cfg, environment, backup, yes, dry_run, paths)
        return
    cmd = _compose_engine(
        cfg,
        env,
        settings,
        "restore",
        "--files",
        *_choice(backup, 0),
        "--yes",
        *data,
        service=FILES_RESTORE,
    )
    if dry_run:
        plan(
            f"restore the files of {env} from {chosen} (in the Compose stack's "
            f"{FILES_RESTORE} service)",
            [
                cmd,
                "in it: take a safety backup (database and data paths), download each archive "
                "and check its sha256, extract every one beside its data path, then swap each "
                "data path's content for the restored one",
            ],
        )
        return
    confirm(f"Replace the files of {paths} ({env}) with {chosen}?", yes)
    _run_compose(cmd, f"the files restore of {env}")
    print(f"{env}: {paths} restored from {chosen} (the safety backup's id is above)")


def _restore_files_in_cluster(
    cfg: config.Config,
    environment: config.Environment,
    backup: str,
    yes: bool,
    dry_run: bool,
    paths: str,
) -> None:
    """`restore --files` on Kubernetes: a Job from the backup CronJob, the claims writable,
    the components that own them stopped meanwhile (engines/files_job.py)."""
    from shipyard.engines import files_job
    from shipyard.engines.helm import job_name

    env = environment.name
    job = files_job.FilesRestore(
        release=cfg.service,
        namespace=environment.namespace,
        cronjob=f"{cfg.service}-backup",
        name=job_name(f"{cfg.service}-files-restore"),
        backup=backup,
        components=tuple(comp.name for comp in cfg.components if comp.data_paths),
        timeout=CLUSTER_TIMEOUT,
        manifest=cfg.root / state.FOLDER / f"files-restore-job-{env}.json",
    )
    chosen = backup or "the newest complete backup"
    if dry_run:
        plan(f"restore the files of {env} from {chosen} (a Job in {job.namespace})", job.plan())
        return
    stopped = ", ".join(job.components)
    confirm(f"Stop {stopped} and replace the files of {paths} ({env}) with {chosen}?", yes)
    with failures(f"the files restore of {env}"):
        files_job.restore(job, say)
    print(f"{env}: {paths} restored from {chosen}; {stopped} started again")


ns = Collection("backup")
ns.add_task(run, default=True)
ns.add_task(list_)
ns.add_task(verify)
ns.add_task(prune)
