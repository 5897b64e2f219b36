"""`shipyard backup schedule`, the Compose host's backup scheduler, as its service runs it: a
process of its own against the real PostgreSQL, running the engine's real commands on cron
schedules. The schedules here use cron's optional leading seconds field, so a test waits
seconds, not minutes."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shipyard.backup import engine, schedule, storage
from tests.backup_data import shipyard_cli
from tests.conftest import stand_in
from tests.servers.postgres import PostgresServer

PREFIX = "shipyard backup schedule:"


@contextmanager
def scheduler(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Path]:
    """`shipyard backup schedule ARGS` running; yields its log (stdout and stderr). Stopped
    with SIGTERM at the end, which must end it with status 0."""
    log = tmp_path / "scheduler.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shipyard.cli", "backup", "schedule", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        try:
            yield log
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                status = proc.wait(timeout=60)
            finally:
                proc.kill()
    assert status == 0, log.read_text()
    assert log.read_text().endswith(f"{PREFIX} stopped\n"), log.read_text()


def wait_for(check: Callable[[], bool], what: str, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s:\n{log.read_text()}"
        time.sleep(0.2)


def test_backups_and_drills_run_on_their_schedules(database: str, tmp_path: Path) -> None:
    """Two jobs on schedules of their own: backups pile up (retention keeps them: one day),
    the drill verifies the newest, each run is said with its due time and how long it took.
    One backup is there first: a drill due before the first scheduled backup would fail."""
    target = (tmp_path / "store").as_uri()
    store = storage.from_url(target)
    first = shipyard_cli("backup", "run", "--target", target, env={})
    assert first.returncode == 0, first.stderr
    with scheduler(
        tmp_path,
        "--target",
        target,
        "--backup-at",
        "*/2 * * * * *",
        "--drill-at",
        "1-59/3 * * * * *",
        "--retention-days",
        "1",
    ) as log:
        wait_for(
            lambda: (
                log.read_text().count(f"{PREFIX} backup finished in ") >= 2
                and f"{PREFIX} drill finished in " in log.read_text()
            ),
            "two scheduled backups and a drill",
            log,
        )
        # The drill verified the newest backup of its time; retention keeps it.
        assert any(b.verified for b in engine.list_backups(store))
    text = log.read_text()
    jobs = text.splitlines()[:2]
    assert jobs[0].startswith(f"{PREFIX} backup at '*/2 * * * * *' (UTC), next "), text
    assert jobs[0].endswith(f": shipyard backup run --target {target} --retention-days 1"), text
    assert jobs[1].endswith(f": shipyard backup verify --target {target}"), text
    assert f"{PREFIX} backup (due " in text
    assert "shipyard backup: retention kept " in text  # run's own options reached it
    # Only the run the final SIGTERM cut short may have failed.
    assert "failed: it exited" not in text, text


def test_a_failing_job_is_said_and_the_schedule_goes_on(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """A backup of a database that does not exist fails each time, in the engine's words and
    the scheduler's line with its exit status; the loop keeps running it."""
    target = (tmp_path / "store").as_uri()
    with scheduler(
        tmp_path,
        "--target",
        target,
        "--backup-at",
        "* * * * * *",
        env=postgres_server.env("no_such_database"),
    ) as log:
        wait_for(
            lambda: log.read_text().count(f"{PREFIX} backup failed: it exited 1 after") >= 2,
            "two failed runs",
            log,
        )
    text = log.read_text()
    assert 'database "no_such_database" does not exist' in text, text
    assert engine.list_backups(storage.from_url(target)) == []


