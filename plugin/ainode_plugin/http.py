"""A small typed layer over Orthanc's REST callbacks: routes, requests, JSON answers, errors.

Handlers receive a :class:`Request` and return a :class:`Response`; an :class:`HttpError` they
raise becomes a JSON error body with its status. Anything else that escapes a handler is logged
and answered as a 500 with no detail, so one bad request never takes a route (or Orthanc) down.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    groups: tuple[str, ...] = ()
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
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
            query=dict(raw.get("get", {})),
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
    else:
        output.SetHttpHeader("Content-Type", response.content_type)
        text = response.body.decode("utf-8", errors="replace")  # the SDK takes text only here
        output.SendHttpStatus(response.status, text, len(text.encode()))
