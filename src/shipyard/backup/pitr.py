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
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from shipyard import timepoint
from shipyard.backup.engine import BackupError
from shipyard.backup.manifest import ID_TIME
from shipyard.backup.pgbackrest import CIPHER_PASS, STANZA, run

# How old the newest archived WAL may be (seconds): the recovery point objective.
ARCHIVE_TIMEOUT = 60
BASE_TYPES = ("full", "diff", "incr")
# What a successful `restore` leaves in the directory it checked; `swap` takes no other.
CHECKED = "shipyard-pitr-checked"
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


def setup(env: Mapping[str, str], *, unencrypted: bool = False, archive_to: str = "") -> None:
    """Create the stanza (again is harmless) and check that a WAL segment reaches the
    repository: archiving that does not work is found now, not at the first restore. Without
    a passphrase it is refused unless `unencrypted` says so: a secret that was not mounted
    must not quietly make the repository plain text.

    With `archive_to` (the repository's --target URL), the server is first told to archive
    there: its archive_command becomes `shipyard-pgbackrest-push %p --target URL`
    (ALTER SYSTEM, kept in the data directory and so in every restored copy), so the server's
    own configuration never repeats where the repository is or how pgBackRest reaches it."""
    if not env.get("PGBACKREST_REPO1_CIPHER_PASS") and not unencrypted:
        raise BackupError(
            f"{CIPHER_PASS} is not set, so the repository would not be encrypted at rest: set it"
            " (keep it with the secrets: without it nothing can be restored), or pass"
            " --unencrypted to create one without encryption"
        )
    if archive_to:
        _archive_through_shipyard(env, archive_to)
    run(env, "stanza-create")
    run(env, "check")


def archive_command(target: str) -> str:
    """The server's archive_command for the repository at `target`. pgBackRest's `check` and
    `backup` refuse an archive_command without the word "pgbackrest" in it ("must contain
    pgbackrest"): the command's name has it, whatever the URL holds."""
    return f"shipyard-pgbackrest-push %p --target {shlex.quote(target)}"


def _archive_through_shipyard(env: Mapping[str, str], target: str) -> None:
    command = archive_command(target)
    with psycopg.connect(
        host=env.get("PGHOST") or None,
        port=env.get("PGPORT") or None,
        user=env.get("PGUSER") or None,
        password=env.get("PGPASSWORD") or None,
        dbname="postgres",
        # Text as str even from a SQL_ASCII cluster (initdb without a locale).
        client_encoding="utf8",
        autocommit=True,
    ) as conn:
        # ALTER SYSTEM takes no parameters: the value is a literal, quoted by psycopg.
        conn.execute(sql.SQL("ALTER SYSTEM SET archive_command = {}").format(sql.Literal(command)))
        conn.execute("SELECT pg_reload_conf()")
        if _fetch(conn, "SHOW archive_mode") != "on":
            raise BackupError(
                "the server does not archive (archive_mode is off): start it with"
                f" {' '.join('-c ' + s for s in archive_settings()[:-1])}"
            )


def base_backup(env: Mapping[str, str], kind: str = "full") -> BaseBackup:
    """Take a base backup of `kind` (full, diff or incr) and return it. pgBackRest only lists a
    backup once it is complete, and expires what its retention no longer keeps."""
    if kind not in BASE_TYPES:
        raise BackupError(f"a base backup is full, diff or incr, not {kind!r}")
    before = {b.label for b in window(env, require=False).backups}
    run(env, "backup", f"--type={kind}")
    made = [b for b in window(env).backups if b.label not in before]
    if not made:
        raise BackupError("pgbackrest backup ended without a new backup in the repository")
    return made[-1]


@dataclass(frozen=True)
class BaseBackup:
    label: str
    kind: str
    started: datetime
    stopped: datetime
    size: int  # bytes in the repository
    database_size: int  # bytes of the database it holds (what a restore of it writes)


# Room a restore needs beyond the database's size: WAL replayed on top, the server's own files.
HEADROOM = 1.1
HEADROOM_BYTES = 256 * 1024**2


@dataclass(frozen=True)
class Window:
    """What can be recovered: any second after the oldest base backup's end (pgBackRest picks
    a backup that ended before the target, to the second) until the newest archived WAL, at
    most ARCHIVE_TIMEOUT seconds behind now while archiving works."""

    backups: tuple[BaseBackup, ...]
    archive_min: str | None
    archive_max: str | None

    @property
    def room(self) -> int:
        """Bytes a restore from this repository needs free: its largest database, and more."""
        largest = max((b.database_size for b in self.backups), default=0)
        return int(largest * HEADROOM) + HEADROOM_BYTES

    @property
    def start(self) -> datetime:
        return self.backups[0].stopped + timedelta(seconds=1)

    def describe(self) -> str:
        if not self.backups:
            return "no base backup yet: nothing can be recovered"
        return (
            f"{timepoint.rfc3339(self.start)} to now (the archived WAL, at most"
            f" {ARCHIVE_TIMEOUT} s old)"
        )


