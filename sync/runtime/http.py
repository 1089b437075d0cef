"""One HTTP port for operators: ``/metrics``, ``/healthz`` (process alive), ``/readyz``
(local database reachable, policy loaded; says leader or standby) and ``/status`` (JSON).

It listens on localhost unless the operator opens it. With a token configured,
``/metrics`` and ``/status`` require ``Authorization: Bearer <token>`` (Prometheus sends it
with ``authorization: {credentials_file: …}``); ``/healthz`` and ``/readyz`` stay open for
orchestrators and say nothing a token would protect."""

from __future__ import annotations

import hmac
import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


class StatusServer:
    """Lifecycle: ``start()`` binds and serves in a named thread; ``stop()`` shuts down."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry,
                 ready: Callable[[], tuple[bool, str]],
                 status: Callable[[], dict[str, Any]] | None = None,
                 token: str | None = None) -> None:
        self.token = token
        self.host = host
        self.status = status
        self.port = port
        self.registry = registry
        self.ready = ready
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path in ("/metrics", "/status") and not self._authorised():
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Bearer realm="regionsync"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if path == "/metrics":
                    self._send(200, generate_latest(outer.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send(200, b"ok\n")
                elif path == "/readyz":
                    ok, why = outer.ready()
                    self._send(200 if ok else 503, (why + "\n").encode())
                elif path == "/status" and outer.status is not None:
                    body = json.dumps(outer.status(), indent=2, default=str) + "\n"
                    self._send(200, body.encode(), "application/json")
                else:
                    self._send(404, b"not found\n")

            def _authorised(self) -> bool:
                if not outer.token:
                    return True
                given = self.headers.get("Authorization", "")
                return hmac.compare_digest(given.encode(), f"Bearer {outer.token}".encode())

            def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: object) -> None:
                log.debug("http: " + fmt, *args)

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="regionsync-http", daemon=True)
        self._thread.start()
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
