"""Independent readers of the result objects.

They share no code with ``ainode_worker.results``: they recompute the geometry from the source
files, parse SEG frames and RTSTRUCT contours with plain pydicom, or call external programs
(dciodvfy, dcmqi), so a bug in the writers cannot hide in the check.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom import Dataset
from skimage.draw import polygon as fill_polygon

from ainode.registry import LabelSpec

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


# Readers and validators.


def dciodvfy_errors(path: Path) -> list[str]:
    """The error lines dciodvfy (dicom3tools) prints for a file; warnings are ignored."""
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    lines = (run.stdout + run.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def label_values_by_segment(seg: Dataset, labels: Sequence[LabelSpec]) -> dict[int, int]:
    """Segment number -> model label value, matched by the segment's label text."""
    by_name = {label.name: label.value for label in labels}
    return {
        int(item.SegmentNumber): by_name[str(item.SegmentLabel)]
        for item in seg.SegmentSequence
        if int(item.SegmentNumber) != 0  # LABELMAP may describe background as segment 0
    }


def read_seg_with_pydicom(
    path: Path, sources: Sequence[Dataset], labels: Sequence[LabelSpec]
) -> np.ndarray:
    """Rebuild the label map from frame positions and segment numbers, without highdicom."""
    seg = pydicom.dcmread(path)
    grid = Grid.of(sources)
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert np.allclose(
        shared.PlaneOrientationSequence[0].ImageOrientationPatient,
        sources[0].ImageOrientationPatient,
        atol=1e-5,
    )
    assert np.allclose(shared.PixelMeasuresSequence[0].PixelSpacing, sources[0].PixelSpacing)
    n, rows, cols = int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns)
    if seg.BitsAllocated == 1:
        bits = np.unpackbits(np.frombuffer(seg.PixelData, dtype=np.uint8), bitorder="little")
        frames = bits[: n * rows * cols].reshape(n, rows, cols)
    else:
        frames = seg.pixel_array.reshape(n, rows, cols)
    values = label_values_by_segment(seg, labels)
    out = np.zeros((len(sources), rows, cols), dtype=np.uint16)
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        position = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        k = grid.slice_of(position)
        assert np.allclose(position, grid.positions[k], atol=1e-3)
        derivation = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert derivation.ReferencedSOPInstanceUID == grid.uids[k]
        if "SegmentIdentificationSequence" in item:
            number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
            out[k][frame > 0] = values[number]
        else:  # LABELMAP: pixel values are segment numbers
            for number, value in values.items():
                out[k][frame == number] = value
    return out


def read_seg_with_dcmqi(
    path: Path, sources: Sequence[Dataset], labels: Sequence[LabelSpec], folder: Path
) -> np.ndarray:
    """Convert with dcmqi's segimage2itkimage, then resample nothing: map voxels by position."""
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
    by_name = {label.name: label.value for label in labels}
    grid = Grid.of(sources)
    out = np.zeros((len(sources), int(sources[0].Rows), int(sources[0].Columns)), np.uint16)
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
        out[tuple(rounded.T)] = by_name[group[0]["SegmentLabel"]]
    return out


def rasterise_rtstruct(path: Path, sources: Sequence[Dataset]) -> dict[str, np.ndarray]:
    """ROI name -> mask, filling each slice's contours with the even-odd rule."""
    ds = pydicom.dcmread(path)
    grid = Grid.of(sources)
    shape = (len(sources), int(sources[0].Rows), int(sources[0].Columns))
    names = {int(item.ROINumber): str(item.ROIName) for item in ds.StructureSetROISequence}
    masks: dict[str, np.ndarray] = {}
    for roi in ds.ROIContourSequence:
        mask = np.zeros(shape, dtype=bool)
        for contour in roi.get("ContourSequence", []):
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
            assert len(points) == int(contour.NumberOfContourPoints)
            k = grid.slice_of(points[0])
            assert contour.ContourImageSequence[0].ReferencedSOPInstanceUID == grid.uids[k]
            offsets = points - grid.positions[k]
            assert np.abs(offsets @ grid.normal).max() < 1e-3, "contour is not planar on its slice"
            rows = offsets @ grid.y / grid.row_spacing
            cols = offsets @ grid.x / grid.column_spacing
            rr, cc = fill_polygon(rows, cols, shape[1:])  # type: ignore[no-untyped-call]
            layer = np.zeros(shape[1:], dtype=bool)
            layer[rr, cc] = True
            mask[k] ^= layer
        masks[names[int(roi.ReferencedROINumber)]] = mask
    return masks


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total