def window(env: Mapping[str, str], *, require: bool = True) -> Window:
    """The repository's base backups (oldest first) and WAL range, from `pgbackrest info`."""
    # Warnings only on the console, whatever PGBACKREST_LOG_LEVEL_CONSOLE says: log lines
    # before the JSON would make it unreadable.
    text = run(env, "info", "--output=json", "--log-level-console=warn")
    try:
        # strict=False: pgBackRest puts its multi-line messages into JSON strings as they are.
        stanzas = [s for s in json.loads(text, strict=False) if s.get("name") == STANZA]
    except (ValueError, AttributeError):
        raise BackupError(f"pgbackrest info printed no JSON: {text[:200]!r}") from None
    stanza = stanzas[0] if stanzas else {}
    code = stanza.get("status", {}).get("code", 1)
    if require and code not in (0, 2):  # 2: a stanza without a base backup yet
        reasons = [r["status"]["message"] for r in stanza.get("repo", []) if r["status"]["code"]]
        reason = (reasons or [stanza.get("status", {}).get("message", "no stanza")])[0]
        hint = ""
        if "unable to load info file" in reason:
            hint = (
                f" (is {CIPHER_PASS} the passphrase it was created with?)"
                if env.get("PGBACKREST_REPO1_CIPHER_PASS")
                else f" (if the repository is encrypted, {CIPHER_PASS} must be set)"
            )
        raise BackupError(f"the repository cannot be read: {reason.splitlines()[0]}{hint}")
    backups = tuple(
        BaseBackup(
            label=b["label"],
            kind=b["type"],
            started=datetime.fromtimestamp(b["timestamp"]["start"], UTC),
            stopped=datetime.fromtimestamp(b["timestamp"]["stop"], UTC),
            size=b["info"]["repository"]["delta"],
            database_size=b["info"]["size"],
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
    room: int = 0  # bytes the restore needs free where it writes (Window.room)

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
        return Target("latest", through=window.archive_max, room=window.room)
    if _LABEL.match(at):
        if at not in {b.label for b in window.backups}:
            raise BackupError(f"no base backup {at!r}: the recoverable window is "
                              f"{window.describe()}")  # fmt: skip
        return Target("backup", at, room=window.room)
    try:
        when = timepoint.parse(at)
    except ValueError as exc:
        raise BackupError(f"{exc}, or a base backup's label") from None
    if reason := timepoint.outside(when, window.start, now):
        raise BackupError(f"{reason}: the recoverable window is {window.describe()}")
    if when > now - timedelta(seconds=ARCHIVE_TIMEOUT):
        # Refused here rather than failing after the restore: PostgreSQL would replay all the
        # archive holds and then stop, the target not reached.
        raise BackupError(
            f"--at {timepoint.rfc3339(when)} is less than {ARCHIVE_TIMEOUT} s ago, and the WAL"
            " archive may not hold it yet: wait a minute, or restore to latest"
        )
    return Target("time", when.strftime("%Y-%m-%d %H:%M:%S.%f+00"), room=window.room)


@dataclass(frozen=True)
class Restored:
    """A data directory recovered to a point and checked by a server started on it."""

    path: Path
    recovered_to: datetime  # the server's clock once recovery ended (promoted)
    last_commit: datetime | None  # the newest committed transaction replayed, if tracked
    databases: tuple[str, ...]
    seconds: float


def restore(env: Mapping[str, str], at: Target, into: Path) -> Restored:
    """Restore the repository into `into` (new, or an empty folder) up to `at`, start a private
    server on it (no network, no archiving) until recovery ends, check it answers and list its
    databases, stop it, and mark it checked for `swap`. On any failure `into` is removed; the
    live data is never touched."""
    if into.exists() and (not into.is_dir() or any(into.iterdir())):
        raise BackupError(f"{into} is not an empty folder: a restore goes into a new one")
    _refuse_without_room(at.room, into)
    started = time.monotonic()
    try:  # pgBackRest creates `into`, as the user that owns the data
        # A restore waits on reads and writes more than on zstd: twice as many processes as
        # cores cut pgBackRest's part of a 1.5 GB restore from 6.8 s to about 4 s here (2 cores).
        processes = f"--process-max={min(8, 2 * (os.cpu_count() or 1))}"
        run(env, "restore", f"--pg1-path={into}", processes, *at.arguments())
        checked = _check(into, env)
        # PostgreSQL ends a recovery without a target at the first segment it cannot fetch,
        # as if the WAL ended there: a corrupted or missing segment would silently drop every
        # later commit. So would a timeline whose history file is missing from the archive:
        # the replay would follow the older one. Either is refused.
        if at.through and checked.replayed < _segment(at.through):
            (timeline, number), (newest, last) = checked.replayed, _segment(at.through)
            if timeline < newest:
                raise BackupError(
                    f"the restore followed timeline {timeline}, but the archive holds WAL of"
                    f" timeline {newest}: its history file ({newest:08X}.history) is missing"
                    " from the archive"
                )
            raise BackupError(
                f"the restore stopped at WAL segment {number:016X} but the archive holds WAL"
                f" up to {last:016X}: a segment is missing or corrupted"
                " (`pgbackrest verify` names it)"
            )
        restored = Restored(
            into,
            checked.now,
            checked.last_commit,
            checked.databases,
            seconds=time.monotonic() - started,
        )
        (into / CHECKED).write_text(
            json.dumps(
                {
                    "at": at.value or at.kind,
                    "recovered_to": timepoint.rfc3339(restored.recovered_to),
                    "last_commit": restored.last_commit and timepoint.rfc3339(restored.last_commit),
                }
            )
            + "\n"
        )
    except BaseException:
        shutil.rmtree(into, ignore_errors=True)
        raise
    return restored


def _refuse_without_room(need: int, into: Path) -> None:
    """Refuse before writing when `into`'s filesystem cannot hold the restored database: it is
    often the live server's, which stops (PANIC) when its disk fills."""
    where = next(p for p in (into, *into.parents) if p.exists())
    free = shutil.disk_usage(where).free
    if free < need:
        raise BackupError(
            f"{where} has {free // 1024**2} MiB free, and the restore needs about"
            f" {need // 1024**2} MiB (the database and its replayed WAL): free some space or"
            " restore --into a folder with room"
        )


@dataclass(frozen=True)
class _Checked:
    now: datetime
    last_commit: datetime | None
    databases: tuple[str, ...]
    replayed: tuple[int, int]  # the timeline and WAL segment number the replay ended in


def _check(data: Path, env: Mapping[str, str]) -> _Checked:
    """Start `data` privately until recovery ends, read what it recovered, and stop it."""
    bindir = _bindir(data, env)
    sockets = Path(tempfile.mkdtemp(prefix="pitr-check-"))
    if os.geteuid() == 0:
        # PostgreSQL refuses to run as root: the server runs as the data's owner, whose socket
        # and log this folder holds.
        owner = data.stat()
        os.chown(sockets, owner.st_uid, owner.st_gid)
    port = _free_port()
    options = " ".join(
        [
            f"-p {port} -k {sockets} -c listen_addresses=",
            # Recovery refuses fewer connections, workers, senders, prepared transactions or
            # locks than the server that wrote the WAL had: it may have had them as options
            # (compose.prod.yaml's postgres_settings), which the copied files do not hold.
            *(f"-c {name}={value}" for name, value in _primary_limits(bindir, data).items()),
            # It must not archive: it would write a new timeline into the repository that a
            # later `--at latest` would follow (`swap` has it archived once it is live).
            "-c archive_mode=off",
            # Nor act on the world as the live server does: no logical replication apply
            # workers (they would take the live subscriber's slot on the publisher) and no
            # preloaded libraries' workers (pg_cron would run the jobs a second time).
            "-c max_logical_replication_workers=0 -c shared_preload_libraries=",
            # The newest replayed commit's time is the drill's recovery point, even where the
            # live server was given this setting as an option rather than in its files.
            "-c track_commit_timestamp=on",
            *_sync_once(data),
        ]
    )
    log = sockets / "server.log"
    ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log)]
    try:
        argv = [*ctl, "-w", "-t", "600", "-o", options, "start"]
        started = subprocess.run(argv, env=dict(env), capture_output=True, check=False)
        if started.returncode:
            raise BackupError(f"the restored data directory did not start: {_tail(log)}")
        try:
            return _recovered(data, env, sockets, port)
        except psycopg.Error as exc:
            # Typically the server stopped: a target the archive does not reach ("recovery
            # ended before configured recovery target was reached"), which its log says.
            said = str(exc).strip().splitlines()[0]
            raise BackupError(
                f"the restored server did not answer ({said}): {_tail(log)}"
            ) from None
        except BackupError as exc:
            raise BackupError(f"{exc}: {_tail(log)}") from None
    finally:
        subprocess.run([*ctl, "-m", "fast", "-w", "stop"], env=dict(env), capture_output=True,
                       check=False)  # fmt: skip
        shutil.rmtree(sockets, ignore_errors=True)


