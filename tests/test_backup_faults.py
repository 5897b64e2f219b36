"""Each guard a restore passes through, faced with the damage only it can catch.

A backup is checked in layers: its sha256 against the manifest, zstd's frame checksums,
pg_restore's reading of the archive, the restored row counts against the manifest (restore),
the restored rows' checksums (verify). Each test below damages a backup so that every layer
before the one under test lets it through (a valid zstd frame, a manifest edited to match),
then asserts that layer refuses it, by its own words, and that the current database is left
as it was. Retention is run the way the CronJob runs it, over backups spread across weeks.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from shipyard import backup
from shipyard.backup import db, engine, storage
from tests.backup_data import contents, shipyard_cli
from tests.conftest import stand_in
from tests.servers.postgres import PostgresServer

# A zstd skippable frame (magic 0x184D2A50, then the length of its payload): a decompressor
# steps over it, so it pads a re-compressed dump to the original's size without changing what
# it decompresses to.
SKIPPABLE_MAGIC = bytes.fromhex("502a4d18")


def zstd(*args: str, data: bytes) -> bytes:
    return subprocess.run(["zstd", *args], input=data, capture_output=True, check=True).stdout


def recompressed(original: bytes, archive: bytes) -> bytes:
    """`archive` as a valid zstd file exactly as long as `original`: compressed harder than
    the engine does, then padded with a skippable frame."""
    packed = zstd("-19", "-q", "-c", data=archive)
    padding = len(original) - len(packed) - 8
    assert padding >= 0, "the re-compressed archive is larger than the original"
    return packed + SKIPPABLE_MAGIC + padding.to_bytes(4, "little") + b"\0" * padding


def changed_name(archive: bytes) -> bytes:
    """The archive with one customer's name changed, byte for byte the same length: the row
    count is the same, the data is not."""
    old, new = b"Customer 1234\t", b"Customer 4321\t"
    assert archive.count(old) == 1
    return archive.replace(old, new)


def edit_manifest(store: Path, backup_id: str, **dump: Any) -> None:
    """Change fields of a backup's manifest `dump` section, as a forger who knows the format."""
    path = store / backup_id / engine.MANIFEST
    manifest = json.loads(path.read_text())
    manifest["dump"].update(dump)
    path.write_text(json.dumps(manifest))


def describe(data: bytes) -> dict[str, Any]:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def untouched(server: PostgresServer, database: str) -> tuple[dict[str, Any], set[str]]:
    """What a refused restore must leave as it was: the data and the set of databases."""
    return contents(server, database), server.databases()


@pytest.fixture
def made(database: str, tmp_path: Path) -> tuple[backup.LocalStorage, backup.Backup]:
    """A backup of the test database in a local folder."""
    store = backup.LocalStorage(tmp_path / "store")
    taken = backup.backup(store, log=lambda _m: None)
    return store, taken


