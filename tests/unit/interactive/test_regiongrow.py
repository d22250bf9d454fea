"""Region growing: one click per organ reaches Dice >= 0.9; a negative click removes a leak."""

from __future__ import annotations

import numpy as np
import pytest
from ainode_worker.interactive.config import InteractiveConfig
from ainode_worker.interactive.prompts import Box, Point
from ainode_worker.interactive.service import InteractiveService
from ainode_worker.interactive.volumes import InMemoryVolumeLoader, volume_from_datasets

from ainode.phantoms import Geometry, Phantom, SeriesIds, phantom_datasets

from .helpers import dice, organ_click, phantom_series

GEOMETRIES = {
    "axial": Geometry(),
    "oblique-anisotropic": Geometry(
        shape=(40, 72, 60),
        spacing=(3.0, 0.7, 0.9),
        origin=(10.0, -40.0, 25.0),
        row_direction=(0.8, 0.6, 0.0),
        column_direction=(0.0, 0.0, -1.0),
    ),
}


def _service(*volumes: object) -> InteractiveService:
    loader = InMemoryVolumeLoader()
    for volume in volumes:
        loader.add(volume)  # type: ignore[arg-type]
    return InteractiveService(InteractiveConfig(store_accepted=False), loader)


@pytest.mark.parametrize("seed", [0, 3, 6])
@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_one_click_per_organ(geometry: Geometry, seed: int) -> None:
    series = phantom_series(geometry, seed=seed)
    service = _service(series.volume)
    session = None
    for label in (1, 2):
        x, y, z = organ_click(series.phantom, label)
        result = service.segment(
            model="regiongrow",
            series=series.uid,
            points=(Point(x, y, z, True),),
            session=session,
        )
        session = result.session
        score = dice(result.mask, series.phantom.labels == label)
        assert score >= 0.9, f"organ {label}: Dice {score:.3f}"
    # The second click reused the smoothed volume of the first.
    assert result.timings.features_reused == 1 and result.timings.features_computed == 0


def test_two_clicks_segment_both_organs_at_once() -> None:
    series = phantom_series(seed=1)
    clicks = tuple(Point(*organ_click(series.phantom, label), True) for label in (1, 2))
    result = _service(series.volume).segment(model="regiongrow", series=series.uid, points=clicks)
    assert dice(result.mask, series.phantom.labels > 0) >= 0.9


def test_box_bounds_the_region() -> None:
    series = phantom_series(seed=2)
    kidney = series.phantom.labels == 2
    *_, z = organ_click(series.phantom, 2)
    rows, cols = np.nonzero(kidney[z])
    box = Box(z, float(cols.min()), float(rows.min()), float(cols.max()), float(rows.max()))
    result = _service(series.volume).segment(model="regiongrow", series=series.uid, boxes=(box,))
    assert dice(result.mask, kidney) >= 0.9


def _bridged_phantom() -> tuple[Phantom, np.ndarray, tuple[int, int, int], tuple[int, int, int]]:
    """Two balls of the same tissue joined by a thin tube: the classic leak."""
    geometry = Geometry(shape=(32, 80, 96), spacing=(2.0, 0.8, 0.8))
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in geometry.shape), indexing="ij")
    mm = [zz * 2.0, yy * 0.8, xx * 0.8]
    centre_a, centre_b = (32.0, 32.0, 22.0), (32.0, 32.0, 54.0)
    ball_a = np.asarray(sum((m - c) ** 2 for m, c in zip(mm, centre_a, strict=True)) <= 11.0**2)
    ball_b = np.asarray(sum((m - c) ** 2 for m, c in zip(mm, centre_b, strict=True)) <= 11.0**2)
    tube = ((mm[0] - 32.0) ** 2 + (mm[1] - 32.0) ** 2 <= 2.2**2) & (mm[2] > 22) & (mm[2] < 54)
    labels = np.zeros(geometry.shape, dtype=np.uint8)
    labels[ball_a | ball_b | tube] = 1
    rng = np.random.default_rng(7)
    image = np.where(labels > 0, 160.0, 40.0) + rng.normal(0.0, 20.0, geometry.shape)
    phantom = Phantom(np.round(image).astype(np.int16), labels, geometry)

    def voxel(centre: tuple[float, float, float]) -> tuple[int, int, int]:
        z, y, x = (round(c / s) for c, s in zip(centre, geometry.spacing, strict=True))
        return x, y, z

    return phantom, ball_a, voxel(centre_a), voxel(centre_b)


def test_negative_click_removes_a_leak() -> None:
    phantom, ball_a, click_a, click_b = _bridged_phantom()
    ids = SeriesIds()
    volume = volume_from_datasets(list(phantom_datasets(phantom, ids)))
    service = _service(volume)
    first = service.segment(
        model="regiongrow", series=ids.series_uid, points=(Point(*click_a, True),)
    )
    assert dice(first.mask, ball_a) < 0.8, "the test needs a leak to remove"
    second = service.segment(
        model="regiongrow",
        session=first.session,
        points=(Point(*click_a, True), Point(*click_b, False)),
    )
    assert dice(second.mask, ball_a) >= 0.9
    assert not second.mask[click_b[2], click_b[1], click_b[0]]
