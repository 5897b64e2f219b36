"""Point-in-time recovery (shipyard.backup.pitr) on a real PostgreSQL archiving through a real
pgBackRest: restores to a time, to the end of the WAL and to a base backup; refusals that write
nothing; a corrupted repository refused before anything changes; an encrypted repository.

PostgreSQL refuses to run as root and pgBackRest must run as the user that owns the data, so
as root `pg_ctl` and `pgbackrest` are reached through two-line wrappers that run the real
binaries as `postgres` with the caller's environment (the engine finds both on PATH, as it
does in the image where everything runs as one user).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from shipyard.backup import drill_record, metrics, pgbackrest, pitr, storage
from shipyard.backup.engine import BackupError
from shipyard.backup.manifest import ID_TIME
from tests.backup_data import processes
from tests.servers import start, stop
from tests.servers.postgres import _bindir, free_port, owner_wrappers
from tests.servers.pushgateway import Pushgateway
from tests.servers.s3 import CREDENTIALS, TlsS3Server

AS_ROOT = os.geteuid() == 0


@dataclass
class Archived:
    """A running cluster whose WAL pgBackRest archives into `repo`, and the engine's env."""

    state: Path
    data: Path
    env: dict[str, str]

    def connect(self, data: Path | None = None, port: int | None = None) -> psycopg.Connection:
        return psycopg.connect(
            host=str(self.state),
            port=port or int(self.env["PGPORT"]),
            user="postgres",
            password=self.env["PGPASSWORD"],
            dbname="postgres",
            autocommit=True,
        )

    def start(
        self,
        data: Path,
        *,
        archive_command: bool = True,
        archiving: bool = True,
        commit_times: bool = True,
    ) -> None:
        """Start `data` as the live server, archiving (through the archive_command that ALTER
        SYSTEM sets, as on Compose hosts, without `archive_command`; not at all without
        `archiving`; without tracking commit times without `commit_times`)."""
        wanted = [
            s
            for s in pitr.archive_settings()
            if (archive_command or "command=" not in s)
            and (commit_times or not s.startswith("track_commit_timestamp="))
        ]
        wanted = wanted if archiving else []
        settings = " ".join(f"-c '{s}'" for s in wanted)
        # More connections than the default 100, as server options (as compose.prod.yaml's
        # postgres_settings give them): every restore must start its check server with them.
        limits = "-c max_connections=150"
        options = (
            f"-p {self.env['PGPORT']} -k {self.state} -c listen_addresses= {limits} {settings}"
        )
        self.ctl(data, "-l", str(self.state / "log"), "-w", "-o", options, "start")

    def ctl(self, data: Path, *argv: str) -> None:
        subprocess.run(["pg_ctl", "-D", str(data), *argv], env=self.env, check=True,
                       capture_output=True)  # fmt: skip

    def switch_wal(self) -> None:
        """Close the current WAL segment and wait until pgBackRest has archived it."""
        with self.connect() as conn:
            # The function returns the end of the segment it closed, whose name this is.
            row = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
            closed = row[0] if row else ""
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                row = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()
                if row and row[0] and row[0] >= closed:
                    return
                time.sleep(0.2)
        pytest.fail("WAL was not archived within 30 s")

    def rows(self, data: Path) -> list[int]:
        """Start a restored directory on a spare port, read table t, stop it."""
        port = free_port()
        options = f"-p {port} -k {self.state} -c listen_addresses= -c archive_mode=off"
        self.ctl(data, "-l", str(data.parent / f"{data.name}.log"), "-w", "-o", options, "start")
        try:
            with self.connect(port=port) as conn:
                return [r[0] for r in conn.execute("SELECT x FROM t ORDER BY x")]
        finally:
            self.ctl(data, "-m", "fast", "-w", "stop")


def _archived(repo: str, extra: dict[str, str]) -> Iterator[Archived]:
    state = Path(tempfile.mkdtemp(prefix="shipyard-pitr-"))
    (state / "tmp").mkdir()
    owner_wrappers(state / "bin")
    password = secrets.token_urlsafe(12)
    (state / "pwfile").write_text(password + "\n")
    if AS_ROOT:
        for path in (state, state / "tmp", state / "pwfile"):
            shutil.chown(path, "postgres", "postgres")
    data, port = state / "data", free_port()
    base = {
        **os.environ,
        "PATH": f"{state / 'bin'}:{os.environ['PATH']}",
        "PGDATA": str(data),
        "PGPORT": str(port),
        "PGHOST": str(state),
        "PGUSER": "postgres",
        "PGPASSWORD": password,
        "TMPDIR": str(state / "tmp"),
        **extra,
    }
    env = pgbackrest.environment(repo, base)
    subprocess.run(
        [str(_bindir() / "initdb"), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256",
         f"--pwfile={state / 'pwfile'}", "--no-sync"],
        check=True, capture_output=True, cwd=state, user="postgres" if AS_ROOT else None,
    )  # fmt: skip
    # The archive settings (commit times among them) as server options, not in the data
    # directory's files: the restore's check must track commit times all the same.
    cluster = Archived(state, data, env)
    cluster.start(data)
    try:
        yield cluster
    finally:
        subprocess.run(["pg_ctl", "-D", str(data), "-m", "immediate", "stop"], env=env,
                       capture_output=True, check=False)  # fmt: skip
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def archived() -> Iterator[Archived]:
    """A fresh cluster archiving into an encrypted local repository (a new one per test)."""
    repo = Path(tempfile.mkdtemp(prefix="shipyard-pitr-repo-"))
    if AS_ROOT:
        shutil.chown(repo, "postgres", "postgres")
    try:
        yield from _archived(f"file://{repo}", {pgbackrest.CIPHER_PASS: secrets.token_urlsafe(16)})
    finally:
        shutil.rmtree(repo, ignore_errors=True)


def _commit_rows(cluster: Archived, values: range) -> list[tuple[int, datetime]]:
    """Insert each value in a transaction of its own; return each with its commit time."""
    with cluster.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (x int PRIMARY KEY)")
        done = []
        for x in values:
            conn.execute("INSERT INTO t VALUES (%s)", (x,))
            time.sleep(0.01)
        for x, when in conn.execute(
            "SELECT x, pg_xact_commit_timestamp(xmin) FROM t WHERE x = ANY(%s) ORDER BY x",
            (list(values),),
        ):
            done.append((x, when))
    return done


def _base_backup(cluster: Archived, kind: str) -> str:
    """A base backup, and a wait past the second it ended in: pgBackRest restores to times
    after that second, so the commits the tests restore to must come later."""
    label = pitr.base_backup(cluster.env, kind).label
    time.sleep(1)
    return label


def _later() -> datetime:
    """`now` for `pitr.target` once the WAL archive holds the last minute's commits (the
    tests switch WAL and wait for the archive instead of waiting ARCHIVE_TIMEOUT)."""
    return datetime.now(UTC) + timedelta(seconds=pitr.ARCHIVE_TIMEOUT)


def test_a_restore_to_a_time_holds_exactly_the_transactions_committed_before_it(
    archived: Archived,
) -> None:
    pitr.setup(archived.env)
    label = _base_backup(archived, "full")
    committed = _commit_rows(archived, range(1, 201))
    # A point between two commits in the middle of the workload: recovery must stop there.
    (_, before), (_, after) = committed[99], committed[100]
    at = before + (after - before) / 2
    archived.switch_wal()
    window = pitr.window(archived.env)
    assert [b.label for b in window.backups] == [label]

    into = archived.state / "restored"
    # The WAL switch above put `at` in the archive; otherwise a point this recent is refused.
    restored = pitr.restore(archived.env, pitr.target(at.isoformat(), window, _later()), into)

    assert "postgres" in restored.databases
    assert restored.last_commit == before
    assert archived.rows(into) == list(range(1, 101))
    # The live cluster is untouched and still archiving.
    with archived.connect() as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (200,)


