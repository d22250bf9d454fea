"""HTTP Basic authentication for the interactive service, checked on every route.

The door (nginx) checks the node's login too; the service checks it itself so that a process on
the same machine cannot reach ``/segment`` or ``/accept`` (which stores into Orthanc) around it.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def credentials_match(header: bytes, users: Mapping[str, str]) -> bool:
    """Whether an ``Authorization`` header value carries one of ``users``' logins."""
    scheme, _, encoded = header.partition(b" ")
    if scheme.lower() != b"basic":
        return False
    try:
        user, sep, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
    except (binascii.Error, ValueError):
        return False
    expected = users.get(user.decode("utf-8", "replace"))
    return (
        bool(sep) and expected is not None and secrets.compare_digest(password, expected.encode())
    )


class BasicAuth:
    """ASGI middleware: 401 with a ``WWW-Authenticate`` challenge unless the login matches."""

    def __init__(
        self,
        app: Callable[[Message, Receive, Send], Awaitable[None]],
        *,
        users: Mapping[str, str],
        realm: str,
    ) -> None:
        self.app = app
        self.users = dict(users)
        self.realm = realm

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        if credentials_match(header, self.users):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": "authentication required", "type": "AuthError"}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            (b"www-authenticate", f'Basic realm="{self.realm}"'.encode()),
        ]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})
