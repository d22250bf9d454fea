"""A real HTTP receiver of webhook calls for tests: stdlib ``http.server`` on a free port.

It records every POST (headers, body, the status it answered) and can refuse the first calls
(503), so tests see real retries over real sockets rather than a stand-in for the sender.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Call:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    status: int  # what the receiver answered
    received_at: float  # Unix time

    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver:
    """Answers 503 to the first ``fail_first`` calls, then 200."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver._lock:
                    status = 503 if len(receiver.calls) < receiver.fail_first else 200
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    receiver.calls.append(Call(self.path, headers, body, status, time.time()))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/ainode"

    def delivered(self) -> list[Call]:
        """The calls answered 200."""
        with self._lock:
            return [call for call in self.calls if call.status == 200]

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
