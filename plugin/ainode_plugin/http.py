"""A small typed layer over Orthanc's REST callbacks: routes, requests, JSON answers, errors.

Handlers receive a :class:`Request` and return a :class:`Response`; an :class:`HttpError` they
raise becomes a JSON error body with its status. Anything else that escapes a handler is logged
and answered as a 500 with no detail, so one bad request never takes a route (or Orthanc) down.
Bodies over :data:`MAX_BODY_BYTES` are refused (413) before any handler sees them, and JSON
nested deeper than :data:`MAX_JSON_DEPTH` is refused (400) before it reaches the parser: parsing
it on Orthanc's small-stacked HTTP threads would crash the whole Orthanc process.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024  # the node's routes take small JSON; this is generous
MAX_JSON_DEPTH = 64
# A JSON string (with escapes) or one bracket: enough to measure nesting without parsing.
_JSON_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    groups: tuple[str, ...] = ()
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        if json_too_deep(self.body, MAX_JSON_DEPTH):
            raise HttpError(400, f"the request body nests JSON deeper than {MAX_JSON_DEPTH} levels")
        try:
            return json.loads(self.body or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise HttpError(400, f"the request body is not valid JSON: {error}") from error


@dataclass(frozen=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, data: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(data, default=str).encode(), "application/json")


class HttpError(Exception):
    """An error answer: the status and a message meant for the caller."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_too_deep(body: bytes, limit: int) -> bool:
    """Whether ``body`` opens more than ``limit`` arrays/objects inside one another."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False  # cannot nest deeper than it has brackets (the usual, cheap case)
    depth = 0
    for token in _JSON_TOKEN.finditer(body):
        bracket = token.group()
        if bracket in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif bracket in (b"]", b"}"):
            depth -= 1
    return False


Handler = Callable[[Request], Response]


@dataclass
class Route:
    pattern: str
    methods: dict[str, Handler] = field(default_factory=dict)


class Router:
    """Collects routes, then registers each URI pattern once with Orthanc."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}

    def add(self, pattern: str, method: str, handler: Handler) -> None:
        route = self.routes.setdefault(pattern, Route(pattern))
        route.methods[method] = handler

    def route(self, pattern: str, *methods: str) -> Callable[[Handler], Handler]:
        def decorate(handler: Handler) -> Handler:
            for method in methods or ("GET",):
                self.add(pattern, method, handler)
            return handler

        return decorate

    def register(self, orthanc: Any) -> None:
        for route in self.routes.values():
            orthanc.RegisterRestCallback(route.pattern, _callback(route))

    def dispatch(self, request: Request) -> Response:
        """Serve a request without Orthanc (used by the callback and by tests)."""
        for route in self.routes.values():
            match = re.fullmatch(route.pattern, request.path)
            if match:
                return _call(route, Request(**{**request.__dict__, "groups": match.groups()}))
        return Response.json({"error": f"no route for {request.path}"}, 404)


def _call(route: Route, request: Request) -> Response:
    handler = route.methods.get(request.method)
    if handler is None:
        return Response.json(
            {"error": f"{request.method} is not allowed here", "allowed": sorted(route.methods)},
            405,
        )
    if len(request.body) > MAX_BODY_BYTES:
        return Response.json(
            {"error": f"the request body is larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB"},
            413,
        )
    try:
        return handler(request)
    except HttpError as error:
        return Response.json({"error": error.message}, error.status)
    except Exception:  # the last line of defence of a route: log it, answer 500, keep serving
        log.exception("unhandled error in %s %s", request.method, route.pattern)
        return Response.json({"error": "internal error; see the node's log"}, 500)


def _callback(route: Route) -> Callable[..., None]:
    def callback(output: Any, uri: str, **raw: Any) -> None:
        request = Request(
            method=raw.get("method", "GET"),
            path=uri,
            groups=tuple(raw.get("groups", ())),
            # Orthanc hands the plugin GET arguments still percent-encoded ("..%2F..").
            query={k: urllib.parse.unquote(v) for k, v in raw.get("get", {}).items()},
            headers={k.lower(): v for k, v in raw.get("headers", {}).items()},
            body=raw.get("body", b"") or b"",
        )
        answer(output, _call(route, request))

    return callback


def answer(output: Any, response: Response) -> None:
    for name, value in response.headers.items():
        output.SetHttpHeader(name, value)
    if response.status == 200:
        output.AnswerBuffer(response.body, response.content_type)
    elif response.status == 405:
        # Orthanc refuses 405 (and 200, 301, 401) in SendHttpStatus and then drops the
        # connection without an answer; each has a call of its own.
        output.SendMethodNotAllowed(_allowed_methods(response))
    else:
        output.SetHttpHeader("Content-Type", response.content_type)
        text = response.body.decode("utf-8", errors="replace")  # the SDK takes text only here
        output.SendHttpStatus(response.status, text, len(text.encode()))


def _allowed_methods(response: Response) -> str:
    """The ``Allow`` list of a 405: the router's ``allowed``, or the upstream's header."""
    allowed = response.headers.get("allow") or response.headers.get("Allow")
    if allowed:
        return allowed
    try:
        methods = json.loads(response.body).get("allowed", [])
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return ""
    return ",".join(str(m) for m in methods)