def test_runs_due_while_a_job_ran_are_skipped_and_said(database: str, tmp_path: Path) -> None:
    """A backup every second whose pg_dump takes 2.5 s: the runs that fell due meanwhile are
    skipped, not queued behind it, and the log says how many."""
    real = shutil.which("pg_dump")
    assert real, "pg_dump is needed"
    slow = stand_in(tmp_path / "bin", "pg_dump", f'sleep 2.5\nexec {real} "$@"')
    target = (tmp_path / "store").as_uri()
    path = {"PATH": f"{slow.parent}{os.pathsep}{os.environ['PATH']}"}
    skipped = re.compile(
        rf"^{PREFIX} backup: (\d+) run\(s\) due while backup ran were skipped$", re.M
    )
    with scheduler(tmp_path, "--target", target, "--backup-at", "* * * * * *", env=path) as log:
        wait_for(lambda: bool(skipped.search(log.read_text())), "a skipped run said", log)
    counts = [int(n) for n in skipped.findall(log.read_text())]
    assert counts, log.read_text()
    assert min(counts) >= 2, log.read_text()


def test_a_stop_during_a_job_is_passed_on_and_waited_for(database: str, tmp_path: Path) -> None:
    """SIGTERM while a backup runs: the backup is interrupted as Ctrl-C would (so it cleans
    up) and waited for, then the loop ends with status 0. The backup hangs on a server that
    accepts the connection and never answers (libpq waits for its connect_timeout, far longer
    than this test)."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        with scheduler(
            tmp_path,
            "--target",
            (tmp_path / "store").as_uri(),
            "--backup-at",
            "* * * * * *",
            env={"PGHOST": "127.0.0.1", "PGPORT": str(port), "PGCONNECT_TIMEOUT": "600"},
        ) as log:
            # The backup's connection reaching the silent server: it is in the engine now,
            # past its imports (which a loaded machine can make take seconds).
            silent.settimeout(120)
            held, _ = silent.accept()
    held.close()
    text = log.read_text()
    assert f"{PREFIX} stopping: backup is interrupted (SIGINT) and waited for" in text, text
    assert "shipyard backup: interrupted (nothing it was writing is listed)" in text, text
    assert f"{PREFIX} backup failed: it exited 130 after" in text, text


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_backup_stopped_with_sigterm_cleans_up_as_after_ctrl_c(
    tmp_path: Path, stop: signal.Signals
) -> None:
    """Kubernetes and `docker stop` end a job with SIGTERM, a closed terminal with SIGHUP: the
    engine stops as it does on Ctrl-C (cleaned up, said, status 130), not killed on the spot
    by Python's default. SIGINT stops it too when it was started with SIGINT ignored, as a
    non-interactive shell starts a job with `&` (Python would leave it ignored)."""
    store = tmp_path / "store"
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        env = {"PGHOST": "127.0.0.1", "PGPORT": str(port), "PGCONNECT_TIMEOUT": "600"}
        # Started with SIGINT ignored (by a shell: preexec_fn is unsafe beside threads).
        child = subprocess.Popen(
            ["sh", "-c", 'trap "" INT; exec "$@"', "sh",
             sys.executable, "-m", "shipyard.cli", "backup", "run", "--target", store.as_uri()],
            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        silent.settimeout(120)
        held, _ = silent.accept()  # in the engine now, past its imports
        child.send_signal(stop)
        _out, err = child.communicate(timeout=60)
    held.close()
    assert child.returncode == 130, err
    assert err == "shipyard backup: interrupted (nothing it was writing is listed)\n"
    assert engine.list_backups(storage.from_url(store.as_uri())) == []


def test_a_schedule_cron_cannot_read_is_refused_with_a_sentence(tmp_path: Path) -> None:
    target = (tmp_path / "store").as_uri()

    def refused(*args: str, said: str = "") -> str:
        """The error of `shipyard backup schedule --target TARGET ARGS`, which must refuse
        them (status 1) after saying `said` on stdout."""
        done = shipyard_cli("backup", "schedule", "--target", target, *args, env={})
        assert (done.returncode, done.stdout) == (1, said), done.stderr
        return done.stderr.removeprefix("shipyard backup: ").removesuffix("\n")

    assert refused("--backup-at", "61 3 * * *") == (
        "--backup-at '61 3 * * *' is not a cron schedule (Bad minute): give five fields, minute"
        " hour day-of-month month day-of-week, e.g. '0 3 * * *' (UTC)"
    )
    # Started by hand without the schedule `invoke deploy` passes: compose.backup.yaml's empty
    # default.
    assert refused("--backup-at", "").startswith("--backup-at '' is not a cron schedule")
    nothing = (
        "give --backup-at, --drill-at or a point-in-time recovery job: there is nothing to run"
    )
    assert refused() == nothing
    assert refused("--backup-at", "0 3 * * *", "--keep-weekly", "4") == (
        "--keep-weekly and --keep-monthly add to --retention-days: give it too"
    )
    wrong = shipyard_cli(
        "backup", "schedule", "--target", "ftp://x", "--drill-at", "0 4 * * 0", env={}
    )
    assert wrong.returncode == 1
    assert wrong.stderr.startswith("shipyard backup: "), wrong.stderr
    # Point-in-time recovery's jobs need their repository, and it needs them.
    assert refused("--base-full-at", "30 2 * * 0", "--pitr-drill-at", "30 5 * * 0") == (
        "--base-full-at, --pitr-drill-at need(s) --pitr-target, the repository"
    )
    # compose.backup.yaml's empty default (point_in_time off in shipyard.yaml): left out, and
    # said; with nothing else to run, that is refused as ever.
    left_out = (
        "shipyard backup schedule: point-in-time recovery jobs left out: --pitr-target is empty\n"
    )
    off = ("--pitr-target", "", "--base-full-at", "30 2 * * 0")
    assert refused(*off, said=left_out) == nothing
    assert refused("--pitr-target", "file:///repo").startswith(
        "--pitr-target names the repository of --base-full-at"
    )
    elsewhere = ("--pitr-target", "ftp://x/repo", "--base-diff-at", "30 2 * * 1-6")
    assert refused(*elsewhere) == "'ftp://x/repo' is not file:///PATH or s3://BUCKET/PREFIX"
    odd = ("--pitr-target", "file:///repo", "--base-diff-at", "30 25 * * *")
    assert refused(*odd).startswith("--base-diff-at '30 25 * * *' is not a cron")


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_a_job_that_fell_due_while_another_ran_runs_next_once() -> None:
    """`advance` after a backup ran from 03:00 to 03:17: a drill due at 03:10 (or at 03:00 as
    well, a tie the backup won) stays due, at its latest time passed, so it runs next and once;
    the other times it missed, and those the backup missed while it ran, are skipped."""
    backup = schedule.job("backup", "--backup-at", "*/5 * * * *", ("backup", "run"))
    drill = schedule.job("drill", "--drill-at", "10 3 * * *", ("backup", "verify"))
    often = schedule.job("often", "--drill-at", "*/5 * * * *", ("backup", "verify"))
    due = {backup: _at("2026-12-06T03:00"), drill: _at("2026-12-06T03:10")}
    skipped = schedule.advance([backup, drill], due, backup, _at("2026-12-06T03:17"))
    assert due == {backup: _at("2026-12-06T03:20"), drill: _at("2026-12-06T03:10")}
    assert skipped == {backup: 3}  # 03:05, 03:10, 03:15
    due = {backup: _at("2026-12-06T03:00"), often: _at("2026-12-06T03:00")}
    skipped = schedule.advance([backup, often], due, backup, _at("2026-12-06T03:17"))
    assert due == {backup: _at("2026-12-06T03:20"), often: _at("2026-12-06T03:15")}
    assert skipped == {backup: 3, often: 3}  # often runs its 03:15 next; 03:00..03:10 skipped
    # Then the drill runs, and the backup, due meanwhile, is next.
    due = {backup: _at("2026-12-06T03:20"), drill: _at("2026-12-06T03:10")}
    skipped = schedule.advance([backup, drill], due, drill, _at("2026-12-06T03:22"))
    assert due == {backup: _at("2026-12-06T03:20"), drill: _at("2026-12-07T03:10")}
    assert skipped == {}
    # A backup that ran until the very moment it was due again skips that run too; another
    # job due at that moment runs it next.
    due = {backup: _at("2026-12-06T03:00"), often: _at("2026-12-06T03:00")}
    skipped = schedule.advance([backup, often], due, backup, _at("2026-12-06T03:10"))
    assert skipped == {backup: 2, often: 2}
    assert due == {backup: _at("2026-12-06T03:15"), often: _at("2026-12-06T03:10")}


@contextmanager
def stop_flag() -> Iterator[schedule._Stop]:
    """The scheduler's stop flag in this process, its SIGTERM and SIGINT handlers taken back
    after."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield schedule._Stop()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_a_wait_ends_at_its_moment_never_before() -> None:
    """As cron, a job starts at its due time by the wall clock, not early: a wait for a moment
    less than a second away, or more, returns once it has come."""
    with stop_flag() as stop:
        for ahead in (0.3, 1.4):
            moment = datetime.now(UTC) + timedelta(seconds=ahead)
            assert stop.sleep_until(moment)
            assert datetime.now(UTC) >= moment


