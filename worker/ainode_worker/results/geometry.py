"""Where the source slices lie in patient space, checked once for every writer.

DICOM patient coordinates (LPS, millimetres) of voxel ``[k, r, c]`` are
``IPP[k] + c * column_spacing * row_direction + r * row_spacing * column_direction``:
``PixelSpacing`` is (between rows, between columns), ``ImageOrientationPatient`` is (direction
of a row, direction of a column). Getting this right once here keeps SEG, RTSTRUCT, NIfTI and
SR consistent for oblique planes and anisotropic pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom import Dataset

from .errors import ResultInputError

FloatArray = npt.NDArray[np.float64]

_ORIENTATION_TOL = 1e-4
_SPACING_TOL = 1e-4  # relative
_POSITION_TOL_MM = 0.01


@dataclass(frozen=True)
class SliceGeometry:
    """The voxel grid of a sorted single-frame series."""

    rows: int
    columns: int
    row_direction: FloatArray  # unit vector along a row (increasing column index)
    column_direction: FloatArray  # unit vector along a column (increasing row index)
    row_spacing: float  # mm between rows
    column_spacing: float  # mm between columns
    positions: FloatArray  # (slices, 3) ImagePositionPatient
    frame_of_reference_uid: str

    @classmethod
    def from_datasets(cls, datasets: Sequence[Dataset]) -> SliceGeometry:
        if not datasets:
            raise ResultInputError("no source images were given")
        first = datasets[0]
        missing = [
            k
            for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
            if k not in first
        ]
        if missing:
            raise ResultInputError(
                f"the source images lack {', '.join(missing)}; results need a 3D geometry"
            )
        orientation = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
        spacing = np.asarray(first.PixelSpacing, dtype=np.float64)
        for ds in datasets[1:]:
            _check_same(ds, "Rows", first.Rows)
            _check_same(ds, "Columns", first.Columns)
            if not np.allclose(ds.ImageOrientationPatient, orientation, atol=_ORIENTATION_TOL):
                raise ResultInputError("the source images do not share one orientation")
            if not np.allclose(ds.PixelSpacing, spacing, rtol=_SPACING_TOL):
                raise ResultInputError("the source images do not share one pixel spacing")
            if ds.get("FrameOfReferenceUID") != first.get("FrameOfReferenceUID"):
                raise ResultInputError("the source images do not share one frame of reference")
        row_dir = _unit(orientation[:3])
        col_dir = _unit(orientation[3:])
        geometry = cls(
            rows=int(first.Rows),
            columns=int(first.Columns),
            row_direction=row_dir,
            column_direction=col_dir,
            row_spacing=float(spacing[0]),
            column_spacing=float(spacing[1]),
            positions=np.array([ds.ImagePositionPatient for ds in datasets], dtype=np.float64),
            frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
        )
        geometry._check_sorted()
        return geometry

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.positions), self.rows, self.columns)

    @property
    def normal(self) -> FloatArray:
        """Row direction x column direction: the direction slices are sorted along."""
        return np.cross(self.row_direction, self.column_direction)

    def slice_spacing(self) -> float:
        """Mean distance between neighbouring slices along the normal (mm)."""
        if len(self.positions) < 2:
            raise ResultInputError("a single slice has no slice spacing")
        along = self.positions @ self.normal
        return float(np.mean(np.diff(along)))

    def even_slice_spacing(self) -> float | None:
        """Distance between slices (mm) when they are evenly spaced, else ``None``.

        Written into results as SpacingBetweenSlices instead of the source's value, which older
        GE scanners use for the gap between slices and other readers then misplace frames by.
        """
        if len(self.positions) < 2:
            return None
        steps = np.diff(self.positions, axis=0)
        if np.abs(steps - steps.mean(axis=0)).max() > _POSITION_TOL_MM:
            return None
        return float(np.linalg.norm(steps.mean(axis=0)))

    def pixel_to_patient(self, slice_index: int, rows_cols: FloatArray) -> FloatArray:
        """Patient coordinates (n, 3) of (row, column) pixel coordinates (n, 2) on one slice."""
        points = (
            self.positions[slice_index]
            + np.outer(rows_cols[:, 1] * self.column_spacing, self.row_direction)
            + np.outer(rows_cols[:, 0] * self.row_spacing, self.column_direction)
        )
        return np.asarray(points, dtype=np.float64)

    def affine_lps(self) -> FloatArray:
        """4x4 matrix from (column, row, slice) indices to LPS mm; needs evenly spaced slices."""
        step = self._regular_step()
        affine = np.eye(4)
        affine[:3, 0] = self.row_direction * self.column_spacing
        affine[:3, 1] = self.column_direction * self.row_spacing
        affine[:3, 2] = step
        affine[:3, 3] = self.positions[0]
        return affine

    def check_volume(self, volume_shape: tuple[int, ...], what: str) -> None:
        """Raise unless a ``[slice, row, column]`` array matches the source images."""
        if tuple(volume_shape) != self.shape:
            raise ResultInputError(
                f"the {what} has shape {tuple(volume_shape)} but the source series is "
                f"{self.shape} (slices, rows, columns)"
            )

    def _regular_step(self) -> FloatArray:
        if len(self.positions) < 2:
            raise ResultInputError("a single slice does not define a 3D grid")
        steps = np.diff(self.positions, axis=0)
        mean = steps.mean(axis=0)
        if np.abs(steps - mean).max() > _POSITION_TOL_MM:
            raise ResultInputError(
                "the source slices are unevenly spaced; a regular grid (NIfTI) cannot hold them"
            )
        return np.asarray(mean, dtype=np.float64)

    def _check_sorted(self) -> None:
        along = self.positions @ self.normal
        if len(along) > 1 and not np.all(np.diff(along) > _POSITION_TOL_MM):
            raise ResultInputError(
                "the source images are not sorted by position along the slice normal "
                "(or two share a position); the label map's slices cannot be matched to them"
            )


def _unit(vector: FloatArray) -> FloatArray:
    norm = float(np.linalg.norm(vector))
    if norm < 1e-6:
        raise ResultInputError("ImageOrientationPatient holds a zero vector")
    return np.asarray(vector / norm, dtype=np.float64)


def _check_same(ds: Dataset, keyword: str, expected: object) -> None:
    if ds.get(keyword) != expected:
        raise ResultInputError(f"the source images do not share one {keyword}")
