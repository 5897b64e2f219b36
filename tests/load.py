"""A bounded request loop on loopback, counting what a release costs the users of a service.

`Load(url)` in a `with` block sends ~20 requests a second from a thread (one keep-alive
session, like a browser or a client's pool) until the block ends or `limit` seconds pass,
whichever comes first, and reports how many were sent, how many failed (no answer, or not
2xx) and the longest time between two successful answers. Like a browser, it sends a request
again once when the keep-alive connection it went out on was closed under it before any answer
(a proxy reload closes its idle connections; the race is the client's, not a dropped request).
With `tls=Tls(name, ca_file)` it speaks HTTPS to the URL's address as if it were `name`
(SNI, Host and the certificate check), for a host whose DNS would point here.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import requests
from requests.adapters import HTTPAdapter


@dataclass(frozen=True)
class LoadReport:
    requests: int
    failed: int
    longest_gap: float
    errors: tuple[str, ...]  # the first few failures, for the assertion message

    def __str__(self) -> str:
        return (
            f"{self.requests} requests, {self.failed} failed, longest gap {self.longest_gap:.2f} s"
        )


@dataclass(frozen=True)
class Tls:
    server_name: str  # the name the client asks for and checks the certificate against
    ca_file: Path  # the only root it trusts


class _NamedHost(HTTPAdapter):
    """Connects to the URL's address, sends `name` as SNI and checks the certificate for it."""

    def __init__(self, name: str) -> None:
        self.name = name  # before super().__init__, which builds the pool manager
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs.update(server_hostname=self.name, assert_hostname=self.name)
        super().init_poolmanager(*args, **kwargs)


class Load:
    """~`rate` GETs a second to `url` for at most `limit` seconds, in a background thread."""

    def __init__(
        self, url: str, rate: float = 20.0, limit: float = 900.0, tls: Tls | None = None
    ) -> None:
        self.url, self.interval, self.limit, self.tls = url, 1 / rate, limit, tls
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._sent = self._failed = 0
        self._gap = 0.0
        self._errors: list[str] = []
        self.retried = 0  # requests retried after their keep-alive connection was closed

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    @property
    def report(self) -> LoadReport:
        return LoadReport(self._sent, self._failed, self._gap, tuple(self._errors[:5]))

    def _loop(self) -> None:
        start = last_ok = time.monotonic()
        with requests.Session() as session:
            if self.tls is not None:
                session.mount("https://", _NamedHost(self.tls.server_name))
                session.verify = str(self.tls.ca_file)
                # Else REQUESTS_CA_BUNDLE, if set, would replace that root.
                session.trust_env = False
                session.headers["Host"] = self.tls.server_name
            while not self._stop.is_set() and time.monotonic() - start < self.limit:
                began = time.monotonic()
                self._sent += 1
                try:
                    status = self._get(session)
                    error = "" if 200 <= status < 300 else f"HTTP {status}"
                except requests.RequestException as exc:
                    error = type(exc).__name__
                now = time.monotonic()
                if error:
                    self._failed += 1
                    self._errors.append(f"{now - start:.1f}s {error}")
                else:
                    self._gap = max(self._gap, now - last_ok)
                    last_ok = now
                self._stop.wait(max(0.0, self.interval - (now - began)))

    def _get(self, session: requests.Session) -> int:
        """One GET's status. A keep-alive connection the server closed just as the request
        left it (a proxy reload closes its idle ones) is retried once on a new connection, as
        browsers and HTTP client pools do; a refused connection, a timeout or a second failure
        counts."""
        try:
            return session.get(self.url, timeout=10).status_code
        except requests.ConnectionError as exc:
            if not _closed_under_us(exc):
                raise
            self.retried += 1
            return session.get(self.url, timeout=10).status_code


def _closed_under_us(exc: BaseException) -> bool:
    """The connection was closed or reset by the other end before any answer came (requests
    wraps urllib3's error, which carries http.client's RemoteDisconnected, a reset)."""
    pending: list[BaseException] = [exc]
    while pending:
        seen = pending.pop()
        if isinstance(seen, (ConnectionResetError, BrokenPipeError)):
            return True
        pending += [a for a in (*seen.args, seen.__cause__) if isinstance(a, BaseException)]
    return False
