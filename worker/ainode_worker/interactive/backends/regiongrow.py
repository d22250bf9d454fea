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
A box adds a positive click at its centre and bounds the result in-plane to the box (with a
small margin) on every slice. The smoothed volume is the feature cached per session, so
follow-up clicks skip it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi
from skimage.morphology import flood as _flood
from skimage.segmentation import watershed as _watershed

from ..cache import Computed, FeatureCache
from ..prompts import Box, Point, Prompts
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
        started = time.perf_counter()
        seeds = list(prompts.positives) + [box.normalised().centre() for box in prompts.boxes]
        region = np.zeros(view.array.shape, dtype=bool)
        for seed in seeds:
            if region[seed.voxel()]:
                continue  # already inside what an earlier click grew
            region |= self._grow(view, smoothed, seed.voxel())
        if prompts.boxes:
            region &= self._box_limits(view.array.shape, prompts.boxes)
        if prompts.negatives:
            region = self._cut(region, view.spacing, seeds, prompts.negatives)
        decode_ms = (time.perf_counter() - started) * 1000.0
        return SegmentOutcome(
            mask=region.astype(np.uint8),
            embed_ms=embed_ms,
            decode_ms=decode_ms,
            features_computed=0 if reused else 1,
            features_reused=1 if reused else 0,
        )

    def _smooth(self, view: VolumeView) -> Computed:
        sigma = [self.params.smoothing_mm / s for s in view.spacing]
        smoothed = ndi.gaussian_filter(view.array.astype(np.float32, copy=False), sigma)
        return Computed(smoothed, int(smoothed.nbytes))

    def _grow(self, view: VolumeView, smoothed: Float3D, seed: tuple[int, int, int]) -> Bool3D:
        low, high = self._interval(view, seed)
        inside = (smoothed >= low) & (smoothed <= high)
        if not inside[seed]:
            # The clicked voxel itself is atypical of its neighbourhood (noise, a vessel):
            # accept it so the click still yields its surroundings.
            inside[seed] = True
        # Crop to what the seed reaches at all before the costlier steps.
        reach = _connected(inside, seed)
        box = _grown_box(reach, self.params.band_voxels + 2)
        local_seed = tuple(int(s - b.start) for s, b in zip(seed, box, strict=True))
        opened = ndi.binary_opening(inside[box], _CROSS)
        if not opened[local_seed]:
            opened = reach[box]
        core = _connected(opened, local_seed)
        refined = self._refine(smoothed[box], core, view.spacing)
        refined[local_seed] = True
        refined = _connected(refined, local_seed)
        region = np.zeros(smoothed.shape, dtype=bool)
        region[box] = ndi.binary_fill_holes(refined)
        return region

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
        spacing: tuple[float, float, float],
        positives: list[Point],
        negatives: tuple[Point, ...],
    ) -> Bool3D:
        inside = [n for n in negatives if region[n.voxel()]]
        if not inside:
            return region
        box = _grown_box(region, 1)
        local = region[box]
        markers = np.zeros(local.shape, dtype=np.int32)
        offset = [b.start for b in box]
        for label, points in ((1, positives), (2, inside)):
            for point in points:
                voxel = tuple(v - o for v, o in zip(point.voxel(), offset, strict=True))
                if local[voxel]:
                    markers[voxel] = label
        distance = ndi.distance_transform_edt(local, sampling=spacing)
        parts = _split(-distance, markers, mask=local)
        kept = np.zeros(region.shape, dtype=bool)
        kept[box] = parts == 1
        log.debug("negative clicks removed %d voxels", int(region.sum() - kept.sum()))
        return kept


def _grown_box(mask: Bool3D, margin: int) -> tuple[slice, slice, slice]:
    found = ndi.find_objects(mask.astype(np.uint8))
    if not found or found[0] is None:
        return (slice(0, 0), slice(0, 0), slice(0, 0))
    return tuple(  # type: ignore[return-value]
        slice(max(0, s.start - margin), min(n, s.stop + margin))
        for s, n in zip(found[0], mask.shape, strict=True)
    )


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
