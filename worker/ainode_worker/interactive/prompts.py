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
