"""Resampling one volume onto another's grid (e.g. ADC onto T2 for a two-channel model)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from ainode_worker.volume.errors import MixedSeriesError
from ainode_worker.volume.model import Volume


def resample_to(moving: Volume, reference: Volume, *, order: int = 1) -> Volume:
    """``moving``'s voxels on ``reference``'s grid, by patient coordinates (rigid, no registration).

    Both must share a frame of reference: positions in different frames are not comparable.
    Voxels outside ``moving`` get its minimum value. ``order`` 0 is nearest (label maps).
    """
    if moving.frame_of_reference_uid != reference.frame_of_reference_uid:
        raise MixedSeriesError(
            "the series to combine are in different frames of reference; "
            "their positions cannot be matched without registration"
        )
    if moving.same_grid(reference):
        return reference.with_array(moving.array)
    # reference voxel index -> patient mm -> moving voxel index
    matrix = np.linalg.inv(moving.affine) @ reference.affine
    array: npt.NDArray[np.float32] = ndimage.affine_transform(
        moving.array,
        matrix[:3, :3],
        offset=matrix[:3, 3],
        output_shape=reference.shape,
        output=np.float32,
        order=order,
        mode="constant",
        cval=float(moving.array.min()),
    )
    return reference.with_array(array)