def _sync_once(data: Path) -> list[str]:
    """Starting on a copied data directory, PostgreSQL first fsyncs every file in it, one by one.
    pgBackRest has just written and fsynced each of them: one syncfs() of the filesystem (14+)
    does the same for a fraction of the time (about 0.1 s of a 1.5 GB restore's 4.5 s here)."""
    return ["-c recovery_init_sync_method=syncfs"] if int(_major(data)) >= 14 else []


# pg_controldata's names for the settings hot standby needs at least as high as the primary's.
_LIMITS = {
    "max_connections setting": "max_connections",
    "max_worker_processes setting": "max_worker_processes",
    "max_wal_senders setting": "max_wal_senders",
    "max_prepared_xacts setting": "max_prepared_transactions",
    "max_locks_per_xact setting": "max_locks_per_transaction",
}


def _primary_limits(bindir: Path, data: Path) -> dict[str, str]:
    """The primary's values of those settings, as the restored pg_control recorded them (none
    where pg_controldata is missing: the server's log then says what it lacks)."""
    found_in = [bindir, Path("/usr/lib/postgresql") / _major(data) / "bin"]
    program = next(
        (p / "pg_controldata" for p in found_in if (p / "pg_controldata").exists()), None
    )
    if program is None:
        return {}
    shown = subprocess.run(
        [str(program), str(data)],
        capture_output=True,
        text=True,
        env={"LC_ALL": "C", "PATH": os.environ.get("PATH", "")},
        check=False,
    )
    found = {}
    for line in shown.stdout.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in _LIMITS and value.strip().isdigit():
            found[_LIMITS[name.strip()]] = value.strip()
    return found