def test_a_stop_while_waiting_ends_the_schedule_and_starts_nothing(tmp_path: Path) -> None:
    """SIGTERM while the next run is hours away: the scheduler stops, and no job starts."""
    target = (tmp_path / "store").as_uri()
    # On a host whose local time is not UTC: the schedule is UTC's all the same. And with
    # Python's output buffered, as into a file it is: each line is said as it happens.
    env = {"TZ": "Asia/Tokyo", "PYTHONUNBUFFERED": ""}
    with scheduler(tmp_path, "--target", target, "--backup-at", "0 3 * * *", env=env) as log:
        wait_for(lambda: f"{PREFIX} backup at " in log.read_text(), "the schedule said", log, 30)
    assert re.search(
        rf"^{PREFIX} backup at '0 3 \* \* \*' \(UTC\), next [-0-9]+T03:00:00Z: ",
        log.read_text(),
        re.M,
    ), log.read_text()
    assert f"{PREFIX} backup (due " not in log.read_text(), log.read_text()


def test_a_job_that_cannot_start_is_said_on_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The engine's interpreter gone (a host upgraded under the scheduler): the run is said as
    an error, in the system's words, and the schedule goes on."""
    monkeypatch.setattr(schedule, "ENGINE", ("/nonexistent/python3",))
    job = schedule.job("backup", "--backup-at", "0 3 * * *", ["backup", "run"])
    with stop_flag() as stop:
        schedule._run_one(job, datetime.now(UTC), stop)
    said = capsys.readouterr()
    assert said.err == f"{PREFIX} backup could not start: No such file or directory\n"
    assert said.out.startswith(f"{PREFIX} backup (due ")


