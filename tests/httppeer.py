"""A scripted HTTP peer for client-side retry tests: it answers each request with the next
status of its script (the last one repeats), or closes the connection unanswered (status 0),
as Orthanc does to a keep-alive connection that reaches its idle timeout."""

from __future__ import annotations

import socket
import threading


class ScriptedPeer:
    """Serves on a free port of 127.0.0.1; ``requests`` holds each request line received."""

    def __init__(self, script: list[int], body: bytes = b"ok") -> None:
        self.script = script
        self.body = body
        self.requests: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with conn:
                head, body = _read_head(conn)
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                while len(body) < length and (chunk := conn.recv(65536)):
                    body += chunk
                self.requests.append(head.split(b"\r\n", 1)[0])
                status = self.script[min(len(self.requests), len(self.script)) - 1]
                if status == 0:
                    continue  # closed without a byte of answer
                answer = self.body if status < 300 else b"not now"
                conn.sendall(
                    f"HTTP/1.1 {status} X\r\nContent-Length: {len(answer)}\r\n"
                    "Connection: close\r\n\r\n".encode()
                    + answer
                )

    def close(self) -> None:
        self._listener.close()


def _read_head(conn: socket.socket) -> tuple[bytes, bytes]:
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = conn.recv(65536)
        if not chunk:
            break
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return head, body
