"""The plugin's forwarding routes against the real interactive service on a real port."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import requests
from ainode_plugin.http import Request, Router
from ainode_plugin.interactive_routes import add_interactive_routes
from ainode_worker.interactive import create_app
from ainode_worker.interactive.config import InteractiveConfig
from ainode_worker.interactive.encoding import decode_mask
from ainode_worker.interactive.volumes import InMemoryVolumeLoader
from ainode_worker.volume import Volume
from nodeharness import free_port

from ainode.phantoms import Geometry

from .helpers import PhantomSeries, ServedApp, dice, object_click, phantom_series


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


def test_segment_reset_and_accept_through_orthanc_routes(
    served: ServedApp, series: PhantomSeries
) -> None:
    router = _router(served.url)
    x, y, z = object_click(series.phantom, 1)
    click = {"series": series.uid, "points": [{"x": x, "y": y, "z": z, "label": 1}]}
    answer = router.dispatch(_json_request("/ai/interactive/segment", click))
    assert answer.status == 200 and answer.content_type == "application/json"
    body = json.loads(answer.body)
    assert dice(decode_mask(body["mask"]), series.phantom.labels == 1) >= 0.85
    session = body["session"]

    nifti = router.dispatch(
        _json_request("/ai/interactive/segment", {**click, "session": session}, format="nifti")
    )
    assert nifti.status == 200 and nifti.content_type == "application/gzip"
    assert nifti.headers["x-session"] == session and "total_ms" in nifti.headers["x-timings"]
    assert nifti.body[:2] == b"\x1f\x8b"

    accepted = router.dispatch(
        _json_request(f"/ai/interactive/sessions/{session}/accept", {"store": False})
    )
    assert accepted.status == 200
    assert np.array_equal(decode_mask(json.loads(accepted.body)["mask"]), decode_mask(body["mask"]))
    dicom = router.dispatch(
        _json_request(
            f"/ai/interactive/sessions/{session}/accept", {"store": False}, format="dicom"
        )
    )
    assert dicom.status == 200 and dicom.content_type == "application/dicom"
    assert dicom.body[128:132] == b"DICM"

    reset = router.dispatch(_json_request(f"/ai/interactive/sessions/{session}/reset", None))
    assert reset.status == 200 and json.loads(reset.body)["reset"] is True
    listed = router.dispatch(Request("GET", "/ai/interactive/sessions"))
    assert session in {s["session"] for s in json.loads(listed.body)["sessions"]}


def test_errors_of_the_service_pass_through_unchanged(served: ServedApp) -> None:
    router = _router(served.url)
    answer = router.dispatch(
        _json_request("/ai/interactive/segment", {"model": "nope", "series": "x"})
    )
    assert answer.status == 404 and answer.content_type == "application/json"
    assert "unknown model 'nope'" in json.loads(answer.body)["error"]
    missing = router.dispatch(_json_request("/ai/interactive/sessions/abc123/reset", None))
    assert missing.status == 404 and "no session" in json.loads(missing.body)["error"]


def test_monai_label_routes_keep_multipart(served: ServedApp, series: PhantomSeries) -> None:
    router = _router(served.url)
    info = router.dispatch(Request("GET", "/ai/monailabel/info/"))
    assert info.status == 200 and "regiongrow" in json.loads(info.body)["models"]
    params = {"foreground": [list(object_click(series.phantom, 2))], "background": []}
    prepared = requests.Request(
        "POST", "http://x/", files={"params": (None, json.dumps(params))}
    ).prepare()
    answer = router.dispatch(
        Request(
            "POST",
            "/ai/monailabel/infer/regiongrow",
            query={"image": series.uid, "output": "all"},
            headers={"content-type": str(prepared.headers["Content-Type"])},
            body=prepared.body if isinstance(prepared.body, bytes) else b"",
        )
    )
    assert answer.status == 200
    assert answer.content_type.startswith("multipart/form-data; boundary=")
    assert b'name="params"' in answer.body and b'filename="label.nii.gz"' in answer.body


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
