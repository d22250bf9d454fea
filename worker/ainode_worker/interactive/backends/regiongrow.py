"""Region growing in 3D: useful out of the box, with no weights at all.

For each positive click:

1. Statistics of the clicked tissue come from a small neighbourhood of the *raw* voxels, with
   median and MAD, so a neighbourhood that straddles an edge does not widen the interval.
2. The core is the set of voxels of the *smoothed* volume within ``k`` robust standard
   deviations, connected (6-neighbourhood) to the click after a morphological opening: the
   opening cuts the one-voxel partial-volume rims that otherwise let a region leak along the
   border of a brighter neighbour.
3. The core lies slightly inside the true border (partial volume); a marker-controlled
   watershed on the gradient magnitude, in a thin band around the core, moves the border to
   the strongest edge, which is where the true border is for any pair of neighbouring tissues.

Negative clicks that fall inside the result split it: a watershed on the distance map, seeded
by the positive and negative clicks, cuts the region at its narrowest neck and the part
reached from the negative clicks is dropped (the usual case: a leak through a thin bridge).
A connected part with negative clicks and no positive one (kept from the previous mask, with
``use_previous_mask``) is dropped whole. A box adds a positive click at its centre and bounds
the result in-plane to the box (with a small margin) on every slice.

Speed on a 512x512x300 grid comes from never touching the whole grid per click: a click grows
in a window around it (``window_mm``), doubled along every axis the region reaches, so the cost
follows the object's size, not the grid's; the result carries its bounds so that counting and
encoding skip the empty rest. Cached per session: the smoothed volume (block by block where
clicks look, see :class:`SmoothedVolume`), each click's grown region and the distance map a cut
needs, so a follow-up click that repeats the earlier ones only pays for what it adds. A click
whose region would cover more than ``max_fraction`` of the grid (the background) is refused.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi
from skimage.morphology import flood as _flood
from skimage.segmentation import watershed as _watershed

from ..cache import Computed, FeatureCache
from ..errors import RegionTooLargeError
from ..prompts import EMPTY_BOUNDS, Bounds, Box, Point, Prompts, mask_bounds, tight_bounds
from ..sessions import VolumeView
from .base import SegmentOutcome

log = logging.getLogger(__name__)

_CROSS = ndi.generate_binary_structure(3, 1)
Bool3D = npt.NDArray[np.bool_]
Float3D = npt.NDArray[np.float32]


@dataclass(frozen=True)
class RegionGrowParams:
    smoothing_mm: float = 1.0  # Gaussian sigma applied before thresholding
    stats_radius_mm: float = 4.0  # neighbourhood of a click that defines its tissue
    tolerance_sd: float = 2.5  # half-width of the intensity interval, in robust SDs
    min_sd: float = 1.0  # floor of the robust SD (flat synthetic data, quantised MR)
    band_voxels: int = 3  # how far the watershed may move the border from the core
    box_margin: float = 0.1  # in-plane slack around a box, as a fraction of its size
    window_mm: float = 40.0  # half-size of the first window a click grows in (doubled as needed)
    max_fraction: float = 0.5  # a click reaching more of the grid is refused (background)


class RegionGrowBackend:
    kind = "regiongrow"

    def __init__(self, name: str = "regiongrow", params: RegionGrowParams | None = None) -> None:
        self.name = name
        self.params = params or RegionGrowParams()

    def ensure_ready(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "loaded": True, "weights": None}

    def segment(self, view: VolumeView, prompts: Prompts, cache: FeatureCache) -> SegmentOutcome:
        started = time.perf_counter()
        smoothed, reused = cache.get_or_compute("smoothed", lambda: self._smooth(view))
        embed_ms = (time.perf_counter() - started) * 1000.0
        filtering_s = smoothed.spent_s
        started = time.perf_counter()
        shape = view.array.shape
        seeds = list(prompts.positives) + [box.normalised().centre() for box in prompts.boxes]
        parts: list[Part] = []
        grown: list[tuple[int, int, int]] = []  # the clicks that grew the parts
        grown_reused = 0
        for seed in seeds:
            voxel = seed.voxel()
            if any(part.contains(voxel) for part in parts):
                continue  # already inside what an earlier click grew
            # A follow-up click repeats the earlier ones: their regions come from the cache.
            part, hit = cache.get_or_compute(
                ("grown", voxel), functools.partial(self._grown, view, smoothed, voxel)
            )
            grown_reused += int(hit)
            parts.append(part)
            grown.append(voxel)
        previous = prompts.previous_mask
        previous_bounds = None
        if previous is not None:
            previous_bounds = prompts.previous_bounds or mask_bounds(previous)
        work = _union([p.bounds for p in parts] + ([previous_bounds] if previous_bounds else []))
        region = np.zeros(tuple(b.stop - b.start for b in work), dtype=bool)
        for part in parts:
            region[_relative(part.bounds, work)] |= part.mask
        if previous is not None:
            region |= previous[work].astype(bool)
        if prompts.boxes:
            region &= self._box_limits(shape, prompts.boxes)[work]
        if prompts.negatives:
            memo: list[Float3D] = []

            def distance() -> Float3D:
                """The region's distance map, computed once; follow-up clicks share it."""
                if not memo:
                    if previous is not None:  # a previous mask makes every region a new one
                        memo.append(_distance(region, view.spacing))
                    else:
                        key = ("distance", tuple(grown), prompts.boxes)
                        value, _ = cache.get_or_compute(
                            key, lambda: _computed_array(_distance(region, view.spacing))
                        )
                        memo.append(value)
                return memo[0]

            region = self._cut(region, work, seeds, prompts.negatives, distance)
        mask = np.zeros(shape, dtype=np.uint8)
        mask[work] = region
        filtered_ms = (smoothed.spent_s - filtering_s) * 1000.0  # blocks smoothed on the way
        embed_ms += filtered_ms
        decode_ms = (time.perf_counter() - started) * 1000.0 - filtered_ms
        return SegmentOutcome(
            mask=mask,
            embed_ms=embed_ms,
            decode_ms=decode_ms,
            features_computed=0 if reused else 1,
            features_reused=1 if reused else 0,
            decodes_reused=grown_reused,
            bounds=tight_bounds(mask, work),
        )

    def _smooth(self, view: VolumeView) -> Computed:
        sigma = tuple(self.params.smoothing_mm / s for s in view.spacing)
        smoothed = SmoothedVolume(view.array, (sigma[0], sigma[1], sigma[2]))
        return Computed(smoothed, smoothed.nbytes)

    def _grown(
        self, view: VolumeView, smoothed: SmoothedVolume, seed: tuple[int, int, int]
    ) -> Computed:
        part = self._grow(view, smoothed, seed)
        return Computed(part, int(part.mask.nbytes) + 256)

    def _grow(self, view: VolumeView, smoothed: SmoothedVolume, seed: tuple[int, int, int]) -> Part:
        """The region of one click, computed in a window around it that grows as needed."""
        low, high = self._interval(view, seed)
        margin = self.params.band_voxels + 2
        half = [max(margin + 1, round(self.params.window_mm / s)) for s in view.spacing]
        while True:
            window = _window(seed, half, smoothed.shape)
            local_seed = _relative_voxel(seed, window)
            local = smoothed.window(window)
            inside = (local >= low) & (local <= high)
            # The clicked voxel itself may be atypical of its neighbourhood (noise, a vessel):
            # accept it so the click still yields its surroundings.
            inside[local_seed] = True
            reach = _connected(inside, local_seed)
            self._check_size(reach, seed, smoothed.shape)
            reached = _occupied(reach)
            # Done when what the click reaches stays clear of every window face that is not
            # also the grid's edge (the refinement below looks ``margin`` voxels further).
            crowded = [
                (r.start < margin and w.start > 0)
                or (r.stop > w.stop - w.start - margin and w.stop < n)
                for r, w, n in zip(reached, window, smoothed.shape, strict=True)
            ]
            if not any(crowded):
                break
            half = [h * 2 if c else h for h, c in zip(half, crowded, strict=True)]
        box = _bounds(
            slice(max(0, r.start - margin), min(w.stop - w.start, r.stop + margin))
            for r, w in zip(reached, window, strict=True)
        )
        core_seed = _relative_voxel(local_seed, box)
        opened = ndi.binary_opening(inside[box], _CROSS)
        if not opened[core_seed]:
            opened = reach[box]
        core = _connected(opened, core_seed)
        refined = self._refine(local[box], core, view.spacing)
        refined[core_seed] = True
        refined = ndi.binary_fill_holes(_connected(refined, core_seed))
        absolute = _shift(box, window)
        tight = _occupied(refined)
        return Part(_shift(tight, absolute), np.ascontiguousarray(refined[tight]))

    def _check_size(
        self, reach: Bool3D, seed: tuple[int, int, int], shape: tuple[int, int, int]
    ) -> None:
        """Refuse a click whose region swallows the series before the costly steps.

        Such a click is on the background (or the tolerance is too wide): refining a region of
        80 M voxels takes half a minute and gigabytes, and the answer would be useless.
        """
        limit = self.params.max_fraction * float(np.prod(shape))
        if reach.size <= limit:
            return
        reached = int(np.count_nonzero(reach))
        if reached > limit:
            z, y, x = seed
            raise RegionTooLargeError(
                f"the click at x={x} y={y} z={z} reaches {reached / np.prod(shape):.0%} of the "
                "series: its intensity is that of the background; click inside the structure "
                "or draw a box around it"
            )

    def _interval(self, view: VolumeView, seed: tuple[int, int, int]) -> tuple[float, float]:
        radius = [max(1, round(self.params.stats_radius_mm / s)) for s in view.spacing]
        window = tuple(slice(max(0, c - r), c + r + 1) for c, r in zip(seed, radius, strict=True))
        values = view.array[window].astype(np.float64, copy=False)
        centre = float(np.median(values))
        spread = max(1.4826 * float(np.median(np.abs(values - centre))), self.params.min_sd)
        half = self.params.tolerance_sd * spread
        return centre - half, centre + half

    def _refine(
        self, smoothed: Float3D, core: Bool3D, spacing: tuple[float, float, float]
    ) -> Bool3D:
        """Move the core's border to the strongest nearby edge (marker watershed)."""
        band = self.params.band_voxels
        zone = ndi.binary_dilation(core, _CROSS, iterations=band)
        interior = ndi.binary_erosion(core, _CROSS, iterations=band)
        markers = np.zeros(core.shape, dtype=np.int32)
        markers[~zone] = 2
        markers[ndi.binary_erosion(core, _CROSS) & ~interior] = 1
        if not (markers == 1).any():
            return core.copy()
        gradients = np.gradient(smoothed, *spacing)
        magnitude = np.sqrt(sum(g * g for g in gradients))
        reach = ndi.binary_dilation(zone, _CROSS) & ~interior
        labels = _split(magnitude, markers, mask=reach)
        return np.asarray((labels == 1) | interior)

    def _box_limits(self, shape: tuple[int, ...], boxes: tuple[Box, ...]) -> Bool3D:
        allowed = np.zeros(shape[1:], dtype=bool)
        for box in (b.normalised() for b in boxes):
            mx = self.params.box_margin * (box.x1 - box.x0 + 1)
            my = self.params.box_margin * (box.y1 - box.y0 + 1)
            rows = slice(max(0, int(np.floor(box.y0 - my))), int(np.ceil(box.y1 + my)) + 1)
            cols = slice(max(0, int(np.floor(box.x0 - mx))), int(np.ceil(box.x1 + mx)) + 1)
            allowed[rows, cols] = True
        return np.broadcast_to(allowed, shape)

    def _cut(
        self,
        region: Bool3D,
        work: Bounds,
        positives: list[Point],
        negatives: tuple[Point, ...],
        distance: Callable[[], Float3D],
    ) -> Bool3D:
        """Drop what negative clicks point at: their part of a split, or a whole unclaimed part.

        ``region`` covers ``work`` of the grid. A connected part holding negative and positive
        clicks is split at its narrowest neck (watershed on the distance map) and the side of
        the negative clicks goes; a part holding negative clicks only (kept from the previous
        mask) goes whole; parts without negative clicks stay.
        """

        def local(point: Point) -> tuple[int, int, int] | None:
            voxel = point.voxel()
            if not all(w.start <= v < w.stop for v, w in zip(voxel, work, strict=True)):
                return None
            inner = _relative_voxel(voxel, work)
            return inner if region[inner] else None

        inside = [v for v in map(local, negatives) if v is not None]
        if not inside:
            return region
        seeds = [v for v in map(local, positives) if v is not None]
        parts, _ = ndi.label(region, _CROSS)
        kept = region.copy()
        for number in sorted({int(parts[v]) for v in inside}):
            found = ndi.find_objects((parts == number).view(np.uint8))[0]
            assert found is not None
            box = _bounds(
                slice(max(0, s.start - 1), min(n, s.stop + 1))
                for s, n in zip(found, region.shape, strict=True)
            )
            part = parts[box] == number
            kept[box] &= ~part
            mine = [_relative_voxel(v, box) for v in seeds if parts[v] == number]
            if not mine:
                continue  # only negative clicks: the whole part goes
            markers = np.zeros(part.shape, dtype=np.int32)
            for voxel in mine:
                markers[voxel] = 1
            for voxel in (_relative_voxel(v, box) for v in inside if parts[v] == number):
                markers[voxel] = 2
            kept[box] |= _split(-distance()[box], markers, mask=part) == 1
        log.debug("negative clicks removed %d voxels", int(region.sum() - kept.sum()))
        return kept


