"""DICOM-SEG: conformance (dciodvfy), exact read-back by three independent readers, metadata."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from ainode_worker.results import (
    EmptyResultError,
    Provenance,
    ResultInputError,
    result_uids,
    save_dicom,
    write_seg,
)
from dicom_readers import read_segments_with_dcmqi

from ainode.jobs import OutputKind
from ainode.phantoms import Geometry
from ainode.registry import Code, LabelSpec

from .cases import ANATOMY, Case, make_case
from .readers import (
    COPIED_ON_PURPOSE,
    Grid,
    attributes_equal_to_source,
    dciodvfy_errors,
    read_seg_with_dcmqi,
    read_seg_with_pydicom,
)


def _write(
    case: Case,
    folder: Path,
    kind: OutputKind = OutputKind.SEG,
    probabilities: np.ndarray | None = None,
) -> Path:
    seg = write_seg(
        case.truth,
        case.sources,
        case.labels,
        case.provenance,
        kind=kind,
        probabilities=probabilities,
    )
    return save_dicom(seg, kind, folder).path


def _highdicom_by_reference(path: Path, case: Case) -> np.ndarray:
    """highdicom's reader, matching frames to sources by their SOP Instance UID references."""
    seg = hd.seg.segread(path)
    uids = [str(ds.SOPInstanceUID) for ds in case.sources]
    numbers = seg.get_pixels_by_source_instance(
        uids, combine_segments=True, assert_missing_frames_are_empty=True
    )
    values = {s.SegmentNumber: v.value for s, v in _segments_with_labels(seg, case.labels)}
    out = np.zeros(numbers.shape, dtype=np.uint16)
    for number, value in values.items():
        out[numbers == number] = value
    return out


def _highdicom_volume(path: Path, case: Case) -> np.ndarray:
    """highdicom's volume reader, placed into the source grid by patient position only."""
    volume = hd.seg.segread(path).get_volume(combine_segments=True, relabel=False)
    grid = Grid.of(case.sources)
    seg = pydicom.dcmread(path, stop_before_pixels=True)
    values = {s.SegmentNumber: v.value for s, v in _segments_with_labels(seg, case.labels)}
    out = np.zeros(case.truth.shape, dtype=np.uint16)
    index = np.argwhere(volume.array > 0)
    world = (volume.affine @ np.column_stack([index, np.ones(len(index))]).T).T[:, :3]
    ijk = grid.indices(world)
    rounded = np.rint(ijk).astype(int)
    assert np.abs(ijk - rounded).max() < 0.05
    numbers = volume.array[tuple(index.T)]
    out[tuple(rounded.T)] = [values[int(n)] for n in numbers]
    return out


def _segments_with_labels(
    seg: pydicom.Dataset, labels: list[LabelSpec]
) -> list[tuple[pydicom.Dataset, LabelSpec]]:
    by_name = {label.name: label for label in labels}
    return [
        (item, by_name[item.SegmentLabel])
        for item in seg.SegmentSequence
        if int(item.SegmentNumber) != 0
    ]


def test_binary_seg_passes_dciodvfy_and_reads_back_exactly(case: Case, tmp_path: Path) -> None:
    path = _write(case, tmp_path)
    assert dciodvfy_errors(path) == []
    assert np.array_equal(read_seg_with_pydicom(path, case.sources, case.labels), case.truth)
    assert np.array_equal(_highdicom_by_reference(path, case), case.truth)
    assert np.array_equal(_highdicom_volume(path, case), case.truth)
    dcmqi = read_seg_with_dcmqi(path, case.sources, case.labels, tmp_path / "dcmqi")
    assert np.array_equal(dcmqi, case.truth)


def test_labelmap_seg_reads_back_exactly(case: Case, tmp_path: Path) -> None:
    # LABELMAP (DICOM 2024) is unknown to Debian's 2022 dciodvfy and to dcmqi 1.5, so it is
    # checked by highdicom and by the plain-pydicom frame reader only.
    path = _write(case, tmp_path, OutputKind.SEG_LABELMAP)
    seg = pydicom.dcmread(path)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7"
    assert seg.SegmentationType == "LABELMAP"
    assert seg.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    assert np.array_equal(read_seg_with_pydicom(path, case.sources, case.labels), case.truth)
    assert np.array_equal(_highdicom_by_reference(path, case), case.truth)
    assert np.array_equal(_highdicom_volume(path, case), case.truth)


