"""Region growing: one click per object gives Dice >= 0.85; negative clicks remove mistakes."""

from __future__ import annotations

import numpy as np
import pytest
from ainode_worker.interactive.backends.regiongrow import SmoothedVolume
from ainode_worker.interactive.config import InteractiveConfig
from ainode_worker.interactive.prompts import Box, Point, mask_bounds
from ainode_worker.interactive.service import InteractiveService
from ainode_worker.interactive.volumes import InMemoryVolumeLoader, volume_from_datasets
from scipy import ndimage as ndi

from ainode.phantoms import Box as BoxShape
from ainode.phantoms import (
    Geometry,
    Phantom,
    SeriesIds,
    Sphere,
    centre_voxel,
    phantom_datasets,
    random_geometry,
    random_shapes,
)

from .helpers import dice, object_click, phantom_series

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


def _service(*volumes: object, **regiongrow: float) -> InteractiveService:
    loader = InMemoryVolumeLoader()
    for volume in volumes:
        loader.add(volume)  # type: ignore[arg-type]
    models = {"regiongrow": {"kind": "regiongrow", **regiongrow}}
    return InteractiveService(
        InteractiveConfig.model_validate({"store_accepted": False, "models": models}), loader
    )


@pytest.mark.parametrize("seed", [0, 3, 6])
@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_one_click_per_object(geometry: Geometry, seed: int) -> None:
    series = phantom_series(geometry, seed=seed)
    service = _service(series.volume)
    session = None
    for label in (1, 2):  # the sphere, then the box
        x, y, z = object_click(series.phantom, label)
        result = service.segment(
            model="regiongrow",
            series=series.uid,
            points=(Point(x, y, z, True),),
            session=session,
        )
        session = result.session
        score = dice(result.mask, series.phantom.labels == label)
        assert score >= 0.85, f"object {label}: Dice {score:.3f}"
        assert result.bounds == mask_bounds(result.mask)
        assert result.voxels == int(result.mask.sum())
    # The second click reused the smoothed volume of the first.
    assert result.timings.features_reused == 1 and result.timings.features_computed == 0


def test_two_clicks_segment_both_objects_at_once() -> None:
    series = phantom_series(seed=1)
    clicks = tuple(Point(*object_click(series.phantom, label), True) for label in (1, 2))
    result = _service(series.volume).segment(model="regiongrow", series=series.uid, points=clicks)
    assert dice(result.mask, series.phantom.labels > 0) >= 0.85


def test_box_bounds_the_region() -> None:
    series = phantom_series(seed=2)
    truth = series.phantom.labels == 2
    *_, z = object_click(series.phantom, 2)
    rows, cols = np.nonzero(truth[z])
    box = Box(z, float(cols.min()), float(rows.min()), float(cols.max()), float(rows.max()))
    result = _service(series.volume).segment(model="regiongrow", series=series.uid, boxes=(box,))
    assert dice(result.mask, truth) >= 0.85


def test_a_small_window_grows_until_it_holds_the_object() -> None:
    """The window a click starts in only saves work: the mask is the same from any start."""
    series = phantom_series(Geometry(shape=(40, 96, 128), spacing=(2.0, 0.8, 0.8)), seed=4)
    click = (Point(*object_click(series.phantom, 1), True),)
    masks = [
        _service(series.volume, window_mm=window).segment(
            model="regiongrow", series=series.uid, points=click
        )
        for window in (4.0, 40.0, 10_000.0)
    ]
    assert dice(masks[0].mask, series.phantom.labels == 1) >= 0.85
    assert all(np.array_equal(m.mask, masks[-1].mask) for m in masks[:-1])


def test_follow_up_clicks_reuse_the_grown_region() -> None:
    series = phantom_series(seed=5)
    service = _service(series.volume)
    x, y, z = object_click(series.phantom, 1)
    first = service.segment(model="regiongrow", series=series.uid, points=(Point(x, y, z),))
    again = service.segment(
        model="regiongrow", session=first.session, points=(Point(x, y, z), Point(0, 0, 0, False))
    )
    assert first.timings.decodes_reused == 0 and again.timings.decodes_reused == 1
    assert np.array_equal(first.mask, again.mask)  # the negative click is outside the region


def _bridged_phantom() -> tuple[Phantom, np.ndarray, tuple[int, int, int], tuple[int, int, int]]:
    """Two balls of the same CT number joined by a thin tube: the classic leak."""
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
    image = np.where(labels > 0, 150.0, 0.0) + rng.normal(0.0, 25.0, geometry.shape)
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


