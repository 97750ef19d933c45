"""`pipeline run --metrics-port`: /metrics, /healthz and /readyz on a small HTTP server.

A thread of its own serves Prometheus's text format and the probes, so a scrape never
waits for the worker's loop; `/healthz` answers from the loop's heartbeat and from the
outputs' progress (owed with no delivery for `--delivery-stall-s`), never merely because
Kafka is slow. (`pipeline serve`, and `pipeline run` with an HTTP door, serve the
same paths on the door's port.)
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pipeline.metrics.health import Readiness
from pipeline.metrics.prometheus import PrometheusSensor

__all__ = ["MetricsServer"]

log = logging.getLogger("pipeline.metrics")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsServer:
    """Serves `sensor`'s metrics and `readiness`'s probes on ``host:port``.

    Raises:
        OSError: the port cannot be bound (the message names it).
    """

    def __init__(
        self, host: str, port: int, sensor: PrometheusSensor, readiness: Readiness
    ) -> None:
        handler = _handler(sensor, readiness)
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise OSError(
                f"the metrics endpoint cannot listen on {host}:{port}: {exc.strerror}"
            ) from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        log.info("metrics and probes on http://%s:%d/metrics", *self._server.server_address[:2])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(sensor: PrometheusSensor, readiness: Readiness) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, sensor.exposition(), CONTENT_TYPE)
            elif self.path in ("/healthz", "/readyz"):
                ok, reason = readiness.live() if self.path == "/healthz" else readiness.ready()
                body = json.dumps({"status": "ok" if ok else "unavailable", "reason": reason})
                self._send(200 if ok else 503, body.encode(), "application/json")
            else:
                self._send(404, b'{"error": "no such path"}', "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes every few seconds would bury the worker's own log

    return Handler
