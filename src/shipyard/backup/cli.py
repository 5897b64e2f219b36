"""`shipyard backup run|list|verify|restore|prune|schedule --target URL`: the backup engine's
command.

The Helm CronJob and the compose `backup` service run `shipyard backup run --target URL
--retention-days N`; where CloudNativePG backs the database up, the CronJob runs `run
--files-only` with the data paths, which needs no database. The database comes only from
libpq's environment (PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD or PGPASSFILE), S3
credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the endpoint from
AWS_ENDPOINT_URL; none is ever an argument. With SHIPYARD_PUSHGATEWAY_URL (and
SHIPYARD_SERVICE, SHIPYARD_ENV), `run` and `verify` push their outcome to that Pushgateway
(`metrics`).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from shipyard import timepoint
from shipyard.backup import (
    drill_record,
    engine,
    files,
    kinds,
    metrics,
    pgbackrest,
    pitr,
    schedule,
    storage,
)

# The kinds `run` takes (a safety backup is a restore's own).
RUN_KINDS = (kinds.SCHEDULED, kinds.MANUAL, kinds.PRE_MIGRATE)
# `list`'s kind column: as wide as the longest kind, so the columns after it line up.
KIND_WIDTH = max(len(kind) for kind in kinds.KINDS)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `backup` and its subcommands to the `shipyard` parser."""
    text = (
        "back up PostgreSQL and the data paths, verify, restore and prune the backups, run them"
        " on a schedule; point-in-time recovery by pgBackRest"
    )
    parser = commands.add_parser("backup", help=text, description=text)
    actions = parser.add_subparsers(dest="backup_command", required=True)

    def action(
        name: str, text: str, under: argparse._SubParsersAction[argparse.ArgumentParser] = actions
    ) -> argparse.ArgumentParser:
        sub = under.add_parser(name, help=text, description=text)
        sub.add_argument(
            "--target",
            required=True,
            metavar="URL",
            help="file:///backups (a mounted volume) or s3://BUCKET/PREFIX",
        )
        return sub

    run = action("run", "dump the database into the target, then apply retention")
    run.add_argument(
        "--kind",
        choices=RUN_KINDS,
        help=f"why it is taken (default: ${kinds.KIND_VARIABLE}, else scheduled)",
    )
    run.add_argument(
        "--files-only",
        action="store_true",
        help="archive the --data-path folders alone, no database (CloudNativePG backs it up)",
    )
    _data_arguments(run)
    _retention_arguments(run, required=False)
    action("list", "list complete backups, oldest first")
    check = action("verify", "restore a backup into a scratch database and compare every table")
    check.add_argument("--backup", metavar="ID", help="backup id (default: the newest)")
    jobs = "parallel pg_restore jobs (default: 2 to 4, by the CPUs)"
    check.add_argument("--jobs", type=int, default=0, metavar="N", help=jobs)
    back = action("restore", "replace PGDATABASE with a backup (a safety backup is taken first)")
    back.add_argument("--backup", metavar="ID", help="backup id (default: the newest)")
    back.add_argument(
        "--files",
        action="store_true",
        help="restore the --data-path folders instead of the database",
    )
    _data_arguments(back)
    back.add_argument("--jobs", type=int, default=0, metavar="N", help=jobs)
    back.add_argument(
        "--yes", action="store_true", required=True, help="required: it replaces data"
    )
    every = action(
        "schedule", "run backups and restore drills on their cron schedules (UTC) until stopped"
    )
    every.add_argument(
        "--backup-at", metavar="CRON", help="when to run `run` (with the options below)"
    )
    every.add_argument(
        "--drill-at", metavar="CRON", help="when to run `verify` of the newest backup"
    )
    _data_arguments(every)
    _retention_arguments(every, required=False)
    # Point-in-time recovery's jobs, where the scheduler shares the server's data and socket
    # (compose.backup.yaml): pgBackRest's base backups and its drill.
    every.add_argument(
        "--pitr-target", metavar="URL", help="the pgBackRest repository of the jobs below"
    )
    every.add_argument("--base-full-at", metavar="CRON", help="when to take a full base backup")
    every.add_argument(
        "--base-diff-at", metavar="CRON", help="when to take a differential base backup"
    )
    every.add_argument(
        "--pitr-drill-at", metavar="CRON", help="when to run `pitr drill` (restore latest)"
    )
    prune = action("prune", "delete backups the retention policy does not keep")
    _retention_arguments(prune, required=True)
    prune.add_argument("--dry-run", action="store_true", help="only print what would go")

    # Point-in-time recovery by pgBackRest, run where the server's data directory is (PGDATA).
    text = "point-in-time recovery by pgBackRest, where the server's data (PGDATA) is"
    group = actions.add_parser("pitr", help=text, description=text)
    steps = group.add_subparsers(dest="pitr_command", required=True)
    setup = action("setup", "create the repository's stanza and check WAL archiving", steps)
    setup.add_argument(
        "--archive-command",
        action="store_true",
        help="first set the server's archive_command to archive into --target (ALTER SYSTEM)",
    )
    setup.add_argument(
        "--base-if-none",
        action="store_true",
        help="then take a full base backup if the repository has none (nothing is recoverable"
        " before the first)",
    )
    setup.add_argument(
        "--unencrypted",
        action="store_true",
        help="create it without encryption at rest (refused by default when"
        f" {pgbackrest.CIPHER_PASS} is not set)",
    )
    base = action("base", "take a base backup (full, diff or incr)", steps)
    base.add_argument(
        "--type",
        choices=pitr.BASE_TYPES,
        default="full",
        help="full: every file; diff: what changed since the last full; incr: since the last"
        " base backup of any type (default: %(default)s)",
    )
    action("list", "list base backups and the recoverable window", steps)
    push = action(
        "archive-push",
        "archive one WAL file (as shipyard-pgbackrest-push, the archive_command)",
        steps,
    )
    push.add_argument("wal", metavar="WAL", help="%%p: the WAL file, relative to PGDATA")
    action("drill", "restore latest into a scratch folder, check and measure it", steps)
    back = action("restore", "restore into a new data directory and check it there", steps)
    back.add_argument(
        "--at",
        required=True,
        metavar="POINT",
        help="latest, a base backup's label, or a time with its offset (2026-12-04T10:15:00Z)",
    )
    back.add_argument(
        "--into",
        required=True,
        type=Path,
        metavar="NEW_DIR",
        help="a new directory to restore into",
    )
    swap = action("swap", "put a restored directory in PGDATA's place (server stopped)", steps)
    swap.add_argument(
        "--restored",
        required=True,
        type=Path,
        metavar="NEW_DIR",
        help="the --into directory `pitr restore` checked",
    )
    swap.add_argument(
        "--yes", action="store_true", required=True, help="required: it replaces data"
    )


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-path",
        action="append",
        default=[],
        metavar="COMPONENT:/PATH",
        help="a component's data path (repeatable), mounted at DATA_ROOT/COMPONENT/PATH",
    )
    parser.add_argument(
        "--data-root",
        default=str(files.DEFAULT_ROOT),
        help="where the data paths are mounted (default: %(default)s)",
    )