def test_latest_and_a_base_backup_label_are_recovery_points(archived: Archived) -> None:
    pitr.setup(archived.env)
    _commit_rows(archived, range(1, 11))
    first = _base_backup(archived, "full")
    between = _commit_rows(archived, range(11, 21))
    diff = pitr.base_backup(archived.env, "diff").label
    _commit_rows(archived, range(21, 31))
    archived.switch_wal()
    window = pitr.window(archived.env)
    assert [(b.label, b.kind) for b in window.backups] == [(first, "full"), (diff, "diff")]

    latest = archived.state / "latest"
    pitr.restore(archived.env, pitr.target("latest", window), latest)
    assert archived.rows(latest) == list(range(1, 31))
    at_diff = archived.state / "at-diff"
    pitr.restore(archived.env, pitr.target(diff, window), at_diff)
    assert archived.rows(at_diff) == list(range(1, 21))
    # A time between the two backups: pgBackRest picks the full one and replays from it.
    at_15 = archived.state / "at-15"
    point = between[4][1].isoformat()
    pitr.restore(archived.env, pitr.target(point, window, _later()), at_15)
    assert archived.rows(at_15) == list(range(1, 16))


def test_points_outside_the_window_are_refused_with_it_and_nothing_is_written(
    archived: Archived,
) -> None:
    pitr.setup(archived.env)
    with pytest.raises(BackupError, match="no base backup yet"):
        pitr.target("latest", pitr.window(archived.env))
    pitr.base_backup(archived.env, "full")
    window = pitr.window(archived.env)
    ended = window.backups[0].stopped
    assert window.start == ended + timedelta(seconds=1)
    recoverable = f"the recoverable window is {window.start:%Y-%m-%dT%H:%M:%SZ} to now"
    now = ended + timedelta(minutes=10)  # as if asked ten minutes after the backup
    refusals = {
        (
            ended - timedelta(minutes=5)
        ).isoformat(): f"before the oldest base backup kept: {recoverable}",
        # pgBackRest restores to a time after the second its oldest backup ended, not in it.
        (ended + timedelta(microseconds=999_999)).isoformat(): "before the oldest base backup",
        (now + timedelta(hours=1)).isoformat(): f"in the future: {recoverable}",
        # The archive is up to ARCHIVE_TIMEOUT behind: the last minute may not be in it yet.
        (now - timedelta(seconds=5)).isoformat(): "less than 60 s ago, and the WAL archive",
        "2026-12-04T10:15:00": "is not a time: give one like 2026-12-04T10:15:00Z",
        "yesterday": "'yesterday' is not a time: .*, or a base backup's label",
        "20200101-000000F": f"no base backup '20200101-000000F': {recoverable}",
    }
    for at, sentence in refusals.items():
        with pytest.raises(BackupError, match=sentence):
            pitr.target(at, window, now)
    # A restore never writes over a directory that holds anything.
    full = archived.state / "full"
    full.mkdir()
    (full / "keep").write_text("mine")
    with pytest.raises(BackupError, match="is not an empty folder"):
        pitr.restore(archived.env, pitr.target("latest", window), full)
    assert [p.name for p in full.iterdir()] == ["keep"]


