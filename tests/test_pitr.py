"""Point-in-time recovery (shipyard.backup.pitr) on a real PostgreSQL archiving through a real
pgBackRest: restores to a time, to the end of the WAL and to a base backup; refusals that write
nothing; a corrupted repository refused before anything changes; an encrypted repository.

PostgreSQL refuses to run as root and pgBackRest must run as the user that owns the data, so
as root `pg_ctl` and `pgbackrest` are reached through two-line wrappers that run the real
binaries as `postgres` with the caller's environment (the engine finds both on PATH, as it
does in the image where everything runs as one user).
"""

from __future__ import annotations

import os
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

from shipyard.backup import metrics, pitr
from shipyard.backup.engine import BackupError
from tests.servers.postgres import _bindir, free_port
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


def _wrappers(folder: Path) -> None:
    bindir = _bindir()
    real = {"pg_ctl": bindir / "pg_ctl", "pgbackrest": Path(shutil.which("pgbackrest") or "")}
    for name, path in real.items():
        if not path.exists():
            pytest.fail(f"{name} is not installed: run .ci/setup.sh")
        # The server itself runs archive_command as postgres, through the same PATH.
        script = folder / name
        script.write_text(
            f'#!/bin/sh\n[ "$(id -u)" = 0 ] && exec runuser -p -u postgres -- {path} "$@"\n'
            f'exec {path} "$@"\n'
        )
        script.chmod(0o755)


def _archived(repo: str, extra: dict[str, str]) -> Iterator[Archived]:
    state = Path(tempfile.mkdtemp(prefix="shipyard-pitr-"))
    (state / "bin").mkdir()
    (state / "tmp").mkdir()
    _wrappers(state / "bin")
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
    env = pitr.environment(repo, base)
    subprocess.run(
        [str(_bindir() / "initdb"), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256",
         f"--pwfile={state / 'pwfile'}", "--no-sync"],
        check=True, capture_output=True, cwd=state, user="postgres" if AS_ROOT else None,
    )  # fmt: skip
    # Commit times, for the tests' exact expectations and the restore's report; in the
    # configuration file, so that restored copies keep tracking them.
    with (data / "postgresql.conf").open("a") as conf:
        conf.write("track_commit_timestamp = on\n")
    settings = " ".join(f"-c '{s}'" for s in pitr.archive_settings())
    options = f"-p {port} -k {state} -c listen_addresses= -c fsync=off {settings}"
    cluster = Archived(state, data, env)
    cluster.ctl(data, "-l", str(state / "log"), "-w", "-o", options, "start")
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
        yield from _archived(f"file://{repo}", {pitr.CIPHER_PASS: secrets.token_urlsafe(16)})
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


def test_a_restore_to_a_time_holds_exactly_the_transactions_committed_before_it(
    archived: Archived,
) -> None:
    pitr.setup(archived.env)
    label = pitr.base_backup(archived.env, "full")
    committed = _commit_rows(archived, range(1, 201))
    # A point between two commits in the middle of the workload: recovery must stop there.
    (_, before), (_, after) = committed[99], committed[100]
    at = before + (after - before) / 2
    archived.switch_wal()
    window = pitr.window(archived.env)
    assert [b.label for b in window.backups] == [label]

    into = archived.state / "restored"
    restored = pitr.restore(archived.env, pitr.target(at.isoformat(), window), into)

    assert restored.path == into
    assert "postgres" in restored.databases
    assert restored.last_commit == before
    assert archived.rows(into) == list(range(1, 101))
    # The live cluster is untouched and still archiving.
    with archived.connect() as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (200,)


def test_latest_and_a_base_backup_label_are_recovery_points(archived: Archived) -> None:
    pitr.setup(archived.env)
    _commit_rows(archived, range(1, 11))
    first = pitr.base_backup(archived.env, "full")
    _commit_rows(archived, range(11, 21))
    diff = pitr.base_backup(archived.env, "diff")
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


def test_points_outside_the_window_are_refused_with_it_and_nothing_is_written(
    archived: Archived,
) -> None:
    pitr.setup(archived.env)
    with pytest.raises(BackupError, match="no base backup yet"):
        pitr.target("latest", pitr.window(archived.env))
    pitr.base_backup(archived.env, "full")
    window = pitr.window(archived.env)
    start = window.start
    refusals = {
        (
            start - timedelta(minutes=5)
        ).isoformat(): "before the oldest base backup; recoverable from",
        (datetime.now(UTC) + timedelta(hours=1)).isoformat(): "in the future; recoverable from",
        "2026-12-04T10:15:00": "has no UTC offset",
        "yesterday": "is not latest, a backup label or a time",
        "20200101-000000F": "no base backup '20200101-000000F'; recoverable from",
    }
    for at, sentence in refusals.items():
        with pytest.raises(BackupError, match=sentence):
            pitr.target(at, window)
    assert window.describe().startswith(f"recoverable from {start:%Y-%m-%dT%H:%M:%SZ} to now")
    # A restore never writes over a directory that holds anything.
    full = archived.state / "full"
    full.mkdir()
    (full / "keep").write_text("mine")
    with pytest.raises(BackupError, match="is not empty"):
        pitr.restore(archived.env, pitr.target("latest", window), full)
    assert [p.name for p in full.iterdir()] == ["keep"]


