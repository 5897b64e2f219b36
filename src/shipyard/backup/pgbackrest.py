"""pgBackRest's configuration for a repository named by a `--target` URL, and running it.

Apart from the rest of point-in-time recovery (pitr.py), so that PostgreSQL's archive_command,
run once per WAL segment, starts quickly: `shipyard-pgbackrest-push WAL --target URL` imports
this module alone (the standard library), where `shipyard backup pitr archive-push` loads the
whole command line (psycopg, the validators' schemas), about 0.6 s a segment.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from shipyard.backup.report import BackupError

# The kit's one stanza: a repository holds one cluster's backups.
STANZA = "db"
# Seconds pgBackRest is given to stop its workers when it is stopped, before they are killed.
GRACE = 10
CIPHER_PASS = "SHIPYARD_BACKUP_CIPHER_PASS"  # noqa: S105 (the variable's name, not a secret)


def environment(target: str, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """pgBackRest's configuration for the repository at `target` (file:///PATH or
    s3://BUCKET/PREFIX) and the server libpq's variables name, as PGBACKREST_* variables added
    to `environ`. A URL pgBackRest cannot use is refused with a sentence."""
    env = {k: v for k, v in environ.items() if not k.startswith("PGBACKREST_")}
    url = urlsplit(target)
    scratch = environ.get("TMPDIR", tempfile.gettempdir())
    env.update(
        PGBACKREST_STANZA=STANZA,
        # Configuration is this environment alone: a packaged /etc/pgbackrest.conf (Debian's
        # is readable only by `postgres`) must neither block nor add to it.
        PGBACKREST_CONFIG="/dev/null",
        PGBACKREST_COMPRESS_TYPE="zst",
        # Begin with an immediate checkpoint, not a spread one that can take checkpoint_timeout
        # (5 min): the backup before a migration must not stall the deploy.
        PGBACKREST_START_FAST="y",
        PGBACKREST_PROCESS_MAX=str(min(4, os.cpu_count() or 1)),
        # Logs go to the console (the caller's log). The lock lives in the container's scratch,
        # or where SHIPYARD_PITR_LOCK_PATH says: a folder every container that runs pgBackRest
        # on this server shares (compose.prod.yaml's server and the backup scheduler), so that
        # two base backups never run at once.
        PGBACKREST_LOG_LEVEL_FILE="off",
        PGBACKREST_LOG_LEVEL_CONSOLE=environ.get("PGBACKREST_LOG_LEVEL_CONSOLE", "warn"),
        PGBACKREST_LOCK_PATH=environ.get("SHIPYARD_PITR_LOCK_PATH")
        or str(Path(scratch) / "pgbackrest-lock"),
        PGBACKREST_SPOOL_PATH=str(Path(scratch) / "pgbackrest-spool"),
        # Two full backups and what depends on them; WAL older than the oldest kept full goes.
        PGBACKREST_REPO1_RETENTION_FULL=environ.get("SHIPYARD_PITR_RETENTION_FULL", "2"),
    )
    if url.scheme == "file" and url.path.startswith("/"):
        env.update(PGBACKREST_REPO1_TYPE="posix", PGBACKREST_REPO1_PATH=url.path)
    elif url.scheme == "s3" and url.netloc:
        env.update(_s3(url.netloc, url.path.strip("/"), environ))
    else:
        raise BackupError(f"{target!r} is not file:///PATH or s3://BUCKET/PREFIX")
    if data := environ.get("PGDATA"):
        env["PGBACKREST_PG1_PATH"] = data
    if port := environ.get("PGPORT"):
        env["PGBACKREST_PG1_PORT"] = port
    if (host := environ.get("PGHOST", "")).startswith("/"):
        env["PGBACKREST_PG1_SOCKET_PATH"] = host
    if user := environ.get("PGUSER"):
        env["PGBACKREST_PG1_USER"] = user
    if passphrase := environ.get(CIPHER_PASS):
        env.update(
            PGBACKREST_REPO1_CIPHER_TYPE="aes-256-cbc", PGBACKREST_REPO1_CIPHER_PASS=passphrase
        )
    return env


def _s3(bucket: str, prefix: str, environ: Mapping[str, str]) -> dict[str, str]:
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    endpoint = urlsplit(environ.get("AWS_ENDPOINT_URL") or f"https://s3.{region}.amazonaws.com")
    if endpoint.scheme != "https" or not endpoint.hostname:
        raise BackupError(
            "pgBackRest reaches S3 over HTTPS only: AWS_ENDPOINT_URL must be https://HOST[:PORT]"
        )
    env = {
        "PGBACKREST_REPO1_TYPE": "s3",
        "PGBACKREST_REPO1_PATH": "/" + prefix,
        "PGBACKREST_REPO1_S3_BUCKET": bucket,
        "PGBACKREST_REPO1_S3_ENDPOINT": endpoint.hostname,
        "PGBACKREST_REPO1_S3_REGION": region,
    }
    key, secret = environ.get("AWS_ACCESS_KEY_ID"), environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        env.update(PGBACKREST_REPO1_S3_KEY=key, PGBACKREST_REPO1_S3_KEY_SECRET=secret)
        if token := environ.get("AWS_SESSION_TOKEN"):  # temporary (STS, SSO) credentials
            env["PGBACKREST_REPO1_S3_TOKEN"] = token
    elif key or secret:
        # Half a key is a mistake (boto3, for the logical backups, refuses a key id without its
        # secret): never a silent fall back to a role.
        raise BackupError(
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY go together: set both, or neither to"
            " use the instance's or the service account's role"
        )
    elif environ.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        # A Kubernetes service account's role (IRSA): pgBackRest reads AWS_ROLE_ARN and the
        # token file itself.
        env["PGBACKREST_REPO1_S3_KEY_TYPE"] = "web-id"
    else:
        # No key given: the instance's or task's role, from the metadata service.
        env["PGBACKREST_REPO1_S3_KEY_TYPE"] = "auto"
    if endpoint.port:
        env["PGBACKREST_REPO1_STORAGE_PORT"] = str(endpoint.port)
    if environ.get("AWS_ENDPOINT_URL"):
        # MinIO, R2 and other S3-compatible servers address buckets by path, not by host name.
        env["PGBACKREST_REPO1_S3_URI_STYLE"] = "path"
    if ca := environ.get("AWS_CA_BUNDLE"):
        env["PGBACKREST_REPO1_STORAGE_CA_FILE"] = ca
    return env


def run(env: Mapping[str, str], *argv: str) -> str:
    """Run `pgbackrest ARGV` with `env`; its stdout, or BackupError with its own message."""
    if shutil.which("pgbackrest", path=env.get("PATH")) is None:
        raise BackupError("pgbackrest is not installed in this image")
    # PostgreSQL runs archive-push (the archive_command) and stops it by signalling its
    # archiver's process group, which it must stay in. Every other command, run by the engine
    # (which takes SIGINT, SIGTERM and SIGHUP as a stop: cli.py), gets a group of its own, so a
    # stop ends its workers with it.
    grouped = argv[:1] != ("archive-push",)
    with subprocess.Popen(
        ["pgbackrest", *argv],
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",  # a wrong passphrase makes it echo decrypted garbage
        start_new_session=grouped,
    ) as done:
        try:
            stdout, stderr = done.communicate()
        except BaseException:
            # Stopped: pgBackRest and its worker processes are ended and waited for.
            # subprocess.run would kill pgBackRest alone and not wait, leaving its workers
            # writing into a restore's folder while it is removed.
            if grouped:
                _end(done)
            else:
                done.kill()
                done.wait()
            raise
    if done.returncode:
        lines = (stderr or stdout).strip().splitlines()
        # pgBackRest's ERROR line says what went wrong; its HINT lines say what to do.
        said = [
            line.split(mark, 1)[1].strip() if mark == "ERROR:" else line.strip()
            for line in lines
            for mark in ("ERROR:", "HINT:")
            if mark in line
        ]
        raise BackupError(f"pgbackrest {argv[0]} failed: {'; '.join(said or lines[-2:])}")
    return stdout


def _end(process: subprocess.Popen[str]) -> None:
    """Stop pgBackRest's process group and wait until all of it is gone: SIGTERM, on which
    pgBackRest and each of its workers exit (pgBackRest does not wait for its workers), then
    SIGKILL for whatever is left after GRACE seconds, which also takes a moment to land."""
    group = process.pid
    # A second Ctrl-C (or stop) meanwhile waits until the group is gone, then goes on.
    stops = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    try:
        for signum in (signal.SIGTERM, signal.SIGKILL):
            if not _alive(process, group):
                break  # gone: its number may be another group's by now
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signum)
            deadline = time.monotonic() + GRACE
            while _alive(process, group) and time.monotonic() < deadline:
                time.sleep(0.05)
        process.wait()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _alive(process: subprocess.Popen[str], group: int) -> bool:
    """Whether a process of `group` is still there. Its leader, our child, is reaped first,
    and so is any worker orphaned to us (as a container's PID 1, the engine adopts them)."""
    process.poll()
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-group, os.WNOHANG)[0]:
            pass
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def main() -> int:
    """`shipyard-pgbackrest-push WAL --target URL`: the server's archive_command. pgBackRest's own
    message on failure (PostgreSQL logs it and keeps the segment to try again)."""
    args = sys.argv[1:]
    if len(args) != 3 or args[1] != "--target":
        print("usage: shipyard-pgbackrest-push WAL --target URL", file=sys.stderr)
        return 2
    wal, _flag, target = args
    try:
        run(environment(target), "archive-push", wal)
    except BackupError as exc:
        print(f"shipyard-pgbackrest-push: {exc}", file=sys.stderr)
        return 1
    return 0