def _recovered(data: Path, env: Mapping[str, str], sockets: Path, port: int) -> _Checked:
    deadline = time.monotonic() + 600
    with psycopg.connect(
        host=str(sockets),
        port=port,
        user=env.get("PGUSER", "postgres"),
        password=env.get("PGPASSWORD"),
        dbname="postgres",
        # Text as str even from a SQL_ASCII cluster (initdb without a locale).
        client_encoding="utf8",
        autocommit=True,
    ) as conn:
        while _fetch(conn, "SELECT pg_is_in_recovery()"):
            if time.monotonic() > deadline:
                raise BackupError("the restored server did not finish recovery in 10 min")
            time.sleep(0.05)  # a restore's time is its recovery time: poll often, it is cheap
        now = _fetch(conn, "SELECT now()")
        last = _fetch(conn, "SELECT (pg_last_committed_xact()).timestamp")
        names = conn.execute(
            "SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY 1"
        ).fetchall()
        # The name carries the new timeline; the segment number is the replay's.
        replayed = _fetch(conn, "SELECT pg_walfile_name(pg_last_wal_replay_lsn())") or ""
    return _Checked(
        now, last, tuple(n for (n,) in names), (_replayed_timeline(data), int(replayed[-16:], 16))
    )


def _segment(name: str) -> tuple[int, int]:
    """A WAL file name's timeline and segment number."""
    return int(name[:8], 16), int(name[8:], 16)


