"""A real Prometheus Pushgateway for the tests: Debian's `prometheus-pushgateway` on a free
loopback port, one per test session (per xdist worker), in memory only (no persistence file).

Tests read back what was pushed from its /metrics page, the page Prometheus scrapes; each uses
its own `service` label, so their groups never meet.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import start, stop

BINARY = "prometheus-pushgateway"


@dataclass(frozen=True)
class Pushgateway:
    url: str

    def values(self, **labels: str) -> dict[str, float]:
        """Every sample of the groups whose labels include `labels`: metric name -> value.
        An empty value selects the groups without that label, as in a Prometheus selector."""
        page = requests.get(f"{self.url}/metrics", timeout=10)
        page.raise_for_status()
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(page.text):
            for sample in family.samples:
                if all(sample.labels.get(k, "") == v for k, v in labels.items()):
                    found[sample.name] = sample.value
        return found


@pytest.fixture(scope="session")
def pushgateway() -> Iterator[Pushgateway]:
    """A running Pushgateway on 127.0.0.1, stopped at the end of the session."""
    binary = shutil.which(BINARY)
    if binary is None:
        pytest.fail(f"{BINARY} missing: run `. .ci/setup.sh` (apt install prometheus-pushgateway)")
    proc, url = start(
        lambda port: [binary, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="],
        "/-/ready",
        BINARY,
    )
    try:
        yield Pushgateway(url)
    finally:
        stop(proc, timeout=10)
