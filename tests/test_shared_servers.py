"""tests/servers/shared.py: the servers `nox -s mutation` shares between its pytest sessions.
Each session must get a pair no other running session holds, and find it as a new one."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.servers import shared

REPO = Path(__file__).resolve().parent.parent

# Run in each child: claim a pair, say which, dirty it (a database, a held transaction in a
# database closed to connections, a bucket), wait for the go-ahead file, exit without cleaning.
PROBE = textwrap.dedent(
    """
    import sys, time, boto3
    from pathlib import Path
    from tests.servers import shared
    slot = shared.claim(wait=60)
    shared.empty(slot)
    pg = slot.postgres
    found = sorted(pg.databases()), sorted(
        b["Name"] for b in boto3.client("s3", endpoint_url=slot.s3.endpoint,
        **{"aws_access_key_id": "k", "aws_secret_access_key": "s", "region_name": "us-east-1"}
        ).list_buckets()["Buckets"])
    print(pg.port, slot.s3.endpoint, found, flush=True)
    name = pg.create_database("left")
    with pg.connect(name) as conn:
        conn.execute("CREATE TABLE t (i int)")
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute("PREPARE TRANSACTION 'left_behind'")
    with pg.connect() as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    boto3.client("s3", endpoint_url=slot.s3.endpoint, aws_access_key_id="k",
        aws_secret_access_key="s", region_name="us-east-1").create_bucket(Bucket="left-behind")
    go = Path(sys.argv[1])
    while not go.exists():
        time.sleep(0.05)
    """
)

# Runs under the shared servers: two probes at once, then one more after both ended.
DRIVER = textwrap.dedent(
    """
    import subprocess, sys, time
    from pathlib import Path
    go = Path(sys.argv[1])
    def probe():
        return subprocess.Popen([sys.executable, "-c", sys.argv[2], str(go)],
                                stdout=subprocess.PIPE, text=True)
    first, second = probe(), probe()
    lines = [first.stdout.readline(), second.stdout.readline()]
    go.touch()
    first.wait(); second.wait()
    third = probe()
    lines.append(third.stdout.readline())
    third.wait()
    print("".join(lines), end="")
    sys.exit(first.returncode or second.returncode or third.returncode)
    """
)


def test_each_session_holds_its_own_pair_and_finds_it_empty(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != shared.ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-m", "tests.servers.shared", "2",
         sys.executable, "-c", DRIVER, str(tmp_path / "go"), PROBE],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3, done.stdout
    first, second, third = (line.split(" ", 2) for line in lines)
    # At the same time: two different pairs.
    assert first[0] != second[0]
    assert first[1] != second[1]
    # Each found its pair empty; the third, one of the two again, emptied of what its last
    # holder left (a database closed to connections holding a prepared transaction, a bucket).
    empty = "(['postgres'], [])"
    assert [first[2], second[2], third[2]] == [empty, empty, empty]


def test_without_a_run_sharing_servers_nothing_is_claimed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(shared.ENV, raising=False)
    assert shared.claim() is None