def _replayed_timeline(data: Path) -> int:
    """The timeline the replay ended on: the parent named on the last line of the history
    file the promotion wrote (the newest timeline's, `PARENT<TAB>SWITCHPOINT<TAB>REASON`)."""
    histories = sorted((data / "pg_wal").glob("*.history"))
    if not histories:
        raise BackupError("the restored server did not start a new timeline")
    lines = [ln for ln in histories[-1].read_text().splitlines() if ln.strip()[:1].isdigit()]
    return int(lines[-1].split()[0])


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
    new folder under `scratch`, check it, measure, and delete it. The live data is untouched.
    The folder is this drill's own, so overlapping drills never delete each other's."""
    scratch.mkdir(parents=True, exist_ok=True)
    into = Path(tempfile.mkdtemp(prefix="pitr-drill-", dir=scratch))
    try:
        if os.geteuid() == 0:
            # pgBackRest and the server run as the user that owns the scratch folder.
            owner = scratch.stat()
            os.chown(into, owner.st_uid, owner.st_gid)
        restored = restore(env, target("latest", window(env)), into)
    finally:
        shutil.rmtree(into, ignore_errors=True)
    age = None
    if restored.last_commit is not None:
        age = max(0.0, (datetime.now(UTC) - restored.last_commit).total_seconds())
    return Drill(restored, age)


def swap(data: Path, restored: Path) -> Path:
    """Put the directory `restore` checked in `data`'s place (the server must be stopped) and
    return where the old data now is: `data` renamed with a UTC suffix, never deleted here.
    Both are renamed within one filesystem, so `data` must be a folder inside the volume."""
    if (data / "postmaster.pid").exists():
        raise BackupError(f"PostgreSQL still runs on {data}: stop it before the swap")
    unfinished = [n for n in ("backup.manifest", "recovery.signal") if (restored / n).exists()]
    if not (restored / CHECKED).is_file() or unfinished:
        # A restore killed midway (pgBackRest's manifest is still there) or before its check
        # ended (still a recovery) leaves a directory that looks like data but is not whole.
        raise BackupError(
            f"{restored} is not a restored data directory that `shipyard backup pitr restore`"
            " checked: restore again"
        )
    if os.path.ismount(data):
        raise BackupError(
            f"{data} is a mount point and cannot be renamed: PGDATA must be a folder inside the"
            " volume (e.g. /var/lib/postgresql/data/pgdata)"
        )
    if restored.stat().st_dev != data.parent.stat().st_dev:
        raise BackupError(
            f"{restored} is on another filesystem than {data}: restore --into a folder next to it"
        )
    _archive_new_timeline(restored)
    old = data.with_name(f"{data.name}.old-{datetime.now(UTC):{ID_TIME}}")
    try:
        data.rename(old)
    except OSError as exc:
        raise BackupError(f"{data} could not be moved aside, nothing changed: {exc}") from None
    try:
        restored.rename(data)
    except OSError as exc:
        old.rename(data)
        raise BackupError(f"{restored} could not be moved in, {data} is as it was: {exc}") from None
    (data / CHECKED).unlink()
    return old


def _archive_new_timeline(data: Path) -> None:
    """Mark the timeline history files the check's promotion wrote (while archiving was off)
    ready for archiving: PostgreSQL's own archiver pushes them first thing once this data is
    live, so that later restores follow its timeline, and not before (a copy never swapped
    in must not steer them)."""
    status = data / "pg_wal" / "archive_status"
    for history in (data / "pg_wal").glob("*.history"):
        if not any((status / f"{history.name}{s}").exists() for s in (".done", ".ready")):
            (status / f"{history.name}.ready").touch()
            if os.geteuid() == 0:
                owner = data.stat()
                os.chown(status / f"{history.name}.ready", owner.st_uid, owner.st_gid)


def _major(data: Path) -> str:
    """The PostgreSQL major version that wrote the data directory `data`."""
    return (data / "PG_VERSION").read_text().strip()


def _bindir(data: Path, env: Mapping[str, str]) -> Path:
    """The server programs of `data`'s major version: `pg_ctl` on PATH if it is that version,
    else Debian's /usr/lib/postgresql/VERSION/bin (not on PATH there)."""
    version = _major(data)
    pg_ctl = shutil.which("pg_ctl", path=env.get("PATH"))
    if pg_ctl:
        said = subprocess.run([pg_ctl, "--version"], capture_output=True, text=True, check=False)
        found = re.search(r"\) (\d+)", said.stdout)
        if found and found.group(1) == version:
            return Path(pg_ctl).parent
    debian = Path("/usr/lib/postgresql") / version / "bin"
    if (debian / "pg_ctl").exists():
        return debian
    raise BackupError(
        f"the restored data is PostgreSQL {version}, whose server is not installed here"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _tail(log: Path, lines: int = 3) -> str:
    """What the server's log says went wrong: its FATAL and PANIC lines, else its last lines
    (blank ones left out)."""
    text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else "no server log"
    said = [line for line in text.splitlines() if line.strip()]
    fatal = [line for line in said if "FATAL:" in line or "PANIC:" in line]
    return " ".join((fatal or said)[-lines:]).strip()


def describe(backups: Sequence[BaseBackup]) -> str:
    """One line per base backup, oldest first."""
    if not backups:
        return "no base backups"
    rows = [f"{'label':<34} {'type':<5} {'ended':<20} {'size':>12}"]
    rows += [
        f"{b.label:<34} {b.kind:<5} {timepoint.rfc3339(b.stopped):<20} {b.size:>12}"
        for b in backups
    ]
    return "\n".join(rows)
