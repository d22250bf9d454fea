"""One volume per series: sessions share it and its features; a viewer can prefetch it."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import pytest
import requests
from ainode_plugin.http import Request, Router
from ainode_plugin.interactive_routes import add_interactive_routes
from ainode_worker.interactive import create_app
from ainode_worker.interactive.config import InteractiveConfig
from ainode_worker.interactive.errors import SeriesNotFoundError
from ainode_worker.interactive.prompts import Point
from ainode_worker.interactive.service import InteractiveService
from ainode_worker.volume import Volume
from nodeharness import wait_for

from ainode.phantoms import Geometry

from .helpers import PhantomSeries, ServedApp, dice, object_click, phantom_series


@dataclass
class DecodingLoader:
    """Like the Orthanc loader, every load decodes a fresh copy; counts the loads."""

    volumes: dict[str, Volume]
    loads: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def load(self, series: str) -> Volume:
        with self._lock:
            self.loads.append(series)
        volume = self.volumes.get(series)
        if volume is None:
            raise SeriesNotFoundError(f"no series '{series}'")
        return replace(volume, array=volume.array.copy())


@pytest.fixture(scope="module")
def series() -> PhantomSeries:
    return phantom_series(Geometry(shape=(32, 80, 80), spacing=(2.0, 0.8, 0.8)), seed=2)


def _service(loader: DecodingLoader, **config: object) -> InteractiveService:
    settings = InteractiveConfig.model_validate({"store_accepted": False, **config})
    return InteractiveService(settings, loader)


def test_twenty_sessions_on_one_series_hold_one_volume(series: PhantomSeries) -> None:
    loader = DecodingLoader({series.uid: series.volume})
    service = _service(loader)
    truth = series.phantom.labels == 1
    click = (Point(*object_click(series.phantom, 1)),)
    results = [service.segment(model="regiongrow", series=series.uid, points=click)]
    for _ in range(19):
        results.append(service.segment(model="regiongrow", series=series.uid, points=click))
    assert len({r.session for r in results}) == 20
    assert loader.loads == [series.uid]
    sessions = service.store.sessions()
    assert len(sessions) == 20
    assert len({id(s.volume.array) for s in sessions if s.volume is not None}) == 1
    held = service.series()
    assert len(held) == 1 and held[0]["users"] == 20 and held[0]["state"] == "ready"
    # Held once: the volume and its smoothed copy (the features); each session its own mask.
    assert held[0]["bytes"] <= 2 * series.volume.array.nbytes + (1 << 20)
    masks = sum(r.mask.nbytes for r in results)
    assert service.store.total_bytes() == held[0]["bytes"] + masks
    # The features are the series': only the first session computed them.
    assert results[0].timings.features_computed == 1
    assert all(r.timings.features_computed == 0 for r in results[1:])
    assert all(dice(r.mask, truth) >= 0.85 for r in results)
    # Closing every session keeps the series for the next viewer (memory allows).
    for result in results:
        assert service.close_session(result.session)
    assert service.series()[0]["users"] == 0
    again = service.segment(model="regiongrow", series=series.uid, points=click)
    assert loader.loads == [series.uid] and again.timings.features_computed == 0


def test_concurrent_first_clicks_load_the_series_once(series: PhantomSeries) -> None:
    loader = DecodingLoader({series.uid: series.volume})
    service = _service(loader, max_concurrent=4)
    click = (Point(*object_click(series.phantom, 2)),)
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [
            pool.submit(service.segment, model="regiongrow", series=series.uid, points=click)
            for _ in range(8)
        ]
        results = [f.result() for f in futures]
    assert loader.loads == [series.uid]
    first = results[0].mask
    assert all(np.array_equal(r.mask, first) for r in results)
    assert dice(first, series.phantom.labels == 2) >= 0.85


def test_an_unused_series_goes_first_when_memory_is_short(series: PhantomSeries) -> None:
    other = phantom_series(Geometry(shape=(32, 80, 80), spacing=(2.0, 0.8, 0.8)), seed=3)
    loader = DecodingLoader({series.uid: series.volume, other.uid: other.volume})
    volume_bytes = series.volume.array.nbytes
    service = _service(
        loader, max_total_bytes=int(1.9 * volume_bytes), max_session_bytes=int(1.5 * volume_bytes)
    )
    first = service.segment(
        model="regiongrow", series=series.uid, points=(Point(*object_click(series.phantom, 1)),)
    )
    service.close_session(first.session)  # the series stays, unused
    kept = service.segment(
        model="regiongrow", series=other.uid, points=(Point(*object_click(other.phantom, 1)),)
    )
    assert [s["series"] for s in service.series()] == [other.uid]
    assert service.store.get(kept.session).volume is not None
    assert service.store.total_bytes() <= service.config.max_total_bytes


def test_a_viewer_prefetches_a_series_and_the_first_click_finds_it(
    series: PhantomSeries,
) -> None:
    loader = DecodingLoader({series.uid: series.volume})
    service = _service(loader)
    with ServedApp(create_app(service.config, service=service)) as served:
        answer = requests.post(f"{served.url}/series/{series.uid}/prefetch", timeout=30)
        assert answer.status_code == 202, answer.text
        assert answer.json()["state"] in ("loading", "ready")

        def ready() -> bool:
            held = requests.get(f"{served.url}/series", timeout=30).json()["series"]
            return bool(held) and held[0]["state"] == "ready"

        wait_for(ready, 60, 0.05, "the prefetched series")
        x, y, z = object_click(series.phantom, 1)
        click = {"series": series.uid, "points": [{"x": x, "y": y, "z": z}]}
        answer = requests.post(f"{served.url}/segment", json=click, timeout=60)
        assert answer.status_code == 200, answer.text
        assert loader.loads == [series.uid]
        # A second prefetch of a held series starts nothing.
        again = requests.post(f"{served.url}/series/{series.uid}/prefetch", timeout=30)
        assert again.status_code == 202 and again.json()["state"] == "ready"
        assert again.json()["users"] == 1
        assert loader.loads == [series.uid]

        # A series that does not exist: the prefetch reports the failure, a click gets 404.
        missing = requests.post(f"{served.url}/series/1.2.3.4/prefetch", timeout=30)
        assert missing.status_code == 202

        def failed() -> dict[str, object] | None:
            held = requests.get(f"{served.url}/series", timeout=30).json()["series"]
            return next((s for s in held if s["series"] == "1.2.3.4" and s["error"]), None)

        report = wait_for(failed, 60, 0.05, "the failed prefetch")
        assert report["state"] == "failed" and "1.2.3.4" in str(report["error"])
        answer = requests.post(
            f"{served.url}/segment", json={**click, "series": "1.2.3.4"}, timeout=60
        )
        assert answer.status_code == 404


def test_a_series_no_session_uses_can_be_dropped(series: PhantomSeries) -> None:
    loader = DecodingLoader({series.uid: series.volume})
    service = _service(loader)
    x, y, z = object_click(series.phantom, 1)
    click = {"series": series.uid, "points": [{"x": x, "y": y, "z": z}]}
    with ServedApp(create_app(service.config, service=service)) as served:
        session = requests.post(f"{served.url}/segment", json=click, timeout=60).json()["session"]
        busy = requests.delete(f"{served.url}/series/{series.uid}", timeout=30)
        assert busy.status_code == 200 and busy.json() == {
            "series": series.uid,
            "dropped": False,
            "users": 1,
        }
        requests.delete(f"{served.url}/sessions/{session}", timeout=30).raise_for_status()
        dropped = requests.delete(f"{served.url}/series/{series.uid}", timeout=30)
        assert dropped.status_code == 200 and dropped.json()["dropped"] is True
        assert requests.get(f"{served.url}/series", timeout=30).json()["series"] == []
        assert requests.delete(f"{served.url}/series/{series.uid}", timeout=30).status_code == 404
        answer = requests.post(f"{served.url}/segment", json=click, timeout=60)
        assert answer.status_code == 200 and answer.json()["timings"]["load_ms"] > 0
        assert loader.loads == [series.uid, series.uid]


def test_orthanc_forwards_prefetch_and_the_series_list(series: PhantomSeries) -> None:
    """The plugin's routes (as Orthanc calls them) reach the service's prefetch and list."""
    loader = DecodingLoader({series.uid: series.volume})
    service = _service(loader)
    router = Router()
    with ServedApp(create_app(service.config, service=service)) as served:
        add_interactive_routes(router, served.url, timeout_s=60)
        answer = router.dispatch(Request("POST", f"/ai/interactive/series/{series.uid}/prefetch"))
        assert answer.status == 202, answer.body
        assert json.loads(answer.body)["series"] == series.uid

        def ready() -> bool:
            listed = router.dispatch(Request("GET", "/ai/interactive/series"))
            held = json.loads(listed.body)["series"]
            return listed.status == 200 and bool(held) and held[0]["state"] == "ready"

        wait_for(ready, 60, 0.05, "the prefetched series")
        assert loader.loads == [series.uid]
        # A path that is no series reference goes nowhere.
        for path in (
            "/ai/interactive/series/../health/prefetch",
            "/ai/interactive/series/../prefetch",
        ):
            assert router.dispatch(Request("POST", path)).status == 404


def test_one_series_named_by_orthanc_id_and_by_uid_is_held_once(series: PhantomSeries) -> None:
    orthanc_id = "0a1b2c3d-0a1b2c3d-0a1b2c3d-0a1b2c3d-0a1b2c3d"
    loader = DecodingLoader({series.uid: series.volume, orthanc_id: series.volume})
    service = _service(loader)
    click = (Point(*object_click(series.phantom, 1)),)
    by_id = service.segment(model="regiongrow", series=orthanc_id, points=click)
    by_uid = service.segment(model="regiongrow", series=series.uid, points=click)
    assert loader.loads == [orthanc_id]
    assert by_uid.timings.features_computed == 0
    held = service.series()
    assert len(held) == 1 and held[0]["users"] == 2
    assert service.store.get(by_id.session).volume is service.store.get(by_uid.session).volume