def damaged(store: backup.LocalStorage, taken: backup.Backup) -> tuple[Path, bytes, bytes]:
    """The backup's dump file, its compressed bytes and the archive inside them."""
    dump = store.root / taken.id / engine.DUMP
    compressed = dump.read_bytes()
    return dump, compressed, zstd("-d", "-q", "-c", data=compressed)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_sha256_alone_refuses_a_dump_zstd_and_pg_restore_would_accept(
    database: str,
    postgres_server: PostgresServer,
    bucket: str,
    tmp_path: Path,
    where: str,
) -> None:
    """A dump changed and re-compressed into a valid frame of the same size: zstd decompresses
    it and pg_restore reads it, so only the manifest's sha256 stands between it and the
    database."""
    store: backup.Storage = (
        backup.LocalStorage(tmp_path / "store")
        if where == "local"
        else backup.from_url(f"s3://{bucket}/prod")
    )
    taken = backup.backup(store, log=lambda _m: None)
    with store.open(f"{taken.id}/{engine.DUMP}") as handle:
        original = handle.read()
    forged = recompressed(original, changed_name(zstd("-d", "-q", "-c", data=original)))
    # Every other layer accepts it: same size, zstd's checksums hold, the archive reads.
    assert len(forged) == len(original)
    assert forged != original
    archive = tmp_path / "forged.pgc"
    archive.write_bytes(zstd("-d", "-q", "-c", data=forged))
    listing = subprocess.run(["pg_restore", "-l", str(archive)], capture_output=True, check=False)
    assert listing.returncode == 0, listing.stderr
    store.put_bytes(f"{taken.id}/{engine.DUMP}", forged)
    before = untouched(postgres_server, database)

    with pytest.raises(backup.BackupError) as refused:
        backup.restore(store, taken.id, log=lambda _m: None)

    sha256 = hashlib.sha256(forged).hexdigest()
    assert str(refused.value) == (
        f"backup {taken.id} is corrupted: {len(forged)} bytes with sha256 {sha256}, the manifest "
        f"says {len(original)} bytes with sha256 {taken.manifest['dump']['sha256']}; "
        "nothing was changed"
    )
    with pytest.raises(backup.BackupError, match=f"sha256 {sha256}, the manifest says"):
        backup.verify(store, taken.id, log=lambda _m: None)
    assert untouched(postgres_server, database) == before
    assert [b.id for b in backup.list_backups(store)] == [taken.id]  # no safety backup either


