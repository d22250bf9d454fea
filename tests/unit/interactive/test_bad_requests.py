"""Bad requests get a 4xx with a message that names the problem; the service keeps serving."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from ainode_worker.interactive import create_app
from ainode_worker.interactive.config import InteractiveConfig
from ainode_worker.interactive.volumes import InMemoryVolumeLoader

from ainode.phantoms import Geometry

from .helpers import PhantomSeries, ServedApp, object_click, phantom_series

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def series() -> PhantomSeries:
    return phantom_series(Geometry(shape=(20, 48, 48), spacing=(2.5, 0.9, 0.9)), seed=3)


@pytest.fixture(scope="module")
def served(series: PhantomSeries) -> Iterator[ServedApp]:
    loader = InMemoryVolumeLoader()
    loader.add(series.volume)
    config = InteractiveConfig(store_accepted=False, max_body_bytes=LIMIT)
    with ServedApp(create_app(config, loader=loader)) as app:
        yield app


def _click(series: PhantomSeries) -> dict[str, object]:
    x, y, z = object_click(series.phantom, 1)
    return {"series": series.uid, "points": [{"x": x, "y": y, "z": z, "label": 1}]}


def _chunks(total: int) -> Iterator[bytes]:
    """A JSON body sent chunked (no Content-Length): only counting it as it comes stops it."""
    yield b'{"series": "'
    for _ in range(total // 4096):
        yield b"1" * 4096
    yield b'"}'


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"series": "1.2.999.1", "points": [{"x": 1, "y": 1, "z": 1}]}, 404, "1.2.999.1"),
        ("SERIES", 400, "outside the series"),  # x beyond the last column
        ("MODEL", 404, "unknown model 'nnunet'; this service offers: regiongrow"),
        ({"series": "S", "points": [{"x": "left", "y": 1, "z": 1}]}, 422, "points.0.x"),
        ({"series": "S", "points": [], "colour": "red"}, 422, "colour"),
        ("SESSION", 404, "no session 'gone'"),
        ("BACKGROUND", 400, "of the series: its intensity is that of the background"),
    ],
    ids=[
        "unknown-series",
        "point-outside",
        "unknown-model",
        "wrong-type",
        "unknown-field",
        "unknown-session",
        "click-on-background",
    ],
)
def test_bad_segment_requests(
    served: ServedApp, series: PhantomSeries, body: object, status: int, words: str
) -> None:
    good = _click(series)
    if body == "SERIES":
        body = {"series": series.uid, "points": [{"x": 48, "y": 3, "z": 2}]}
    elif body == "MODEL":
        body = {**good, "model": "nnunet"}
    elif body == "SESSION":
        body = {"session": "gone", "points": good["points"]}
    elif body == "BACKGROUND":  # the corner: the region would be the whole background
        body = {"series": series.uid, "points": [{"x": 1, "y": 1, "z": 1}]}
    answer = requests.post(f"{served.url}/segment", json=body, timeout=30)
    assert answer.status_code == status, answer.text
    assert words in answer.json()["error"]


def test_malformed_json_and_oversize_bodies(served: ServedApp, series: PhantomSeries) -> None:
    headers = {"content-type": "application/json"}
    broken = requests.post(
        f"{served.url}/segment", data=b'{"series": "x", "points": [', headers=headers, timeout=30
    )
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]
    padded = {**_click(series), "session": None, "model": "regiongrow" + " " * LIMIT}
    declared = requests.post(f"{served.url}/segment", json=padded, timeout=30)
    assert declared.status_code == 413
    assert f"larger than {LIMIT} bytes" in declared.json()["error"]
    chunked = requests.post(
        f"{served.url}/segment", data=_chunks(4 * LIMIT), headers=headers, timeout=30
    )
    assert chunked.status_code == 413
    accept = requests.post(
        f"{served.url}/sessions/any/accept", data=b"x" * (LIMIT + 1), headers=headers, timeout=30
    )
    assert accept.status_code == 413


def test_the_service_keeps_serving_after_bad_requests(
    served: ServedApp, series: PhantomSeries
) -> None:
    for body in ({"series": "1.2.999.1", "points": [{"x": 1, "y": 1, "z": 1}]}, {"x": 1}):
        assert (
            400 <= requests.post(f"{served.url}/segment", json=body, timeout=30).status_code < 500
        )
    answer = requests.post(f"{served.url}/segment", json=_click(series), timeout=30)
    assert answer.status_code == 200 and answer.json()["voxels"] > 0
    assert requests.get(f"{served.url}/health", timeout=30).json()["status"] == "ok"