def test_labelmap_is_much_smaller_than_binary(axial_case: Case, tmp_path: Path) -> None:
    binary = _write(axial_case, tmp_path / "b")
    labelmap = _write(axial_case, tmp_path / "l", OutputKind.SEG_LABELMAP)
    assert labelmap.stat().st_size < binary.stat().st_size


def _probabilities(truth: np.ndarray) -> np.ndarray:
    """Background + two classes: a soft edge made by blurring the truth, values in 0..1."""
    from scipy.ndimage import gaussian_filter

    channels = [gaussian_filter((truth == v).astype(np.float32), 1.0) for v in (1, 2)]
    foreground = np.stack(channels)
    background = np.clip(1.0 - foreground.sum(axis=0), 0.0, 1.0)
    return np.concatenate([background[None], foreground]).astype(np.float32)


@pytest.mark.parametrize("per_label_channels", [False, True])
def test_fractional_seg_passes_dciodvfy_and_keeps_probabilities(
    oblique_case: Case, tmp_path: Path, per_label_channels: bool
) -> None:
    case = oblique_case
    background, sphere, box = _probabilities(case.truth)
    marker = np.zeros_like(sphere)  # described, never predicted: must be left out
    if per_label_channels:  # one channel per entry of the label list, in that order
        probabilities = np.stack([sphere, box, marker])
    else:  # channel c is label value c, channel 0 the background (nnU-Net's softmax)
        probabilities = np.stack([background, sphere, box, marker])
    path = _write(case, tmp_path, OutputKind.SEG_FRACTIONAL, probabilities=probabilities)
    assert dciodvfy_errors(path) == []
    seg = hd.seg.segread(path)
    assert seg.SegmentationType == "FRACTIONAL"
    assert seg.SegmentationFractionalType == "PROBABILITY"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["sphere", "box"]  # no marker
    uids = [str(ds.SOPInstanceUID) for ds in case.sources]
    back = seg.get_pixels_by_source_instance(uids, assert_missing_frames_are_empty=True)
    expected = _probabilities(case.truth)[1:]
    for index in range(2):
        assert np.abs(back[..., index] - expected[index]).max() <= 0.5 / 255 + 1e-6
    # dcmqi places the same probabilities (0..255) on the same voxels
    by_dcmqi = read_segments_with_dcmqi(path, case.sources, tmp_path / "dcmqi")
    assert sorted(by_dcmqi) == [1, 2]
    for index in range(2):
        stored = by_dcmqi[index + 1].astype(np.float32) / 255
        assert np.abs(stored - expected[index]).max() <= 0.5 / 255 + 1e-6


def test_segment_descriptions_and_references(oblique_case: Case) -> None:
    case = oblique_case
    seg = write_seg(case.truth, case.sources, case.labels, case.provenance)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["sphere", "box"]
    sphere, box = seg.SegmentSequence
    assert sphere.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "260787004"
    assert sphere.SegmentedPropertyTypeCodeSequence[0].CodeValue == "122485"
    assert sphere.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "DCM"
    assert box.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    assert box.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Phantom"
    assert sphere.AnatomicRegionSequence[0].CodeValue == "818981001"
    assert sphere.SegmentAlgorithmType == "AUTOMATIC"
    assert sphere.SegmentAlgorithmName == "Abdomen nnU-Net"
    algorithm = sphere.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmVersion == "1.2.0"
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    rgb = hd.color.CIELabColor.from_dicom_value(sphere.RecommendedDisplayCIELabValue).to_rgb()
    assert np.abs(np.array(rgb, dtype=int) - (230, 159, 0)).max() <= 2
    assert "RecommendedDisplayCIELabValue" in box  # a default colour when none is given

    source = case.sources[0]
    assert seg.SeriesDescription == "SEG abdomen-v1 (ct-abdomen)"
    assert seg.ContentCreatorName == "AINODE^"
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "AccessionNumber", "StudyID"):
        assert seg.get(keyword) == source.get(keyword)
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert seg.Modality == "SEG"
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == {
        ds.SOPInstanceUID for ds in case.sources
    }
    # frames without any label are omitted: fewer frames than slices x segments
    present = sum(int((case.truth[k] == v).any()) for k in range(len(case.sources)) for v in (1, 2))
    assert seg.NumberOfFrames == present