def test_storage_down_while_archiving_keeps_the_server_up_and_loses_nothing(
    archived: Archived, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The repository gone while the server archives: PostgreSQL keeps committing, each closed
    segment waits in pg_wal as `.ready`, the failures count in pg_stat_archiver, which the real
    postgres_exporter serves under the names WalArchivingFailed reads; once the storage returns
    every waiting segment is archived and a restore to latest holds every row."""
    exporter = shutil.which("prometheus-postgres-exporter")
    assert exporter, "prometheus-postgres-exporter is needed: run .ci/setup.sh"
    pitr.setup(archived.env)
    _base_backup(archived, "full")
    stats = "SELECT archived_count, failed_count FROM pg_stat_archiver"
    repo = Path(archived.env["PGBACKREST_REPO1_PATH"])
    away = repo.with_name(f"{repo.name}-away")
    repo.rename(away)  # the storage down
    try:
        with archived.connect() as conn:
            archived_before, failed_before = conn.execute(stats).fetchone() or (0, 0)
            _commit_rows(archived, range(1, 21))
            conn.execute("SELECT pg_switch_wal()")
            _commit_rows(archived, range(21, 41))
            conn.execute("SELECT pg_switch_wal()")
            deadline = time.monotonic() + 30
            while (row := conn.execute(stats).fetchone()) and row[1] <= failed_before:
                assert time.monotonic() < deadline, "no archive failure counted in 30 s"
                time.sleep(0.2)
            assert row
            assert row[0] == archived_before
            waiting = sorted((archived.data / "pg_wal" / "archive_status").glob("*.ready"))
            assert len(waiting) >= 2, waiting
            _commit_rows(archived, range(41, 51))  # the server keeps committing

            # What Prometheus scrapes: the real exporter, logged in as on a Compose host.
            monkeypatch.setenv(
                "DATA_SOURCE_NAME",
                f"postgresql://postgres:{archived.env['PGPASSWORD']}@/postgres"
                f"?host={archived.state}&port={archived.env['PGPORT']}&sslmode=disable",
            )
            proc, url = start(
                lambda port: [exporter, f"--web.listen-address=127.0.0.1:{port}"],
                "/metrics",
                "postgres_exporter",
            )
            try:
                page = requests.get(f"{url}/metrics", timeout=10).text
            finally:
                stop(proc, timeout=10)
            # (By family: the parser adds `_total` to a counter's samples; Prometheus does not.)
            served = {
                family.name: sample.value
                for family in text_string_to_metric_families(page)
                for sample in family.samples
            }
            assert served["pg_stat_archiver_failed_count"] > failed_before
            assert served["pg_stat_archiver_archived_count"] == archived_before
    finally:
        away.rename(repo)  # the storage returns

    archived.switch_wal()  # wakes the archiver, which sends what waited first
    assert not list((archived.data / "pg_wal" / "archive_status").glob("*.ready"))
    latest = archived.state / "latest"
    pitr.restore(archived.env, pitr.target("latest", pitr.window(archived.env)), latest)
    assert archived.rows(latest) == list(range(1, 51))


def test_a_corrupted_wal_segment_fails_the_restore_and_leaves_nothing(archived: Archived) -> None:
    pitr.setup(archived.env)
    _base_backup(archived, "full")
    committed = _commit_rows(archived, range(1, 51))
    archived.switch_wal()
    repo = Path(archived.env["PGBACKREST_REPO1_PATH"])
    segments = sorted(
        p
        for p in (repo / "archive" / "db").rglob("0000000100000000000000*")
        if ".backup" not in p.name
    )
    newest = segments[-1]
    blob = bytearray(newest.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    newest.write_bytes(bytes(blob))

    into = archived.state / "restored"
    at = pitr.target(committed[-1][1].isoformat(), pitr.window(archived.env), _later())
    # The server's own reason, from its log: replay stopped at the unreadable segment.
    with pytest.raises(BackupError, match="recovery ended before configured recovery target"):
        pitr.restore(archived.env, at, into)
    assert not into.exists()
    # To `latest`, PostgreSQL would take the unreadable segment for the end of the WAL and
    # promote without the commits in it and after it: refused too.
    with pytest.raises(BackupError, match="a segment is missing or corrupted"):
        pitr.restore(archived.env, pitr.target("latest", pitr.window(archived.env)), into)
    assert not into.exists()
    with archived.connect() as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (50,)


def test_the_repository_is_encrypted_and_useless_without_its_passphrase(
    archived: Archived,
) -> None:
    pitr.setup(archived.env)
    with archived.connect() as conn:
        conn.execute("CREATE TABLE secret_marker AS SELECT 'plain-text-canary' AS v")
    pitr.base_backup(archived.env, "full")
    repo = Path(archived.env["PGBACKREST_REPO1_PATH"])
    stored = [p for p in repo.rglob("*") if p.is_file()]
    assert {"archive", "backup"} <= {p.relative_to(repo).parts[0] for p in stored}
    # Every file, WAL and data and pgBackRest's own lists, is an OpenSSL cipher stream (zstd
    # alone would also hide the canary, so the header is what shows encryption).
    assert {p.read_bytes()[:8] for p in stored} == {b"Salted__"}
    assert not any(b"plain-text-canary" in p.read_bytes() for p in stored)
    wrong = {**archived.env, "PGBACKREST_REPO1_CIPHER_PASS": "not-the-passphrase"}
    with pytest.raises(
        BackupError, match=f"cannot be read: .*is {pgbackrest.CIPHER_PASS} the passphrase"
    ):
        pitr.window(wrong)


def _base_backup_under_way(
    cluster: Archived, env: dict[str, str], **popen: Any
) -> subprocess.Popen[bytes]:
    """`pitr base` in a child process (with `env`, and `popen`'s options), on a table large
    enough to take a while, returned once pgBackRest has begun writing the backup's folder."""
    pitr.setup(cluster.env)
    with cluster.connect() as conn:
        conn.execute(
            "CREATE TABLE big AS SELECT g, md5(g::text) AS h FROM generate_series(1, 1500000) g"
        )
    child = subprocess.Popen(
        [sys.executable, "-m", "shipyard.cli", "backup", "pitr", "base", "--target",
         f"file://{cluster.env['PGBACKREST_REPO1_PATH']}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen,
    )  # fmt: skip
    backup_dir = Path(cluster.env["PGBACKREST_REPO1_PATH"]) / "backup" / "db"
    deadline = time.monotonic() + 60
    while not any(p.is_dir() and p.name.endswith("F") for p in backup_dir.glob("*")):
        if child.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the base backup never started: {child.communicate()}")
        time.sleep(0.05)
    return child


def test_a_base_backup_killed_midway_is_never_listed(archived: Archived) -> None:
    child = _base_backup_under_way(archived, archived.env, start_new_session=True)
    # The engine and every pgBackRest process it started (in a process group of their own),
    # at once, as a crash would.
    groups = {os.getpgid(pid) for pid in (child.pid, *_descendants(child.pid))}
    for group in groups:
        os.killpg(group, signal.SIGKILL)
    child.communicate()
    assert pitr.window(archived.env, require=False).backups == ()
    # The next base backup completes and is the only one listed.
    label = pitr.base_backup(archived.env, "full").label
    assert [b.label for b in pitr.window(archived.env).backups] == [label]


def test_a_base_backup_interrupted_by_the_scheduler_reports_no_failure(
    archived: Archived, pushgateway: Pushgateway
) -> None:
    """The scheduler stops a running job with SIGINT when a deploy recreates it: that is no
    failed base backup, and nothing is pushed (BackupJobFailed would fire until the next one)."""
    service = f"stopped-{secrets.token_hex(3)}"
    env = {**archived.env, metrics.URL_VARIABLE: pushgateway.url, "SHIPYARD_SERVICE": service,
           "SHIPYARD_ENV": "prod"}  # fmt: skip
    child = _base_backup_under_way(archived, env)
    child.send_signal(signal.SIGINT)  # as schedule.py forwards a stop
    child.communicate(timeout=60)

    assert child.returncode != 0
    assert pitr.window(archived.env, require=False).backups == ()
    assert not pushgateway.values(service=service)


def test_a_drill_interrupted_by_the_scheduler_reports_no_failure(
    archived: Archived, pushgateway: Pushgateway
) -> None:
    """A drill stopped with SIGINT mid-restore (a deploy recreating the scheduler) is no failed
    drill: nothing pushed (BackupDrillFailed would fire until the next weekly one), nothing
    recorded, its scratch copy removed."""
    pitr.setup(archived.env)
    with archived.connect() as conn:
        conn.execute(
            "CREATE TABLE big AS SELECT g, md5(g::text) AS h FROM generate_series(1, 1500000) g"
        )
    pitr.base_backup(archived.env, "full")
    service = f"stopped-drill-{secrets.token_hex(3)}"
    env = {**archived.env, metrics.URL_VARIABLE: pushgateway.url, "SHIPYARD_SERVICE": service,
           "SHIPYARD_ENV": "prod"}  # fmt: skip
    target = f"file://{archived.env['PGBACKREST_REPO1_PATH']}"
    child = subprocess.Popen(
        [sys.executable, "-m", "shipyard.cli", "backup", "pitr", "drill", "--target", target],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    scratch = Path(env["TMPDIR"])
    deadline = time.monotonic() + 60
    while not list(scratch.glob("pitr-drill-*")):
        if child.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the drill never started its restore: {child.communicate()}")
        time.sleep(0.05)
    (into,) = scratch.glob("pitr-drill-*")
    while not _processes_on(into):  # pgBackRest and its worker processes are restoring
        if child.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"pgBackRest never started its restore: {child.communicate()}")
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)  # as schedule.py forwards a stop
    child.communicate(timeout=120)

    assert child.returncode != 0
    # pgBackRest's workers were stopped and waited for: none is left writing into a folder
    # the drill removed (they would have raced its removal, and left part of it behind).
    assert not _processes_on(into)
    assert not pushgateway.values(service=service)
    assert drill_record.read(storage.from_url(target)) is None
    assert not into.exists()


# prctl(2): orphaned descendants are given to the calling process instead of PID 1.
PR_SET_CHILD_SUBREAPER = 36
# Stand-ins with pgBackRest's shape when stopped: a main process and two workers in its
# process group. They write their pid once the workers run, and what they were sent to MARKS.
# A worker's loop ends with the test's process (OWNER), so one killed while a broken engine
# waits on them leaves none running, and after 30 s, saying so in MARKS, so a broken engine
# that waits for them without stopping them fails the test in 30 s, not at a timeout.
WORKER = (
    'i=0; while kill -0 "$OWNER" && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done;'
    ' [ $i -lt 300 ] || echo expired >> "$MARKS"'
)
STUBBORN_TOOL = f"""#!/bin/sh
(trap '' TERM; trap 'echo HUP >> "$MARKS"' HUP; {WORKER}) &
({WORKER}) &
echo $$ > "$STARTED"
wait
"""
# This one's main process takes a moment to clean up on SIGTERM, as pgBackRest's does.
POLITE_TOOL = f"""#!/bin/sh
trap 'sleep 0.3; echo cleaned-up >> "$MARKS"; exit 143' TERM
({WORKER}) &
({WORKER}) &
echo $$ > "$STARTED"
wait
"""


def _interrupted(tmp_path: Path, script: str) -> tuple[int, str]:
    """Run `script` as pgbackrest and interrupt `pgbackrest.run` (as Ctrl-C or the scheduler's
    SIGINT does) once its workers run: its process group and what it was sent."""
    tool = tmp_path / "pgbackrest"
    tool.write_text(script)
    tool.chmod(0o755)
    started, marks = tmp_path / "started", tmp_path / "marks"
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "STARTED": str(started),
           "MARKS": str(marks), "OWNER": str(os.getpid())}  # fmt: skip

    def interrupt(_signum: int, _frame: object) -> None:
        if started.exists() and started.read_text().strip():
            raise KeyboardInterrupt
        signal.setitimer(signal.ITIMER_REAL, 0.05)

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(KeyboardInterrupt):
            pgbackrest.run(env, "restore")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return int(started.read_text()), marks.read_text() if marks.exists() else ""


def test_a_stopped_pgbackrest_is_ended_with_its_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C or the scheduler's SIGINT while pgBackRest runs: its whole process group is
    ended and waited for (a worker that ignores SIGTERM, killed after the grace period)
    before the interrupt goes on, so nothing writes into a folder its caller removes. Looking
    whether one is left sends nothing (no SIGHUP)."""
    monkeypatch.setattr(pgbackrest, "GRACE", 0.5)
    group, marks = _interrupted(tmp_path, STUBBORN_TOOL)
    left = _running_in_group(group)
    with contextlib.suppress(ProcessLookupError):  # never leave them looping after a failure
        os.killpg(group, signal.SIGKILL)
    assert not left
    assert marks == ""


def test_a_stopped_pgbackrest_cleans_up_and_leaves_no_zombie_to_its_adopter(
    tmp_path: Path,
) -> None:
    """pgBackRest is given its grace period to clean up on SIGTERM, and the engine, as a
    container's PID 1, reaps the workers orphaned to it (here: this process made their
    subreaper, as PID 1 is): nothing of the group is left, not even a zombie."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0, os.strerror(ctypes.get_errno())
    group = 0
    try:
        group, marks = _interrupted(tmp_path, POLITE_TOOL)
        with pytest.raises(ProcessLookupError):
            os.killpg(group, 0)
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        with contextlib.suppress(ChildProcessError):  # what a failing version left adopted
            while group and os.waitpid(-group, os.WNOHANG)[0]:
                pass
    assert marks == "cleaned-up\n"


