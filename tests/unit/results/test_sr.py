"""TID 1500 SR: conformance (dciodvfy), volumes per label, references to the SEG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from ainode_worker.results import ResultInputError, save_dicom, write_seg, write_sr

from ainode.jobs import OutputKind

from .cases import Case
from .readers import dciodvfy_errors


def _walk(items: pydicom.Sequence) -> list[pydicom.Dataset]:
    found = []
    for item in items:
        found.append(item)
        found.extend(_walk(item.get("ContentSequence", [])))
    return found


def _volumes_by_segment(sr: pydicom.Dataset) -> dict[int, float]:
    """Segment number -> volume in mL, read from the raw content tree."""
    volumes: dict[int, float] = {}
    for group in _walk(sr.ContentSequence):
        if group.get("ValueType") != "CONTAINER":
            continue
        children = group.get("ContentSequence", [])
        segments = [c for c in children if c.ValueType == "IMAGE" and "ReferencedSOPSequence" in c]
        numbers = [
            c
            for c in children
            if c.ValueType == "NUM" and c.ConceptNameCodeSequence[0].CodeMeaning == "Volume"
        ]
        if segments and numbers:
            reference = segments[0].ReferencedSOPSequence[0]
            measured = numbers[0].MeasuredValueSequence[0]
            assert measured.MeasurementUnitsCodeSequence[0].CodeValue == "mL"
            volumes[int(reference.ReferencedSegmentNumber)] = float(measured.NumericValue)
    return volumes


@pytest.mark.parametrize("kind", [OutputKind.SEG, OutputKind.SEG_LABELMAP])
def test_sr_volumes_and_references(oblique_case: Case, tmp_path: Path, kind: OutputKind) -> None:
    case = oblique_case
    seg = write_seg(case.truth, case.sources, case.labels, case.provenance, kind=kind)
    sr = write_sr(seg, case.truth, case.sources, case.labels, case.provenance)
    path = save_dicom(sr, OutputKind.SR, tmp_path).path
    errors = dciodvfy_errors(path)
    if kind is OutputKind.SEG_LABELMAP:
        # The 2022 dciodvfy does not know Label Map Segmentation Storage (DICOM 2024), so it
        # objects to a segment number on a reference to it; nothing else may be reported.
        unknown_class = "Referenced SOP Class that is not segmentation"
        errors = [e for e in errors if unknown_class not in e]
    assert errors == []
    back = pydicom.dcmread(path)
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert back.StudyInstanceUID == case.sources[0].StudyInstanceUID
    assert back.PatientID == case.sources[0].PatientID
    evidence = back.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    referenced = {i.ReferencedSOPInstanceUID for s in evidence for i in s.ReferencedSOPSequence}
    assert seg.SOPInstanceUID in referenced
    slice_mm, row_mm, col_mm = case.phantom.geometry.spacing
    expected = {
        1: np.count_nonzero(case.truth == 1) * slice_mm * row_mm * col_mm / 1000.0,
        2: np.count_nonzero(case.truth == 2) * slice_mm * row_mm * col_mm / 1000.0,
    }
    volumes = _volumes_by_segment(back)
    assert set(volumes) == {1, 2}
    for number, value in expected.items():
        assert volumes[number] == pytest.approx(value, abs=1e-3)


def test_sr_refuses_a_seg_from_other_labels(axial_case: Case) -> None:
    case = axial_case
    only_box = np.where(case.truth == 2, 2, 0).astype(np.uint8)
    seg = write_seg(only_box, case.sources, case.labels, case.provenance)
    with pytest.raises(ResultInputError, match="not written from this label map"):
        write_sr(seg, case.truth, case.sources, case.labels, case.provenance)