class SmoothedVolume:
    """The Gaussian-smoothed volume, computed block by block where clicks look.

    Equal to smoothing the whole volume at once (each block is filtered with a halo as wide as
    the kernel, and at the grid's edges the halo ends where the grid does, as the full filter's
    reflection does), but a first click on a 512x512x300 series pays for the blocks around it,
    not for 80 M voxels (1-3 s on a busy CPU). Only touched under the session's lock.
    """

    BLOCK = (16, 64, 64)

    def __init__(self, source: Float3D, sigma: tuple[float, float, float]) -> None:
        self.source = source
        self.sigma = sigma
        self.halo = [int(4.0 * s + 0.5) for s in sigma]  # scipy's kernel radius (truncate=4)
        # Pages of an untouched np.empty are not resident: memory grows with what is used.
        self.values = np.empty(source.shape, dtype=np.float32)
        self.done = np.zeros(
            [-(-n // b) for n, b in zip(source.shape, self.BLOCK, strict=True)], dtype=bool
        )
        self.spent_s = 0.0  # filtering time so far: reported as feature time, not decoding

    @property
    def shape(self) -> tuple[int, int, int]:
        z, y, x = self.source.shape
        return (int(z), int(y), int(x))

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes + self.done.nbytes)  # accounted whole: the upper bound

    def window(self, box: Bounds) -> Float3D:
        """The smoothed voxels of ``box`` (slices of the grid), computing missing blocks."""
        blocks = _bounds(
            slice(b.start // size, -(-b.stop // size))
            for b, size in zip(box, self.BLOCK, strict=True)
        )
        missing = _occupied(~self.done[blocks])
        if missing != EMPTY_BOUNDS:
            started = time.perf_counter()
            # One filter over the box of all missing blocks (some may be done: same values).
            todo = _shift(missing, blocks)
            target = _bounds(
                slice(t.start * size, min(n, t.stop * size))
                for t, size, n in zip(todo, self.BLOCK, self.shape, strict=True)
            )
            padded = _bounds(
                slice(max(0, t.start - h), min(n, t.stop + h))
                for t, h, n in zip(target, self.halo, self.shape, strict=True)
            )
            filtered = ndi.gaussian_filter(
                self.source[padded].astype(np.float32, copy=False), self.sigma
            )
            self.values[target] = filtered[_relative(target, padded)]
            self.done[todo] = True
            self.spent_s += time.perf_counter() - started
        return self.values[box]


@dataclass(frozen=True)
class Part:
    """What one click grew: a mask over ``bounds`` of the grid (cached per session)."""

    bounds: Bounds
    mask: Bool3D

    def contains(self, voxel: tuple[int, int, int]) -> bool:
        if not all(b.start <= v < b.stop for v, b in zip(voxel, self.bounds, strict=True)):
            return False
        return bool(self.mask[_relative_voxel(voxel, self.bounds)])


def _distance(region: Bool3D, spacing: tuple[float, float, float]) -> Float3D:
    """Distance (mm) of each voxel of ``region`` to the nearest voxel outside it."""
    padded = np.pad(region, 1)  # beyond the array is outside too
    inner = ndi.distance_transform_edt(padded, sampling=spacing)[1:-1, 1:-1, 1:-1]
    return np.asarray(inner, dtype=np.float32)


def _computed_array(array: Float3D) -> Computed:
    return Computed(array, int(array.nbytes))


def _bounds(slices: Iterable[slice]) -> Bounds:
    first, second, third = slices
    return (first, second, third)


def _window(centre: tuple[int, int, int], half: list[int], shape: tuple[int, ...]) -> Bounds:
    return _bounds(
        slice(max(0, c - h), min(n, c + h + 1)) for c, h, n in zip(centre, half, shape, strict=True)
    )


def _relative_voxel(voxel: tuple[int, ...], box: Bounds) -> tuple[int, int, int]:
    z, y, x = (v - b.start for v, b in zip(voxel, box, strict=True))
    return (z, y, x)


def _relative(inner: Bounds, outer: Bounds) -> Bounds:
    """``inner`` (grid coordinates) as slices of an array covering ``outer``."""
    return _bounds(
        slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer, strict=True)
    )


def _shift(inner: Bounds, outer: Bounds) -> Bounds:
    """``inner`` (slices of an array covering ``outer``) in grid coordinates."""
    return _bounds(
        slice(i.start + o.start, i.stop + o.start) for i, o in zip(inner, outer, strict=True)
    )


def _union(boxes: list[Bounds]) -> Bounds:
    boxes = [b for b in boxes if all(s.stop > s.start for s in b)]
    if not boxes:
        return EMPTY_BOUNDS
    return _bounds(
        slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3)
    )


def _occupied(mask: Bool3D) -> Bounds:
    """The bounding box of ``mask``'s voxels (slices of ``mask``), empty slices if none."""
    found = ndi.find_objects(mask.view(np.uint8))
    if not found or found[0] is None:
        return EMPTY_BOUNDS
    return _bounds(found[0])


def _connected(mask: Bool3D, seed: tuple[int, ...]) -> Bool3D:
    """Voxels of ``mask`` connected to ``seed`` through faces (6-neighbourhood)."""
    grown = _flood(mask, seed, connectivity=1)  # type: ignore[no-untyped-call]
    return np.asarray(grown, dtype=bool)


def _split(
    elevation: npt.NDArray[np.floating[Any]], markers: npt.NDArray[np.int32], mask: Bool3D
) -> npt.NDArray[np.int32]:
    """Marker-controlled watershed restricted to ``mask``."""
    labels = _watershed(elevation, markers, mask=mask)  # type: ignore[no-untyped-call]
    return np.asarray(labels, dtype=np.int32)