def test_uids_are_deterministic_per_rule_and_kind(axial_case: Case) -> None:
    case = axial_case
    first = write_seg(case.truth, case.sources, case.labels, case.provenance)
    again = write_seg(case.truth, case.sources, case.labels, case.provenance)
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (
        again.SeriesInstanceUID,
        again.SOPInstanceUID,
    )
    expected = result_uids(case.provenance, case.sources[0].SeriesInstanceUID, OutputKind.SEG)
    assert first.SOPInstanceUID == expected.instance_uid
    other_rule = Provenance(**{**case.provenance.__dict__, "rule": "ct-spheres-only"})
    other = write_seg(case.truth, case.sources, case.labels, other_rule)
    assert other.SeriesInstanceUID != first.SeriesInstanceUID
    assert other.SOPInstanceUID != first.SOPInstanceUID
    labelmap = write_seg(
        case.truth, case.sources, case.labels, case.provenance, kind=OutputKind.SEG_LABELMAP
    )
    assert labelmap.SOPInstanceUID != first.SOPInstanceUID


def test_long_names_fit_dicom_limits(axial_case: Case) -> None:
    case = axial_case
    provenance = Provenance(
        model_id="m" * 80,
        model_name="A very long model name that goes on and on beyond what DICOM allows",
        model_version="2024.11.0-rc1",
        rule="abdomen-ct-portal-venous",
        pipeline="p",
    )
    seg = write_seg(case.truth, case.sources, case.labels, provenance)
    assert len(seg.SeriesDescription) <= 64
    assert seg.SeriesDescription == "SEG " + "m" * 57 + "..."


def test_spacing_comes_from_the_positions_not_the_source(ge_gap_case: Case, tmp_path: Path) -> None:
    # The source says 2.07 mm (the gap, as older GE MR writes it); the slices are 7.07 mm apart.
    case = ge_gap_case
    assert float(case.sources[0].SpacingBetweenSlices) == 2.07
    path = _write(case, tmp_path)
    seg = pydicom.dcmread(path, stop_before_pixels=True)
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    distances = np.linalg.norm(np.diff(Grid.of(case.sources).positions, axis=0), axis=1)
    assert float(measures.SpacingBetweenSlices) == pytest.approx(float(distances.mean()), abs=1e-3)
    assert float(measures.SliceThickness) == 5.0  # how thick each slice is stays the source's
    assert float(case.sources[0].SpacingBetweenSlices) == 2.07  # the source is left alone
    dcmqi = read_seg_with_dcmqi(path, case.sources, case.labels, tmp_path / "dcmqi")
    assert np.array_equal(dcmqi, case.truth)


def test_unevenly_spaced_slices_get_no_spacing(tmp_path: Path) -> None:
    # One slice left out: the standard lets SpacingBetweenSlices be absent, so it is.
    case = make_case(
        tmp_path / "src", Geometry(shape=(14, 40, 40), spacing=(3.0, 1.2, 1.2)), seed=2
    )
    kept = [k for k in range(14) if k != 6]
    sources = [case.sources[k] for k in kept]
    truth = case.truth[kept]
    seg = write_seg(truth, sources, case.labels, case.provenance)
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert "SpacingBetweenSlices" not in measures
    path = save_dicom(seg, OutputKind.SEG, tmp_path).path
    assert np.array_equal(read_seg_with_pydicom(path, sources, case.labels), truth)
    uids = [str(ds.SOPInstanceUID) for ds in sources]
    back = hd.seg.segread(path).get_pixels_by_source_instance(uids, combine_segments=True)
    assert np.array_equal(back > 0, truth > 0)