def test_a_corrupted_wal_segment_fails_the_restore_and_leaves_nothing(archived: Archived) -> None:
    pitr.setup(archived.env)
    pitr.base_backup(archived.env, "full")
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
    with pytest.raises(BackupError):
        pitr.restore(
            archived.env, pitr.target(committed[-1][1].isoformat(), pitr.window(archived.env)), into
        )
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
    assert stored
    assert not any(b"plain-text-canary" in p.read_bytes() for p in stored)
    wrong = {**archived.env, "PGBACKREST_REPO1_CIPHER_PASS": "not-the-passphrase"}
    with pytest.raises(
        BackupError, match=f"cannot be read: .*is {pitr.CIPHER_PASS} the passphrase"
    ):
        pitr.window(wrong)


def test_a_base_backup_killed_midway_is_never_listed(archived: Archived) -> None:
    pitr.setup(archived.env)
    with archived.connect() as conn:
        conn.execute(
            "CREATE TABLE big AS SELECT g, md5(g::text) AS h FROM generate_series(1, 1500000) g"
        )
    child = subprocess.Popen(
        [sys.executable, "-m", "shipyard.cli", "backup", "pitr", "base", "--target",
         f"file://{archived.env['PGBACKREST_REPO1_PATH']}"],
        env=archived.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    backup_dir = Path(archived.env["PGBACKREST_REPO1_PATH"]) / "backup" / "db"
    deadline = time.monotonic() + 60
    while not any(p.is_dir() and p.name.endswith("F") for p in backup_dir.glob("*")):
        if child.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the base backup never started: {child.communicate()}")
        time.sleep(0.05)
    # The engine and every pgBackRest process it started, at once, as a crash would.
    os.killpg(child.pid, signal.SIGKILL)
    child.communicate()
    assert pitr.window(archived.env, require=False).backups == ()
    # The next base backup completes and is the only one listed.
    label = pitr.base_backup(archived.env, "full")
    assert [b.label for b in pitr.window(archived.env).backups] == [label]


def test_swap_keeps_the_old_data_and_refuses_a_running_server(archived: Archived) -> None:
    pitr.setup(archived.env)
    pitr.base_backup(archived.env, "full")
    _commit_rows(archived, range(1, 6))
    archived.switch_wal()
    restored = archived.state / "restored"
    pitr.restore(archived.env, pitr.target("latest", pitr.window(archived.env)), restored)
    with pytest.raises(BackupError, match="still runs"):
        pitr.swap(archived.data, restored)
    archived.ctl(archived.data, "-m", "fast", "-w", "stop")
    old = pitr.swap(archived.data, restored)
    assert old.name.startswith("data.old-")
    assert (old / "PG_VERSION").exists()
    assert not restored.exists()
    assert archived.rows(archived.data) == [1, 2, 3, 4, 5]


def test_the_cli_lists_the_window_and_refuses_a_plain_http_s3_endpoint(archived: Archived) -> None:
    pitr.setup(archived.env)
    label = pitr.base_backup(archived.env, "full")
    target = f"file://{archived.env['PGBACKREST_REPO1_PATH']}"
    shown = subprocess.run(
        [sys.executable, "-m", "shipyard.cli", "backup", "pitr", "list", "--target", target],
        env=archived.env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert label in shown.stdout
    assert "recoverable from" in shown.stdout
    refused = subprocess.run(
        [sys.executable, "-m", "shipyard.cli", "backup", "pitr", "list", "--target", "s3://b/p"],
        env={**archived.env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "pgBackRest reaches S3 over HTTPS only" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_an_s3_repository_round_trip_over_https(tls_s3_server: TlsS3Server) -> None:
    bucket = f"pitr-{secrets.token_hex(4)}"
    s3 = _s3(tls_s3_server)
    s3.create_bucket(Bucket=bucket)
    extra = {**tls_s3_server.env(), pitr.CIPHER_PASS: secrets.token_urlsafe(16)}
    for cluster in _archived(f"s3://{bucket}/prod", extra):
        pitr.setup(cluster.env)
        label = pitr.base_backup(cluster.env, "full")
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
    env = {
        **archived.env,
        metrics.URL_VARIABLE: pushgateway.url,
        "SHIPYARD_SERVICE": service,
        "SHIPYARD_ENV": "prod",
    }
    argv = [sys.executable, "-m", "shipyard.cli", "backup", "pitr", "drill", "--target",
            f"file://{archived.env['PGBACKREST_REPO1_PATH']}"]  # fmt: skip
    group = {"job": metrics.JOB, "service": service, "environment": "prod"}

    passed = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)

    assert passed.returncode == 0, passed.stderr
    assert "restore drill passed" in passed.stdout
    pushed = pushgateway.values(**group)
    assert pushed["shipyard_backup_verify_success"] == 1
    assert pushed["shipyard_backup_verify_restore_seconds"] > 0
    # The newest replayed commit is the last row's, a few seconds old at most.
    assert 0 <= pushed["shipyard_backup_verify_recovery_point_age_seconds"] < 120
    assert not list(Path(env["TMPDIR"]).glob("pitr-drill-*"))  # the scratch copy is gone

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
    # The last passing drill's recovery time stays what it measured.
    assert (
        after["shipyard_backup_verify_restore_seconds"]
        == (pushed["shipyard_backup_verify_restore_seconds"])
    )
    assert not list(Path(env["TMPDIR"]).glob("pitr-drill-*"))
