"""The plugin's forwarding routes against the real interactive service on a real port.

Only what Orthanc delivers to a plugin callback is sent here (JSON bodies, no query string on a
POST); query options, multipart forms and MONAI Label clients go through the node's door and
are tested there (tests/integration/test_door.py).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from ainode_plugin.http import Request, Router
from ainode_plugin.interactive_routes import add_interactive_routes
from ainode_worker.interactive import create_app
from ainode_worker.interactive.config import InteractiveConfig
from ainode_worker.interactive.volumes import InMemoryVolumeLoader
from ainode_worker.volume import Volume
from nodeharness import free_port

from ainode.phantoms import Geometry

from .helpers import PhantomSeries, ServedApp, object_click, phantom_series


@pytest.fixture(scope="module")
def series() -> PhantomSeries:
    return phantom_series(Geometry(shape=(64, 160, 160), spacing=(2.0, 0.7, 0.7)), seed=2)


@pytest.fixture(scope="module")
def served(series: PhantomSeries) -> Iterator[ServedApp]:
    loader = InMemoryVolumeLoader()
    loader.add(series.volume)
    with ServedApp(create_app(InteractiveConfig(store_accepted=False), loader=loader)) as app:
        yield app


@dataclass
class HeldVolumeLoader(InMemoryVolumeLoader):
    """Loads only once ``released`` is set."""

    released: threading.Event = field(default_factory=threading.Event)

    def load(self, series: str) -> Volume:
        self.released.wait(timeout=30)
        return super().load(series)


def _router(url: str, timeout_s: float = 60.0) -> Router:
    router = Router()
    add_interactive_routes(router, url, timeout_s=timeout_s)
    return router


def _json_request(path: str, body: Any, **query: str) -> Request:
    return Request(
        "POST",
        path,
        query=query,
        headers={"content-type": "application/json", "authorization": "Basic secret"},
        body=json.dumps(body).encode(),
    )


def test_errors_of_the_service_pass_through_unchanged(served: ServedApp) -> None:
    router = _router(served.url)
    answer = router.dispatch(
        _json_request("/ai/interactive/segment", {"model": "nope", "series": "x"})
    )
    assert answer.status == 404 and answer.content_type == "application/json"
    assert "unknown model 'nope'" in json.loads(answer.body)["error"]
    missing = router.dispatch(_json_request("/ai/interactive/sessions/abc123/reset", None))
    assert missing.status == 404 and "no session" in json.loads(missing.body)["error"]


def test_service_down_is_503_and_slow_is_504(series: PhantomSeries) -> None:
    down = _router(f"http://127.0.0.1:{free_port()}").dispatch(
        Request("GET", "/ai/interactive/health")
    )
    assert down.status == 503
    assert "not running" in json.loads(down.body)["error"]
    # The service is slow when its volume fetch is: this loader holds the first click until
    # the proxy has given up on it (a timing-free stand-in for a PACS that answers late).
    released = threading.Event()
    loader = HeldVolumeLoader(released=released)
    loader.add(series.volume)
    with ServedApp(create_app(InteractiveConfig(store_accepted=False), loader=loader)) as app:
        x, y, z = object_click(series.phantom, 1)
        try:
            slow = _router(app.url, timeout_s=0.2).dispatch(
                _json_request(
                    "/ai/interactive/segment",
                    {"series": series.uid, "points": [{"x": x, "y": y, "z": z}]},
                )
            )
        finally:
            released.set()
    assert slow.status == 504 and "did not answer" in json.loads(slow.body)["error"]