def test_non_consecutive_label_values(tmp_path: Path) -> None:
    # 1.5 mm pixels: room for a sphere and a box on this small grid
    case = make_case(
        tmp_path / "src", Geometry(shape=(12, 32, 32), spacing=(2.5, 1.5, 1.5)), seed=1
    )
    truth = np.where(case.truth == 1, 7, np.where(case.truth == 2, 3, 0)).astype(np.uint16)
    labels = [
        LabelSpec(
            value=7,
            name="tumour",
            category=ANATOMY,
            type=Code(value="108369006", meaning="Neoplasm"),
        ),
        LabelSpec(
            value=3, name="cyst", category=ANATOMY, type=Code(value="441457006", meaning="Cyst")
        ),
    ]
    seg = write_seg(truth, case.sources, labels, case.provenance)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["cyst", "tumour"]  # by value
    path = save_dicom(seg, OutputKind.SEG, tmp_path).path
    assert np.array_equal(read_seg_with_pydicom(path, case.sources, labels), truth)
    dcmqi = read_seg_with_dcmqi(path, case.sources, labels, tmp_path / "dcmqi")
    assert np.array_equal(dcmqi, truth)


def test_empty_result_is_reported_not_written(axial_case: Case) -> None:
    case = axial_case
    empty = np.zeros_like(case.truth)
    for kind in (OutputKind.SEG, OutputKind.SEG_LABELMAP):
        with pytest.raises(EmptyResultError):
            write_seg(empty, case.sources, case.labels, case.provenance, kind=kind)
    nothing = np.zeros((3, *case.truth.shape), dtype=np.float32)
    with pytest.raises(EmptyResultError):
        write_seg(
            empty,
            case.sources,
            case.labels,
            case.provenance,
            kind=OutputKind.SEG_FRACTIONAL,
            probabilities=nothing + 0.001,
        )


def test_bad_inputs_raise_clear_errors(axial_case: Case) -> None:
    case = axial_case
    with pytest.raises(ResultInputError, match="does not describe"):
        write_seg(
            np.where(case.truth == 2, 9, case.truth), case.sources, case.labels, case.provenance
        )
    with pytest.raises(ResultInputError, match="shape"):
        write_seg(case.truth[:-1], case.sources, case.labels, case.provenance)
    with pytest.raises(ResultInputError, match="not sorted"):
        write_seg(case.truth, case.sources[::-1], case.labels, case.provenance)
    with pytest.raises(ResultInputError, match="probabilities"):
        write_seg(
            case.truth, case.sources, case.labels, case.provenance, kind=OutputKind.SEG_FRACTIONAL
        )
    with pytest.raises(ResultInputError, match="channels"):
        write_seg(
            case.truth,
            case.sources,
            case.labels,
            case.provenance,
            kind=OutputKind.SEG_FRACTIONAL,
            probabilities=np.zeros((7, *case.truth.shape), dtype=np.float32),
        )
    with pytest.raises(ResultInputError, match=r"0\.\.1"):
        write_seg(
            case.truth,
            case.sources,
            case.labels,
            case.provenance,
            kind=OutputKind.SEG_FRACTIONAL,
            probabilities=np.full((3, *case.truth.shape), 1.5, dtype=np.float32),
        )


def test_nothing_copied_from_the_source_contradicts_the_result(
    ge_gap_case: Case, tmp_path: Path
) -> None:
    # Checked on the GE-style source, whose own SpacingBetweenSlices is wrong for its frames.
    case = ge_gap_case
    source = case.sources[0]
    seg = pydicom.dcmread(_write(case, tmp_path), stop_before_pixels=True)
    same = attributes_equal_to_source(seg, source)
    assert same <= COPIED_ON_PURPOSE, same - COPIED_ON_PURPOSE
    assert "SpacingBetweenSlices" not in seg and "SliceThickness" not in seg  # only per frame
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert list(measures.PixelSpacing) == list(source.PixelSpacing)
    assert float(measures.SpacingBetweenSlices) != float(source.SpacingBetweenSlices)
    orientation = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
    assert list(orientation.ImageOrientationPatient) == list(source.ImageOrientationPatient)
    assert seg.ContentCreatorName == "AINODE^"
