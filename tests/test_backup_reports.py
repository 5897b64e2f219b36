"""What the backup engine tells its operator, to the letter: `shipyard backup list`'s table, the
sizes and steps in progress lines (through the caller's log only), what retention says it
keeps and deletes (dry run or not), and each command's `--help` as docs/backups.md shows it.

Gaps `nox -s mutation -- backup` found: every test read these lines loosely or not at all, so a
changed header, a lost "would" in a dry run or a line sent past the caller's log went unnoticed.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shipyard import backup
from shipyard.backup import cli, engine, pitr
from shipyard.backup.report import human_duration, human_size, to_stderr
from tests.conftest import REPO


def manifest(backup_id: str, created: datetime, *, kind: str = "scheduled") -> dict[str, object]:
    """A complete manifest, as the engine writes it, for a backup made at `created`."""
    return {
        "format": engine.FORMAT,
        "id": backup_id,
        "kind": kind,
        "created_at": created.isoformat(),
        "duration_seconds": 1.5,
        "database": "shop",
        "server_version": "15.8",
        "database_settings": {"owner": "shop", "encoding": "UTF8", "collate": "C", "ctype": "C"},
        "dump": {
            "key": f"{backup_id}/{engine.DUMP}",
            "format": "pg_dump custom archive (--format=custom --compress=0) compressed by zstd",
            "compression": "zstd -1",
            "size": 123456,
            "sha256": "0" * 64,
        },
        "tools": {"pg_dump": "pg_dump 15.8", "zstd": "zstd 1.5", "shipyard": "0.1"},
        "tables": {"public.orders": {"rows": 3, "checksum": "9", "hash": "columns"}},
    }


def test_list_prints_one_aligned_line_per_backup() -> None:
    made = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)
    checked = {
        "verified_at": "2026-11-20T04:05:06.789+00:00",
        "tables": 1,
        "rows": 3,
        "restore_seconds": 12.345,
    }
    # The second holds an archive of a data path: its size counts in the backup's.
    with_files = {
        **manifest("20261121T030000Z-bbbbbb", made + timedelta(days=1), kind="safety"),
        "files": [{"component": "api", "path": "/app/uploads", "size": 1000}],
    }
    # The longest kind, a deploy's pre-migrate backup, still leaves a space before the database.
    deploy = "20261121T120000Z-cccccc"
    before_migrating = manifest(deploy, made + timedelta(days=1, hours=9), kind="pre-migrate")
    # A files-only backup (the database is CloudNativePG's): no database, no tables.
    files_only = "20261122T030000Z-dddddd"
    only_files = {
        "format": engine.FORMAT,
        "id": files_only,
        "kind": "scheduled",
        engine.FILES_ONLY: True,
        "created_at": (made + timedelta(days=2)).isoformat(),
        "files": [{"component": "api", "path": "/app/uploads", "size": 2048}],
    }
    backups = [
        backup.Backup("20261120T030000Z-aaaaaa", manifest("20261120T030000Z-aaaaaa", made), None),
        backup.Backup("20261121T030000Z-bbbbbb", with_files, checked),
        backup.Backup(deploy, before_migrating, None),
        backup.Backup(files_only, only_files, None),
    ]

    assert cli.format_table(backups).split("\n") == [
        "id                       kind        database                   size tables files"
        "  verified",
        "20261120T030000Z-aaaaaa  scheduled   shop                     123456      1     0  -",
        "20261121T030000Z-bbbbbb  safety      shop                     124456      1     1"
        "  2026-11-20T04:05:06 (restored in 12.3 s)",
        "20261121T120000Z-cccccc  pre-migrate shop                     123456      1     0  -",
        "20261122T030000Z-dddddd  scheduled   (files only)               2048      -     1  -",
    ]
    assert cli.format_table([]) == "no complete backups"


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (1024**2 * 3 + 1024**2 // 5, "3.2 MiB"),
        (1024**3 * 2, "2.0 GiB"),
        (1024**4 * 3, "3072.0 GiB"),
    ],
)
def test_sizes_read_in_binary_units(size: int, shown: str) -> None:
    assert human_size(size) == shown


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0, "0 s"),
        (119.4, "119 s"),
        (120, "2 min"),
        (7199, "120 min"),
        (7200, "2.0 h"),
        (172799, "48.0 h"),
        (172800, "2.0 days"),
        (86400 * 9.5, "9.5 days"),
        # Just past a rounding boundary: an hour is 3600 s and a day 86400 s, not a second more.
        (36904, "10.3 h"),
        (263522, "3.1 days"),
    ],
)
def test_ages_read_in_the_unit_a_person_would_say(seconds: float, shown: str) -> None:
    assert human_duration(seconds) == shown


def _store(root: Path, *ages: timedelta) -> list[str]:
    """Complete backups made `ages` ago (a manifest and an empty dump each); their ids."""
    store = backup.LocalStorage(root)
    ids = []
    for age in ages:
        made = datetime.now(UTC) - age
        backup_id = engine.new_id(made)
        store.put_bytes(f"{backup_id}/{engine.DUMP}", b"")
        store.put_bytes(
            f"{backup_id}/{engine.MANIFEST}", json.dumps(manifest(backup_id, made)).encode()
        )
        ids.append(backup_id)
    return ids


def test_retention_says_what_it_would_delete_and_what_it_deletes(tmp_path: Path) -> None:
    """A dry run says "would"; the real run says what it deletes. A backup whose manifest does
    not read is kept and said so, and a crashed leftover listed after it still goes."""
    old, new = _store(tmp_path, timedelta(days=30), timedelta(minutes=5))
    unreadable, crashed = "20200101T000000Z-0000bb", "20200102T000000Z-0000cc"
    (tmp_path / unreadable).mkdir()
    (tmp_path / unreadable / engine.MANIFEST).write_text("{not json")
    (tmp_path / crashed).mkdir()
    (tmp_path / crashed / f"{engine.DUMP}.partial").write_bytes(b"half")
    store = backup.LocalStorage(tmp_path)
    said: list[str] = []

    doomed = backup.prune(store, backup.Retention(daily=1), dry_run=True, log=said.append)

    assert doomed == [old, crashed]
    assert said == [
        f"keeping {unreadable}: it has a manifest this run could not read",
        f"would delete {old}",
        f"would delete {crashed}",
        "retention kept 1 backup(s), would delete 2",
    ]
    assert len(list(tmp_path.iterdir())) == 4
    said.clear()
    assert backup.prune(store, backup.Retention(daily=1), log=said.append) == [old, crashed]
    assert said == [
        f"keeping {unreadable}: it has a manifest this run could not read",
        f"deleting {old}",
        f"deleting {crashed}",
        "retention kept 1 backup(s), deleted 2",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([new, unreadable])


def test_retention_counts_utc_days_whatever_the_hosts_time_zone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CronJob's container may carry any TZ: `--retention-days 2` still means today and
    yesterday in UTC (the days backup ids and manifests are written in), and a new backup's
    id is named in UTC too."""
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    ages = [datetime.now(UTC) - (midnight - timedelta(days=d, hours=-12)) for d in (1, 2)]
    today, yesterday, before = _store(tmp_path, timedelta(seconds=1), *ages)
    # A zone whose date differs from UTC's right now: UTC-12 in the morning, UTC+14 after noon.
    zone = "Etc/GMT+12" if datetime.now(UTC).hour < 12 else "Etc/GMT-14"
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        assert datetime.now().date() != datetime.now(UTC).date()
        doomed = backup.prune(backup.LocalStorage(tmp_path), backup.Retention(daily=2), log=print)
        named = engine.id_time(engine.new_id())
    finally:
        monkeypatch.undo()
        time.tzset()

    assert doomed == [before]
    assert [b.id for b in backup.list_backups(backup.LocalStorage(tmp_path))] == [yesterday, today]
    assert named is not None
    assert abs(datetime.now(UTC) - named) < timedelta(minutes=1)