@pytest.mark.parametrize(("command", "own_group"), [("archive-push", False), ("restore", True)])
def test_only_the_archive_command_stays_in_the_callers_process_group(
    tmp_path: Path, command: str, own_group: bool
) -> None:
    """PostgreSQL stops its archive_command by signalling its archiver's process group, which
    pgBackRest must stay in; the engine's own commands get a group to stop with their workers."""
    tool = tmp_path / "pgbackrest"
    tool.write_text("#!/bin/sh\ncut -d' ' -f5 /proc/$$/stat\n")  # its process group
    tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    group = int(pgbackrest.run(env, command))
    assert (group != os.getpgrp()) is own_group


def _running_in_group(group: int) -> list[int]:
    """The processes of process group `group` that still run (zombies, which do nothing
    more, left out)."""
    return [p.pid for p in processes() if p.pgrp == group and p.state != "Z"]


def _descendants(pid: int) -> list[int]:
    """The processes `pid` started, and the ones they started, and so on."""
    children: dict[int, list[int]] = {}
    for process in processes():
        children.setdefault(process.ppid, []).append(process.pid)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _processes_on(folder: Path) -> list[str]:
    """The command lines of the processes running with `folder` in their arguments."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:  # it exited meanwhile
            continue
        if any(str(folder).encode() in arg for arg in argv):
            found.append(" ".join(a.decode(errors="replace") for a in argv))
    return found


def _cli(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    target = f"file://{env['PGBACKREST_REPO1_PATH']}"
    return subprocess.run(
        [sys.executable, "-m", "shipyard.cli", "backup", "pitr", *argv, "--target", target],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_after_a_swap_the_new_timeline_is_archived_and_latest_follows_it(
    archived: Archived,
) -> None:
    pitr.setup(archived.env)
    _base_backup(archived, "full")
    kept = _commit_rows(archived, range(1, 6))
    _commit_rows(archived, range(6, 11))  # the rows the operator rolls back
    archived.switch_wal()
    restored = archived.state / "restored"
    at = pitr.target(kept[-1][1].isoformat(), pitr.window(archived.env), _later())
    pitr.restore(archived.env, at, restored)

    running = _cli(archived.env, "swap", "--restored", str(restored), "--yes")
    assert running.returncode == 1
    assert "still runs" in running.stderr
    archived.ctl(archived.data, "-m", "fast", "-w", "stop")
    # On a host in another time zone: the old data's name still carries UTC's time.
    swapped = _cli(
        {**archived.env, "TZ": "Asia/Tokyo"}, "swap", "--restored", str(restored), "--yes"
    )
    assert swapped.returncode == 0, swapped.stderr
    [old] = archived.state.glob("data.old-*")
    aside = datetime.strptime(old.name.removeprefix("data.old-"), ID_TIME).replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - aside) < timedelta(minutes=1)
    assert f"the old data is kept in {old}" in swapped.stdout
    assert (old / "PG_VERSION").exists()
    assert not restored.exists()
    assert not (archived.data / pitr.CHECKED).exists()

    # Live again: the new timeline's history reaches the archive first, then its WAL.
    archived.start(archived.data)
    _commit_rows(archived, range(100, 103))
    archived.switch_wal()
    repo = Path(archived.env["PGBACKREST_REPO1_PATH"])
    assert list(repo.rglob("00000002.history*"))
    again = archived.state / "again"
    done = _cli(archived.env, "restore", "--at", "latest", "--into", str(again))
    assert done.returncode == 0, done.stderr
    assert re.search(r"last commit replayed \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", done.stdout)
    assert archived.rows(again) == [1, 2, 3, 4, 5, 100, 101, 102]

    # Without that history file a replay would dead-end on the old timeline: refused.
    for history in repo.rglob("00000002.history*"):
        history.unlink()
    blind = _cli(archived.env, "restore", "--at", "latest", "--into", str(archived.state / "b"))
    assert blind.returncode == 1
    assert "followed timeline 1, but the archive holds WAL of timeline 2" in blind.stderr


def test_a_server_that_does_not_track_commit_times_restores_with_its_recovery_point_untracked(
    archived: Archived,
) -> None:
    """A server started without track_commit_timestamp (one the kit did not configure) archives
    and restores all the same; the restore and the drill say the newest commit's time is not
    tracked rather than inventing one."""
    archived.ctl(archived.data, "-m", "fast", "-w", "stop")
    archived.start(archived.data, commit_times=False)
    pitr.setup(archived.env)
    _base_backup(archived, "full")
    with archived.connect() as conn:
        conn.execute("CREATE TABLE t AS SELECT 1 AS x")
    archived.switch_wal()

    into = archived.state / "restored"
    restored = _cli(archived.env, "restore", "--at", "latest", "--into", str(into))
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout.endswith("; last commit replayed not tracked\n"), restored.stdout
    assert archived.rows(into) == [1]
    drill = _cli(archived.env, "drill")
    assert drill.returncode == 0, drill.stderr
    assert drill.stdout.endswith(" (recovery time); recovery point: not tracked\n"), drill.stdout


def test_swap_takes_only_a_directory_restore_checked_and_changes_nothing_else(
    archived: Archived,
) -> None:
    archived.ctl(archived.data, "-m", "fast", "-w", "stop")
    before = sorted(p.name for p in archived.state.iterdir())

    def folder(where: Path, *names: str) -> Path:
        where.mkdir()
        for name in ("PG_VERSION", *names):
            (where / name).write_text("15\n")
        return where

    unchecked = (
        "{} is not a restored data directory that `shipyard backup pitr restore` checked:"
        " restore again"
    )
    refusals = {
        # Data, but never checked: a restore killed before its check ended.
        folder(archived.state / "unchecked"): unchecked,
        # pgBackRest's manifest is still there: a restore killed midway.
        folder(archived.state / "midway", pitr.CHECKED, "backup.manifest"): unchecked,
        folder(archived.state / "recovering", pitr.CHECKED, "recovery.signal"): unchecked,
    }
    shm = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        if shm.stat().st_dev != archived.state.stat().st_dev:
            refusals[folder(shm / "elsewhere", pitr.CHECKED)] = (
                f"{{}} is on another filesystem than {archived.data}: restore --into a folder"
                " next to it"
            )
        for restored, sentence in refusals.items():
            with pytest.raises(BackupError) as refused:
                pitr.swap(archived.data, restored)
            assert str(refused.value) == sentence.format(restored)
    finally:
        shutil.rmtree(shm)
    for made in ("unchecked", "midway", "recovering"):
        shutil.rmtree(archived.state / made)
    assert sorted(p.name for p in archived.state.iterdir()) == before


def _checked_restore(where: Path, histories: dict[str, str]) -> Path:
    """A directory as `restore` leaves it, without a server: checked, its pg_wal holding
    timeline history files, each with its archive status ("" for none yet)."""
    status = where / "pg_wal" / "archive_status"
    status.mkdir(parents=True)
    (where / "PG_VERSION").write_text("15\n")
    (where / pitr.CHECKED).write_text("{}\n")
    for name, state in histories.items():
        (where / "pg_wal" / name).write_text("1\t0/3000000\tno recovery target specified\n")
        if state:
            (status / f"{name}.{state}").touch()
    return where


def test_a_swap_has_only_the_history_files_never_archived_archived(tmp_path: Path) -> None:
    """The promotion's new history file is marked ready for the archiver; one the archive
    already holds (done) is not pushed again."""
    data = tmp_path / "data"
    data.mkdir()
    histories = {"00000002.history": "done", "00000003.history": "ready", "00000004.history": ""}
    old = pitr.swap(data, _checked_restore(tmp_path / "restored", histories))
    assert old.parent == tmp_path
    assert old.name.startswith("data.old-")
    assert sorted(p.name for p in (data / "pg_wal" / "archive_status").iterdir()) == [
        "00000002.history.done",
        "00000003.history.ready",
        "00000004.history.ready",
    ]
    assert sorted(p.name for p in data.iterdir()) == ["PG_VERSION", "pg_wal"]


def test_a_swap_whose_data_cannot_be_moved_aside_leaves_both_in_place(tmp_path: Path) -> None:
    """The old data's name taken by a folder that is not empty (for each second the swap
    could run in): refused, the live data and the restored directory where they were (the
    restored one's history file marked ready, as the next swap would mark it), nothing else
    made or moved."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "PG_VERSION").write_text("15\n")
    now = datetime.now(UTC)
    for second in range(120):
        taken = tmp_path / f"data.old-{now + timedelta(seconds=second):{ID_TIME}}"
        taken.mkdir()
        (taken / "PG_VERSION").write_text("14\n")
    restored = _checked_restore(tmp_path / "restored", {"00000002.history": ""})
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(BackupError) as refused:
        pitr.swap(data, restored)
    busy = f"[Errno {errno.ENOTEMPTY}] {os.strerror(errno.ENOTEMPTY)}"
    assert str(refused.value).startswith(
        f"{data} could not be moved aside, nothing changed: {busy}: '{data}' -> "
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (data / "PG_VERSION").read_text() == "15\n"
    assert sorted(p.name for p in restored.iterdir()) == ["PG_VERSION", "pg_wal", pitr.CHECKED]
    assert [p.name for p in (restored / "pg_wal" / "archive_status").iterdir()] == [
        "00000002.history.ready"
    ]


def test_a_swap_whose_restored_directory_cannot_be_moved_in_puts_the_data_back(
    tmp_path: Path,
) -> None:
    """The restored directory busy (a mount point on the same filesystem, which passes the
    checks before): the live data, already moved aside, goes back to its place."""
    if not AS_ROOT:
        pytest.skip("a bind mount needs root (the CI runs the suite as root)")
    data = tmp_path / "data"
    data.mkdir()
    (data / "PG_VERSION").write_text("15\n")
    restored = _checked_restore(tmp_path / "restored", {"00000002.history": ""})
    subprocess.run(["mount", "--bind", str(restored), str(restored)], check=True)
    try:
        with pytest.raises(BackupError) as refused:
            pitr.swap(data, restored)
    finally:
        subprocess.run(["umount", str(restored)], check=False)
    busy = f"[Errno {errno.EBUSY}] {os.strerror(errno.EBUSY)}"
    assert str(refused.value) == (
        f"{restored} could not be moved in, {data} is as it was: {busy}: '{restored}' -> '{data}'"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "restored"]
    assert (data / "PG_VERSION").read_text() == "15\n"


@contextlib.contextmanager
def _small_filesystem(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `where` (root only), unmounted afterwards."""
    if not AS_ROOT:
        pytest.skip("mounting a small filesystem needs root (the CI runs the suite as root)")
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


def test_no_room_and_a_mount_point_are_refused_before_anything_is_written(
    archived: Archived,
) -> None:
    pitr.setup(archived.env)
    _base_backup(archived, "full")
    window = pitr.window(archived.env)
    with _small_filesystem(archived.state / "small", "16m") as small:
        into = small / "restored"
        with pytest.raises(BackupError, match=r"has 16 MiB free, and the restore needs about"):
            pitr.restore(archived.env, pitr.target("latest", window), into)
        assert list(small.iterdir()) == []
        # A drill restores into a folder of its own in its scratch folder, made with its
        # parents: on this filesystem too, so it is refused the same way and leaves it empty.
        scratch = small / "drills" / "scratch"
        with pytest.raises(BackupError) as refused:
            pitr.drill(archived.env, scratch)
        where = re.escape(f"{scratch}/pitr-drill-")
        assert re.match(
            rf"{where}\w+ has 16 MiB free, and the restore needs about", str(refused.value)
        )
        assert list(scratch.iterdir()) == []
    # PGDATA as the volume's mount point cannot be renamed: refused before anything moves.
    restored = archived.state / "restored"
    pitr.restore(archived.env, pitr.target("latest", window), restored)
    with _small_filesystem(archived.state / "volume", "16m") as volume:
        with pytest.raises(BackupError) as refused:
            pitr.swap(volume, restored)
        assert str(refused.value) == (
            f"{volume} is a mount point and cannot be renamed: PGDATA must be a folder inside"
            " the volume (e.g. /var/lib/postgresql/data/pgdata)"
        )
        assert (restored / pitr.CHECKED).exists()


def test_the_server_programs_are_the_data_s_major_version(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    version = _bindir().parent.name  # Debian's /usr/lib/postgresql/VERSION/bin
    (data / "PG_VERSION").write_text(f"{version}\n")
    other = tmp_path / "bin"
    other.mkdir()
    (other / "pg_ctl").write_text("#!/bin/sh\necho 'pg_ctl (PostgreSQL) 99.1'\n")
    (other / "pg_ctl").chmod(0o755)
    # A newer server's pg_ctl first on PATH is passed over for the data's own version.
    assert pitr._bindir(data, {"PATH": f"{other}:/usr/bin"}) == _bindir()
    (data / "PG_VERSION").write_text("99\n")
    assert pitr._bindir(data, {"PATH": f"{other}:/usr/bin"}) == other
    (data / "PG_VERSION").write_text("98\n")
    with pytest.raises(BackupError, match="PostgreSQL 98, whose server is not installed"):
        pitr._bindir(data, {"PATH": f"{other}:/usr/bin"})


def test_the_cli_lists_the_window_and_refuses_bad_setups_with_a_sentence(
    archived: Archived,
) -> None:
    pitr.setup(archived.env)
    label = pitr.base_backup(archived.env, "full").label
    shown = _cli(archived.env, "list")
    assert shown.returncode == 0, shown.stderr
    assert label in shown.stdout
    assert "the recoverable window" not in shown.stdout
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ to now", shown.stdout, re.M)
    assert shown.stdout.endswith(
        "\nlast drill: none yet (`shipyard backup pitr drill`, `invoke backup.verify`)\n"
    )

    refused = subprocess.run(
        [sys.executable, "-m", "shipyard.cli", "backup", "pitr", "list", "--target", "s3://b/p"],
        env={**archived.env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "pgBackRest reaches S3 over HTTPS only" in refused.stderr
    assert "Traceback" not in refused.stderr

    # A passphrase secret that was not mounted: no plain-text repository is created.
    empty = Path(tempfile.mkdtemp(dir=archived.state / "tmp"))
    plain = {k: v for k, v in archived.env.items() if k != pgbackrest.CIPHER_PASS}
    plain["PGBACKREST_REPO1_PATH"] = str(empty)
    unset = _cli(plain, "setup")
    assert unset.returncode == 1
    assert (
        f"{pgbackrest.CIPHER_PASS} is not set, so the repository would not be encrypted"
        in unset.stderr
    )
    assert list(empty.iterdir()) == []
    # ... and reading an encrypted one without it says what is missing.
    blind = {**plain, "PGBACKREST_REPO1_PATH": archived.env["PGBACKREST_REPO1_PATH"]}
    unreadable = _cli(blind, "list")
    assert unreadable.returncode == 1
    assert (
        f"if the repository is encrypted, {pgbackrest.CIPHER_PASS} must be set" in unreadable.stderr
    )


def test_pgbackrest_takes_the_archive_command_whatever_the_repository(archived: Archived) -> None:
    """pgBackRest's check and backup refuse an archive_command without "pgbackrest" in it. The
    kit's command for an S3 repository (whose URL lacks the word) passes that rule on the real
    pgBackRest; the command it replaced did not (the check then waits for the segment, which
    cannot be archived here: this server's user cannot run the test's venv)."""

    def check(command: str) -> str:
        with archived.connect() as conn:
            conn.execute(f"ALTER SYSTEM SET archive_command = '{command}'")
            conn.execute("SELECT pg_reload_conf()")
        with pytest.raises(BackupError) as refused:
            pgbackrest.run(archived.env, "check", "--archive-timeout=1")
        return str(refused.value)

    archived.ctl(archived.data, "-m", "fast", "-w", "stop")
    archived.start(archived.data, archive_command=False)
    pgbackrest.run(archived.env, "stanza-create")
    s3 = "s3://backups/prod/pitr"
    assert "must contain pgbackrest" in check(f"shipyard backup pitr archive-push %p --target {s3}")
    waited = check(pitr.archive_command(s3))
    assert "must contain pgbackrest" not in waited
    assert "was not archived before the 1000ms timeout" in waited


def test_setup_points_the_servers_archive_command_at_the_repository_and_needs_archiving(
    archived: Archived,
) -> None:
    """`pitr setup --archive-command`'s first step, on the real server: the command (its URL
    quoted for the shell) is set with ALTER SYSTEM, live at once and kept in the data directory
    (so in every restored copy); a server started without archive_mode is
    refused with the settings it needs. (The step after, pgBackRest's check, needs the server's
    user to run the kit's venv: the Compose round trip covers it.)"""
    # Started as on Compose hosts: an archive_command given as an option would win over the
    # data directory's.
    archived.ctl(archived.data, "-m", "fast", "-w", "stop")
    archived.start(archived.data, archive_command=False)
    # Whatever the caller's libpq variables name: the setting is the cluster's, set from the
    # `postgres` database (the app's may not exist yet), its text read as str.
    target = "s3://backups/prod eu/pitr"
    with pytest.MonkeyPatch.context() as libpq:
        libpq.setenv("PGDATABASE", "no_such_database")
        libpq.setenv("PGCLIENTENCODING", "SQL_ASCII")
        pitr._archive_through_shipyard(archived.env, target)
    expected = "shipyard-pgbackrest-push %p --target 's3://backups/prod eu/pitr'"
    assert pitr.archive_command(target) == expected
    with archived.connect() as conn:
        assert conn.execute("SHOW archive_command").fetchone() == (expected,)
        # Kept in the data directory's postgresql.auto.conf, as its configuration files say.
        kept = "SELECT setting FROM pg_file_settings WHERE name = 'archive_command'"
        assert conn.execute(kept).fetchall() == [(expected,)]

    # Started again without archive_mode, it is refused.
    archived.ctl(archived.data, "-m", "fast", "-w", "stop")
    archived.start(archived.data, archiving=False)
    with pytest.raises(BackupError) as refused:
        pitr._archive_through_shipyard(archived.env, target)
    assert str(refused.value) == (
        "the server does not archive (archive_mode is off): start it with -c"
        " track_commit_timestamp=on -c wal_level=replica -c archive_mode=on -c archive_timeout=60"
    )


def test_a_server_that_failed_is_summed_up_by_its_fatal_and_panic_lines(tmp_path: Path) -> None:
    """What a restore's error quotes of the check server's log: its last three FATAL or PANIC
    lines, else its last three lines; bytes that are not UTF-8 do not hide them."""
    log = tmp_path / "server.log"
    lines = [
        b"LOG:  starting PostgreSQL 15",
        b"FATAL:  first",
        b"FATAL:  could not open file \xff",
        b"LOG:  redo starts",
        b"PANIC:  could not write to file",
        b"LOG:  between",
        b"FATAL:  recovery ended before configured recovery target was reached",
        b"LOG:  database system is shut down",
    ]
    log.write_bytes(b"\n".join(lines) + b"\n")
    assert pitr._tail(log) == (
        "FATAL:  could not open file \ufffd PANIC:  could not write to file"
        " FATAL:  recovery ended before configured recovery target was reached"
    )
    log.write_text("LOG:  one\nLOG:  two\nLOG:  three\nLOG:  four\n\n  \n")
    assert pitr._tail(log) == "LOG:  two LOG:  three LOG:  four"
    assert pitr._tail(tmp_path / "missing.log") == "no server log"


def test_the_archive_command_loads_only_what_it_needs_and_fails_in_a_sentence(
    tmp_path: Path,
) -> None:
    """`shipyard-pgbackrest-push`, PostgreSQL's archive_command (once per WAL segment), imports
    the standard library and pgbackrest.py only: not the engine, psycopg or the validators'
    schemas, which made each segment cost 0.6 s more. (The compose test archives through it
    on a real server: tests/test_pitr_compose.py.)"""
    probe = (
        "import sys, shipyard.backup.pgbackrest;"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('shipyard', 'psycopg', 'jsonschema', 'ruamel', 'boto3', 'botocore'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert loaded == [
        "shipyard", "shipyard.backup", "shipyard.backup.pgbackrest", "shipyard.backup.report"
    ]  # fmt: skip
    command = shutil.which("shipyard-pgbackrest-push", path=Path(sys.executable).parent)
    assert command, "the package installs the command"

    def push(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([command, *args], capture_output=True, text=True, check=False)

    usage = push("000000010000000000000001")
    assert (usage.returncode, usage.stdout) == (2, "")
    assert usage.stderr == "usage: shipyard-pgbackrest-push WAL --target URL\n"
    refused = push("000000010000000000000001", "--target", "ftp://host/repo")
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr == (
        "shipyard-pgbackrest-push: 'ftp://host/repo' is not file:///PATH or s3://BUCKET/PREFIX\n"
    )
    # pgBackRest's own refusal, in one line: no server runs where the WAL file is said to be.
    missing = push(str(tmp_path / "pg_wal" / "000000010000000000000001"), "--target",
                   f"file://{tmp_path / 'repo'}")  # fmt: skip
    assert missing.returncode == 1
    assert missing.stderr.startswith("shipyard-pgbackrest-push: pgbackrest archive-push failed: ")
    assert "Traceback" not in missing.stderr


def test_the_archive_command_pushes_a_segment_with_status_0(archived: Archived) -> None:
    """The archive_command's success on the real pgBackRest, which is what lets PostgreSQL
    recycle the segment: one the archive holds already (as when PostgreSQL pushes again a
    segment whose push it did not see end) is taken with status 0 and no word on stdout."""
    pitr.setup(archived.env)
    archived.switch_wal()
    with archived.connect() as conn:
        row = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()
    archived_wal = row[0] if row else None
    assert archived_wal, "switch_wal waited for a segment to be archived"
    segment = archived.data / "pg_wal" / str(archived_wal)
    assert segment.is_file(), "the segment just archived is still in pg_wal"
    command = shutil.which("shipyard-pgbackrest-push", path=Path(sys.executable).parent)
    assert command, "the package installs the command"
    target = f"file://{archived.env['PGBACKREST_REPO1_PATH']}"
    pushed = subprocess.run(
        [command, str(segment), "--target", target],
        env=archived.env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert (pushed.returncode, pushed.stdout) == (0, ""), pushed.stderr


def test_the_scheduler_takes_base_backups_and_drills_on_their_schedules(
    archived: Archived,
) -> None:
    """`shipyard backup schedule` with point-in-time recovery's jobs (compose.backup.yaml's
    scheduler): full and differential base backups and the drill, on schedules in seconds,
    one at a time, on a real archiving cluster; stopped with SIGTERM, status 0."""
    pitr.setup(archived.env)
    first = pitr.base_backup(archived.env, "full").label  # so that no drill comes before a backup
    repo = f"file://{archived.env['PGBACKREST_REPO1_PATH']}"
    log = archived.state / "scheduler.log"

    def made() -> set[str]:
        return {b.kind for b in pitr.window(archived.env).backups if b.label != first}

    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shipyard.cli", "backup", "schedule",
             "--target", (archived.state / "dumps").as_uri(), "--pitr-target", repo,
             "--base-full-at", "*/20 * * * * *", "--base-diff-at", "5/10 * * * * *",
             "--pitr-drill-at", "*/30 * * * * *"],
            stdout=out, stderr=subprocess.STDOUT, env=archived.env,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 180
            while made() != {"full", "diff"} or "pitr-drill finished in" not in log.read_text():
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(1)
        finally:
            proc.send_signal(signal.SIGTERM)
            status = proc.wait(timeout=120)
    text = log.read_text()
    assert status == 0, text
    for name in ("base-full", "base-diff", "pitr-drill"):
        assert f"{name} at " in text, text
    assert f"shipyard backup pitr base --type diff --target {repo}" in text
    # Every job passed; only one the stop interrupted may have ended otherwise.
    assert " failed" not in text.partition("stopping: ")[0], text


def test_a_base_backup_pushes_its_outcome_in_a_group_of_its_own(
    archived: Archived, pushgateway: Pushgateway
) -> None:
    """`pitr base` (the scheduler's base-full and base-diff jobs) reports as `backup run`
    does, in the group `backup="pitr"`: a dump that succeeds must not hide a base backup that
    fails from BackupJobFailed and BackupMissing."""
    service = f"base-{secrets.token_hex(3)}"
    env = {
        **archived.env,
        metrics.URL_VARIABLE: pushgateway.url,
        "SHIPYARD_SERVICE": service,
        "SHIPYARD_ENV": "prod",
    }
    target = f"file://{archived.env['PGBACKREST_REPO1_PATH']}"
    argv = [sys.executable, "-m", "shipyard.cli", "backup", "pitr", "base", "--type", "full",
            "--target", target]  # fmt: skip
    group = {"job": metrics.JOB, "service": service, "environment": "prod", "backup": "pitr"}
    # The first deploy's setup takes the first base backup, and pushes it: from then on the
    # group exists, so scheduled ones that never succeed are BackupMissing.
    setup = subprocess.run([*argv[:5], "setup", "--base-if-none", "--target", target], env=env,
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert setup.returncode == 0, setup.stderr
    [first] = pitr.window(archived.env).backups
    first_pushed = pushgateway.values(**group)["shipyard_backup_last_success_timestamp_seconds"]
    assert first_pushed == first.stopped.timestamp()

    passed = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)

    assert passed.returncode == 0, passed.stderr
    made = pitr.window(archived.env).backups[-1]
    assert f"base backup {made.label} complete" in passed.stdout
    pushed = pushgateway.values(**group)
    assert pushed["shipyard_backup_last_success_timestamp_seconds"] == made.stopped.timestamp()
    assert pushed["shipyard_backup_size_bytes"] == made.size > 0
    assert (
        pushed["shipyard_backup_duration_seconds"] == (made.stopped - made.started).total_seconds()
    )
    assert "shipyard_backup_last_failure_timestamp_seconds" not in pushed
    # Not in the dumps' group, whose BackupMissing and BackupJobFailed it would otherwise feed.
    assert not pushgateway.values(job=metrics.JOB, service=service, environment="prod", backup="")

    archived.ctl(archived.data, "-m", "fast", "-w", "stop")  # the server down at 02:30
    before = time.time()
    failed = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)

    assert failed.returncode == 1
    assert failed.stderr.startswith("shipyard backup: ")
    assert "Traceback" not in failed.stderr
    after = pushgateway.values(**group)
    assert before <= after["shipyard_backup_last_failure_timestamp_seconds"] <= time.time()
    # The last success's facts stay (pushadd replaces only the series it sends).
    for name in ("last_success_timestamp_seconds", "size_bytes", "duration_seconds"):
        assert after[f"shipyard_backup_{name}"] == pushed[f"shipyard_backup_{name}"]

    # A repository it cannot even reach fails as loudly.
    s3_pushed = _fails_unreachable(argv, env, pushgateway, group)
    assert s3_pushed["shipyard_backup_last_failure_timestamp_seconds"] > 0


def test_s3_credentials_come_from_the_environment_the_aws_tools_read() -> None:
    base = {"AWS_REGION": "eu-west-3"}
    static = pgbackrest.environment(
        "s3://b/p",
        {**base, "AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK",
         "AWS_SESSION_TOKEN": "TOKEN"},
    )  # fmt: skip
    assert static["PGBACKREST_REPO1_S3_ENDPOINT"] == "s3.eu-west-3.amazonaws.com"
    assert (static["PGBACKREST_REPO1_S3_KEY"], static["PGBACKREST_REPO1_S3_TOKEN"]) == (
        "AK",
        "TOKEN",
    )
    assert "PGBACKREST_REPO1_S3_KEY_TYPE" not in static
    web = pgbackrest.environment("s3://b/p", {**base, "AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/t"})
    assert web["PGBACKREST_REPO1_S3_KEY_TYPE"] == "web-id"
    assert "PGBACKREST_REPO1_S3_KEY" not in web
    assert pgbackrest.environment("s3://b/p", base)["PGBACKREST_REPO1_S3_KEY_TYPE"] == "auto"


def test_the_s3_region_is_the_one_the_aws_tools_read() -> None:
    """AWS_REGION (the SDKs' variable), else AWS_DEFAULT_REGION (the CLI's), else us-east-1;
    the endpoint is that region's."""

    def region(environ: dict[str, str]) -> tuple[str, str]:
        env = pgbackrest.environment("s3://b/p", environ)
        return env["PGBACKREST_REPO1_S3_REGION"], env["PGBACKREST_REPO1_S3_ENDPOINT"]

    assert region({}) == ("us-east-1", "s3.us-east-1.amazonaws.com")
    assert region({"AWS_DEFAULT_REGION": "eu-north-1"}) == (
        "eu-north-1",
        "s3.eu-north-1.amazonaws.com",
    )
    both = {"AWS_REGION": "eu-west-3", "AWS_DEFAULT_REGION": "eu-north-1"}
    assert region(both) == ("eu-west-3", "s3.eu-west-3.amazonaws.com")


def test_an_s3_repository_pgbackrest_cannot_use_is_refused_in_a_sentence() -> None:
    with pytest.raises(BackupError) as http:
        pgbackrest.environment("s3://b/p", {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert str(http.value) == (
        "pgBackRest reaches S3 over HTTPS only: AWS_ENDPOINT_URL must be https://HOST[:PORT]"
    )
    for half in ({"AWS_ACCESS_KEY_ID": "AK"}, {"AWS_SECRET_ACCESS_KEY": "SK"}):
        with pytest.raises(BackupError) as refused:
            pgbackrest.environment("s3://b/p", half)
        assert str(refused.value) == (
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY go together: set both, or neither to"
            " use the instance's or the service account's role"
        )


def test_an_s3_repository_round_trip_over_https(tls_s3_server: TlsS3Server) -> None:
    bucket = f"pitr-{secrets.token_hex(4)}"
    s3 = _s3(tls_s3_server)
    s3.create_bucket(Bucket=bucket)
    extra = {**tls_s3_server.env(), pgbackrest.CIPHER_PASS: secrets.token_urlsafe(16)}
    for cluster in _archived(f"s3://{bucket}/prod", extra):
        pitr.setup(cluster.env)
        label = pitr.base_backup(cluster.env, "full").label
        _commit_rows(cluster, range(1, 21))
        cluster.switch_wal()
        window = pitr.window(cluster.env)
        assert [b.label for b in window.backups] == [label]
        restored = pitr.restore(cluster.env, pitr.target("latest", window), cluster.state / "r")
        assert cluster.rows(restored.path) == list(range(1, 21))
    stored = s3.list_objects_v2(Bucket=bucket, Prefix="prod/")
    assert any("/archive/db/" in o["Key"] for o in stored["Contents"])


def _s3(server: TlsS3Server) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=server.plain.endpoint,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
    )


def test_a_drill_measures_a_restore_to_latest_and_pushes_pass_and_failure(
    archived: Archived, pushgateway: Pushgateway
) -> None:
    pitr.setup(archived.env)
    pitr.base_backup(archived.env, "full")
    _commit_rows(archived, range(1, 21))
    archived.switch_wal()
    service = f"drill-{secrets.token_hex(3)}"
    # The scratch copy goes where Python's tempfile puts files, whichever variable names the
    # folder (TMP here, not TMPDIR).
    scratch = Path(archived.env["TMPDIR"])
    env = {
        **{k: v for k, v in archived.env.items() if k != "TMPDIR"},
        "TMP": str(scratch),
        metrics.URL_VARIABLE: pushgateway.url,
        "SHIPYARD_SERVICE": service,
        "SHIPYARD_ENV": "prod",
    }
    argv = [sys.executable, "-m", "shipyard.cli", "backup", "pitr", "drill", "--target",
            f"file://{archived.env['PGBACKREST_REPO1_PATH']}"]  # fmt: skip
    group = {"job": metrics.JOB, "service": service, "environment": "prod"}

    before = time.time()
    passed = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    took = time.time() - before

    assert passed.returncode == 0, passed.stderr
    said = re.fullmatch(
        r"restore drill passed: restored to latest and checked in (\d+\.\d) s \(recovery time\);"
        r" recovery point: the newest transaction (\d+) s old\n",
        passed.stdout,
    )
    assert said, passed.stdout
    # In a group of its own, beside the dump drill's, which runs on the same schedule.
    pushed = pushgateway.values(**group, drill="pitr")
    assert pushed["shipyard_backup_verify_success"] == 1
    assert pushed["shipyard_backup_verify_last_success_timestamp_seconds"] > 0
    assert "shipyard_backup_verify_last_failure_timestamp_seconds" not in pushed
    assert pushed["shipyard_backup_verify_restore_seconds"] > 0
    # The drill's own time: within the time the command took, and the restore within it.
    duration = pushed["shipyard_backup_verify_duration_seconds"]
    assert pushed["shipyard_backup_verify_restore_seconds"] <= duration <= took
    # The newest replayed commit is the last row's, a few seconds old at most.
    assert 0 <= pushed["shipyard_backup_verify_recovery_point_age_seconds"] < 120
    assert not list(scratch.glob("pitr-drill-*"))  # the scratch copy is gone
    # Recorded beside the repository, for `pitr list` and the runbook.
    listing = [*argv[:5], "list", *argv[6:]]
    seconds = pushed["shipyard_backup_verify_restore_seconds"]
    age = pushed["shipyard_backup_verify_recovery_point_age_seconds"]
    measured = f"restored in {seconds:.1f} s, recovery point {age:.0f} s old"
    assert said.groups() == (f"{seconds:.1f}", f"{age:.0f}")  # what it said is what it pushed
    shown = subprocess.run(listing, env=env, capture_output=True, text=True, check=True).stdout
    assert re.search(rf"^last drill: \S+Z passed: {measured}$", shown, re.M), shown

    segments = sorted(
        p
        for p in (Path(archived.env["PGBACKREST_REPO1_PATH"]) / "archive").rglob("0000*")
        if p.is_file() and ".backup" not in p.name
    )
    blob = bytearray(segments[-1].read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    segments[-1].write_bytes(bytes(blob))
    failed = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)

    assert failed.returncode == 1
    assert failed.stderr.startswith("shipyard backup: ")
    assert "Traceback" not in failed.stderr
    after = pushgateway.values(**group)
    assert after["shipyard_backup_verify_success"] == 0
    assert after["shipyard_backup_verify_last_failure_timestamp_seconds"] > 0
    # The last success's time stays (pushadd replaces only the series it sends).
    assert (
        after["shipyard_backup_verify_last_success_timestamp_seconds"]
        == pushed["shipyard_backup_verify_last_success_timestamp_seconds"]
    )
    # The last passing drill's recovery time stays what it measured.
    assert (
        after["shipyard_backup_verify_restore_seconds"]
        == (pushed["shipyard_backup_verify_restore_seconds"])
    )
    assert not list(scratch.glob("pitr-drill-*"))
    shown = subprocess.run(listing, env=env, capture_output=True, text=True, check=True).stdout
    assert re.search(r"^last drill: \S+Z FAILED: .*segment", shown, re.M), shown
    assert re.search(rf"^last passing drill: \S+Z passed: {measured}$", shown, re.M), shown

    # A drill that cannot even reach its repository fails the same loud way.
    assert _fails_unreachable(argv, env, pushgateway, group)["shipyard_backup_verify_success"] == 0


def _fails_unreachable(
    argv: list[str], env: dict[str, str], pushgateway: Pushgateway, group: dict[str, str]
) -> dict[str, float]:
    """`argv` (its last item the --target) run against an S3 repository it cannot reach, as
    the service `<service>-s3`: it fails in a sentence; what it pushed to its group."""
    service = f"{group['service']}-s3"
    unreachable = {**env, "SHIPYARD_SERVICE": service, "AWS_ENDPOINT_URL": "http://x:9"}
    wrong = subprocess.run([*argv[:-1], "s3://bucket/prefix"], env=unreachable,
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert wrong.returncode == 1
    assert "pgBackRest reaches S3 over HTTPS only" in wrong.stderr
    return pushgateway.values(**{**group, "service": service})
