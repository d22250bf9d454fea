"""What a user gave to steer a segmentation: clicks, boxes and optionally the last mask.

Coordinates are voxel indices of the series as the node orders it everywhere: ``x`` = column,
``y`` = row, ``z`` = slice index with slices sorted by position along the normal
(row direction x column direction). Points may be fractional in x and y (viewers report
sub-pixel positions); a slice index is a whole number.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .errors import BadRequestError, PromptOutsideVolumeError

Mask = npt.NDArray[np.uint8]
# Where a mask may be nonzero: per axis (slice, row, column) a slice of the full grid. Lets
# every step after a backend (voxel count, encoding, the next click) skip the empty rest of a
# 512x512x300 grid; an empty mask has empty slices.
Bounds = tuple[slice, slice, slice]
EMPTY_BOUNDS: Bounds = (slice(0, 0), slice(0, 0), slice(0, 0))


def mask_bounds(mask: Mask) -> Bounds:
    """The smallest box holding every nonzero voxel of ``mask``."""
    slices = np.flatnonzero(mask.any(axis=(1, 2)))
    if slices.size == 0:
        return EMPTY_BOUNDS
    slab = mask[slices[0] : slices[-1] + 1]  # later passes only look at the occupied slices
    rows = np.flatnonzero(slab.any(axis=(0, 2)))
    columns = np.flatnonzero(slab[:, rows[0] : rows[-1] + 1].any(axis=(0, 1)))
    return (
        slice(int(slices[0]), int(slices[-1]) + 1),
        slice(int(rows[0]), int(rows[-1]) + 1),
        slice(int(columns[0]), int(columns[-1]) + 1),
    )


def tight_bounds(mask: Mask, within: Bounds) -> Bounds:
    """:func:`mask_bounds` of ``mask``, looking only inside ``within`` (known to hold it all)."""
    local = mask_bounds(mask[within])
    if local == EMPTY_BOUNDS:
        return EMPTY_BOUNDS
    return (
        slice(within[0].start + local[0].start, within[0].start + local[0].stop),
        slice(within[1].start + local[1].start, within[1].start + local[1].stop),
        slice(within[2].start + local[2].start, within[2].start + local[2].stop),
    )


def voxel_count(mask: Mask, bounds: Bounds) -> int:
    return int(np.count_nonzero(mask[bounds]))


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    z: int
    positive: bool = True

    def voxel(self) -> tuple[int, int, int]:
        """The ``[slice, row, column]`` index of the voxel the click falls in."""
        return (self.z, round(self.y), round(self.x))


@dataclass(frozen=True)
class Box:
    """A rectangle drawn on slice ``z``: corners (x0, y0) and (x1, y1) in voxels, inclusive."""

    z: int
    x0: float
    y0: float
    x1: float
    y1: float

    def normalised(self) -> Box:
        return Box(
            self.z,
            min(self.x0, self.x1),
            min(self.y0, self.y1),
            max(self.x0, self.x1),
            max(self.y0, self.y1),
        )

    def centre(self) -> Point:
        return Point((self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0, self.z, True)


@dataclass(frozen=True)
class Prompts:
    points: tuple[Point, ...] = ()
    boxes: tuple[Box, ...] = ()
    previous_mask: Mask | None = None
    previous_bounds: Bounds | None = None  # of ``previous_mask``, when known

    @property
    def positives(self) -> tuple[Point, ...]:
        return tuple(p for p in self.points if p.positive)

    @property
    def negatives(self) -> tuple[Point, ...]:
        return tuple(p for p in self.points if not p.positive)

    def slices(self) -> list[int]:
        """Slices carrying a positive click or a box (the anchors a slice model starts from)."""
        return sorted({p.z for p in self.positives} | {b.z for b in self.boxes})

    def validate(self, shape: tuple[int, int, int]) -> None:
        """Raise unless there is something to segment and every prompt lies in the grid."""
        if not self.positives and not self.boxes:
            raise BadRequestError(
                "nothing to segment: give at least one positive click (label 1) or a box"
            )
        slices, rows, columns = shape
        for number, point in enumerate(self.points, start=1):
            if not (
                0 <= point.z < slices and 0 <= point.y <= rows - 1 and 0 <= point.x <= columns - 1
            ):
                raise PromptOutsideVolumeError(
                    f"point {number} (x={point.x:g}, y={point.y:g}, z={point.z}) lies outside the "
                    f"series: x must be in 0..{columns - 1}, y in 0..{rows - 1}, "
                    f"z in 0..{slices - 1}"
                )
        for number, box in enumerate(self.boxes, start=1):
            box = box.normalised()
            inside = (
                0 <= box.z < slices
                and box.x0 >= 0
                and box.x1 <= columns - 1
                and box.y0 >= 0
                and box.y1 <= rows - 1
            )
            if not inside:
                raise PromptOutsideVolumeError(
                    f"box {number} on slice {box.z} "
                    f"({box.x0:g},{box.y0:g})-({box.x1:g},{box.y1:g}) does not lie inside "
                    f"the series ({columns} columns, {rows} rows, "
                    f"{slices} slices)"
                )
        if self.previous_mask is not None and self.previous_mask.shape != shape:
            raise BadRequestError(
                f"the previous mask has shape {self.previous_mask.shape}, the series {shape}"
            )
