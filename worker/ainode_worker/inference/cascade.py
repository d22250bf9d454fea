"""How one stage's output feeds the next: crop to its bounding box, intersect, extra channel."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from ainode_worker.inference.prediction import Prediction

Box = tuple[slice, slice, slice]


def selected(
    labels: npt.NDArray[np.unsignedinteger], values: list[int] | None
) -> npt.NDArray[np.bool_]:
    """Voxels of the chosen label values (all non-zero when ``values`` is None)."""
    return labels > 0 if values is None else np.isin(labels, values)


def bounding_box(
    mask: npt.NDArray[np.bool_],
    padding_mm: tuple[float, float, float],
    spacing: tuple[float, float, float],
) -> Box | None:
    """The mask's bounding box grown by ``padding_mm`` per axis, clipped to the grid."""
    if not mask.any():
        return None
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        pad = math.ceil(padding_mm[axis] / spacing[axis])
        box.append(
            slice(max(0, int(hits[0]) - pad), min(mask.shape[axis], int(hits[-1]) + 1 + pad))
        )
    return (box[0], box[1], box[2])


def paste(cropped: Prediction, box: Box, shape: tuple[int, int, int]) -> Prediction:
    """A crop's prediction placed back on the full grid (background elsewhere)."""
    labels = np.zeros(shape, dtype=cropped.labels.dtype)
    labels[box] = cropped.labels
    probabilities = None
    if cropped.probabilities is not None:
        probabilities = np.zeros((cropped.probabilities.shape[0], *shape), dtype=np.float32)
        probabilities[0] = 1.0
        probabilities[(slice(None), *box)] = cropped.probabilities
    return Prediction(labels=labels, probabilities=probabilities)


def keep_overlapping(
    labels: npt.NDArray[np.unsignedinteger],
    previous: npt.NDArray[np.bool_],
    min_overlap: float,
) -> npt.NDArray[np.unsignedinteger]:
    """Keep each connected component (per label) with at least ``min_overlap`` of its voxels
    inside ``previous``; remove the others."""
    out = labels.copy()
    structure = ndimage.generate_binary_structure(3, 3)
    for value in (int(v) for v in np.unique(labels) if v != 0):
        components, count = ndimage.label(labels == value, structure=structure)
        sizes = np.bincount(components.ravel(), minlength=count + 1)
        inside = np.bincount(components.ravel(), weights=previous.ravel(), minlength=count + 1)
        drop = inside < min_overlap * sizes
        drop[0] = False
        out[drop[components]] = 0
    return out