def test_a_failed_run_is_said_on_stderr_with_how_it_ended_and_how_long_it_took(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(schedule, "ENGINE", ("/bin/sh", "-c", "sleep 0.3; exit 3"))
    job = schedule.job("backup", "--backup-at", "0 3 * * *", ["backup", "run"])
    with stop_flag() as stop:
        schedule._run_one(job, datetime.now(UTC), stop)
    said = capsys.readouterr()
    failed = re.fullmatch(rf"{PREFIX} backup failed: it exited 3 after (\d+\.\d) s\n", said.err)
    assert failed, said.err
    assert 0.3 <= float(failed[1]) < 30
    assert said.out.startswith(f"{PREFIX} backup (due ")


def test_a_stop_is_passed_on_to_the_running_job_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job that ignores SIGINT and runs on: the stop is passed on once, not again at each
    look, and the job waited for."""
    monkeypatch.setattr(schedule, "ENGINE", ("/bin/sh", "-c", "trap '' INT; sleep 1.6"))
    job = schedule.job("backup", "--backup-at", "0 3 * * *", ["backup", "run"])
    with stop_flag() as stop:
        stop.asked = True
        schedule._run_one(job, datetime.now(UTC), stop)
    out = capsys.readouterr().out
    assert out.count(f"{PREFIX} stopping: backup is interrupted (SIGINT) and waited for\n") == 1
    assert f"{PREFIX} backup finished in " in out
