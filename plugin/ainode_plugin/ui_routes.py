"""What people see of the node in a browser: its pages, the OHIF viewer, Explorer and metrics.

* ``/ai/ui/`` the AI dashboard and ``/ai/ui/interactive.html`` the click-to-segment page:
  static HTML, JS and CSS from ``static/`` (no build step), read once at start-up and served by
  file name only, never by a path taken from the request.
* ``/ohif/...`` the OHIF viewer: Orthanc's ServeFolders plugin serves its files (see
  :mod:`ainode.node.orthanc_config`); here are only its configuration (``app-config.js``,
  written by ``ainode up`` into the data directory) and ``index.html`` for the viewer's
  client-side routes (``/ohif/viewer?StudyInstanceUIDs=...``), which are no files.
* Orthanc Explorer's extension (``static/explorer-extension.js``): the AI jobs of a series, a
  "Run AI" action, links to OHIF, the dashboard and the interactive page.
* ``/ai/series-summaries`` and ``/ai/series/{id}/summary``: series as the lists show them (study
  date, descriptions, modality, number, images; never a patient attribute) and which pipelines
  could run on one (:mod:`ainode_plugin.series_summary`).
* ``/ai/metrics`` for Prometheus (:mod:`ainode_plugin.metrics`) and ``/ai/queues``, the broker's
  queue lengths for the dashboard.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from redis.exceptions import RedisError

from ainode.node.orthanc_config import OHIF_DIR, OHIF_MOUNT, ohif_config_path, ohif_installed
from ainode.queues import every_queue_name
from ainode_plugin.http import Handler, HttpError, Request, Response, Router
from ainode_plugin.job_routes import ORTHANC_ID
from ainode_plugin.metrics import CONTENT_TYPE, NodeMetrics
from ainode_plugin.series_summary import (
    fetch_summaries,
    list_summaries,
    pipeline_fit,
)

if TYPE_CHECKING:
    from ainode_plugin.main import NodePlugin

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
EXPLORER_EXTENSION = "explorer-extension.js"
DASHBOARD = "index.html"
BROKER_TIMEOUT_S = 0.5
MAX_LISTED_SERIES = 500  # the interactive page's picker
MAX_SUMMARY_IDS = 200  # one dashboard page of jobs names at most this many series
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "application/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_NO_CACHE = {"Cache-Control": "no-cache"}
# Forwarded interactive requests whose round trip ``ainode_interactive_request_seconds`` times.
_TIMED_PREFIXES = ("/ai/interactive/", "/ai/monailabel")
_TIMED_NAMES = frozenset({"segment", "accept", "reset", "sessions", "health", "infer", "info"})


class StaticFiles:
    """The UI's files, loaded once: a request names a file, it never builds a path."""

    def __init__(self, folder: Path) -> None:
        self.files: dict[str, tuple[bytes, str]] = {
            path.name: (path.read_bytes(), _CONTENT_TYPES[path.suffix])
            for path in sorted(folder.iterdir())
            if path.is_file() and path.suffix in _CONTENT_TYPES
        }

    def text(self, name: str) -> str:
        return self.files[name][0].decode("utf-8")

    def response(self, name: str) -> Response:
        try:
            body, content_type = self.files[name]
        except KeyError:
            raise HttpError(404, f"no page {name!r} in the node's UI") from None
        return Response(200, body, content_type, dict(_NO_CACHE))


def broker_queue_lengths(
    url: str, queues: Sequence[str], timeout_s: float = BROKER_TIMEOUT_S
) -> Callable[[], dict[str, int] | None]:
    """A function giving the tasks waiting in each Celery queue (Redis ``LLEN``), None if down.

    Celery's Redis transport keeps each queue as a list named after it (the node sends no
    message priorities, so there are no per-priority sub-lists).
    """
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)

    def lengths() -> dict[str, int] | None:
        pipe = client.pipeline(transaction=False)
        for name in queues:
            pipe.llen(name)
        try:
            values = pipe.execute()
        except (RedisError, OSError):
            return None
        return {name: int(value) for name, value in zip(queues, values, strict=True)}

    return lengths


def origin_names(orthanc: Any) -> dict[int, str]:
    """Orthanc's instance-origin codes by lower-case name (``2`` -> ``dicom_protocol``)."""
    enum = getattr(orthanc, "InstanceOrigin", None)
    if enum is None:
        return {}
    return {
        int(value): name.lower()
        for name, value in vars(enum).items()
        if name.isupper() and isinstance(value, int)
    }