def test_zstd_refuses_a_damaged_frame_the_manifest_was_edited_to_match(
    database: str, postgres_server: PostgresServer, made: tuple[backup.LocalStorage, backup.Backup]
) -> None:
    store, taken = made
    dump, compressed, _archive = damaged(store, taken)
    flipped = bytearray(compressed)
    flipped[len(flipped) // 2] ^= 0xFF
    dump.write_bytes(bytes(flipped))
    edit_manifest(store.root, taken.id, **describe(bytes(flipped)))
    before = untouched(postgres_server, database)

    with pytest.raises(backup.BackupError, match=f"cannot decompress backup {taken.id}: "):
        backup.restore(store, taken.id, log=lambda _m: None)

    assert untouched(postgres_server, database) == before


def test_pg_restore_refuses_a_cut_archive_and_the_database_is_kept(
    database: str, postgres_server: PostgresServer, made: tuple[backup.LocalStorage, backup.Backup]
) -> None:
    """An archive cut short, in a valid zstd frame that the manifest was edited to match."""
    store, taken = made
    dump, _compressed, archive = damaged(store, taken)
    cut = zstd("-1", "-q", "-c", data=archive[: len(archive) * 3 // 4])
    dump.write_bytes(cut)
    edit_manifest(store.root, taken.id, **describe(cut))
    with postgres_server.connect(database) as conn:
        conn.execute("DELETE FROM orders WHERE id > 100")
    before = untouched(postgres_server, database)

    with pytest.raises(backup.BackupError, match=r"pg_restore into \S+_restore_\w+ failed: "):
        backup.restore(store, taken.id, safety_backup=False, log=lambda _m: None)

    assert untouched(postgres_server, database) == before


def test_restore_refuses_a_dump_whose_row_counts_differ_from_its_manifest(
    database: str, postgres_server: PostgresServer, made: tuple[backup.LocalStorage, backup.Backup]
) -> None:
    """A manifest pointing at the intact dump of another state (a mix-up, a forgery): sha256,
    zstd and pg_restore all pass, and only the row-count comparison before the swap stops it."""
    store, taken = made
    with postgres_server.connect(database) as conn:
        conn.execute("DELETE FROM orders WHERE id % 2 = 0; DELETE FROM audit.events")
    other = backup.backup(store, log=lambda _m: None)
    other_dump = store.root / other.id / engine.DUMP
    (store.root / taken.id / engine.DUMP).write_bytes(other_dump.read_bytes())
    edit_manifest(store.root, taken.id, size=other.manifest["dump"]["size"])
    edit_manifest(store.root, taken.id, sha256=other.manifest["dump"]["sha256"])
    with postgres_server.connect(database) as conn:
        conn.execute("INSERT INTO customers (name) VALUES ('after both backups')")
    before = untouched(postgres_server, database)

    with pytest.raises(backup.BackupError) as refused:
        backup.restore(store, taken.id, safety_backup=False, log=lambda _m: None)

    assert str(refused.value) == (
        f"restored data differs from backup {taken.id}; {database} was not changed:\n"
        "  audit.events: 0 rows, expected 2\n"
        "  public.orders: 2500 rows, expected 5000"
    )
    assert untouched(postgres_server, database) == before


def test_a_database_that_stays_in_use_is_given_back_unchanged(
    database: str, postgres_server: PostgresServer, made: tuple[backup.LocalStorage, backup.Backup]
) -> None:
    """A prepared transaction holds the database through every session kill, so the swap can
    never rename it: after ten attempts half a second apart the restore gives up, drops its
    staging copy, lets clients connect again and changes nothing. (About a minute.)"""
    store, taken = made
    with postgres_server.connect(database) as conn:
        conn.execute("DELETE FROM orders WHERE id > 100")
        conn.execute("BEGIN")
        conn.execute("INSERT INTO audit.events (what) VALUES ('held')")
        conn.execute("PREPARE TRANSACTION 'shipyard_test_hold'")
    before = untouched(postgres_server, database)
    try:
        started = time.monotonic()
        with pytest.raises(backup.BackupError) as refused:
            backup.restore(store, taken.id, safety_backup=False, log=lambda _m: None)
        took = time.monotonic() - started

        assert str(refused.value) == (
            f"{database} is still in use after 10 attempts to end its sessions; it was not changed"
        )
        # PostgreSQL itself waits up to 5 s for a database's users to go before refusing a
        # rename: ten attempts take about a minute, giving up at the first about 5 s.
        assert took > 30, f"it gave up after {took:.0f} s, before its tenth attempt"
        assert untouched(postgres_server, database) == before  # connects: clients are let in
    finally:
        with postgres_server.connect(database) as conn:
            conn.execute("ROLLBACK PREPARED 'shipyard_test_hold'")


def test_verify_refuses_a_changed_value_whose_row_counts_still_match(
    database: str, made: tuple[backup.LocalStorage, backup.Backup]
) -> None:
    """One customer's name changed inside the archive, the manifest's sha256 and size edited to
    match: only the row checksums see it, and the backup is not marked verified."""
    store, taken = made
    dump, _compressed, archive = damaged(store, taken)
    forged = zstd("-1", "-q", "-c", data=changed_name(archive))
    dump.write_bytes(forged)
    edit_manifest(store.root, taken.id, **describe(forged))

    with pytest.raises(backup.BackupError) as refused:
        backup.verify(store, taken.id, log=lambda _m: None)

    assert str(refused.value) == (
        f"backup {taken.id} does not restore to what was backed up:\n"
        "  public.customers: row checksum differs from the backup's"
    )
    assert backup.list_backups(store)[0].verified is None


# -- retention, as the CronJob runs it -------------------------------------------------------


def test_backup_run_prunes_backups_across_many_days_to_the_policy(
    database: str, bucket: str
) -> None:
    """`shipyard backup run --retention-days 3` over forty scheduled backups made twice a day
    for twenty days (ids and times in the past, as the engine names them) and three a person
    asked for: it keeps its own new backup, the newest of yesterday and the day before, the
    newest verified one and the two asked for within those days; everything else goes, object
    by object."""
    url = f"s3://{bucket}/prod"
    store = backup.from_url(url)
    seed = backup.backup(store, kind="scheduled", log=lambda _m: None)
    s3 = boto3.client("s3")
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    clones: dict[tuple[int, int], str] = {}  # (days ago, hour) -> backup id
    for days in range(1, 21):
        for hour in (10, 20):
            when = midnight - timedelta(days=days) + timedelta(hours=hour)
            clones[days, hour] = clone(s3, bucket, seed, engine.new_id(when), when)
    # Two verified backups: only the newer one is kept for it, and it is outside every window.
    for days, hour in ((18, 20), (15, 10)):
        backup.verify(store, clones[days, hour], log=lambda _m: None)
    # Backups someone asked for: each kept within the daily window, thinned before it.
    asked = []
    for days, hour, kind in ((2, 15, "manual"), (1, 5, "safety"), (5, 15, "manual")):
        when = midnight - timedelta(days=days) + timedelta(hours=hour)
        asked.append(clone(s3, bucket, seed, engine.new_id(when), when, kind))
    kept = sorted([clones[15, 10], clones[2, 20], clones[1, 20], *asked[:2]])

    # The engine's own plan, without deleting: everything but those and today's seed.
    doomed = backup.prune(store, backup.Retention(daily=3), dry_run=True, log=lambda _m: None)
    assert sorted(doomed) == sorted({*clones.values(), asked[2]} - set(kept))
    assert len(backup.list_backups(store)) == 44

    run = shipyard_cli("backup", "run", "--target", url, "--retention-days", "3", env={})

    assert run.returncode == 0, run.stderr
    newest = backup.list_backups(store)[-1]
    assert newest.id not in (*clones.values(), seed.id)
    assert [b.id for b in backup.list_backups(store)] == [*kept, newest.id]
    assert "retention kept 6 backup(s), deleted 39" in run.stderr
    # Every object of a pruned backup is gone (the verified marker too), none of a kept one.
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="prod/")["Contents"]
    assert {o["Key"].split("/")[1] for o in listed} == {*kept, newest.id}
    assert len(listed) == 2 * 6 + 1  # dump and manifest each, and the verified marker

    # A negative count is refused in a sentence naming the option as typed; nothing goes.
    for option in ("--retention-days", "--keep-weekly", "--keep-monthly"):
        refused = shipyard_cli(
            "backup", "prune", "--target", url, "--retention-days", "3", option, "-1", env={}
        )
        assert (refused.returncode, refused.stderr) == (
            1,
            f"shipyard backup: {option} cannot be negative\n",
        )
    assert [b.id for b in backup.list_backups(store)] == [*kept, newest.id]


def test_prune_keeps_what_the_weekly_and_monthly_counts_say(database: str, bucket: str) -> None:
    """`shipyard backup prune --keep-weekly N` and `--keep-monthly N` delete what the engine's
    own plan with those counts deletes: one backup of each week or month they reach stays
    beyond the daily window (backups 10 to 100 days old, one each, at any date)."""
    url = f"s3://{bucket}/prod"
    store = backup.from_url(url)
    seed = backup.backup(store, kind="scheduled", log=lambda _m: None)
    s3 = boto3.client("s3")
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    made = {}
    for days in (10, 20, 40, 70, 100):
        when = midnight - timedelta(days=days) + timedelta(hours=20)
        made[days] = clone(s3, bucket, seed, engine.new_id(when), when)

    for option, policy in (
        ("--keep-weekly", backup.Retention(daily=1, weekly=8)),
        ("--keep-monthly", backup.Retention(daily=1, monthly=6)),
    ):
        doomed = backup.prune(store, policy, dry_run=True, log=lambda _m: None)
        # The daily window alone would delete all five. Eight weeks reach back 49 days at
        # least and 55 at most: the two older ones go. Six months keep each month's newest.
        if policy.weekly:
            assert sorted(doomed) == [made[100], made[70]]
        assert len(doomed) < 5
        count = str(policy.weekly or policy.monthly)
        planned = shipyard_cli(
            "backup", "prune", "--target", url, "--retention-days", "1", option, count,
            "--dry-run", env={},
        )  # fmt: skip
        assert planned.returncode == 0, planned.stderr
        said = re.findall(r"^shipyard backup: would delete (\S+)$", planned.stderr, re.M)
        assert sorted(said) == sorted(doomed), planned.stderr
    assert len(backup.list_backups(store)) == 6  # a dry run deletes nothing


def clone(
    s3: Any,
    bucket: str,
    seed: backup.Backup,
    backup_id: str,
    when: datetime,
    kind: str = "scheduled",
) -> str:
    """A copy of `seed` stored as backup `backup_id`, made at `when` (by the schedule, unless
    `kind` says otherwise): its dump copied, its manifest naming it."""
    key = f"{backup_id}/{engine.DUMP}"
    s3.copy_object(
        Bucket=bucket,
        Key=f"prod/{key}",
        CopySource={"Bucket": bucket, "Key": f"prod/{seed.id}/{engine.DUMP}"},
    )
    manifest = {
        **seed.manifest,
        "id": backup_id,
        "created_at": when.isoformat(),
        "dump": {**seed.manifest["dump"], "key": key},
        "kind": kind,
    }
    body = json.dumps(manifest).encode()
    s3.put_object(Bucket=bucket, Key=f"prod/{backup_id}/{engine.MANIFEST}", Body=body)
    return backup_id


# -- storage that fails mid-write ------------------------------------------------------------


def test_a_local_write_that_cannot_start_is_a_storage_error(tmp_path: Path) -> None:
    """The backup folder is not a folder (a mount gone wrong): one sentence, nothing left."""
    root = tmp_path / "backups"
    root.write_text("not a folder")
    store = backup.LocalStorage(root)

    with pytest.raises(backup.StorageError) as failed:
        store.put_bytes("20260101T000000Z-aaaaaa/manifest.json", b"{}")

    assert str(failed.value) == (
        f"cannot write {root}/20260101T000000Z-aaaaaa/manifest.json: Not a directory"
    )
    assert root.read_text() == "not a folder"


def test_a_stream_that_breaks_mid_write_leaves_no_partial_file(tmp_path: Path) -> None:
    """A dump that fails after its first chunk: the error goes up as it was, and neither the
    object nor its `.partial` file is left to look like a backup."""

    class Broken:
        def __init__(self) -> None:
            self.reads = 0

        def read(self, _size: int = -1) -> bytes:
            self.reads += 1
            if self.reads > 1:
                raise RuntimeError("pg_dump went away")
            return b"x" * 1024

    store = backup.LocalStorage(tmp_path)

    with pytest.raises(RuntimeError, match="pg_dump went away"):
        store.put_stream("20260101T000000Z-aaaaaa/dump.pgc.zst", Broken())  # type: ignore[arg-type]

    assert list((tmp_path / "20260101T000000Z-aaaaaa").iterdir()) == []


def test_s3_refusals_name_the_object_and_what_s3_said(bucket: str) -> None:
    """What S3 refuses reaches the operator as one sentence naming the object, never a
    botocore traceback: a missing object, a bucket that does not exist (written or listed)."""
    store = backup.from_url(f"s3://{bucket}/prod")
    with pytest.raises(backup.StorageError) as missing:
        store.get_bytes("20260101T000000Z-aaaaaa/manifest.json")
    assert str(missing.value) == (
        f"cannot read s3://{bucket}/prod/20260101T000000Z-aaaaaa/manifest.json: "
        "NoSuchKey The specified key does not exist."
    )
    nowhere = backup.from_url(f"s3://{bucket}-gone/prod")
    with pytest.raises(backup.StorageError) as gone:
        nowhere.put_bytes("20260101T000000Z-aaaaaa/manifest.json", b"{}")
    assert str(gone.value) == (
        f"cannot upload to s3://{bucket}-gone/prod/20260101T000000Z-aaaaaa/manifest.json: "
        "NoSuchBucket The specified bucket does not exist"
    )
    with pytest.raises(backup.StorageError) as unlisted:
        nowhere.list_keys()
    assert str(unlisted.value) == (
        f"cannot list s3://{bucket}-gone/prod: NoSuchBucket The specified bucket does not exist"
    )


def test_s3_keys_with_and_without_a_prefix(bucket: str) -> None:
    """`s3://bucket` keeps backups at the bucket's top level (no leading '/'); `s3://bucket/p`
    under p/, and lists and deletes only what is under it, whatever else shares the bucket."""
    s3 = boto3.client("s3")
    top, under = backup.from_url(f"s3://{bucket}"), backup.from_url(f"s3://{bucket}/prod/")
    top.put_bytes("a/manifest.json", b"1")
    under.put_bytes("b/manifest.json", b"2")
    s3.put_object(Bucket=bucket, Key="prodx/c/manifest.json", Body=b"3")
    # The slashes around a prefix go, none of its letters.
    xmas = backup.from_url(f"s3://{bucket}/Xmas/taX/")
    xmas.put_bytes("d/manifest.json", b"4")
    assert xmas.url == f"s3://{bucket}/Xmas/taX"
    assert s3.get_object(Bucket=bucket, Key="Xmas/taX/d/manifest.json")["Body"].read() == b"4"
    s3.delete_object(Bucket=bucket, Key="Xmas/taX/d/manifest.json")

    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == ["a/manifest.json", "prod/b/manifest.json", "prodx/c/manifest.json"]
    assert under.url == f"s3://{bucket}/prod"
    assert top.url == f"s3://{bucket}"
    assert under.list_keys() == ["b/manifest.json"]
    assert top.list_keys() == keys
    assert top.get_bytes("a/manifest.json") == b"1"
    # Deleting a backup removes its objects only: not a neighbour whose prefix starts alike.
    under.delete_prefix("b/")
    top.delete_prefix("a/")
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == [
        "prodx/c/manifest.json"
    ]


def _stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, script: str) -> None:
    """`name` on PATH is a shell script with `script` as its body."""
    tool = stand_in(tmp_path / "bin", name, script)
    monkeypatch.setenv("PATH", f"{tool.parent}:{os.environ['PATH']}")


def test_a_pg_dump_that_fails_is_named_with_its_own_words(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pg_dump refusing (a permission, a lock timeout) fails the backup with pg_dump's own
    sentence, and nothing lists as complete. (The real pg_dump cannot be made to fail on cue:
    a stand-in takes its place on PATH.)"""
    _stand_in(
        tmp_path,
        monkeypatch,
        "pg_dump",
        "echo 'pg_dump: error: query failed: ERROR:  permission denied for table secrets' >&2"
        "\nexit 1",
    )
    store = backup.LocalStorage(tmp_path / "store")

    with pytest.raises(backup.BackupError) as failed:
        backup.backup(store, log=lambda _m: None)

    assert str(failed.value) == (
        "pg_dump exited 1: pg_dump: error: query failed: ERROR:  permission denied for table"
        " secrets"
    )
    assert backup.list_backups(store) == []


def test_a_pg_dump_that_fails_without_a_word_is_named_by_its_exit_alone(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pg_dump exiting 1 with nothing on stderr: the sentence ends at the exit code."""
    _stand_in(tmp_path, monkeypatch, "pg_dump", "exit 1")
    store = backup.LocalStorage(tmp_path / "store")
    with pytest.raises(backup.BackupError) as failed:
        backup.backup(store, log=lambda _m: None)
    assert str(failed.value) == "pg_dump exited 1"
    assert backup.list_backups(store) == []


def test_zstd_failing_after_its_output_fails_the_backup(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """zstd writes the whole compressed dump, then exits 1 (a write error on its side): the
    stream looked complete, yet nothing lists as a backup."""
    _stand_in(tmp_path, monkeypatch, "zstd", f'{shutil.which("zstd")} "$@" && exit 1')
    store = backup.LocalStorage(tmp_path / "store")
    with pytest.raises(backup.BackupError) as failed:
        backup.backup(store, log=lambda _m: None)
    assert str(failed.value) == "zstd exited 1"
    assert backup.list_backups(store) == []


def _waiting_on_a_lock(server: PostgresServer, database: str, query: str) -> int:
    """The pid of the session of `database` whose query starts with `query`, once it waits
    for a lock."""
    deadline = time.monotonic() + 30
    with server.connect(database) as conn:
        while time.monotonic() < deadline:
            found = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND query LIKE %s",
                (f"{query}%",),
            ).fetchone()
            if found:
                return int(found[0])
            time.sleep(0.05)
    pytest.fail(f"no session of {database} ever waited for a lock running {query}...")


def test_the_statistics_session_ended_by_the_server_fails_a_backup_pg_dump_finished(
    database: str, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """The server ends the engine's own session (an administrator, a failover) while it
    counts a table, and pg_dump, in its own session, finishes: the backup fails with the
    server's reason, and nothing lists. A table locked by another session holds both at that
    table, so the session is ended mid-count and pg_dump has certainly started."""
    store = backup.LocalStorage(tmp_path / "store")
    blocker = postgres_server.connect(database)
    blocker.execute("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
    with ThreadPoolExecutor(1) as pool:
        try:
            running = pool.submit(backup.backup, store, log=lambda _m: None)
            _waiting_on_a_lock(postgres_server, database, "LOCK TABLE")  # pg_dump's
            counting = _waiting_on_a_lock(postgres_server, database, "SELECT count(*)")
            with postgres_server.connect(database) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (counting,))
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        with pytest.raises(backup.BackupError) as failed:
            running.result(timeout=60)
    assert str(failed.value).startswith(
        "reading table statistics failed: terminating connection due to administrator command"
    )
    assert backup.list_backups(store) == []


def test_the_engines_sessions_turn_off_every_timeout_the_server_has(
    database: str, postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each timeout the app's settings may give a session (the server's `postgres_parameters`,
    a role, PGOPTIONS), among those this server has, is off in the engine's sessions."""
    with postgres_server.connect(database) as conn:
        names = [
            name
            for (name,) in conn.execute(
                "SELECT name FROM pg_settings WHERE name = ANY(%s)", (list(db.TIMEOUTS),)
            )
        ]
    assert {"statement_timeout", "idle_session_timeout"} <= set(names)  # PostgreSQL 14 or later
    monkeypatch.setenv("PGOPTIONS", " ".join(f"-c {name}=100" for name in names))
    with db.connect() as conn:
        assert {name: conn.execute(f"SHOW {name}").fetchone() for name in names} == dict.fromkeys(
            names, ("0",)
        )


def test_the_servers_timeouts_do_not_cut_a_backup_short(
    database: str, postgres_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Timeouts meant for the app's queries (the kit's `postgres_parameters` may set them for
    the server; here PGOPTIONS, which the engine's sessions and pg_dump both read) do not end a
    backup that waits for another session's lock, as pg_dump's own session ignores them. (The
    idle timeouts, which this wait does not reach, are checked one by one above.)"""
    store = backup.LocalStorage(tmp_path / "store")
    blocker = postgres_server.connect(database)
    blocker.execute("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
    monkeypatch.setenv(  # after the blocker's session starts: it must outlast them
        "PGOPTIONS",
        "-c statement_timeout=100 -c lock_timeout=100 -c idle_in_transaction_session_timeout=100",
    )
    with ThreadPoolExecutor(1) as pool:
        try:
            running = pool.submit(backup.backup, store, log=lambda _m: None)
            _waiting_on_a_lock(postgres_server, database, "LOCK TABLE")  # pg_dump's
            time.sleep(1)  # ten times each timeout
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        made = running.result(timeout=60)
    assert [b.id for b in backup.list_backups(store)] == [made.id]
    backup.verify(store, made.id, log=lambda _m: None)


def test_verify_needs_only_the_server_not_the_apps_database(
    made: tuple[backup.LocalStorage, backup.Backup],
    postgres_server: PostgresServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A restore drill on a spare server: PGDATABASE names a database that is not there, and
    verify still restores into its scratch database and checks it (its admin session is on the
    maintenance database, never on the app's)."""
    store, taken = made
    monkeypatch.setenv("PGDATABASE", "not_here_at_all")
    before = postgres_server.databases()

    checked = backup.verify(store, taken.id, log=lambda _m: None)

    assert checked.verified is not None
    assert checked.verified["rows"] == 2000 + 5000 + 2 + 300
    assert postgres_server.databases() == before


def test_s3_prune_deletes_past_the_keys_one_request_takes(bucket: str) -> None:
    """S3's DeleteObjects takes at most 1000 keys (moto takes more, AWS refuses them): a backup
    with 1001 goes in two requests, every key of it and nothing beside it."""
    s3 = boto3.client("s3")
    doomed = [f"prod/20260101T000000Z-old/part-{i:04}" for i in range(1001)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: s3.put_object(Bucket=bucket, Key=key, Body=b""), doomed))
    s3.put_object(Bucket=bucket, Key="prod/20260102T000000Z-new/manifest.json", Body=b"{}")
    store = backup.S3Storage(bucket, "prod")
    requests: list[int] = []

    def count(params: dict[str, Any], **_kwargs: Any) -> None:
        requests.append(len(params["Delete"]["Objects"]))

    store.client.meta.events.register("provide-client-params.s3.DeleteObjects", count)
    store.delete_prefix("20260101T000000Z-old/")

    assert requests == [1000, 1]
    assert store.list_keys() == ["20260102T000000Z-new/manifest.json"]


def test_a_refused_s3_delete_says_what_it_was_removing(bucket: str) -> None:
    """S3 refusing the whole delete (credentials without delete rights): one sentence naming
    the backup, which is still there."""
    store = backup.S3Storage(bucket, "prod")
    store.put_bytes("20260101T000000Z-old/manifest.json", b"{}")

    def refuse(**_kwargs: Any) -> None:
        error = {"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}
        raise ClientError(error, "DeleteObjects")  # type: ignore[arg-type]

    store.client.meta.events.register("before-call.s3.DeleteObjects", refuse)
    with pytest.raises(storage.StorageError) as refused:
        store.delete_prefix("20260101T000000Z-old/")

    assert str(refused.value) == (
        f"cannot remove s3://{bucket}/prod/20260101T000000Z-old/: AccessDenied Access Denied"
    )
    assert store.list_keys() == ["20260101T000000Z-old/manifest.json"]


KEY = "prod/20260101T000000Z-old/dump.pgc.zst"


@pytest.mark.parametrize(
    ("errors", "said"),
    [
        ([{"Key": KEY, "Code": "AccessDenied", "Message": "Access Denied"}], f"1 key(s) not"
         f" deleted, the first {KEY}: AccessDenied Access Denied"),
        # S3-compatible servers may leave any field of an error out: the sentence still reads.
        ([{"Code": "AccessDenied"}, {"Key": KEY}], "2 key(s) not deleted, the first ?:"
         " AccessDenied"),
        ([{"Key": KEY, "Message": "Object is WORM protected"}], f"1 key(s) not deleted, the"
         f" first {KEY}: ? Object is WORM protected"),
    ],
)  # fmt: skip
def test_keys_s3_says_it_did_not_delete_fail_the_delete(
    bucket: str, errors: list[dict[str, str]], said: str
) -> None:
    """DeleteObjects answers 200 and lists the keys it refused under Errors (an object lock, a
    policy on some keys): that is a failure, never a pruned backup. The refusal is injected in
    the parsed answer, the one thing moto does not do."""
    store = backup.S3Storage(bucket, "prod")
    store.put_bytes("20260101T000000Z-old/manifest.json", b"{}")
    store.put_bytes("20260101T000000Z-old/dump.pgc.zst", b"dump")

    def refuse(parsed: dict[str, Any], **_kwargs: Any) -> None:
        parsed["Errors"] = errors

    store.client.meta.events.register("after-call.s3.DeleteObjects", refuse)
    with pytest.raises(storage.StorageError) as refused:
        store.delete_prefix("20260101T000000Z-old/")

    assert str(refused.value) == f"cannot remove s3://{bucket}/prod/20260101T000000Z-old/: {said}"
