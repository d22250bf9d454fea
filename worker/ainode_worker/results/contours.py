"""Planar contours of a binary slice, in pixel coordinates.

Each boundary between a label and its surroundings becomes one closed polygon: outer
boundaries and the boundaries of holes alike. Vertices lie half-way between a pixel inside
and a pixel outside (marching squares at level 0.5), so filling the polygon by pixel centre
gives the mask back. Holes are not marked specially: a reader must combine the polygons of
one slice with the even-odd (XOR) rule, which is how radiotherapy systems read nested
CLOSED_PLANAR contours; an island inside a hole is then filled again as it should be.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from skimage import measure

# Twice the area of the triangle of three vertices below which the middle one is dropped:
# marching squares puts a vertex on every pixel edge, mostly along straight lines.
_COLLINEAR_TOL = 1e-6


def slice_contours(mask: npt.NDArray[np.bool_]) -> list[npt.NDArray[np.float64]]:
    """Closed polygons (each ``(n, 2)`` of row, column; last vertex not repeated)."""
    padded = np.pad(mask, 1).astype(np.uint8)  # closes contours that touch the image edge
    polygons = []
    contours = measure.find_contours(padded, 0.5)  # type: ignore[no-untyped-call]
    for contour in contours:
        if len(contour) > 1 and np.array_equal(contour[0], contour[-1]):
            contour = contour[:-1]
        polygon = drop_collinear(np.asarray(contour, dtype=np.float64) - 1.0)
        if len(polygon) >= 3:
            polygons.append(polygon)
    return polygons


def drop_collinear(polygon: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The closed polygon without vertices lying on the straight line between their neighbours.

    Exact (the outline does not move) and vectorised: a run of collinear vertices keeps only
    its two ends, because each inner vertex is tested against its original neighbours.
    """
    if len(polygon) < 4:
        return polygon
    incoming = polygon - np.roll(polygon, 1, axis=0)
    outgoing = np.roll(polygon, -1, axis=0) - polygon
    cross = incoming[:, 0] * outgoing[:, 1] - incoming[:, 1] * outgoing[:, 0]
    straight = (np.abs(cross) <= _COLLINEAR_TOL) & (np.einsum("ij,ij->i", incoming, outgoing) > 0)
    kept: npt.NDArray[np.float64] = polygon[~straight]
    return kept
