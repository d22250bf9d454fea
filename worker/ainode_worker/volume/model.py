"""The :class:`Volume`: voxels plus where they lie in patient space."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt
from pydicom import Dataset

Vector = tuple[float, float, float]


@dataclass(frozen=True, eq=False)  # arrays: compare explicitly, never by ==
class Volume:
    """A 3D image, ``array[slice, row, column]``, slices in order along the slice normal.

    ``origin`` is the centre of voxel (0, 0, 0) in patient coordinates (mm, DICOM LPS);
    ``row_direction`` is the direction of increasing column index (DICOM's first
    ImageOrientationPatient vector), ``column_direction`` that of increasing row index.
    """

    array: npt.NDArray[np.float32]
    spacing: Vector  # slice, row, column (mm)
    origin: Vector
    row_direction: Vector
    column_direction: Vector
    series_uid: str
    frame_of_reference_uid: str
    datasets: Sequence[Dataset] = field(default_factory=list, repr=False)  # may be read lazily
    modality: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        s, r, c = self.array.shape
        return (int(s), int(r), int(c))

    @property
    def normal(self) -> npt.NDArray[np.float64]:
        return np.cross(np.asarray(self.row_direction), np.asarray(self.column_direction))

    @property
    def affine(self) -> npt.NDArray[np.float64]:
        """4x4 matrix: homogeneous voxel index (slice, row, column, 1) -> patient mm."""
        matrix = np.eye(4)
        matrix[:3, 0] = self.normal * self.spacing[0]
        matrix[:3, 1] = np.asarray(self.column_direction) * self.spacing[1]
        matrix[:3, 2] = np.asarray(self.row_direction) * self.spacing[2]
        matrix[:3, 3] = self.origin
        return matrix

    def with_array(self, array: npt.NDArray[np.float32]) -> Volume:
        """The same grid carrying other voxels (e.g. a resampled second series)."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} differs from the grid {self.shape}")
        return replace(self, array=array)

    def crop(self, box: tuple[slice, slice, slice]) -> Volume:
        """The sub-volume ``array[box]``, with its origin moved accordingly (steps of 1 only)."""
        starts = []
        for axis, part in enumerate(box):
            start, stop, step = part.indices(self.shape[axis])
            if step != 1 or stop <= start:
                raise ValueError(f"crop box {box} is empty or strided on axis {axis}")
            starts.append(start)
        origin = self.affine @ np.array([*starts, 1.0])
        datasets = self.datasets[box[0]] if len(self.datasets) == self.shape[0] else self.datasets
        return replace(
            self,
            array=np.ascontiguousarray(self.array[box]),
            origin=(float(origin[0]), float(origin[1]), float(origin[2])),
            datasets=list(datasets),
        )

    def same_grid(self, other: Volume, tolerance_mm: float = 1e-3) -> bool:
        """True when both volumes have the same shape and voxel-to-patient mapping."""
        return self.shape == other.shape and bool(
            np.allclose(self.affine, other.affine, atol=tolerance_mm)
        )
