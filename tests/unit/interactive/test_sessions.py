"""Sessions: byte-accounted LRU eviction, idle expiry, per-session serialisation, slots."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import requests
from ainode_worker.interactive import create_app
from ainode_worker.interactive.cache import Computed
from ainode_worker.interactive.config import InteractiveConfig
from ainode_worker.interactive.errors import SessionNotFoundError
from ainode_worker.interactive.prompts import Point
from ainode_worker.interactive.service import InteractiveService
from ainode_worker.interactive.sessions import SessionStore
from ainode_worker.interactive.volumes import InMemoryVolumeLoader

from ainode.phantoms import Geometry

from .helpers import PhantomSeries, ServedApp, object_click, phantom_series


@dataclass
class ManualClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def small() -> PhantomSeries:
    return phantom_series(Geometry(shape=(16, 32, 32)), seed=0)


def _store(clock: ManualClock, total: int, per_session: int, ttl: float = 60.0) -> SessionStore:
    return SessionStore(
        max_total_bytes=total, max_session_bytes=per_session, idle_ttl_s=ttl, clock=clock
    )


def _loaded(store: SessionStore, series: PhantomSeries) -> Any:
    session = store.create(series.uid)
    session.volume = series.volume
    return session


def test_idle_sessions_expire_and_used_ones_stay(small: PhantomSeries) -> None:
    clock = ManualClock()
    store = _store(clock, total=1 << 30, per_session=1 << 29, ttl=60.0)
    idle, used = _loaded(store, small), _loaded(store, small)
    clock.now += 45
    store.touch(used)
    clock.now += 30  # idle: 75 s without use; used: 30 s
    with pytest.raises(SessionNotFoundError, match="expired"):
        store.get(idle.id)
    assert store.get(used.id) is used
    assert idle.closed and idle.volume is None


def test_budget_evicts_least_recently_used_idle_session(small: PhantomSeries) -> None:
    clock = ManualClock()
    volume_bytes = small.volume.array.nbytes
    store = _store(clock, total=int(2.5 * volume_bytes), per_session=volume_bytes * 2)
    first, second = _loaded(store, small), _loaded(store, small)
    clock.now += 1
    store.touch(first)  # second is now the least recently used
    third = _loaded(store, small)
    assert store.enforce_budget(third) == [second.id]
    assert [s.id for s in store.sessions()] == [first.id, third.id]
    assert store.total_bytes() <= store.max_total_bytes


def test_budget_never_evicts_a_busy_session(small: PhantomSeries) -> None:
    clock = ManualClock()
    volume_bytes = small.volume.array.nbytes
    store = _store(clock, total=int(1.5 * volume_bytes), per_session=volume_bytes * 2)
    busy, current = _loaded(store, small), _loaded(store, small)
    with busy.lock:  # a request is working on it
        assert store.enforce_budget(current) == []
    assert {s.id for s in store.sessions()} == {busy.id, current.id}
    assert store.enforce_budget(current) == [busy.id]  # once idle, it may go


def test_a_large_session_trims_its_own_features_first(small: PhantomSeries) -> None:
    clock = ManualClock()
    volume_bytes = small.volume.array.nbytes
    store = _store(clock, total=volume_bytes * 10, per_session=volume_bytes + 3000)
    other, big = _loaded(store, small), _loaded(store, small)
    other.cache("m").get_or_compute("kept", lambda: Computed("x", 1000))
    cache = big.cache("m")
    for z in range(10):  # 10 x 1000 bytes, oldest first
        cache.get_or_compute(("slice", z), lambda: Computed("x", 1000))
    cache.get_or_compute(("slice", 0), lambda: Computed("x", 1000))  # slice 0 used again
    assert store.enforce_budget(big) == []
    assert big.nbytes <= store.max_session_bytes
    assert ("slice", 0) in cache and ("slice", 9) in cache and ("slice", 1) not in cache
    assert "kept" in other.cache("m")


def _segment(url: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = requests.post(f"{url}/segment", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def _windows(results: list[dict[str, Any]]) -> list[tuple[float, float]]:
    return [
        (r["timings"]["compute_started_s"], r["timings"]["compute_finished_s"]) for r in results
    ]


def _max_overlap(windows: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in windows] + [(e, -1) for _, e in windows])
    depth = peak = 0
    for _, change in events:  # an end sorts before a start at the same instant
        depth += change
        peak = max(peak, depth)
    return peak


@pytest.fixture(scope="module")
def medium() -> PhantomSeries:
    return phantom_series(Geometry(shape=(48, 96, 96), spacing=(2.0, 0.8, 0.8)), seed=4)


def _served(series: PhantomSeries, **config: Any) -> ServedApp:
    loader = InMemoryVolumeLoader()
    loader.add(series.volume)
    service = InteractiveService(InteractiveConfig(store_accepted=False, **config), loader)
    return ServedApp(create_app(service.config, service=service))


def test_requests_on_one_session_run_one_after_another(medium: PhantomSeries) -> None:
    x, y, z = object_click(medium.phantom, 1)
    with _served(medium, max_concurrent=4) as served:
        first = _segment(served.url, {"series": medium.uid, "points": [{"x": x, "y": y, "z": z}]})
        # Four different clicks: each grows its own region (none is served from the cache).
        bodies = [
            {"session": first["session"], "points": [{"x": x + dx, "y": y, "z": z}]}
            for dx in (1, 2, 3, 4)
        ]
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda body: _segment(served.url, body), bodies))
    assert {r["session"] for r in results} == {first["session"]}
    assert _max_overlap(_windows(results)) == 1


@pytest.mark.parametrize("slots", [1, 2])
def test_sessions_share_at_most_the_configured_slots(medium: PhantomSeries, slots: int) -> None:
    x, y, z = object_click(medium.phantom, 1)
    body = {"series": medium.uid, "points": [{"x": x, "y": y, "z": z}]}
    with _served(medium, max_concurrent=slots) as served:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: _segment(served.url, body), range(4)))
        health = requests.get(f"{served.url}/health", timeout=10).json()
        sessions = requests.get(f"{served.url}/sessions", timeout=10).json()["sessions"]
    assert len({r["session"] for r in results}) == 4  # four users, four sessions
    assert _max_overlap(_windows(results)) <= slots
    assert health["peak_in_flight"] <= slots
    assert len(sessions) == 4, "no session was evicted: the budget allows all four"
    masks = {json_mask["data"] for json_mask in (r["mask"] for r in results)}
    assert len(masks) == 1, "the same click on the same series gives the same mask"


def test_an_expired_session_answers_404(medium: PhantomSeries) -> None:
    clock = ManualClock()
    loader = InMemoryVolumeLoader()
    loader.add(medium.volume)
    config = InteractiveConfig(store_accepted=False, idle_ttl_s=30.0)
    service = InteractiveService(config, loader, clock=clock)
    x, y, z = object_click(medium.phantom, 2)
    first = service.segment(model="regiongrow", series=medium.uid, points=(Point(x, y, z),))
    clock.now += 31
    with pytest.raises(SessionNotFoundError):
        service.segment(model="regiongrow", session=first.session, points=(Point(x, y, z),))
    assert service.sessions() == []


def test_reset_keeps_features_and_forgets_the_mask(medium: PhantomSeries) -> None:
    loader = InMemoryVolumeLoader()
    loader.add(medium.volume)
    service = InteractiveService(InteractiveConfig(store_accepted=False), loader)
    x, y, z = object_click(medium.phantom, 2)
    first = service.segment(model="regiongrow", series=medium.uid, points=(Point(x, y, z),))
    service.reset(first.session)
    [summary] = service.sessions()
    # Kept: the smoothed volume and the region the click grew.
    assert summary["model"] is None and summary["cache"]["regiongrow"]["entries"] == 2
    again = service.segment(model="regiongrow", session=first.session, points=(Point(x, y, z),))
    assert again.timings.features_reused == 1 and again.timings.decodes_reused == 1
    assert np.array_equal(again.mask, first.mask)
    assert again.timings.load_ms == 0.0  # the volume stayed loaded
