"""Independent readers of the result objects.

They share no code with ``ainode_worker.results``: they recompute the geometry from the source
files, parse SEG frames and RTSTRUCT contours with plain pydicom, or call external programs
(dciodvfy, dcmqi), so a bug in the writers cannot hide in the check.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from dicom_readers import Grid, read_seg_numbers_with_dcmqi
from pydicom import Dataset
from skimage.draw import polygon as fill_polygon

from ainode.registry import LabelSpec

# Attributes a result may repeat from its source: who and which study, the frame of reference,
# the image matrix (the result is on the source grid) and values that merely coincide.
COPIED_ON_PURPOSE = {
    *("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID"),
    *("StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName"),
    *("StudyDescription", "SpecificCharacterSet", "FrameOfReferenceUID"),
    *("PositionReferenceIndicator", "Rows", "Columns"),
    *("InstanceNumber", "SamplesPerPixel", "PhotometricInterpretation", "PixelRepresentation"),
}


def attributes_equal_to_source(result: Dataset, source: Dataset) -> set[str]:
    """Top-level attributes of ``result`` whose value is the source's own."""
    return {
        element.keyword
        for element in result
        if element.VR != "SQ"
        and element.keyword in source
        and source[element.keyword].value == element.value
    }


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
    """dcmqi's reading (see :mod:`dicom_readers`) with the model's label values."""
    numbers = read_seg_numbers_with_dcmqi(path, sources, folder)
    values = label_values_by_segment(pydicom.dcmread(path, stop_before_pixels=True), labels)
    out = np.zeros(numbers.shape, dtype=np.uint16)
    for number, value in values.items():
        out[numbers == number] = value
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
