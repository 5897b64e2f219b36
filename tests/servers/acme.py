"""A real ACME server on this machine: Debian's pebble, with pebble-challtestsrv as its DNS.

pebble is Let's Encrypt's test CA (the ACME protocol as Boulder speaks it, short-lived
state, no rate limits). Its DNS server answers 127.0.0.1 for every name, so the HTTP-01 and
TLS-ALPN-01 challenges it sends for any host reach ports 80 and 443 here, where a Compose
proxy publishes them. Its own API listens with a certificate from a throwaway CA (trustme),
valid for `host.docker.internal`, the name a container reaches this machine by
(`extra_hosts: host.docker.internal:host-gateway`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import trustme

from tests.servers.registry import free_port

# The name the proxy container reaches pebble by, and that pebble's listener certificate names.
HOST_NAME = "host.docker.internal"


@dataclass(frozen=True)
class Acme:
    directory: str  # the ACME directory URL, as a container on this machine reaches it
    ca_file: Path  # the CA that signed pebble's listener certificate (what the client trusts)
    management: str  # pebble's management API, from this machine

    def issuing_root(self) -> str:
        """The root the certificates pebble issues chain to (a new one each pebble run)."""
        answer = requests.get(f"{self.management}/roots/0", verify=str(self.ca_file), timeout=10)
        answer.raise_for_status()
        return answer.text


@pytest.fixture(scope="session")
def acme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Acme]:
    """pebble issuing certificates valid for its default 5 years."""
    with _pebble(tmp_path_factory.mktemp("acme"), validity=None) as server:
        yield server


# Long enough to be issued and served, short enough that Caddy renews it (a third of its
# lifetime before it expires) within a test: at about 60 s.
SHORT_VALIDITY = 90


@pytest.fixture(scope="session")
def acme_short_lived(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Acme]:
    """pebble issuing certificates valid for SHORT_VALIDITY seconds, for renewal tests."""
    with _pebble(tmp_path_factory.mktemp("acme-short"), validity=SHORT_VALIDITY) as server:
        yield server


@contextlib.contextmanager
def _pebble(work: Path, validity: int | None) -> Iterator[Acme]:
    """pebble and its DNS server, running in `work` until the block ends; certificates valid
    for `validity` seconds (pebble's default if None)."""
    missing = [tool for tool in ("pebble", "pebble-challtestsrv") if not shutil.which(tool)]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: run `. .ci/setup.sh` (apt install pebble)")
    ca = trustme.CA()
    listener = ca.issue_cert(HOST_NAME, "127.0.0.1")
    ca_file, cert_file, key_file = work / "ca.pem", work / "cert.pem", work / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    listener.cert_chain_pems[0].write_to_path(str(cert_file))
    listener.private_key_pem.write_to_path(str(key_file))
    api, management, dns = free_port(), free_port(), free_port()
    config = work / "pebble.json"
    config.write_text(
        json.dumps(
            {
                "pebble": {
                    "listenAddress": f"0.0.0.0:{api}",
                    "managementListenAddress": f"127.0.0.1:{management}",
                    "certificate": str(cert_file),
                    "privateKey": str(key_file),
                    # Where the challenges go: the proxy's published ports.
                    "httpPort": 80,
                    "tlsPort": 443,
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": False,
                    **({"certificateValidityPeriod": validity} if validity else {}),
                }
            }
        )
    )
    log = (work / "acme.log").open("wb")
    servers = [
        subprocess.Popen(
            # Only its DNS: the challenges themselves are answered by the proxy under test.
            [
                "pebble-challtestsrv",
                *("-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""),
                *("-dns01", f"127.0.0.1:{dns}", "-management", f"127.0.0.1:{free_port()}"),
                *("-http01", "", "-https01", "", "-tlsalpn01", ""),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        ),
        subprocess.Popen(
            ["pebble", "-config", str(config), "-dnsserver", f"127.0.0.1:{dns}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            # Validate at once, not after pebble's random 0-15 s (it mimics Boulder's queue).
            env={**os.environ, "PEBBLE_VA_NOSLEEP": "1"},
        ),
    ]
    try:
        _wait(f"https://127.0.0.1:{api}/dir", ca_file, servers, work / "acme.log")
        yield Acme(f"https://{HOST_NAME}:{api}/dir", ca_file, f"https://127.0.0.1:{management}")
    finally:
        for server in servers:
            server.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(timeout=10)
        log.close()


def _wait(url: str, ca_file: Path, servers: list[subprocess.Popen[bytes]], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(server.poll() is not None for server in servers):
            pytest.fail(f"pebble stopped:\n{log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, verify=str(ca_file), timeout=2).ok:
                return
        time.sleep(0.3)
    pytest.fail(f"pebble did not answer at {url} within 30 s")
