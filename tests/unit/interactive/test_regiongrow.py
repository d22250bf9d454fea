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

from .helpers import (
    EDGE,
    PhantomSeries,
    clicks_at_depths,
    dice,
    object_click,
    phantom_series,
)

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


# The floor: spheres of radius >= 10 mm and boxes, 90 HU over noise of sd 20 HU.
DEPTH_GRIDS = {
    "axial": Geometry(shape=(40, 80, 96), spacing=(2.5, 0.8, 0.8)),
    "thin-slices": Geometry(shape=(50, 72, 72), spacing=(1.0, 0.7, 0.7)),
    "anisotropic": Geometry(shape=(30, 72, 90), spacing=(3.0, 0.7, 0.9)),
}


@pytest.mark.parametrize("hu", [90.0, 200.0])
@pytest.mark.parametrize("kind", ["sphere", "box"])
@pytest.mark.parametrize("grid", DEPTH_GRIDS.values(), ids=DEPTH_GRIDS.keys())
def test_a_click_anywhere_inside_an_object_segments_it(
    grid: Geometry, kind: str, hu: float
) -> None:
    """Clicks from the centre to one voxel inside the edge, along axes and diagonals.

    Near an edge the click's neighbourhood holds object and background: before the tissue
    statistics kept only the click's side, such clicks leaked or were refused as background.
    """
    extent = grid.extent_mm
    centre = (extent[0] / 2, extent[1] / 2, extent[2] / 2)
    shape = Sphere(centre, 10.0, hu) if kind == "sphere" else BoxShape(centre, (8.0, 9.0, 7.0), hu)
    series = phantom_series(grid, shapes=[shape], noise_hu=20.0, seed=int(hu))
    truth = series.phantom.labels > 0
    service = _service(series.volume)
    failed = []
    for (x, y, z), where in clicks_at_depths(truth, centre_voxel(shape, grid)):
        result = service.segment(model="regiongrow", series=series.uid, points=(Point(x, y, z),))
        score = dice(result.mask, truth)
        if score < 0.85:
            failed.append(f"{where}: Dice {score:.3f}")
    assert not failed, failed


def test_a_click_one_voxel_inside_the_edge_on_a_512_grid() -> None:
    """The issue's 512x512 case: clicks next to a sphere's edge were refused as background."""
    grid = Geometry(shape=(24, 512, 512), spacing=(2.0, 0.7, 0.7))
    sphere = Sphere((23.0, 150.0, 200.0), 12.0, 120.0)
    series = phantom_series(grid, shapes=[sphere], noise_hu=20.0, seed=11)
    truth = series.phantom.labels > 0
    service = _service(series.volume)
    clicks = clicks_at_depths(truth, centre_voxel(sphere, grid), depths=(EDGE,))
    for (x, y, z), where in clicks:
        result = service.segment(model="regiongrow", series=series.uid, points=(Point(x, y, z),))
        assert dice(result.mask, truth) >= 0.85, where


def _touching_boxes(hu: float) -> tuple[PhantomSeries, np.ndarray, np.ndarray]:
    """Two boxes sharing a whole face (no neck at all), 150 HU and ``hu``; truths of each."""
    grid = Geometry(shape=(40, 96, 112), spacing=(2.0, 0.8, 0.8))
    first = BoxShape((40.0, 38.0, 30.0), (12.0, 12.0, 12.0), 150.0)
    second = BoxShape((40.0, 38.0, 54.0), (12.0, 12.0, 12.0), hu)
    series = phantom_series(grid, shapes=[first, second], noise_hu=20.0, seed=3)
    nz, ny, nx = grid.shape
    zz, yy, xx = (
        (np.arange(n) * s).reshape(r)
        for n, s, r in zip(
            grid.shape, grid.spacing, ((nz, 1, 1), (1, ny, 1), (1, 1, nx)), strict=True
        )
    )
    in_second = np.broadcast_to(second.mask(zz, yy, xx), grid.shape)
    in_first = np.broadcast_to(first.mask(zz, yy, xx), grid.shape) & ~in_second
    return series, in_first, in_second