def _retention_arguments(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "--retention-days",
        type=int,
        required=required,
        metavar="N",
        help="keep the newest backup of each of the last N days (UTC), and each manual, "
        "pre-migrate and safety backup of those days",
    )
    parser.add_argument(
        "--keep-weekly", type=int, default=0, metavar="N", help="... and of the last N weeks"
    )
    parser.add_argument(
        "--keep-monthly", type=int, default=0, metavar="N", help="... and of the last N months"
    )


def run(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> int:
    """Run a parsed `shipyard backup ...` command; 0 on success, 1 on failure. `run` and
    `verify` then push their outcome to the Pushgateway `environ` names, if any (metrics)."""
    started = time.time()
    made: list[engine.Backup] = []  # the backup `run` completed, even if retention then failed
    verified: engine.Backup | None = None
    status = 0
    try:
        command = args.backup_command
        if command == "pitr":
            return run_pitr(args, environ)
        if command == "schedule":
            return schedule.run(_jobs(args))
        target = storage.from_url(args.target)
        if command == "run":
            data = _data_paths(args)
            kind = _kind(args, environ)
            made.append(
                engine.files_backup(target, data, kind=kind)
                if args.files_only
                else engine.backup(target, kind=kind, files=data)
            )
            if args.retention_days:
                engine.prune(target, _policy(args))
        elif command == "list":
            print(format_table(engine.list_backups(target)))
        elif command == "verify":
            verified = engine.verify(target, args.backup, jobs=args.jobs)
        elif command == "restore" and args.files:
            engine.restore_files(target, _data_paths(args), args.backup)
        elif command == "restore":
            engine.restore(target, args.backup, jobs=args.jobs)
        elif command == "prune":
            engine.prune(target, _policy(args), dry_run=args.dry_run)
    except (engine.BackupError, storage.StorageError, psycopg.Error, OSError) as exc:
        print(f"shipyard backup: {exc}", file=sys.stderr)
        status = 1
    ended = time.time()
    if args.backup_command == "run":
        failed_at = ended if status else None
        metrics.push(metrics.run_report(made[0] if made else None, failed_at=failed_at), environ)
    elif args.backup_command == "verify":
        metrics.push(metrics.verify_report(verified, started=started, ended=ended), environ)
    return status


def run_pitr(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Run `shipyard backup pitr ...`: one step of point-in-time recovery (pitr)."""
    step = args.pitr_command
    if step == "drill":
        return _pitr_drill(args.target, environ)
    if step == "base":
        print(f"base backup {_pitr_base(args.target, args.type, environ).label} complete")
        return 0
    env = pgbackrest.environment(args.target, environ)
    if step == "setup":
        pitr.setup(
            env,
            unencrypted=args.unencrypted,
            archive_to=args.target if args.archive_command else "",
        )
        print(f"archiving to {args.target} works")
        if args.base_if_none and not pitr.window(env).backups:
            # Pushed too: the base backups' group exists from the first deploy on, so a
            # scheduled one that never succeeds is BackupMissing (a group never pushed is not).
            print(f"base backup {_pitr_base(args.target, 'full', environ).label} complete")
    elif step == "archive-push":
        pgbackrest.run(env, "archive-push", args.wal)
    elif step == "list":
        found = pitr.window(env)
        print(pitr.describe(found.backups))
        print(found.describe())
        record = drill_record.read(storage.from_url(args.target))
        # Read on a server or through `invoke backup.list`: both ways of running one named.
        none = "last drill: none yet (`shipyard backup pitr drill`, `invoke backup.verify`)"
        print(record.describe() if record else none)
    elif step == "restore":
        restored = pitr.restore(env, pitr.target(args.at, pitr.window(env)), args.into)
        last = timepoint.rfc3339(restored.last_commit) if restored.last_commit else "not tracked"
        print(
            f"restored into {restored.path} in {restored.seconds:.1f} s and checked: "
            f"databases {', '.join(restored.databases)}; last commit replayed {last}"
        )
    elif step == "swap":
        if not environ.get("PGDATA"):
            raise engine.BackupError("PGDATA must name the live data directory")
        data = Path(environ["PGDATA"])
        old = pitr.swap(data, args.restored)
        # `invoke restore --at` shows what comes before "Start the server" and does the rest.
        print(f"{data} is the restored data now; the old data is kept in {old}.")
        print(
            "Start the server: it archives the new timeline first, then take a base backup"
            " (`shipyard backup pitr base`)."
        )
    return 0


def _pitr_drill(target: str, environ: Mapping[str, str]) -> int:
    """The drill, its outcome pushed to the Pushgateway as a logical drill's is and recorded
    beside the repository (drill_record) for `pitr list`: a failure (a wrong --target or missing
    credentials too) is an exit status, a log line, the metric the restore-drill alert reads
    and the record's last drill. An interrupted drill reports nothing."""
    started = time.time()

    def report(found: pitr.Drill | None, error: str | None) -> None:
        seconds = found.restored.seconds if found else None
        age = found.recovery_point_age if found else None
        metrics.push(
            metrics.drill_report(seconds, age, started=started, ended=time.time()),
            environ,
            # A group of its own: the dump drill runs on the same schedule, and a push replaces
            # the metrics of its group, so a failure would be overwritten minutes later.
            group=metrics.PITR_DRILL_GROUP,
        )
        _record_drill(target, drill_record.Outcome(datetime.now(UTC), seconds, age, error))

    try:
        env = pgbackrest.environment(target, environ)
        found = pitr.drill(env, Path(environ.get("TMPDIR") or tempfile.gettempdir()))
    # Any error is a failed drill; an interrupt (KeyboardInterrupt is no Exception: the
    # scheduler stops a job with SIGINT when a deploy recreates it) is no outcome at all, and
    # leaves the last one pushed and recorded standing.
    except Exception as exc:
        report(None, str(exc) or type(exc).__name__)
        raise
    report(found, None)
    seconds, age = found.restored.seconds, found.recovery_point_age
    point = "not tracked" if age is None else f"the newest transaction {age:.0f} s old"
    print(
        f"restore drill passed: restored to latest and checked in {seconds:.1f} s"
        f" (recovery time); recovery point: {point}"
    )
    return 0


def _pitr_base(target: str, kind: str, environ: Mapping[str, str]) -> pitr.BaseBackup:
    """A base backup, its outcome pushed as a `backup run`'s is (a wrong --target too), in a
    group of its own (`backup="pitr"`): the dumps' successes must not hide its failures from
    the alerts. An interrupted one reports nothing."""
    try:
        made = pitr.base_backup(pgbackrest.environment(target, environ), kind)
    except Exception:  # a failure; an interrupt is none (as in _pitr_drill)
        failed = metrics.base_report(None, failed_at=time.time())
        metrics.push(failed, environ, group=metrics.PITR_BASE_GROUP)
        raise
    metrics.push(metrics.base_report(made, failed_at=None), environ, group=metrics.PITR_BASE_GROUP)
    return made


def _record_drill(target: str, outcome: drill_record.Outcome) -> None:
    """Record a drill's outcome. A failed drill's own error matters more than a record its
    storage may refuse for the same reason: that is only said. A passed drill whose record
    cannot be written fails, since `pitr list` would show an older one as the last."""
    try:
        drill_record.write(storage.from_url(target), outcome)
    except (storage.StorageError, OSError) as exc:
        if not outcome.passed:
            print(
                f"shipyard backup: the drill could not be recorded either: {exc}", file=sys.stderr
            )
            return
        raise storage.StorageError(f"the drill passed but could not be recorded: {exc}") from None


def _jobs(args: argparse.Namespace) -> list[schedule.Job]:
    """`schedule`'s jobs: `run` with the given options, the drill of the newest backup."""
    storage.from_url(args.target)  # a wrong target is refused now, not at the first run
    _data_paths(args)
    target = ("--target", args.target)
    jobs = []
    if args.backup_at is not None:
        keep: list[str] = []
        if args.retention_days is not None:
            _policy(args)
            keep = [
                arg
                for name in ("retention_days", "keep_weekly", "keep_monthly")
                if getattr(args, name)
                for arg in (f"--{name.replace('_', '-')}", str(getattr(args, name)))
            ]
        elif args.keep_weekly or args.keep_monthly:
            raise engine.BackupError(
                "--keep-weekly and --keep-monthly add to --retention-days: give it too"
            )
        data = [arg for spec in args.data_path for arg in ("--data-path", spec)]
        root = ["--data-root", args.data_root] if args.data_path else []
        run_args = ("backup", "run", *target, *keep, *data, *root)
        jobs.append(schedule.job("backup", "--backup-at", args.backup_at, run_args))
    if args.drill_at is not None:
        jobs.append(
            schedule.job("drill", "--drill-at", args.drill_at, ("backup", "verify", *target))
        )
    jobs += _pitr_jobs(args)
    if not jobs:
        raise engine.BackupError(
            "give --backup-at, --drill-at or a point-in-time recovery job: there is nothing to run"
        )
    return jobs


def _pitr_jobs(args: argparse.Namespace) -> list[schedule.Job]:
    """`schedule`'s point-in-time recovery jobs: base backups and the pgBackRest drill."""
    # Each job's option, its name in the log and the engine's arguments (before --target).
    jobs = {
        "--base-full-at": ("base-full", ("backup", "pitr", "base", "--type", "full")),
        "--base-diff-at": ("base-diff", ("backup", "pitr", "base", "--type", "diff")),
        "--pitr-drill-at": ("pitr-drill", ("backup", "pitr", "drill")),
    }
    given = {
        option: cron
        for option in jobs
        if (cron := getattr(args, option[2:].replace("-", "_"))) is not None
    }
    if args.pitr_target == "":
        # compose.backup.yaml passes shipyard.yaml's repository, empty where the environment
        # does not recover to a point in time: then these jobs are left out.
        if given:
            schedule.say("point-in-time recovery jobs left out: --pitr-target is empty")
        return []
    if given and not args.pitr_target:
        raise engine.BackupError(f"{', '.join(given)} need(s) --pitr-target, the repository")
    if args.pitr_target and not given:
        raise engine.BackupError(
            "--pitr-target names the repository of --base-full-at, --base-diff-at or"
            " --pitr-drill-at: give at least one"
        )
    if not given:
        return []
    pgbackrest.environment(args.pitr_target)  # a wrong target is refused now
    return [
        schedule.job(
            jobs[option][0], option, cron, (*jobs[option][1], "--target", args.pitr_target)
        )
        for option, cron in given.items()
    ]


def _data_paths(args: argparse.Namespace) -> list[engine.DataPath]:
    root = Path(args.data_root)
    return [engine.data_path(spec, root) for spec in args.data_path]


def _kind(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    """`run`'s kind: --kind, else the variable (what the deploy tasks set), else scheduled."""
    if args.kind:
        return str(args.kind)
    kind = environ.get(kinds.KIND_VARIABLE, "") or kinds.SCHEDULED
    if kind not in RUN_KINDS:
        *others, last = RUN_KINDS
        raise engine.BackupError(
            f"{kinds.KIND_VARIABLE} must be {', '.join(others)} or {last}, not {kind!r}"
        )
    return kind


def _policy(args: argparse.Namespace) -> engine.Retention:
    for name in ("retention_days", "keep_weekly", "keep_monthly"):
        if getattr(args, name) < 0:
            raise engine.BackupError(f"--{name.replace('_', '-')} cannot be negative")
    return engine.Retention(args.retention_days, args.keep_weekly, args.keep_monthly)


def format_table(backups: list[engine.Backup]) -> str:
    """One line per backup: id, kind, database ("files only" when it holds none), size, tables,
    files, when it was last verified (and how long the drill's restore took)."""
    if not backups:
        return "no complete backups"
    lines = [
        f"{'id':<24} {'kind':<{KIND_WIDTH}} {'database':<20} {'size':>10} {'tables':>6}"
        f" {'files':>5}  verified"
    ]
    for b in backups:
        m = b.manifest
        verified = "-"
        if b.verified:
            verified = b.verified["verified_at"][:19]
            # The drill's recovery time; records from before it was measured have none.
            if "restore_seconds" in b.verified:
                verified += f" (restored in {b.verified['restore_seconds']:.1f} s)"
        database = "(files only)" if b.files_only else m["database"]
        tables = "-" if b.files_only else len(m["tables"])
        lines.append(
            f"{b.id:<24} {m['kind']:<{KIND_WIDTH}} {database:<20} {b.size:>10}"
            f" {tables:>6} {len(m.get(files.FILES, [])):>5}  {verified}"
        )
    return "\n".join(lines)
