"""Readers of DICOM results that share no code with the node, for unit and integration tests.

The geometry is recomputed from the source files and dcmqi (the library 3D Slicer reads SEG
with) converts a SEG on its own, so a bug in the writers cannot hide in the check.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom import Dataset

# Independent geometry: voxel index <-> patient coordinates, from the source files only.


@dataclass
class Grid:
    positions: np.ndarray  # (n, 3)
    x: np.ndarray  # row direction
    y: np.ndarray  # column direction
    normal: np.ndarray
    row_spacing: float
    column_spacing: float
    uids: list[str]

    @classmethod
    def of(cls, sources: Sequence[Dataset]) -> Grid:
        iop = np.asarray(sources[0].ImageOrientationPatient, dtype=float)
        return cls(
            positions=np.array([ds.ImagePositionPatient for ds in sources], dtype=float),
            x=iop[:3],
            y=iop[3:],
            normal=np.cross(iop[:3], iop[3:]),
            row_spacing=float(sources[0].PixelSpacing[0]),
            column_spacing=float(sources[0].PixelSpacing[1]),
            uids=[str(ds.SOPInstanceUID) for ds in sources],
        )

    def slice_of(self, point: np.ndarray) -> int:
        """The slice whose plane holds ``point`` (asserts it lies on one)."""
        distances = (point - self.positions) @ self.normal
        k = int(np.argmin(np.abs(distances)))
        assert abs(distances[k]) < 1e-3, f"point {point} lies on no source slice"
        return k

    def indices(self, points: np.ndarray) -> np.ndarray:
        """Continuous (slice, row, column) indices of patient points (n, 3)."""
        step = (self.positions[-1] - self.positions[0]) / (len(self.positions) - 1)
        basis = np.column_stack([step, self.y * self.row_spacing, self.x * self.column_spacing])
        return np.linalg.solve(basis, (points - self.positions[0]).T).T


def sort_by_position(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Source slices in order along their normal (the order a label map's slices have)."""

    def along_normal(ds: Dataset) -> float:
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        return float(np.dot(np.cross(iop[:3], iop[3:]), np.asarray(ds.ImagePositionPatient, float)))

    return sorted(datasets, key=along_normal)


def read_seg_numbers_with_dcmqi(path: Path, sources: Sequence[Dataset], folder: Path) -> np.ndarray:
    """Segment numbers on the source grid, as dcmqi reads a BINARY SEG (see below)."""
    out = np.zeros((len(sources), int(sources[0].Rows), int(sources[0].Columns)), np.uint16)
    for number, values in read_segments_with_dcmqi(path, sources, folder).items():
        out[values > 0] = number
    return out


def read_segments_with_dcmqi(
    path: Path, sources: Sequence[Dataset], folder: Path
) -> dict[int, np.ndarray]:
    """Segment number -> its stored values (1 for BINARY, 0..255 for FRACTIONAL) on the source
    grid, as dcmqi's segimage2itkimage reads the SEG.

    dcmqi builds one volume per segment from the SEG alone (its frame positions and pixel
    measures); each voxel is placed back into the sorted sources by patient position, and must
    land on a source voxel centre: a wrong SpacingBetweenSlices or position shows here.
    """
    folder.mkdir(parents=True, exist_ok=True)
    tool = Path(sys.executable).parent / "segimage2itkimage"
    subprocess.run(
        [
            str(tool),
            "--inputDICOM",
            str(path),
            "--outputDirectory",
            str(folder),
            "--outputType",
            "nifti",
            "--prefix",
            "seg",
        ],
        check=True,
        capture_output=True,
    )
    meta = json.loads((folder / "seg-meta.json").read_text())
    grid = Grid.of(sources)
    shape = (len(sources), int(sources[0].Rows), int(sources[0].Columns))
    segments: dict[int, np.ndarray] = {}
    for index, group in enumerate(meta["segmentAttributes"], start=1):
        assert len(group) == 1
        image = sitk.ReadImage(str(folder / f"seg-{index}.nii.gz"))
        array = sitk.GetArrayFromImage(image)  # (z, y, x)
        zyx = np.argwhere(array > 0)
        points = np.array(
            [
                image.TransformIndexToPhysicalPoint([int(i) for i in v[::-1]])  # type: ignore[no-untyped-call]
                for v in zyx
            ]
        )
        ijk = grid.indices(points)
        rounded = np.rint(ijk).astype(int)
        assert np.abs(ijk - rounded).max() < 0.05, "dcmqi's grid is not the source grid"
        values = np.zeros(shape, dtype=array.dtype)
        values[tuple(rounded.T)] = array[tuple(zyx.T)]
        segments[int(group[0]["labelID"])] = values
    return segments
