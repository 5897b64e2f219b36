"""Point-in-time recovery (pgBackRest) against the classic logical restore, side by side.

On a pgbench database (default scale 20, `--scale 100` for the 1.5 GB case the issue names) in
a throwaway PostgreSQL cluster that archives its WAL through pgBackRest, in one run:

  physical restore ratio = restore to `latest` by shipyard.backup.pitr / `gunzip | psql`
                           (target <= 0.25)
  RPO after a crash      = seconds of committed writes lost when the server dies mid-workload
                           and its disk is gone: the newest commit acknowledged to the client
                           minus the newest commit the restore recovers (target <= 60 s)
  archive_command        = seconds to push one WAL segment: the kit's command against
                           pgBackRest's own, and against the CLI step it replaced

The physical restore is the whole engine's: pgBackRest writes a new data directory, a private
server replays WAL until recovery ends and answers, then stops. The classic restore loads the
dump into a new database of a second, identical cluster that does not archive (so its WAL never
becomes WAL the physical restore replays) and ends with a CHECKPOINT, so both are timed until
their pages are written. For the RPO, a client commits one row every 100 ms for `--workload`
seconds (longer than archive_timeout, so the crash lands at a random point of the archiving
cycle), then the server is killed with SIGKILL and its data directory deleted.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import psycopg

from shipyard.backup import pgbackrest, pitr

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.servers.postgres import _bindir, free_port, owner_wrappers  # noqa: E402


@contextmanager
def cluster(state: Path, *, archiving: bool = True) -> Iterator[dict[str, str]]:
    """A throwaway cluster, archiving into a local pgBackRest repository or not; yields the
    engine's environment (libpq and PGBACKREST_* variables)."""
    for folder in (state, state / "repo", state / "tmp"):
        folder.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")
    owner_wrappers(state / "bin")
    data, port = state / "data", free_port()
    env = pgbackrest.environment(
        f"file://{state / 'repo'}",
        {
            **os.environ,
            "PATH": f"{state / 'bin'}:{os.environ['PATH']}",
            "PGDATA": str(data),
            "PGPORT": str(port),
            "PGHOST": str(state),
            "PGUSER": "postgres",
            "TMPDIR": str(state / "tmp"),
            # Encrypted at rest, as the kit's repositories are.
            pgbackrest.CIPHER_PASS: secrets.token_urlsafe(16),
        },
    )
    initdb = [str(_bindir() / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
    owner = "postgres" if os.geteuid() == 0 else None
    subprocess.run([*initdb, "--no-sync"], check=True, capture_output=True, cwd=state, user=owner)
    with (data / "postgresql.conf").open("a") as conf:
        conf.write("track_commit_timestamp = on\nshared_buffers = 256MB\n")
    settings = " ".join(f"-c '{s}'" for s in pitr.archive_settings()) if archiving else ""
    options = f"-p {port} -k {state} -c listen_addresses= {settings}"
    ctl = ["pg_ctl", "-D", str(data), "-l", str(state / "log")]
    subprocess.run([*ctl, "-w", "-o", options, "start"], env=env, check=True, capture_output=True)
    try:
        yield env
    finally:
        subprocess.run([*ctl, "-m", "immediate", "stop"], env=env, capture_output=True, check=False)


def settle() -> None:
    """Start each timed restore on a quiet disk, as a real one starts: the previous step's
    gigabytes written back and its dropped files discarded (this disk is mounted with `discard`),
    not still being flushed into the measurement of the next."""
    os.sync()
    time.sleep(2)


def sh(script: str, env: dict[str, str]) -> None:
    subprocess.run(["bash", "-o", "pipefail", "-ec", script], check=True, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--scale", type=int, default=int(os.environ.get("BENCH_SCALE", "20")))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workload", type=float, default=75.0, help="seconds of writes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pitr-") as tmp:
        Path(tmp).chmod(0o755)  # the server runs as postgres when this runs as root
        state = Path(tmp) / "pg"
        # The classic restores load into a cluster of their own: their WAL (a whole database
        # each) must not become WAL that the physical restore to `latest` has to replay.
        with cluster(state) as env, cluster(Path(tmp) / "plain", archiving=False) as plain:
            pitr.setup(env)
            sh(f"pgbench -q -i -s {args.scale} postgres >/dev/null 2>&1", env)
            dump = Path(tmp) / "dump.sql.gz"
            sh(f"pg_dump postgres | gzip > {dump}", env)
            pitr.base_backup(env, "full")
            classic, physical = [], []
            for n in range(args.rounds):
                name, into = f"classic_{n}", state / f"restored_{n}"
                settle()
                started = time.perf_counter()
                sh(f"createdb {name} && gunzip -c {dump} | psql -q -o /dev/null {name}", plain)
                sh(f"psql -qc CHECKPOINT {name}", plain)
                classic.append(time.perf_counter() - started)
                sh(f"dropdb {name}", plain)
                window = pitr.window(env)
                settle()
                started = time.perf_counter()
                pitr.restore(env, pitr.target("latest", window), into)
                physical.append(time.perf_counter() - started)
                shutil.rmtree(into)
            pushes = archive_push_times(env, state, args.rounds * 3)
            rpo = crash_rpo(env, state, args.workload)
    c, p = statistics.median(classic), statistics.median(physical)
    print(f"pitr (scale {args.scale}, {args.rounds} interleaved rounds, medians)")
    print(f"  rounds: classic {' '.join(f'{t:.2f}' for t in classic)} s,"
          f" physical {' '.join(f'{t:.2f}' for t in physical)} s")  # fmt: skip
    print(f"  classic gunzip | psql restore   {c:7.2f} s")
    print(f"  pgBackRest restore to latest    {p:7.2f} s")
    print(f"  physical restore ratio          {p / c:7.2f}   (target <= 0.25)")
    print(f"  RPO after a crash               {rpo:7.1f} s (target <= 60, archive_timeout "
          f"{pitr.ARCHIVE_TIMEOUT} s)")  # fmt: skip
    direct = pushes["pgbackrest archive-push"]
    print("  archive_command, one WAL segment (medians):")
    for command, took in pushes.items():
        print(f"    {command:40} {took:6.3f} s  ({took / direct:4.2f} x pgBackRest's own)")


def archive_push_times(env: dict[str, str], state: Path, runs: int) -> dict[str, float]:
    """Median seconds of one archive_command run, pushing a segment the archive already holds
    (pgBackRest reads and checksums the 16 MB segment and finds it there): pgBackRest's own
    command, the kit's (`shipyard-pgbackrest-push`), and the whole CLI's step it replaced."""
    conninfo = f"host={env['PGHOST']} port={env['PGPORT']} user=postgres dbname=postgres"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS pushed (x int); INSERT INTO pushed VALUES (1)")
        row = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
        name = row[0] if row else ""
        while True:
            done = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()
            if done and done[0] and done[0] >= name:
                break
            time.sleep(0.2)
    wal = str(state / "data" / "pg_wal" / name)
    target = ("--target", f"file://{state / 'repo'}")
    commands = {
        "pgbackrest archive-push": ["pgbackrest", "archive-push", wal],
        "shipyard-pgbackrest-push": [str(Path(sys.executable).parent / "shipyard-pgbackrest-push"),
                                  wal, *target],
        "shipyard backup pitr archive-push": [sys.executable, "-m", "shipyard.cli", "backup",
                                              "pitr", "archive-push", wal, *target],
    }  # fmt: skip
    times: dict[str, list[float]] = {command: [] for command in commands}
    for _ in range(runs):  # interleaved, so that a busy moment weighs on each alike
        for command, argv in commands.items():
            started = time.perf_counter()
            subprocess.run(argv, env=env, check=True, capture_output=True)
            times[command].append(time.perf_counter() - started)
    return {command: statistics.median(took) for command, took in times.items()}


def crash_rpo(env: dict[str, str], state: Path, seconds: float) -> float:
    """Commit a row every 100 ms, kill the server mid-workload, lose its disk, restore `latest`
    from the repository: how much acknowledged work is gone, in seconds."""
    acknowledged: datetime | None = None
    conninfo = f"host={env['PGHOST']} port={env['PGPORT']} user=postgres dbname=postgres"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE ticks (at timestamptz NOT NULL DEFAULT clock_timestamp())")
        first = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            row = conn.execute("INSERT INTO ticks DEFAULT VALUES RETURNING at").fetchone()
            acknowledged = row[0] if row else acknowledged
            time.sleep(0.1)
        pid = int((state / "data" / "postmaster.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    time.sleep(1)
    shutil.rmtree(state / "data")
    restored = pitr.restore(env, pitr.target("latest", pitr.window(env)), state / "data")
    options = f"-p {env['PGPORT']} -k {env['PGHOST']} -c listen_addresses= -c archive_mode=off"
    ctl = ["pg_ctl", "-D", str(restored.path), "-l", str(state / "log2")]
    subprocess.run([*ctl, "-w", "-o", options, "start"], env=env, check=True, capture_output=True)
    with psycopg.connect(conninfo) as conn:
        # No table: not even its creation was archived, so every acknowledged row is lost.
        newest: datetime = first
        if conn.execute("SELECT to_regclass('ticks') IS NOT NULL").fetchone() == (True,):
            found = conn.execute("SELECT max(at) FROM ticks").fetchone()
            newest = found[0] if found and found[0] else first
    subprocess.run([*ctl, "-m", "fast", "stop"], env=env, check=True, capture_output=True)
    if acknowledged is None:
        return float("inf")
    lost: float = (acknowledged - newest).total_seconds()
    return lost


if __name__ == "__main__":
    main()
