"""PostgreSQL and S3 servers shared by a run of pytest sessions:

    python -m tests.servers.shared N COMMAND...

mutmut (`nox -s mutation`) runs one short pytest session per mutant, thousands of them, and
starting PostgreSQL and the S3 server in each costs as much as many mutants' tests. This starts
N pairs once, runs COMMAND with SHIPYARD_SHARED_SERVERS naming their folder, and stops them when
COMMAND ends. A test process claims one pair for itself: an exclusive lock on the pair's file,
which the kernel releases when the process ends, however it ends. Each pytest session in it
empties the pair first (every database but `postgres`, every prepared transaction, every
bucket), so it finds the servers as new ones, whatever the last session (or mutant) left. With
at most N processes at a time a pair is always free; more wait for one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
import requests
from psycopg import sql

from tests.servers import postgres, s3

ENV = "SHIPYARD_SHARED_SERVERS"


@dataclass(frozen=True)
class Slot:
    postgres: postgres.PostgresServer
    s3: s3.S3Server


# By process: a session forked from one that claimed a pair must claim its own.
_claimed: dict[int, Slot] = {}


# pytest's exit status that mutmut reads as "suspicious", never as a mutant killed.
SUSPICIOUS = 35


@pytest.fixture(scope="session")
def shared_servers() -> Slot | None:
    """This session's pair of the run's shared servers, emptied; None when no run shares
    servers (the fixtures of each server then start their own). A pair that cannot be claimed
    or emptied (a server died) stops the session as suspicious: its failures say nothing of
    the mutant."""
    try:
        slot = claim()
        if slot is not None:
            empty(slot)
    except Exception as exc:  # any fault of the harness, reported as such
        pytest.exit(f"the shared test servers failed: {exc!r}", returncode=SUSPICIOUS)
    return slot


def claim(wait: float = 600) -> Slot | None:
    """This process's pair of shared servers (the same for each of its sessions); None when no
    run shares servers."""
    folder = os.environ.get(ENV)
    if not folder:
        return None
    if os.getpid() in _claimed:
        return _claimed[os.getpid()]
    paths = sorted(Path(folder).glob("slot-*.json"))
    if not paths:
        raise RuntimeError(f"{ENV}={folder} holds no servers")
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            # fd stays open, unreferenced: the lock lasts as long as this process.
            slot = _load(path)
            _claimed[os.getpid()] = slot
            return slot
        time.sleep(0.1)
    raise RuntimeError(f"no shared server pair in {folder} came free within {wait:.0f} s")


def _load(path: Path) -> Slot:
    data = json.loads(path.read_text())
    pg = data["postgres"]
    return Slot(
        postgres.PostgresServer(**{**pg, "bindir": Path(pg["bindir"])}), s3.S3Server(data["s3"])
    )


def empty(slot: Slot) -> None:
    """Take away what the tests leave on a pair: every database but `postgres`, every held
    (prepared) transaction, every bucket. (Roles and server settings stay: the tests that use
    these servers change neither.)"""
    server, ident = slot.postgres, sql.Identifier
    left = server.databases() - {"postgres"}
    with server.connect() as conn:
        held = conn.execute("SELECT gid, database FROM pg_prepared_xacts").fetchall()
        for database in {database for _gid, database in held}:
            # A restore stopped midway may have left it closed to connections; a ROLLBACK
            # PREPARED runs only from inside it.
            conn.execute(
                sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(ident(database))
            )
    for gid, database in held:
        with server.connect(database) as conn:
            conn.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))
    with server.connect() as conn:
        for name in left:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(ident(name)))
    requests.post(f"{slot.s3.endpoint}/moto-api/reset", timeout=10).raise_for_status()


def _exit_once(signum: int, _frame: object) -> None:
    for stop in (signal.SIGTERM, signal.SIGINT):  # a second one must not cut the cleanup short
        signal.signal(stop, signal.SIG_IGN)
    sys.exit(128 + signum)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit() or int(argv[0]) < 1:
        print("usage: python -m tests.servers.shared N COMMAND...", file=sys.stderr)
        return 2
    # A stop (Ctrl-C, SIGTERM) first ends COMMAND's process group, so no mutant is judged on
    # servers already gone; only then are the servers (sessions of their own, which a
    # terminal's Ctrl-C does not reach) stopped and removed.
    signal.signal(signal.SIGTERM, _exit_once)
    signal.signal(signal.SIGINT, _exit_once)
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="shipyard-shared-")))
        for index in range(int(argv[0])):
            pg = stack.enter_context(postgres.running())
            storage = stack.enter_context(s3.running())
            record = {"postgres": {**asdict(pg), "bindir": str(pg.bindir)}, "s3": storage.endpoint}
            path = folder / f"slot-{index}.json"
            # Holds a throwaway server's password: readable by this user only.
            path.touch(mode=0o600)
            path.write_text(json.dumps(record))
        # COMMAND and whatever it forks in a session of their own, ended as a group.
        command = subprocess.Popen(
            argv[1:], env={**os.environ, ENV: str(folder)}, start_new_session=True
        )
        try:
            return command.wait()
        finally:
            _end(command)


def _end(command: subprocess.Popen[bytes]) -> None:
    """Stop COMMAND's whole process group (mutmut and the test processes it forked): Ctrl-C
    first, which mutmut takes as a stop, up to 10 s for COMMAND to end; then SIGKILL to what is
    left of the group (a process that ignores Ctrl-C, one whose parent is gone)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(command.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        command.wait(10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(command.pid, signal.SIGKILL)
    command.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