@pytest.mark.parametrize("hu", [170.0, 185.0])
@pytest.mark.parametrize("where", ["centre", "corner"])
def test_negative_click_removes_a_neighbour_touching_without_a_neck(hu: float, where: str) -> None:
    series, first, second = _touching_boxes(hu)
    click = object_click(series.phantom, 2)  # the middle of both boxes together
    centre = (round(30.0 / 0.8), round(38.0 / 0.8), 20)
    other = (round(54.0 / 0.8), round(38.0 / 0.8), 20)
    if where == "corner":  # 4 mm inside two faces of the second box
        other = (other[0] + 8, other[1] + 10, other[2] + 4)
    assert second[other[2], other[1], other[0]] and click
    service = _service(series.volume)
    grown = service.segment(model="regiongrow", series=series.uid, points=(Point(*centre),))

    def covered(mask: np.ndarray) -> float:
        return float((mask.astype(bool) & second).sum() / second.sum())

    assert covered(grown.mask) >= 0.9, "the test needs the neighbour in the mask"
    fixed = service.segment(
        model="regiongrow",
        session=grown.session,
        points=(Point(*centre), Point(*other, False)),
    )
    assert covered(fixed.mask) <= 0.02
    assert dice(fixed.mask, first) >= 0.9


def test_negative_click_near_the_border_of_one_object_cuts_a_visible_part() -> None:
    """One uniform ball, no neck: the cut falls about halfway between the two clicks.

    Before, the deep positive click's flood left the negative click 7 voxels of 10 858.
    """
    grid = Geometry(shape=(40, 96, 112), spacing=(2.0, 0.8, 0.8))
    ball = Sphere((40.0, 38.0, 44.0), 15.0, 150.0)
    series = phantom_series(grid, shapes=[ball], noise_hu=20.0, seed=3)
    z, y, x = centre_voxel(ball, grid)
    service = _service(series.volume)
    whole = service.segment(model="regiongrow", series=series.uid, points=(Point(x, y, z),))
    cut = service.segment(
        model="regiongrow",
        session=whole.session,
        points=(Point(x, y, z), Point(x + 12, y, z, False)),
    )
    removed = whole.mask.astype(bool) & ~cut.mask.astype(bool)
    assert not (cut.mask.astype(bool) & ~whole.mask.astype(bool)).any()
    assert removed.sum() >= 0.1 * whole.mask.sum()
    assert removed[z, y, x + 12] and cut.mask[z, y, x]
    columns = np.nonzero(removed)[2]
    assert columns.min() > x + 2, "only the side of the negative click goes"


def test_a_deeper_negative_click_does_not_take_the_whole_object() -> None:
    """A positive click near the border and a negative one deeper: the positive keeps its side.

    On the distance map the deeper click floods first; without a neck that took all but a few
    voxels of the object from the positive click.
    """
    grid = Geometry(shape=(40, 96, 112), spacing=(2.0, 0.8, 0.8))
    ball = Sphere((40.0, 38.0, 44.0), 15.0, 150.0)
    series = phantom_series(grid, shapes=[ball], noise_hu=20.0, seed=4)
    z, y, x = centre_voxel(ball, grid)
    near_edge, deeper = (x - 15, y, z), (x + 3, y, z)  # 12 mm and 2.4 mm from the centre
    service = _service(series.volume)
    whole = service.segment(model="regiongrow", series=series.uid, points=(Point(*near_edge),))
    assert dice(whole.mask, series.phantom.labels == 1) >= 0.85
    cut = service.segment(
        model="regiongrow",
        session=whole.session,
        points=(Point(*near_edge), Point(*deeper, False)),
    )
    kept = cut.mask.astype(bool)
    assert kept[near_edge[2], near_edge[1], near_edge[0]] and not kept[z, y, x + 3]
    assert kept.sum() >= 0.2 * whole.mask.sum()
    assert np.nonzero(kept)[2].max() < x + 3, "only the side of the positive click stays"
