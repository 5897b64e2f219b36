"""Point-in-time recovery of the PostgreSQL the kit runs, by pgBackRest.

pgBackRest does the work: PostgreSQL's `archive_command` hands it each WAL segment
(`archive_timeout` bounds how old the newest one can be), `pgbackrest backup` takes full,
differential and incremental base backups, and `pgbackrest restore` writes a data directory that
replays WAL up to a point. This module only drives it: one repository named by the same
`--target` URL as the logical engine, the recoverable window read from `pgbackrest info`, a
refusal of points outside it, and a restore that goes into a new data directory, is started
and checked there on a private socket, and only then may be swapped in (`swap`), keeping the
old directory.

Configuration is pgBackRest's own environment (PGBACKREST_*), built from the variables the kit
already uses: PGDATA/PGPORT/PGHOST/PGUSER for the server, AWS_* for S3,
SHIPYARD_BACKUP_CIPHER_PASS for encryption at rest. Nothing secret is ever an argument.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg

from shipyard.backup.engine import BackupError
from shipyard.backup.manifest import ID_TIME

# The kit's one stanza: a repository holds one cluster's backups.
STANZA = "db"
# How old the newest archived WAL may be (seconds): the recovery point objective.
ARCHIVE_TIMEOUT = 60
BASE_TYPES = ("full", "diff", "incr")
CIPHER_PASS = "SHIPYARD_BACKUP_CIPHER_PASS"  # noqa: S105 (the variable's name, not a secret)
# pgBackRest's backup labels: 20261205-103529F, or ..._20261205-110000D / I for diff and incr.
_LABEL = re.compile(r"^\d{8}-\d{6}F(_\d{8}-\d{6}[DI])?$")


def archive_settings() -> list[str]:
    """The PostgreSQL settings that archive every WAL segment through pgBackRest, as
    `name=value` (what a server's `-c` options or postgresql.conf take)."""
    return [
        # Commit times let a restore report the newest transaction it replayed: the drill's
        # measured recovery point (a few bytes per commit).
        "track_commit_timestamp=on",
        "wal_level=replica",
        "archive_mode=on",
        f"archive_timeout={ARCHIVE_TIMEOUT}",
        f"archive_command=pgbackrest --stanza={STANZA} archive-push %p",
    ]


def environment(target: str, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """pgBackRest's configuration for the repository at `target` (file:///PATH or
    s3://BUCKET/PREFIX) and the server libpq's variables name, as PGBACKREST_* variables added
    to `environ`. A URL pgBackRest cannot use is refused with a sentence."""
    env = {k: v for k, v in environ.items() if not k.startswith("PGBACKREST_")}
    url = urlsplit(target)
    scratch = environ.get("TMPDIR", tempfile.gettempdir())
    env.update(
        PGBACKREST_STANZA=STANZA,
        PGBACKREST_COMPRESS_TYPE="zst",
        # Begin with an immediate checkpoint, not a spread one that can take checkpoint_timeout
        # (5 min): the backup before a migration must not stall the deploy.
        PGBACKREST_START_FAST="y",
        PGBACKREST_PROCESS_MAX=str(min(4, os.cpu_count() or 1)),
        # Logs go to the console (the caller's log); the lock lives in the container's scratch.
        PGBACKREST_LOG_LEVEL_FILE="off",
        PGBACKREST_LOG_LEVEL_CONSOLE=environ.get("PGBACKREST_LOG_LEVEL_CONSOLE", "warn"),
        PGBACKREST_LOCK_PATH=str(Path(scratch) / "pgbackrest-lock"),
        PGBACKREST_SPOOL_PATH=str(Path(scratch) / "pgbackrest-spool"),
        # Two full backups and what depends on them; WAL older than the oldest kept full goes.
        PGBACKREST_REPO1_RETENTION_FULL=environ.get("SHIPYARD_PITR_RETENTION_FULL", "2"),
    )
    if url.scheme == "file" and url.path.startswith("/"):
        env.update(PGBACKREST_REPO1_TYPE="posix", PGBACKREST_REPO1_PATH=url.path)
    elif url.scheme == "s3" and url.netloc:
        env.update(_s3(url.netloc, url.path.strip("/"), environ))
    else:
        raise BackupError(f"{target!r} is not file:///PATH or s3://BUCKET/PREFIX")
    if data := environ.get("PGDATA"):
        env["PGBACKREST_PG1_PATH"] = data
    if port := environ.get("PGPORT"):
        env["PGBACKREST_PG1_PORT"] = port
    if (host := environ.get("PGHOST", "")).startswith("/"):
        env["PGBACKREST_PG1_SOCKET_PATH"] = host
    if user := environ.get("PGUSER"):
        env["PGBACKREST_PG1_USER"] = user
    if passphrase := environ.get(CIPHER_PASS):
        env.update(
            PGBACKREST_REPO1_CIPHER_TYPE="aes-256-cbc", PGBACKREST_REPO1_CIPHER_PASS=passphrase
        )
    return env


def _s3(bucket: str, prefix: str, environ: Mapping[str, str]) -> dict[str, str]:
    endpoint = urlsplit(environ.get("AWS_ENDPOINT_URL") or "https://s3.amazonaws.com")
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    if endpoint.scheme != "https" or not endpoint.hostname:
        raise BackupError(
            "pgBackRest reaches S3 over HTTPS only: AWS_ENDPOINT_URL must be https://HOST[:PORT]"
        )
    key, secret = environ.get("AWS_ACCESS_KEY_ID"), environ.get("AWS_SECRET_ACCESS_KEY")
    if not key or not secret:
        raise BackupError("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are needed for S3")
    env = {
        "PGBACKREST_REPO1_TYPE": "s3",
        "PGBACKREST_REPO1_PATH": "/" + prefix,
        "PGBACKREST_REPO1_S3_BUCKET": bucket,
        "PGBACKREST_REPO1_S3_ENDPOINT": endpoint.hostname,
        "PGBACKREST_REPO1_S3_REGION": region,
        "PGBACKREST_REPO1_S3_KEY": key,
        "PGBACKREST_REPO1_S3_KEY_SECRET": secret,
    }
    if endpoint.port:
        env["PGBACKREST_REPO1_STORAGE_PORT"] = str(endpoint.port)
    if environ.get("AWS_ENDPOINT_URL"):
        # MinIO, R2 and other S3-compatible servers address buckets by path, not by host name.
        env["PGBACKREST_REPO1_S3_URI_STYLE"] = "path"
    if ca := environ.get("AWS_CA_BUNDLE"):
        env["PGBACKREST_REPO1_STORAGE_CA_FILE"] = ca
    return env


def pgbackrest(env: Mapping[str, str], *argv: str) -> str:
    """Run `pgbackrest ARGV` with `env`; its stdout, or BackupError with its own message."""
    if shutil.which("pgbackrest", path=env.get("PATH")) is None:
        raise BackupError("pgbackrest is not installed in this image")
    done = subprocess.run(
        ["pgbackrest", *argv],
        env=dict(env),
        capture_output=True,
        text=True,
        errors="replace",  # a wrong passphrase makes it echo decrypted garbage
        check=False,
    )
    if done.returncode:
        lines = (done.stderr or done.stdout).strip().splitlines()
        # pgBackRest's ERROR line says what went wrong; its HINT lines follow it.
        errors = [line.split("ERROR:", 1)[1].strip() for line in lines if "ERROR:" in line]
        raise BackupError(f"pgbackrest {argv[0]} failed: {'; '.join(errors or lines[-2:])}")
    return done.stdout


def setup(env: Mapping[str, str]) -> None:
    """Create the stanza (again is harmless) and check that a WAL segment reaches the
    repository: archiving that does not work is found now, not at the first restore."""
    pgbackrest(env, "stanza-create")
    pgbackrest(env, "check")


def base_backup(env: Mapping[str, str], kind: str = "full") -> str:
    """Take a base backup of `kind` (full, diff or incr) and return its label. pgBackRest only
    lists a backup once it is complete, and expires what its retention no longer keeps."""
    if kind not in BASE_TYPES:
        raise BackupError(f"a base backup is full, diff or incr, not {kind!r}")
    before = {b.label for b in window(env, require=False).backups}
    pgbackrest(env, "backup", f"--type={kind}")
    made = [b for b in window(env).backups if b.label not in before]
    if not made:
        raise BackupError("pgbackrest backup ended without a new backup in the repository")
    return made[-1].label


@dataclass(frozen=True)
class BaseBackup:
    label: str
    kind: str
    started: datetime
    stopped: datetime
    size: int  # bytes in the repository


@dataclass(frozen=True)
class Window:
    """What can be recovered: any point from the oldest base backup's end until now (the WAL
    archive is at most ARCHIVE_TIMEOUT seconds behind)."""

    backups: tuple[BaseBackup, ...]
    archive_min: str | None
    archive_max: str | None

    @property
    def start(self) -> datetime:
        return self.backups[0].stopped

    def describe(self) -> str:
        if not self.backups:
            return "no base backup yet: nothing can be recovered"
        return f"recoverable from {_iso(self.start)} to now (WAL at most {ARCHIVE_TIMEOUT} s old)"


def window(env: Mapping[str, str], *, require: bool = True) -> Window:
    """The repository's base backups (oldest first) and WAL range, from `pgbackrest info`."""
    text = pgbackrest(env, "info", "--output=json")
    # strict=False: pgBackRest puts its multi-line messages into JSON strings as they are.
    stanzas = [s for s in json.loads(text, strict=False) if s.get("name") == STANZA]
    stanza = stanzas[0] if stanzas else {}
    code = stanza.get("status", {}).get("code", 1)
    if require and code not in (0, 2):  # 2: a stanza without a base backup yet
        reasons = [r["status"]["message"] for r in stanza.get("repo", []) if r["status"]["code"]]
        reason = (reasons or [stanza.get("status", {}).get("message", "no stanza")])[0]
        hint = ""
        if env.get("PGBACKREST_REPO1_CIPHER_PASS") and "unable to load info file" in reason:
            hint = f" (is {CIPHER_PASS} the passphrase it was created with?)"
        raise BackupError(f"the repository cannot be read: {reason.splitlines()[0]}{hint}")
    backups = tuple(
        BaseBackup(
            label=b["label"],
            kind=b["type"],
            started=datetime.fromtimestamp(b["timestamp"]["start"], UTC),
            stopped=datetime.fromtimestamp(b["timestamp"]["stop"], UTC),
            size=b["info"]["repository"]["delta"],
        )
        for b in stanza.get("backup", [])
        if not b.get("error")
    )
    archives = stanza.get("archive", [])
    return Window(
        backups=backups,
        archive_min=archives[0].get("min") if archives else None,
        archive_max=archives[-1].get("max") if archives else None,
    )


@dataclass(frozen=True)
class Target:
    """Where a restore stops: the end of the WAL (`latest`), a time, or a base backup's end."""

    kind: str  # "latest" | "time" | "backup"
    value: str = ""
    # For `latest`: the newest WAL segment in the archive, which the replay must reach.
    through: str | None = None

    def arguments(self) -> list[str]:
        if self.kind == "time":
            return ["--type=time", f"--target={self.value}", "--target-action=promote"]
        if self.kind == "backup":
            return [f"--set={self.value}", "--type=immediate", "--target-action=promote"]
        return []


def target(at: str, window: Window, now: datetime | None = None) -> Target:
    """`--at` as a Target: `latest`, a base backup's label, or an ISO 8601 time with its UTC
    offset inside the window; anything else is refused with the window."""
    now = now or datetime.now(UTC)
    if not window.backups:
        raise BackupError("no base backup yet: nothing can be recovered")
    if at == "latest":
        return Target("latest", through=window.archive_max)
    if _LABEL.match(at):
        if at not in {b.label for b in window.backups}:
            raise BackupError(f"no base backup {at!r}; {window.describe()}")
        return Target("backup", at)
    try:
        when = datetime.fromisoformat(at)
    except ValueError:
        raise BackupError(
            f"--at {at!r} is not latest, a backup label or a time like 2026-12-04T10:15:00Z"
        ) from None
    if when.tzinfo is None:
        raise BackupError(f"--at {at!r} has no UTC offset: add Z or +HH:MM")
    if when < window.start:
        raise BackupError(f"--at {at} is before the oldest base backup; {window.describe()}")
    if when > now:
        raise BackupError(f"--at {at} is in the future; {window.describe()}")
    return Target("time", when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00"))


@dataclass(frozen=True)
class Restored:
    """A data directory recovered to a point and checked by a server started on it."""

    path: Path
    recovered_to: datetime  # the server's clock once recovery ended (promoted)
    last_commit: datetime | None  # the newest committed transaction replayed, if tracked
    databases: tuple[str, ...]
    seconds: float


def restore(env: Mapping[str, str], at: Target, into: Path) -> Restored:
    """Restore the repository into the new directory `into` up to `at`, start a private server
    on it (no network, no archiving) until recovery ends, check it answers and list its
    databases, and stop it. On any failure `into` is removed; the live data is never touched."""
    if into.exists() and any(into.iterdir()):
        raise BackupError(f"{into} is not empty: a restore goes into a new directory")
    started = time.monotonic()
    try:  # pgBackRest creates `into`, as the user that owns the data
        # A restore waits on reads and writes more than on zstd: twice as many processes as
        # cores cut pgBackRest's part of a 1.5 GB restore from 6.8 s to about 4 s here (2 cores).
        processes = f"--process-max={min(8, 2 * (os.cpu_count() or 1))}"
        pgbackrest(env, "restore", f"--pg1-path={into}", processes, *at.arguments())
        now, last, names, replayed = _check(into, env)
        # PostgreSQL ends a recovery without a target at the first segment it cannot fetch,
        # as if the WAL ended there: a corrupted or missing segment would silently drop every
        # later commit. Such a restore is refused.
        if at.through and replayed[-16:] < at.through[-16:]:
            raise BackupError(
                f"the restore stopped at WAL segment {replayed[-16:]} but the archive holds WAL"
                f" up to {at.through[-16:]}: a segment is missing or corrupted"
                " (`pgbackrest verify` names it)"
            )
    except BaseException:
        shutil.rmtree(into, ignore_errors=True)
        raise
    return Restored(into, now, last, names, seconds=time.monotonic() - started)


def _check(
    data: Path, env: Mapping[str, str]
) -> tuple[datetime, datetime | None, tuple[str, ...], str]:
    """Start `data` privately until recovery ends: the server's time, the newest replayed
    commit's time, the databases, and the WAL segment the replay ended in."""
    bindir = _bindir(env)
    sockets = Path(tempfile.mkdtemp(prefix="pitr-check-"))
    if os.geteuid() == 0:
        # PostgreSQL refuses to run as root: the server runs as the data's owner, whose socket
        # and log this folder holds.
        owner = data.stat()
        os.chown(sockets, owner.st_uid, owner.st_gid)
    port = _free_port()
    # The recovered server must not archive: it would write a new timeline into the repository
    # that a later `--at latest` would follow. `swap` archives its history once it is live.
    options = f"-p {port} -k {sockets} -c listen_addresses= -c archive_mode=off"
    log = sockets / "server.log"
    ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log)]
    try:
        argv = [*ctl, "-w", "-t", "600", "-o", options, "start"]
        started = subprocess.run(argv, env=dict(env), capture_output=True, check=False)
        if started.returncode:
            raise BackupError(f"the restored data directory did not start: {_tail(log)}")
        deadline = time.monotonic() + 600
        with psycopg.connect(
            host=str(sockets),
            port=port,
            user=env.get("PGUSER", "postgres"),
            password=env.get("PGPASSWORD"),
            dbname="postgres",
            autocommit=True,
        ) as conn:
            while _fetch(conn, "SELECT pg_is_in_recovery()"):
                if time.monotonic() > deadline:
                    raise BackupError("the restored server did not finish recovery in 10 min")
                time.sleep(0.2)
            now = _fetch(conn, "SELECT now()")
            # Known only where the server tracks commit times (track_commit_timestamp).
            last = _fetch(
                conn,
                "SELECT CASE WHEN current_setting('track_commit_timestamp')::bool"
                " THEN (pg_last_committed_xact()).timestamp END",
            )
            names = conn.execute(
                "SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY 1"
            ).fetchall()
            replayed = _fetch(conn, "SELECT pg_walfile_name(pg_last_wal_replay_lsn())")
        return now, last, tuple(n for (n,) in names), replayed or ""
    except psycopg.Error as exc:
        raise BackupError(f"the restored server did not answer: {exc}") from None
    finally:
        subprocess.run([*ctl, "-m", "fast", "-w", "stop"], env=dict(env), capture_output=True,
                       check=False)  # fmt: skip
        shutil.rmtree(sockets, ignore_errors=True)


def _fetch(conn: psycopg.Connection[Any], query: str) -> Any:
    row = conn.execute(query).fetchone()
    return row[0] if row else None


@dataclass(frozen=True)
class Drill:
    """A scheduled restore drill's measurements: the recovery time (restore, replay, check) and
    the recovery point's age when the drill ended (None where commit times are not tracked;
    on an idle database, the time since its last write)."""

    restored: Restored
    recovery_point_age: float | None


def drill(env: Mapping[str, str], scratch: Path) -> Drill:
    """Restore `latest` (every base backup file and WAL segment up to now must be sound) into a
    new folder under `scratch`, check it, measure, and delete it. The live data is untouched."""
    into = scratch / f"pitr-drill-{datetime.now(UTC):{ID_TIME}}"
    try:
        restored = restore(env, target("latest", window(env)), into)
    finally:
        shutil.rmtree(into, ignore_errors=True)
    age = None
    if restored.last_commit is not None:
        age = max(0.0, (datetime.now(UTC) - restored.last_commit).total_seconds())
    return Drill(restored, age)


def swap(data: Path, restored: Path) -> Path:
    """Put the restored directory in `data`'s place (the server must be stopped) and return
    where the old data now is: `data` renamed with a UTC suffix, never deleted here."""
    if (data / "postmaster.pid").exists():
        raise BackupError(f"PostgreSQL still runs on {data}: stop it before the swap")
    if not (restored / "PG_VERSION").exists():
        raise BackupError(f"{restored} is not a restored data directory")
    old = data.with_name(f"{data.name}.old-{datetime.now(UTC):{ID_TIME}}")
    data.rename(old)
    try:
        restored.rename(data)
    except OSError:
        old.rename(data)
        raise
    return old


def archive_history(env: Mapping[str, str], data: Path) -> list[str]:
    """Archive the restored timeline's history files (written while archiving was off, in
    `_check`), so a later restore can follow this timeline. Run once the server is live."""
    pushed = []
    for history in sorted((data / "pg_wal").glob("*.history")):
        pgbackrest(env, "archive-push", str(history))
        pushed.append(history.name)
    return pushed


def _bindir(env: Mapping[str, str]) -> Path:
    pg_ctl = shutil.which("pg_ctl", path=env.get("PATH"))
    if pg_ctl:
        return Path(pg_ctl).parent
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not found:
        raise BackupError("pg_ctl is not installed: a restore needs the PostgreSQL server")
    return found[-1].parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _tail(log: Path, lines: int = 3) -> str:
    text = log.read_text(errors="replace") if log.exists() else "no server log"
    return " ".join(text.strip().splitlines()[-lines:])


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe(backups: Sequence[BaseBackup]) -> str:
    """One line per base backup, oldest first."""
    if not backups:
        return "no base backups"
    rows = [f"{'label':<34} {'type':<5} {'ended':<20} {'size':>12}"]
    rows += [f"{b.label:<34} {b.kind:<5} {_iso(b.stopped):<20} {b.size:>12}" for b in backups]
    return "\n".join(rows)