@dataclass
class UiRoutes:
    plugin: NodePlugin
    static: StaticFiles
    metrics: NodeMetrics
    queue_lengths: Callable[[], Mapping[str, int] | None]

    def register(self, router: Router) -> None:
        router.add(r"/ai/ui", "GET", self.dashboard)
        router.add(r"/ai/ui/([A-Za-z0-9_-]+\.(?:html|js|css|svg))", "GET", self.static_file)
        router.add(r"/ai/metrics", "GET", self.prometheus)
        router.add(r"/ai/queues", "GET", self.queues)
        router.add(r"/ai/series-summaries", "GET", self.series_summaries)
        router.add(rf"/ai/series/{ORTHANC_ID}/summary", "GET", self.series_summary)
        # Registered before ServeFolders' own /ohif/(.*) route, so these win (orthanc_config).
        router.add(rf"{OHIF_MOUNT}/app-config\.js", "GET", self.ohif_config)
        router.add(rf"{OHIF_MOUNT}(/[^.]*)?", "GET", self.ohif_index)

    def attach(self, orthanc: Any, router: Router) -> None:
        """Hook into Orthanc at start-up, once every route is on ``router``.

        Orthanc's Python plugin (4.0) accepts a single on-stored-instance callback: this is
        it, and it only counts. Code that needs that callback too must call through it.
        """
        orthanc.ExtendOrthancExplorer(self.static.text(EXPLORER_EXTENSION))
        orthanc.RegisterOnStoredInstanceCallback(self.metrics.ingest.on_stored_instance)
        instrument_interactive(router, self.metrics)

    # -- pages ------------------------------------------------------------------------------

    def dashboard(self, request: Request) -> Response:
        return self.static.response(DASHBOARD)

    def static_file(self, request: Request) -> Response:
        return self.static.response(request.path.rsplit("/", 1)[-1])

    # -- numbers ----------------------------------------------------------------------------

    def prometheus(self, request: Request) -> Response:
        return Response(200, self.metrics.render(), CONTENT_TYPE)

    def queues(self, request: Request) -> Response:
        lengths = self.queue_lengths()
        counts = {state.value: n for state, n in self.plugin.store.counts_by_state().items()}
        return Response.json(
            {
                "jobs": counts,
                "broker": {"up": lengths is not None, "queues": dict(lengths or {})},
            }
        )

    # -- series as people read them ------------------------------------------------------------

    def series_summaries(self, request: Request) -> Response:
        """``?ids=a,b,...``: those series (deleted ones left out); no ids: every series."""
        get_json = self.plugin.routing.get_json
        ids = [i for i in request.query.get("ids", "").split(",") if i]
        if not ids:
            summaries = list_summaries(get_json, MAX_LISTED_SERIES)
        elif len(ids) > MAX_SUMMARY_IDS:
            raise HttpError(400, f"at most {MAX_SUMMARY_IDS} series ids at a time")
        elif not all(re.fullmatch(ORTHANC_ID, i) for i in ids):
            raise HttpError(400, "ids must be Orthanc series ids, separated by commas")
        else:
            summaries = fetch_summaries(get_json, dict.fromkeys(ids))
        return Response.json({"series": [s.as_json() for s in summaries]})

    def series_summary(self, request: Request) -> Response:
        """One series and, for each pipeline, whether it could run on it and why not."""
        found = fetch_summaries(self.plugin.routing.get_json, [request.groups[0]])
        if not found:
            raise HttpError(404, f"no series {request.groups[0]}")
        registry = self.plugin.registry
        availability = registry.availability()
        fits = [pipeline_fit(found[0], spec, availability.get(spec.id)) for spec in registry]
        return Response.json(
            {"series": found[0].as_json(), "pipelines": [fit.as_json() for fit in fits]}
        )

    # -- OHIF ---------------------------------------------------------------------------------

    def ohif_config(self, request: Request) -> Response:
        path = ohif_config_path(self.plugin.settings)
        try:
            body = path.read_bytes()
        except FileNotFoundError:
            raise HttpError(
                404, "the OHIF configuration was not written; start the node with `ainode up`"
            ) from None
        return Response(200, body, _CONTENT_TYPES[".js"], dict(_NO_CACHE))

    def ohif_index(self, request: Request) -> Response:
        if not ohif_installed():
            return Response(
                404,
                b"<!doctype html><title>OHIF not installed</title><p>The OHIF viewer is not "
                b"installed on this node. Run <code>make setup</code> (scripts/bootstrap.sh) "
                b"and restart the node.</p>",
                _CONTENT_TYPES[".html"],
            )
        body = (OHIF_DIR / "index.html").read_bytes()
        return Response(200, body, _CONTENT_TYPES[".html"], dict(_NO_CACHE))


def instrument_interactive(router: Router, metrics: NodeMetrics) -> None:
    """Time the forwarded interactive requests (routes another module registered)."""
    for pattern, route in router.routes.items():
        if not pattern.startswith(_TIMED_PREFIXES):
            continue
        for method, handler in list(route.methods.items()):
            if not getattr(handler, "ainode_timed", False):
                route.methods[method] = _timed(handler, metrics)


def _timed(handler: Handler, metrics: NodeMetrics) -> Handler:
    def timed(request: Request) -> Response:
        started = time.perf_counter()
        segments = [s for s in request.path.split("/") if s]
        name = next((s for s in reversed(segments) if s in _TIMED_NAMES), "other")
        try:
            response = handler(request)
        except HttpError as error:
            metrics.interactive.observe(
                time.perf_counter() - started, route=name, status=f"{error.status // 100}xx"
            )
            raise
        metrics.interactive.observe(
            time.perf_counter() - started, route=name, status=f"{response.status // 100}xx"
        )
        return response

    timed.ainode_timed = True  # type: ignore[attr-defined]
    return timed


def register_ui(router: Router, plugin: NodePlugin) -> UiRoutes:
    """Create the UI's routes on ``router``; ``attach`` them to Orthanc in ``start_plugin``."""
    queue_lengths = broker_queue_lengths(plugin.settings.broker_url, every_queue_name())
    metrics = NodeMetrics(
        plugin.store,
        queue_lengths=queue_lengths,
        workers=plugin.workers,
        origin_names=origin_names(plugin.orthanc),
    )
    ui = UiRoutes(plugin, StaticFiles(STATIC_DIR), metrics, queue_lengths)
    ui.register(router)
    return ui
