"""An answer Orthanc cut short (it stopped, the connection broke) is an unreachable Orthanc, never
a short file or fewer voxels: the worker's client reads bodies in one piece and checks their
length against the Content-Length."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from ainode_worker.orthanc import OrthancClient, OrthancUnavailable


@pytest.fixture
def cut_short() -> Iterator[str]:
    """An HTTP peer that promises 1 MB and closes after 10 bytes."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            with connection:
                connection.recv(65536)
                connection.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                    b"Content-Length: 1048576\r\n\r\n0123456789"
                )

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{port}"
    server.close()


def test_a_body_cut_short_is_orthanc_unavailable(cut_short: str) -> None:
    client = OrthancClient(cut_short)
    with pytest.raises(OrthancUnavailable, match="unreachable"):
        client.instance_dataset("0" * 8)
    with pytest.raises(OrthancUnavailable, match="unreachable"):
        client.series_stored_values("0" * 8)
