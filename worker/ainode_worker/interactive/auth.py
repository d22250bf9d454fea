"""HTTP Basic authentication for the interactive service, checked on every route.

The door (nginx) checks the node's login too; the service checks it itself so that a process on
the same machine cannot reach ``/segment`` or ``/accept`` (which stores into Orthanc) around it.

MONAI Label clients (3D Slicer's module, ``MONAILabelClient.auth_token``) log in through MONAI
Label's token routes: ``GET /monailabel/auth/`` says whether a login is needed, and
``POST /monailabel/auth/token`` (form ``username``, ``password``) answers a token the client
then sends as ``Authorization: <token_type> <access_token>``. Here the token is the Basic
credential itself (``token_type`` ``Basic``), so every later request is checked like any other.
These two routes are the only ones open without a login; the token route checks the password.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Annotated, Any

from fastapi import APIRouter, Form
from fastapi.responses import JSONResponse

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


# MONAI Label's login routes (under the service's /monailabel prefix), open without a login.
TOKEN_PATHS = frozenset({"/monailabel/auth", "/monailabel/auth/", "/monailabel/auth/token"})


def basic_token(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def monailabel_auth_router(users: Mapping[str, str]) -> APIRouter:
    """MONAI Label's ``/auth/`` and ``/auth/token``, answering Basic credentials as the token."""
    router = APIRouter(tags=["MONAI Label"])

    @router.get("/auth")
    @router.get("/auth/")
    def auth_status() -> dict[str, bool]:
        return {"enabled": bool(users)}

    @router.post("/auth/token", response_model=None)
    def token(
        username: Annotated[str, Form()], password: Annotated[str, Form()]
    ) -> dict[str, str] | JSONResponse:
        header = f"Basic {basic_token(username, password)}".encode()
        if users and not credentials_match(header, users):
            return JSONResponse(
                {"error": "wrong user name or password", "type": "AuthError"}, status_code=401
            )
        return {"access_token": basic_token(username, password), "token_type": "Basic"}

    return router


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
        if scope.get("path") in TOKEN_PATHS or credentials_match(header, self.users):
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
