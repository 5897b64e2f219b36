"""A real HTTP receiver for webhooks (chat notifications, Alertmanager) on a loopback port: it
keeps the JSON of every POST in arrival order and answers each with the status it is told."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Webhook:
    """The receiver's URL (with a path, as a chat service's secret URL has), what it received,
    and the status it answers (change `status` to make deliveries fail)."""

    url: str = ""
    received: list[Any] = field(default_factory=list)
    status: int = 200


@contextmanager
def webhook(path: str = "/hook") -> Iterator[Webhook]:
    """A Webhook listening until the block ends."""
    hook = Webhook()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path == path:
                hook.received.append(json.loads(body))
            self.send_response(hook.status if self.path == path else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the tests read what was received, not the server's log."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook.url = f"http://127.0.0.1:{server.server_address[1]}{path}"
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()