def test_progress_goes_to_stderr_with_the_commands_name(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The default log: what the compose service's and the CronJob's logs keep."""
    to_stderr("backup 20260101T000000Z-aaaaaa complete")
    assert capsys.readouterr() == ("", "shipyard backup: backup 20260101T000000Z-aaaaaa complete\n")


def test_restore_reports_every_step_through_its_log_only(
    database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A caller that passes its own log (the invoke tasks) gets every progress line, in
    order, and nothing reaches stderr behind its back: not the fetch, not the safety backup."""
    store = backup.LocalStorage(tmp_path)
    made = backup.backup(store, log=lambda _m: None)
    said: list[str] = []

    safety = backup.restore(store, made.id, jobs=3, log=said.append)

    assert safety is not None
    assert capsys.readouterr().err == ""
    expected = [
        rf"backup {made.id}: sha256 matches the manifest \(\d+\.\d [KM]iB\)",
        rf"taking a safety backup of {database} before replacing it",
        rf"backing up database {database} \(\d+\.\d+.*\) to {store.url}/{safety.id}",
        rf"backup {safety.id} complete: \d+\.\d [KM]iB, 4 tables, sha256 [0-9a-f]{{16}}\.\.\.",
        rf"restoring backup {made.id} into database {database}_restore_[0-9a-f]{{6}}"
        r" \(3 parallel jobs\)",
        rf"database {database} now holds backup {made.id} \(4 tables\)",
    ]
    assert len(said) == len(expected), said
    for line, pattern in zip(said, expected, strict=True):
        assert re.fullmatch(pattern, line), f"{line!r} !~ {pattern!r}"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("s3:///prod", "s3:///prod: name a bucket, e.g. s3://my-backups/prod"),
        (
            "file://nas/backups",
            "file://nas/backups: file URLs name a local folder, e.g. file:///backups",
        ),
        ("ftp://host/backups", "ftp://host/backups: use file:///folder or s3://bucket/prefix"),
        ("", ": use file:///folder or s3://bucket/prefix"),
    ],
)
def test_a_target_that_names_no_storage_is_one_sentence(url: str, says: str) -> None:
    with pytest.raises(backup.StorageError) as refused:
        backup.from_url(url)
    assert str(refused.value) == says


