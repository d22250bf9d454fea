"""orthanc_session: a request whose connection the server drops unanswered is sent again."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
import requests

from ainode.http import orthanc_session


class DroppingServer:
    """Answers HTTP requests on one port, but closes the first ``drop`` connections unanswered,
    as Orthanc does to a keep-alive connection that reaches its idle timeout."""

    def __init__(self, drop: int) -> None:
        self.drop = drop
        self.requests: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    head += chunk
                self.requests.append(head.split(b"\r\n", 1)[0])
                if len(self.requests) <= self.drop:
                    continue  # closed without a byte of answer
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[DroppingServer]:
    srv = DroppingServer(drop=request.param)
    yield srv
    srv.close()


@pytest.mark.parametrize("server", [1], indirect=True)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_dropped_request_is_sent_again(server: DroppingServer, method: str) -> None:
    answer = orthanc_session().request(method, f"http://127.0.0.1:{server.port}/x", data=b"{}")
    assert (answer.status_code, answer.text) == (200, "ok")
    assert server.requests == [f"{method} /x HTTP/1.1".encode()] * 2


@pytest.mark.parametrize("server", [2], indirect=True)
def test_only_once(server: DroppingServer) -> None:
    """A server that keeps dropping is down: the caller hears of it after the second try."""
    with pytest.raises(requests.ConnectionError):
        orthanc_session().get(f"http://127.0.0.1:{server.port}/x")
    assert len(server.requests) == 2


@pytest.mark.parametrize("server", [1], indirect=True)
def test_a_plain_session_does_not_retry(server: DroppingServer) -> None:
    """The case the helper exists for: without it the first dropped request is an error."""
    with pytest.raises(requests.ConnectionError):
        requests.Session().get(f"http://127.0.0.1:{server.port}/x")
