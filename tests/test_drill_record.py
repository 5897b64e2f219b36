"""The record of point-in-time recovery drills (shipyard.backup.drill_record), on a real folder."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from shipyard.backup import cli, drill_record, storage
from shipyard.backup.drill_record import Outcome

MONDAY = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)
TUESDAY = datetime(2026, 12, 8, 3, 0, tzinfo=UTC)


def test_no_drill_yet_reads_as_none(tmp_path: Path) -> None:
    assert drill_record.read(storage.LocalStorage(tmp_path)) is None


def test_a_passed_drill_is_the_last_and_the_last_passing_one(tmp_path: Path) -> None:
    repo = storage.LocalStorage(tmp_path)

    drill_record.write(repo, Outcome(MONDAY, 4.25, 12.4))

    record = drill_record.read(repo)
    assert record == drill_record.Record(Outcome(MONDAY, 4.25, 12.4), Outcome(MONDAY, 4.25, 12.4))
    assert record.describe() == (
        "last drill: 2026-12-07T03:00:00Z passed: restored in 4.2 s, recovery point 12 s old"
    )
    # Stored as a person reads it (DEPLOYMENT.md's runbook quotes it): a field a line.
    stored = (tmp_path / drill_record.KEY).read_text()
    assert stored.startswith('{\n  "last": {\n    "ended": "2026-12-07T03:00:00Z",\n'), stored


def test_a_failed_drill_keeps_the_last_passing_ones_time(tmp_path: Path) -> None:
    repo = storage.LocalStorage(tmp_path)
    drill_record.write(repo, Outcome(MONDAY, 4.25, None))

    drill_record.write(repo, Outcome(TUESDAY, error="a segment is missing or corrupted"))

    record = drill_record.read(repo)
    assert record is not None
    assert record.last == Outcome(TUESDAY, error="a segment is missing or corrupted")
    assert record.last_passed == Outcome(MONDAY, 4.25, None)
    assert record.describe().splitlines() == [
        "last drill: 2026-12-08T03:00:00Z FAILED: a segment is missing or corrupted",
        "last passing drill: 2026-12-07T03:00:00Z passed: restored in 4.2 s,"
        " recovery point not tracked",
    ]
    # A later pass replaces both.
    drill_record.write(repo, Outcome(TUESDAY, 3.0, 1.0))
    assert drill_record.read(repo) == drill_record.Record(
        Outcome(TUESDAY, 3.0, 1.0), Outcome(TUESDAY, 3.0, 1.0)
    )


def test_a_failure_with_no_pass_before_says_so(tmp_path: Path) -> None:
    repo = storage.LocalStorage(tmp_path)

    drill_record.write(repo, Outcome(MONDAY, error="no base backup yet"))

    record = drill_record.read(repo)
    assert record == drill_record.Record(Outcome(MONDAY, error="no base backup yet"), None)
    assert record.describe().splitlines()[1] == "last passing drill: none yet"


def test_an_unreadable_record_reads_as_none_and_the_next_drill_replaces_it(tmp_path: Path) -> None:
    (tmp_path / drill_record.KEY).write_text('{"last": {"ended": "yesterday"}}')
    repo = storage.LocalStorage(tmp_path)

    assert drill_record.read(repo) is None
    drill_record.write(repo, Outcome(MONDAY, 4.0, 2.0))
    assert drill_record.read(repo) is not None


def test_a_passed_drill_that_cannot_be_recorded_fails_a_failed_one_only_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / drill_record.KEY).mkdir()  # the record cannot be written there
    target = f"file://{tmp_path}"

    with pytest.raises(storage.StorageError, match="the drill passed but could not be recorded"):
        cli._record_drill(target, Outcome(MONDAY, 4.0, 2.0))

    cli._record_drill(target, Outcome(MONDAY, error="the restore stopped short"))
    assert "the drill could not be recorded either" in capsys.readouterr().err


def test_on_s3_no_record_is_none_and_a_written_one_reads_back(bucket: str) -> None:
    repo = storage.from_url(f"s3://{bucket}/prod/pitr")

    assert drill_record.read(repo) is None  # NoSuchKey: no drill yet, not a fault
    drill_record.write(repo, Outcome(MONDAY, 4.0, 2.0))
    assert drill_record.read(repo) == drill_record.Record(
        Outcome(MONDAY, 4.0, 2.0), Outcome(MONDAY, 4.0, 2.0)
    )


def test_a_storage_that_cannot_answer_is_an_error_not_no_drill(tmp_path: Path) -> None:
    (tmp_path / drill_record.KEY).mkdir()  # read fails, and not because nothing is there

    with pytest.raises(storage.StorageError, match="cannot read"):
        drill_record.read(storage.LocalStorage(tmp_path))
