"""A real Prometheus Pushgateway for the tests: Debian's `prometheus-pushgateway` on a free
loopback port, one per test session (per xdist worker), in memory only (no persistence file).

Tests read back what was pushed from its /metrics page, the page Prometheus scrapes; each uses
its own `service` label, so their groups never meet.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import stop
from tests.servers.postgres import free_port

BINARY = "prometheus-pushgateway"


@dataclass(frozen=True)
class Pushgateway:
    url: str

    def values(self, **labels: str) -> dict[str, float]:
        """Every sample of the groups whose labels include `labels`: metric name -> value."""
        page = requests.get(f"{self.url}/metrics", timeout=10)
        page.raise_for_status()
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(page.text):
            for sample in family.samples:
                if all(sample.labels.get(k) == v for k, v in labels.items()):
                    found[sample.name] = sample.value
        return found


@pytest.fixture(scope="session")
def pushgateway() -> Iterator[Pushgateway]:
    """A running Pushgateway on 127.0.0.1, stopped at the end of the session."""
    binary = shutil.which(BINARY)
    if binary is None:
        pytest.fail(f"{BINARY} missing: run `. .ci/setup.sh` (apt install prometheus-pushgateway)")
    for _attempt in range(5):
        port = free_port()
        proc = subprocess.Popen(
            [binary, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/-/ready", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        if proc.poll() is None and time.monotonic() < deadline:
            break
        stop(proc, timeout=10)
    else:
        pytest.fail(f"{BINARY} did not start on 127.0.0.1")
    try:
        yield Pushgateway(url)
    finally:
        stop(proc, timeout=10)
