"""A real OpenSSH server in front of the test dockerd: DOCKER_HOST=ssh://… as deploy.yml uses it.

Debian's sshd on a free loopback port, logging in this user by keys made for the session.
On the far side, `docker system dial-stdio` (what the CLI, Compose and the SDK run there)
reaches the test dockerd because sshd sets DOCKER_HOST in its sessions, as a real host's
docker reaches its own socket. The near side is set up as deploy.yml sets up a runner: a
private key, the server's host key in ~/.ssh/known_hosts (checked strictly) and ~/.ssh/config
naming the key, in a home of the session's own. The kit's SDK calls (paramiko) read it through
$HOME. The `ssh` binary (the CLI's and Compose's) reads ~/.ssh from the password database, not
$HOME, so an `ssh` wrapper first on PATH gives it a config of its own with -F, naming another
key: sshd's log then tells which of the two reached the host. The machine's ~/.ssh is untouched.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import stop
from tests.servers.docker import Dockerd
from tests.servers.registry import free_port

SSHD = "/usr/sbin/sshd"


@dataclass(frozen=True)
class SshDocker:
    """The test dockerd as an ssh:// host; `env` points a kit's tasks at it through ssh."""

    host: str
    home: Path  # the client's home: .ssh/ and bin/ssh
    log: Path
    fingerprints: dict[str, str]  # "sdk" (paramiko's key), "cli" (the ssh binary's) -> SHA256:…

    def env(self, base: dict[str, str]) -> dict[str, str]:
        return {
            **base,
            "DOCKER_HOST": self.host,
            "PATH": f"{self.home / 'bin'}{os.pathsep}{base['PATH']}",
            "HOME": str(self.home),
            # The docker CLI's own settings (plugins, credentials) stay where they were.
            "DOCKER_CONFIG": base.get("DOCKER_CONFIG", str(Path.home() / ".docker")),
        }

    def logins(self, client: str) -> int:
        """How many ssh connections the server has let in so far with `client`'s key."""
        return self.log.read_text().count(f" {self.fingerprints[client]}\n")


@pytest.fixture(scope="session")
def ssh_docker(dockerd: Dockerd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshDocker]:
    """sshd on 127.0.0.1 in front of `dockerd`, stopped at the end of the session."""
    if not Path(SSHD).exists() or shutil.which("ssh") is None:
        pytest.fail(f"{SSHD} or ssh missing: run `. .ci/setup.sh` (apt install openssh-server)")
    if os.geteuid() != 0:
        pytest.fail("sshd needs root here (its privilege separation), as dockerd does")
    # sshd refuses to start without its privilege separation directory, which Debian's
    # service unit makes at boot; there is no service here.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    home = tmp_path_factory.mktemp("sshd")
    fingerprints = {}
    for key in ("host", "sdk", "cli"):
        path = home / f"{key}_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path], check=True)
        listed = subprocess.run(
            ["ssh-keygen", "-l", "-f", f"{path}.pub"], check=True, capture_output=True, text=True
        )
        fingerprints[key] = listed.stdout.split()[1]
    (home / "authorized_keys").write_text(
        (home / "sdk_key.pub").read_text() + (home / "cli_key.pub").read_text()
    )
    port = free_port()
    (home / "sshd_config").write_text(
        f"Port {port}\n"
        "ListenAddress 127.0.0.1\n"
        f"HostKey {home / 'host_key'}\n"
        f"AuthorizedKeysFile {home / 'authorized_keys'}\n"
        "AuthenticationMethods publickey\n"
        "PermitRootLogin prohibit-password\n"
        "UsePAM no\n"
        # The session's files live under pytest's tmp folder, which is not root's alone.
        "StrictModes no\n"
        f"PidFile {home / 'sshd.pid'}\n"
        f"SetEnv DOCKER_HOST={dockerd.host}\n"
    )
    dot_ssh = home / ".ssh"
    dot_ssh.mkdir(mode=0o700)
    host_key = (home / "host_key.pub").read_text().split()
    (dot_ssh / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    for config, key in ((dot_ssh / "config", "sdk"), (home / "cli_config", "cli")):
        config.write_text(
            "Host *\n"
            f"  IdentityFile {home / f'{key}_key'}\n"
            "  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {dot_ssh / 'known_hosts'}\n"
            "  StrictHostKeyChecking yes\n"
            "  BatchMode yes\n"
        )
    bin_dir = home / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "ssh"
    ssh = shlex.quote(str(shutil.which("ssh")))
    wrapper.write_text(f'#!/bin/sh\nexec {ssh} -F {shlex.quote(str(home / "cli_config"))} "$@"\n')
    wrapper.chmod(0o755)
    log = home / "sshd.log"
    proc = subprocess.Popen(
        [SSHD, "-D", "-f", str(home / "sshd_config"), "-E", str(log)],
        start_new_session=True,
    )
    try:
        _wait_for(port, proc, log)
        user = pwd.getpwuid(os.getuid()).pw_name
        yield SshDocker(f"ssh://{user}@127.0.0.1:{port}", home, log, fingerprints)
    finally:
        stop(proc, timeout=10)


def _wait_for(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    text = log.read_text() if log.exists() else ""
    pytest.fail(f"sshd did not start on 127.0.0.1:{port}:\n{text}")
