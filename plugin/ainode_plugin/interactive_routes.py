"""Orthanc's own forwarding of JSON requests to the worker's interactive segmentation service.

The node's front door (nginx, :mod:`ainode.node.door`) sends ``/ai/interactive/`` and
``/ai/monailabel/`` straight to the service: Orthanc 1.10 drops a POST's query string and
answers multipart POSTs itself, so MONAI Label's ``infer`` and ``?format=`` options only work
through the door, and ``/ai/monailabel/`` is the door's alone. For clients of Orthanc's
loopback port, these handlers forward JSON requests

* ``/ai/interactive/segment`` -> ``/segment``
* ``/ai/interactive/sessions/{id}/reset`` and ``.../accept`` -> ``/sessions/{id}/...``
* ``/ai/interactive/sessions`` and ``/ai/interactive/health`` -> ``/sessions``, ``/health``
* ``/ai/interactive/series/{series}/prefetch`` and ``/ai/interactive/series`` -> ``/series/...``
  (a viewer prefetches the series it opens)

to the service, keeping status codes, content types, bodies and the service's own headers
(``X-Session``, ``X-Timings``, ``Content-Disposition``). The service being down answers 503,
a timeout 504, a broken answer 502, each with a JSON message. Handlers are plain functions of
:class:`~ainode_plugin.http.Request`; the HTTP transport is a parameter (``send``), so this
module imports nothing of Orthanc and nothing heavy.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ainode_plugin.http import Request, Response, Router

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 120.0
# Request headers worth passing on; hop-by-hop headers stay behind. The login Orthanc checked
# is the node's one login, which the service checks again.
_FORWARDED_REQUEST_HEADERS = ("content-type", "accept", "authorization")
_FORWARDED_RESPONSE_HEADERS = ("content-disposition", "x-session", "x-timings")

# (pattern registered with Orthanc, methods, function from the match groups to the service path)
ROUTES: tuple[tuple[str, tuple[str, ...], Callable[[tuple[str, ...]], str]], ...] = (
    (r"/ai/interactive/segment", ("POST",), lambda g: "/segment"),
    (
        r"/ai/interactive/sessions/([0-9A-Za-z_-]+)/(reset|accept)",
        ("POST",),
        lambda g: f"/sessions/{g[0]}/{g[1]}",
    ),
    (r"/ai/interactive/sessions/([0-9A-Za-z_-]+)", ("DELETE",), lambda g: f"/sessions/{g[0]}"),
    (r"/ai/interactive/sessions", ("GET",), lambda g: "/sessions"),
    (r"/ai/interactive/health", ("GET",), lambda g: "/health"),
    (
        r"/ai/interactive/series/([0-9A-Za-z][0-9A-Za-z._-]*)/prefetch",
        ("POST",),
        lambda g: f"/series/{g[0]}/prefetch",
    ),
    (r"/ai/interactive/series", ("GET",), lambda g: "/series"),
)


@dataclass(frozen=True)
class Upstream:
    """One request to the interactive service."""

    method: str
    url: str
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = DEFAULT_TIMEOUT_S


@dataclass(frozen=True)
class UpstreamAnswer:
    status: int
    body: bytes
    headers: Mapping[str, str]  # lower-case names


class ServiceDown(Exception):
    """The service could not be reached (refused, unresolvable) or did not answer in time."""

    def __init__(self, message: str, *, timed_out: bool) -> None:
        super().__init__(message)
        self.timed_out = timed_out


Send = Callable[[Upstream], UpstreamAnswer]


def send_urllib(request: Upstream) -> UpstreamAnswer:
    """The default transport: the standard library, so the plugin needs no HTTP package."""
    if not request.url.startswith(("http://", "https://")):
        raise ServiceDown(f"{request.url} is not an http(s) URL", timed_out=False)
    prepared = urllib.request.Request(  # noqa: S310 (scheme checked above)
        request.url,
        data=request.body if request.method in ("POST", "PUT") else None,
        headers=dict(request.headers),
        method=request.method,
    )
    try:
        with urllib.request.urlopen(prepared, timeout=request.timeout_s) as answer:  # noqa: S310
            return UpstreamAnswer(answer.status, answer.read(), _lower(answer.headers.items()))
    except urllib.error.HTTPError as error:  # a 4xx/5xx answer: pass it on as it is
        return UpstreamAnswer(error.code, error.read(), _lower(error.headers.items()))
    except TimeoutError as error:
        raise ServiceDown(f"no answer within {request.timeout_s:g} s", timed_out=True) from error
    except urllib.error.URLError as error:
        if isinstance(error.reason, TimeoutError):
            raise ServiceDown(
                f"no answer within {request.timeout_s:g} s", timed_out=True
            ) from error
        raise ServiceDown(str(error.reason), timed_out=False) from error
    except ConnectionError as error:
        raise ServiceDown(str(error), timed_out=False) from error


def forward(
    request: Request,
    service_path: str,
    *,
    base_url: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    send: Send = send_urllib,
) -> Response:
    """Send ``request`` to ``base_url + service_path`` and turn the answer into a Response."""
    url = base_url.rstrip("/") + service_path
    if request.query:
        url += "?" + urllib.parse.urlencode(request.query)
    headers = {k: v for k, v in request.headers.items() if k.lower() in _FORWARDED_REQUEST_HEADERS}
    upstream = Upstream(request.method, url, request.body, headers, timeout_s)
    try:
        answer = send(upstream)
    except ServiceDown as error:
        if error.timed_out:
            log.warning("interactive service timed out on %s %s", request.method, service_path)
            return _error(
                504, f"the interactive segmentation service at {base_url} did not answer: {error}"
            )
        log.warning("interactive service unreachable at %s: %s", base_url, error)
        return _error(
            503,
            f"the interactive segmentation service at {base_url} is not running or not "
            f"reachable ({error}); start the worker's interactive service",
        )
    if not 100 <= answer.status < 600:
        return _error(502, f"the interactive service answered an invalid status {answer.status}")
    return Response(
        status=answer.status,
        body=answer.body,
        content_type=answer.headers.get("content-type", "application/octet-stream"),
        headers={
            name: value
            for name, value in answer.headers.items()
            if name in _FORWARDED_RESPONSE_HEADERS
        },
    )


def add_interactive_routes(
    router: Router,
    base_url: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    send: Send = send_urllib,
) -> None:
    """Register every forwarding route on the plugin's router (``settings.interactive_url``)."""
    for pattern, methods, target in ROUTES:
        handler = _handler(target, base_url, timeout_s, send)
        for method in methods:
            router.add(pattern, method, handler)


def _handler(
    target: Callable[[tuple[str, ...]], str], base_url: str, timeout_s: float, send: Send
) -> Callable[[Request], Response]:
    def handle(request: Request) -> Response:
        return forward(
            request, target(request.groups), base_url=base_url, timeout_s=timeout_s, send=send
        )

    return handle


def _error(status: int, message: str) -> Response:
    return Response(status, json.dumps({"error": message}).encode(), "application/json")


def _lower(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {k.lower(): v for k, v in items}
