"""export_results: every requested output written once, under stable names, or nothing at all."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from ainode_worker.results import EmptyResultError, ResultInputError, SourceSeries, export_results

from ainode.jobs import OutputKind

from .cases import Case
from .readers import dciodvfy_errors

# What differs between two builds of the same result: creation times, and highdicom's random
# dimension organisation UID.
_PER_BUILD = (
    "InstanceCreationDate",
    "InstanceCreationTime",
    "SeriesDate",
    "SeriesTime",
    "ContentDate",
    "ContentTime",
    "StructureSetDate",
    "StructureSetTime",
    "ContributingEquipmentSequence",
    "DimensionOrganizationSequence",
    "DimensionIndexSequence",
)
ALL = [
    OutputKind.SEG,
    OutputKind.SEG_LABELMAP,
    OutputKind.RTSTRUCT,
    OutputKind.SR,
    OutputKind.NIFTI,
]


def test_all_outputs_written_and_rewritten_identically(axial_case: Case, tmp_path: Path) -> None:
    case = axial_case
    first = export_results(case.truth, case.sources, case.labels, case.provenance, ALL, tmp_path)
    kinds = [r.kind for r in first]
    assert sorted(kinds) == sorted(ALL)
    assert kinds.index(OutputKind.SR) > kinds.index(OutputKind.SEG)  # the SR references it
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == len(ALL)
    assert not any(name.startswith(".partial") for name in names)
    for result in first:
        if result.is_dicom:
            ds = pydicom.dcmread(result.path)
            assert ds.SOPInstanceUID == result.sop_instance_uid
            if result.kind is not OutputKind.SEG_LABELMAP:  # unknown to the 2022 dciodvfy
                assert dciodvfy_errors(result.path) == []
    sr = pydicom.dcmread(next(r.path for r in first if r.kind is OutputKind.SR))
    binary = next(r for r in first if r.kind is OutputKind.SEG)
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert binary.sop_instance_uid in {
        i.ReferencedSOPInstanceUID for s in evidence for i in s.ReferencedSOPSequence
    }
    # A retried job: same files, same UIDs, nothing added.
    again = export_results(case.truth, case.sources, case.labels, case.provenance, ALL, tmp_path)
    assert [(r.path, r.sop_instance_uid) for r in again] == [
        (r.path, r.sop_instance_uid) for r in first
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == names


def test_sr_alone_brings_its_seg(axial_case: Case, tmp_path: Path) -> None:
    case = axial_case
    written = export_results(
        case.truth, case.sources, case.labels, case.provenance, [OutputKind.SR], tmp_path
    )
    assert [r.kind for r in written] == [OutputKind.SEG, OutputKind.SR]


def test_empty_result_writes_nothing(axial_case: Case, tmp_path: Path) -> None:
    case = axial_case
    folder = tmp_path / "out"
    with pytest.raises(EmptyResultError):
        export_results(
            np.zeros_like(case.truth), case.sources, case.labels, case.provenance, ALL, folder
        )
    assert not folder.exists() or not any(folder.iterdir())


def test_prepared_sources_give_the_same_files(axial_case: Case, tmp_path: Path) -> None:
    """The job runner derives headers and geometry while the model runs; the files must not
    depend on whether that happened."""
    case = axial_case
    outputs = [OutputKind.SEG, OutputKind.RTSTRUCT, OutputKind.NIFTI]
    plain = export_results(
        case.truth, case.sources, case.labels, case.provenance, outputs, tmp_path / "plain"
    )
    sources = SourceSeries(case.sources).prepare()
    prepared = export_results(
        case.truth, sources, case.labels, case.provenance, outputs, tmp_path / "prepared"
    )
    for a, b in zip(plain, prepared, strict=True):
        assert a.path.name == b.path.name
        if a.is_dicom:
            x, y = pydicom.dcmread(a.path), pydicom.dcmread(b.path)
            for ds in (x, y):
                for keyword in _PER_BUILD:
                    ds.pop(keyword, None)
            assert x == y
        else:
            assert a.path.read_bytes() == b.path.read_bytes()


def test_preparing_sources_of_no_volume_fails_with_the_reason(axial_case: Case) -> None:
    shifted = [copy.deepcopy(ds) for ds in axial_case.sources]
    shifted[1].ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    with pytest.raises(ResultInputError, match="one orientation"):
        SourceSeries(shifted).prepare()
