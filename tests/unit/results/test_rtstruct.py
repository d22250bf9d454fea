"""RTSTRUCT: conformance (dciodvfy) and contours that rasterise back onto the label map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from ainode_worker.results import EmptyResultError, ResultInputError, save_dicom, write_rtstruct

from ainode.jobs import OutputKind

from .cases import ANATOMY, Case
from .readers import (
    COPIED_ON_PURPOSE,
    attributes_equal_to_source,
    dciodvfy_errors,
    dice,
    rasterise_rtstruct,
)


def _write(case: Case, truth: np.ndarray, folder: Path) -> Path:
    rtstruct = write_rtstruct(truth, case.sources, case.labels, case.provenance)
    return save_dicom(rtstruct, OutputKind.RTSTRUCT, folder).path


def _ring_with_island(shape: tuple[int, int, int]) -> np.ndarray:
    """Label 1: an annulus (a hole) with an island inside the hole; label 2: a disk."""
    _, rows, cols = shape
    rr, cc = np.ogrid[:rows, :cols]
    radius = np.hypot(rr - rows / 2, cc - cols / 2)
    truth = np.zeros(shape, dtype=np.uint8)
    truth[4:12][:, (radius >= 8) & (radius < 16)] = 1
    truth[4:12][:, radius < 4] = 1
    truth[14:18][:, np.hypot(rr - 10, cc - 12) < 5] = 2
    return truth


def test_rtstruct_passes_dciodvfy_and_rasterises_back(case: Case, tmp_path: Path) -> None:
    path = _write(case, case.truth, tmp_path)
    assert dciodvfy_errors(path) == []
    masks = rasterise_rtstruct(path, case.sources)
    assert set(masks) == {"sphere", "box"}  # the marker is absent from the map
    for name, value in (("sphere", 1), ("box", 2)):
        assert dice(masks[name], case.truth == value) >= 0.95, name


def test_holes_are_inner_contours_read_with_even_odd_rule(case: Case, tmp_path: Path) -> None:
    truth = _ring_with_island(case.truth.shape)
    path = _write(case, truth, tmp_path)
    assert dciodvfy_errors(path) == []
    ds = pydicom.dcmread(path)
    ring = ds.ROIContourSequence[0]
    per_slice: dict[str, int] = {}
    for contour in ring.ContourSequence:
        uid = contour.ContourImageSequence[0].ReferencedSOPInstanceUID
        per_slice[uid] = per_slice.get(uid, 0) + 1
    assert set(per_slice.values()) == {3}  # outer ring, hole, island
    masks = rasterise_rtstruct(path, case.sources)
    for name, value in (("sphere", 1), ("box", 2)):
        assert dice(masks[name], truth == value) >= 0.95, name
    hole = (truth == 0)[8]
    assert not masks["sphere"][8][24, 30]  # inside the hole, outside the island
    assert hole[24, 30]


def test_structure_set_content(oblique_case: Case) -> None:
    case = oblique_case
    ds = write_rtstruct(case.truth, case.sources, case.labels, case.provenance)
    source = case.sources[0]
    assert ds.Modality == "RTSTRUCT"
    assert ds.SeriesDescription == "RTSS abdomen-v1 (ct-abdomen)"
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.PatientID == source.PatientID
    assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    assert len(series.ContourImageSequence) == len(case.sources)
    rois = {int(r.ROINumber): r for r in ds.StructureSetROISequence}
    assert [rois[n].ROIName for n in sorted(rois)] == ["sphere", "box"]
    assert all(r.ROIGenerationAlgorithm == "AUTOMATIC" for r in rois.values())
    colours = {int(r.ReferencedROINumber): list(r.ROIDisplayColor) for r in ds.ROIContourSequence}
    assert colours[1] == [230, 159, 0]
    observations = ds.RTROIObservationsSequence
    assert observations[0].RTROIIdentificationCodeSequence[0].CodeMeaning == "Sphere"
    assert observations[1].RTROIIdentificationCodeSequence[0].CodingSchemeDesignator == "SCT"
    assert observations[0].RTROIInterpretedType == ""  # a physical object, not an organ
    organs = [label.model_copy(update={"category": ANATOMY}) for label in case.labels]
    as_organs = write_rtstruct(case.truth, case.sources, organs, case.provenance)
    assert as_organs.RTROIObservationsSequence[0].RTROIInterpretedType == "ORGAN"
    for roi in ds.ROIContourSequence:
        for contour in roi.ContourSequence:
            raw = contour["ContourData"].value
            assert all(len(str(v)) <= 16 for v in raw)


def test_rtstruct_uids_are_deterministic(axial_case: Case) -> None:
    case = axial_case
    first = write_rtstruct(case.truth, case.sources, case.labels, case.provenance)
    again = write_rtstruct(case.truth, case.sources, case.labels, case.provenance)
    assert first.SOPInstanceUID == again.SOPInstanceUID
    assert first.SeriesInstanceUID == again.SeriesInstanceUID


def test_empty_and_bad_inputs(axial_case: Case) -> None:
    case = axial_case
    with pytest.raises(EmptyResultError):
        write_rtstruct(np.zeros_like(case.truth), case.sources, case.labels, case.provenance)
    with pytest.raises(ResultInputError, match="shape"):
        write_rtstruct(case.truth[:, :-1], case.sources, case.labels, case.provenance)


def test_nothing_copied_from_the_source_contradicts_the_structure_set(ge_gap_case: Case) -> None:
    case = ge_gap_case
    ds = write_rtstruct(case.truth, case.sources, case.labels, case.provenance)
    same = attributes_equal_to_source(ds, case.sources[0])
    assert same <= COPIED_ON_PURPOSE, same - COPIED_ON_PURPOSE
    assert "SpacingBetweenSlices" not in ds and "SliceThickness" not in ds
    assert ds.SeriesNumber != case.sources[0].SeriesNumber