def test_targets_name_folders_and_buckets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for url in ("backups", "file:backups", "file://localhost" + str(tmp_path / "backups")):
        store = backup.from_url(url)
        assert isinstance(store, backup.LocalStorage)
        assert store.root == tmp_path / "backups", url
    s3 = backup.from_url("s3://orders/prod%20eu/", endpoint_url="http://127.0.0.1:9")
    assert isinstance(s3, backup.S3Storage)
    assert (s3.bucket, s3.prefix, s3.url) == ("orders", "prod eu", "s3://orders/prod eu")
    assert s3.client.meta.endpoint_url == "http://127.0.0.1:9"


def test_verify_records_when_and_what_it_checked_through_the_callers_log(
    database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = backup.LocalStorage(tmp_path)
    made = backup.backup(store, log=lambda _m: None)
    said: list[str] = []

    # No --jobs: as many parallel jobs as default_jobs() says (never fewer than 2).
    checked = backup.verify(store, made.id, log=said.append)

    assert checked.id == made.id
    assert checked.manifest == made.manifest
    record = json.loads((tmp_path / made.id / engine.VERIFIED).read_text())
    assert record == checked.verified
    assert set(record) == {
        "verified_at",
        "tables",
        "rows",
        "restore_seconds",
        "recovery_point_age_seconds",
        "shipyard",
    }
    verified_at = datetime.fromisoformat(record["verified_at"])
    assert record["recovery_point_age_seconds"] == round(
        (verified_at - made.created).total_seconds(), 3
    )
    assert 0 < record["restore_seconds"] < (verified_at - made.created).total_seconds()
    assert datetime.fromisoformat(record["verified_at"]).utcoffset() == timedelta(0)
    assert (record["tables"], record["rows"]) == (4, 2000 + 5000 + 2 + 300)
    assert capsys.readouterr().err == ""
    assert said[0].startswith(f"backup {made.id}: sha256 matches the manifest")
    assert re.fullmatch(
        rf"restoring backup {made.id} into database shipyard_verify_[0-9a-f]{{8}}"
        rf" \({engine.default_jobs()} parallel jobs\)",
        said[1],
    )
    assert said[2] == f"backup {made.id} verified: 4 tables, 7302 rows match"
    assert re.fullmatch(
        r"restore drill: restored in \d+\.\d s \(recovery time\); the backup is \d+ s old"
        r" \(recovery point\)",
        said[3],
    )
    assert len(said) == 4


def test_pitr_list_prints_one_aligned_line_per_base_backup_and_the_window() -> None:
    full = pitr.BaseBackup(
        "20261205-103529F", "full", datetime(2026, 12, 5, 10, 35, 29, tzinfo=UTC),
        datetime(2026, 12, 5, 10, 36, 2, tzinfo=UTC), size=123456789, database_size=1,
    )  # fmt: skip
    diff = pitr.BaseBackup(
        "20261205-103529F_20261206-030000D", "diff", datetime(2026, 12, 6, 3, tzinfo=UTC),
        datetime(2026, 12, 6, 3, 0, 41, tzinfo=UTC), size=2048, database_size=1,
    )  # fmt: skip
    assert pitr.describe([full, diff]).splitlines() == [
        "label                              type  ended                        size",
        "20261205-103529F                   full  2026-12-05T10:36:02Z    123456789",
        "20261205-103529F_20261206-030000D  diff  2026-12-06T03:00:41Z         2048",
    ]
    assert pitr.describe([]) == "no base backups"
    # Recoverable from the second after the oldest base backup ended.
    assert pitr.Window((full, diff), None, None).describe() == (
        "2026-12-05T10:36:03Z to now (the archived WAL, at most 60 s old)"
    )
    assert pitr.Window((), None, None).describe() == "no base backup yet: nothing can be recovered"


# docs/backups.md's command reference lies between these lines.
REFERENCE_START = "<!-- shipyard backup --help, each command: tests/test_backup_reports.py -->"
REFERENCE_END = "<!-- end of the command reference -->"
DOCS = REPO / "docs" / "backups.md"


def _help_of_each_command(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """`parser` and each command under it, depth first, in the order --help lists them."""
    found = [parser]
    for action in parser._actions:  # argparse lists its commands nowhere public
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found += _help_of_each_command(sub)
    return found


def _reference_in(page: str) -> tuple[int, int]:
    """Where the command reference lies in `page`, its markers included; (-1, -1) if nowhere."""
    start, end = page.find(REFERENCE_START), page.find(REFERENCE_END)
    return (start, end + len(REFERENCE_END)) if 0 <= start < end else (-1, -1)


def command_reference(monkeypatch: pytest.MonkeyPatch) -> str:
    """The reference as docs/backups.md holds it: each `shipyard backup` command's --help, as
    `COLUMNS=100 shipyard backup ... --help` prints it."""
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("PYTHON_COLORS", "0")  # Python 3.14 colours help in a terminal
    commands = argparse.ArgumentParser(prog="shipyard").add_subparsers(dest="command")
    cli.register(commands)
    blocks = [
        f"### `{parser.prog}`\n\n```text\n{parser.format_help().rstrip()}\n```"
        for parser in _help_of_each_command(commands.choices["backup"])
    ]
    return "\n\n".join([REFERENCE_START, *blocks, REFERENCE_END])


def test_the_docs_command_reference_is_what_each_command_prints(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A help text, an option, a default or a command changed in the engine and not in the docs
    fails here (mutmut: the help texts were its largest group of survivors in cli.py)."""
    expected = command_reference(monkeypatch)
    page = DOCS.read_text(encoding="utf-8")
    start, end = _reference_in(page)
    assert start >= 0, f"docs/backups.md has no command reference: add\n{expected}"
    assert page[start:end] == expected, (
        "docs/backups.md's command reference is out of date: refresh it with"
        " `python -m tests.test_backup_reports`"
    )


if __name__ == "__main__":
    # Write the command reference into docs/backups.md, in place of the one there.
    with pytest.MonkeyPatch.context() as environment:
        fresh = command_reference(environment)
    page = DOCS.read_text(encoding="utf-8")
    start, end = _reference_in(page)
    if start < 0:
        raise SystemExit(f"{DOCS} has no command reference markers ({REFERENCE_START})")
    DOCS.write_text(page[:start] + fresh + page[end:], encoding="utf-8")