def test_negative_click_removes_a_wrongly_included_box() -> None:
    """A sphere and a box of about the same CT number, 4 mm apart; the user's result holds both.

    The first request has a positive click in each (a slip of the hand); the user keeps that
    mask (``use_previous_mask``), which still holds the box without its click, and clicks
    negative inside the box: the box goes, the sphere stays.
    """
    geometry = Geometry(shape=(40, 96, 112), spacing=(2.0, 0.8, 0.8))
    sphere = Sphere((40.0, 38.0, 30.0), 18.0, 170.0)
    box = BoxShape((40.0, 38.0, 64.0), (12.0, 12.0, 12.0), 185.0)  # 4 mm from the sphere
    series = phantom_series(geometry, shapes=[sphere, box], noise_hu=30.0, seed=8)
    truth_sphere, truth_box = series.phantom.labels == 1, series.phantom.labels == 2
    (sz, sy, sx), (bz, by, bx) = centre_voxel(sphere, geometry), centre_voxel(box, geometry)
    service = _service(series.volume)
    both = service.segment(
        model="regiongrow", series=series.uid, points=(Point(sx, sy, sz), Point(bx, by, bz))
    )

    def covered(mask: np.ndarray) -> float:
        return float((mask.astype(bool) & truth_box).sum() / truth_box.sum())

    assert covered(both.mask) >= 0.9, "the test needs the box in the mask"
    assert dice(both.mask, truth_sphere) < 0.85
    # The user takes back the click in the box: the kept mask still holds the box.
    kept = service.segment(
        model="regiongrow",
        session=both.session,
        points=(Point(sx, sy, sz),),
        use_previous_mask=True,
    )
    assert covered(kept.mask) >= 0.9
    # A negative click inside the box removes it; the sphere stays.
    fixed = service.segment(
        model="regiongrow",
        session=both.session,
        points=(Point(sx, sy, sz), Point(bx + 3, by - 2, bz + 1, False)),
        use_previous_mask=True,
    )
    assert covered(fixed.mask) == 0.0
    assert dice(fixed.mask, truth_sphere) >= 0.85
    # It is what the sphere's click alone gives.
    fresh = service.segment(model="regiongrow", session=both.session, points=(Point(sx, sy, sz),))
    assert np.array_equal(fresh.mask, fixed.mask)


@pytest.mark.parametrize("seed", [0, 5, 7])
def test_one_click_per_object_on_phantoms_drawn_from_the_specification(seed: int) -> None:
    """Random grids, one to three spheres and up to two boxes: each object from one click."""
    rng = np.random.default_rng(100 + seed)
    geometry = random_geometry(rng, in_plane=(64, 128), slices=(20, 48))
    series = phantom_series(geometry, seed=seed, shapes=random_shapes(geometry, rng))
    service = _service(series.volume)
    nz, ny, nx = geometry.shape
    grid = [
        (np.arange(n) * s).reshape(shape)
        for n, s, shape in zip(
            geometry.shape, geometry.spacing, ((nz, 1, 1), (1, ny, 1), (1, 1, nx)), strict=True
        )
    ]
    assert len(series.phantom.shapes) >= 2
    for shape in series.phantom.shapes:
        z, y, x = centre_voxel(shape, geometry)
        result = service.segment(model="regiongrow", series=series.uid, points=(Point(x, y, z),))
        truth = np.broadcast_to(shape.mask(*grid), geometry.shape)
        score = dice(result.mask, truth)
        assert score >= 0.85, f"{type(shape).__name__} {shape}: Dice {score:.3f}"


def test_block_wise_smoothing_equals_smoothing_the_whole_volume() -> None:
    rng = np.random.default_rng(0)
    source = rng.normal(0.0, 30.0, (40, 150, 170)).astype(np.float32)
    sigma = (0.4, 1.3, 1.1)
    whole = ndi.gaussian_filter(source, sigma)
    smoothed = SmoothedVolume(source, sigma)
    for _ in range(12):
        low = [int(rng.integers(0, n)) for n in source.shape]
        high = [int(rng.integers(a + 1, n + 1)) for a, n in zip(low, source.shape, strict=True)]
        box = (slice(low[0], high[0]), slice(low[1], high[1]), slice(low[2], high[2]))
        assert np.array_equal(smoothed.window(box), whole[box])
    assert not smoothed.done.all(), "the boxes should have left some blocks untouched"
