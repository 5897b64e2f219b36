"""Backup and restore speed of the shipyard engine against the classic script, side by side.

On a pgbench database (default scale 20, `--scale 100` for the 1.5 GB case) in a throwaway
PostgreSQL cluster, each method runs `--rounds` times, interleaved, and the medians give:

  backup ratio   = `pg_dump | gzip` time / ours              (target >= 1.5)
  restore ratio  = `gunzip | psql` time / ours               (target >= 1.2)
  ceiling ratio  = ours / `pg_dump -Fc -Z0 > /dev/null`      (target <= 1.2)

"Ours" is the whole engine: the backup includes the per-table checksums and the manifest,
the restore includes the sha256 check, the restore into a new database with parallel
pg_restore, the row count comparison and the swap (not the safety backup, which the classic
script does not take either). Both restores end with a CHECKPOINT: ours drops the replaced
database, which forces one, so both are timed until the restored pages are written instead of
leaving the classic one's write-back outside its timing. Only ratios from one run mean anything.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from shipyard import backup
from shipyard.backup import engine


def _bindir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        raise SystemExit("benchmark: install postgresql-15 (.ci/setup.sh) first")
    return found[-1].parent


@contextmanager
def cluster(state: Path) -> Iterator[dict[str, str]]:
    """A throwaway cluster (as `postgres` when run as root); yields its libpq environment."""
    bindir = _bindir()
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if os.geteuid() == 0:
        shutil.chown(state, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = state / "data"

    def run(*argv: str) -> None:
        subprocess.run([*prefix, *argv], check=True, capture_output=True, cwd=state)

    run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync")
    options = f"-p {port} -k {state} -c listen_addresses=127.0.0.1 -c shared_buffers=256MB"
    run(
        str(bindir / "pg_ctl"),
        "-D",
        str(data),
        "-l",
        str(state / "log"),
        "-w",
        "-o",
        options,
        "start",
    )
    try:
        yield {"PGHOST": "127.0.0.1", "PGPORT": str(port), "PGUSER": "postgres"}
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop")


def sh(script: str) -> None:
    subprocess.run(["bash", "-o", "pipefail", "-ec", script], check=True)


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=int(os.environ.get("BENCH_SCALE", "20")))
    parser.add_argument("--rounds", type=int, default=5)
    args, _ = parser.parse_known_args()  # nox passes every session argument to each script

    with tempfile.TemporaryDirectory(prefix="shipyard-bench-") as tmp:
        work = Path(tmp)
        work.chmod(0o711)  # the cluster's own folder below belongs to the postgres user
        (work / "pg").mkdir()
        with cluster(work / "pg") as env:
            os.environ.update(env)
            os.environ["PGDATABASE"] = "bench"
            sh("createdb bench && createdb target")
            print(f"pgbench -i -s {args.scale} ...", flush=True)
            sh(f"pgbench -i -q -s {args.scale} bench 2>/dev/null")
            store = backup.LocalStorage(work / "store")
            gz, raw = work / "dump.sql.gz", work / "raw.pgc"
            sh(f"pg_dump -Fc -Z0 bench > {raw}")  # warms the cache; its size is the raw size
            times: dict[str, list[float]] = {k: [] for k in ("gzip", "ours", "ceiling")}
            restores: dict[str, list[float]] = {"psql": [], "ours": []}
            for round_ in range(args.rounds):
                dumps: list[tuple[str, Callable[[], object]]] = [
                    ("gzip", lambda: sh(f"pg_dump bench | gzip > {gz}")),
                    ("ceiling", lambda: sh("pg_dump -Fc -Z0 bench > /dev/null")),
                    ("ours", lambda: backup.backup(store, log=quiet)),
                ]
                # Each round starts with a different method, so none always runs right after
                # the same neighbour (the other engineers' load and the page cache vary).
                for name, action in dumps[round_ % 3 :] + dumps[: round_ % 3]:
                    times[name].append(timed(action))
                made = backup.list_backups(store)[-1]
                # The classic restore script: drop, create, load.
                classic = f"dropdb --if-exists classic && createdb classic && gunzip -c {gz}"
                classic += " | psql -q -X -o /dev/null -v ON_ERROR_STOP=1 classic"
                classic += " && psql -q -X -c CHECKPOINT classic"
                loads: list[tuple[str, Callable[[], object]]] = [
                    ("psql", lambda: sh(classic)),  # noqa: B023
                    ("ours", lambda: restore_ours(store, made)),  # noqa: B023
                ]
                for name, action in loads[round_ % 2 :] + loads[: round_ % 2]:
                    restores[name].append(timed(action))
                last = [f"{k} {v[-1]:.2f}s" for k, v in (*times.items(), *restores.items())]
                print(f"round {round_ + 1}: " + ", ".join(last), flush=True)
            report(args.scale, args.rounds, times, restores, sizes=(raw, gz, made))


def restore_ours(store: backup.Storage, made: backup.Backup) -> None:
    os.environ["PGDATABASE"] = "target"
    try:
        engine.restore(store, made.id, safety_backup=False, log=quiet)
    finally:
        os.environ["PGDATABASE"] = "bench"
    sh("psql -q -X -c CHECKPOINT target")


def quiet(_message: str) -> None:
    """The engine's progress lines would drown the numbers."""


def report(
    scale: int,
    rounds: int,
    times: dict[str, list[float]],
    restores: dict[str, list[float]],
    sizes: tuple[Path, Path, backup.Backup],
) -> None:
    med = {k: statistics.median(v) for k, v in times.items()}
    rmed = {k: statistics.median(v) for k, v in restores.items()}
    raw, gz, made = sizes
    mib = 1024 * 1024
    ours_size = made.manifest["dump"]["size"] / mib
    print(f"\nbackup benchmark, pgbench scale {scale}, medians of {rounds} interleaved rounds")
    print(
        f"  sizes: raw custom archive {raw.stat().st_size / mib:.1f} MiB, pg_dump|gzip "
        f"{gz.stat().st_size / mib:.1f} MiB, ours (zstd -{engine.ZSTD_LEVEL}) {ours_size:.1f} MiB"
    )
    ratio = med["gzip"] / med["ours"]
    print(
        f"  backup:  pg_dump|gzip {med['gzip']:.2f}s / ours {med['ours']:.2f}s = {ratio:.2f}"
        "  (target >= 1.5)"
    )
    ratio = rmed["psql"] / rmed["ours"]
    print(
        f"  restore: dropdb+createdb+gunzip|psql {rmed['psql']:.2f}s / ours {rmed['ours']:.2f}s"
        f" = {ratio:.2f}  (target >= 1.2)"
    )
    ratio = med["ours"] / med["ceiling"]
    print(
        f"  ceiling: ours {med['ours']:.2f}s / pg_dump -Fc -Z0 >/dev/null {med['ceiling']:.2f}s"
        f" = {ratio:.2f}  (target <= 1.2)"
    )


if __name__ == "__main__":
    main()
