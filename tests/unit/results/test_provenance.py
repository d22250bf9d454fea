"""Result series a person can tell apart: numbers and descriptions per output kind and pipeline."""

from __future__ import annotations

import pytest
from ainode_worker.results import Provenance

from ainode.jobs import OutputKind

from .cases import PROVENANCE

DICOM_KINDS = (
    OutputKind.SEG,
    OutputKind.SEG_LABELMAP,
    OutputKind.SEG_FRACTIONAL,
    OutputKind.RTSTRUCT,
    OutputKind.SR,
)


def _other_pipeline(pipeline: str) -> Provenance:
    return Provenance(**{**PROVENANCE.__dict__, "pipeline": pipeline})


def test_series_numbers_differ_by_kind_and_pipeline() -> None:
    numbers = {PROVENANCE.series_number(kind) for kind in DICOM_KINDS}
    assert len(numbers) == len(DICOM_KINDS)
    assert all(9000 < n < 10000 for n in numbers)  # after the scanner's series
    # pipelines that land in different slots (most pairs do; these two are checked)
    other = _other_pipeline("spheres")
    assert other.series_number(OutputKind.SEG) != PROVENANCE.series_number(OutputKind.SEG)
    # the same provenance always gives the same number: a re-run replaces, not adds
    assert PROVENANCE.series_number(OutputKind.SEG) == PROVENANCE.series_number(OutputKind.SEG)


@pytest.mark.parametrize("kind", DICOM_KINDS)
def test_series_number_never_equals_the_source_series(kind: OutputKind) -> None:
    usual = PROVENANCE.series_number(kind)
    for given in (usual, str(usual), f" {usual} "):
        moved = PROVENANCE.series_number(kind, given)
        assert moved != usual
    assert PROVENANCE.series_number(kind, usual + 1) == usual
    assert PROVENANCE.series_number(kind, "") == usual


def test_descriptions_name_kind_and_model_within_twenty_characters() -> None:
    demo = Provenance("demo-phantom", "Demo phantom spheres", "1", "ct-demo", "demo-phantom")
    assert demo.series_description(OutputKind.SEG) == "SEG demo-phantom (ct-demo)"
    firsts = {demo.series_description(kind)[:20] for kind in DICOM_KINDS}
    assert len(firsts) == len(DICOM_KINDS)  # kinds differ in what a thumbnail shows
    assert all("demo-phantom" in first for first in firsts)
    with pytest.raises(ValueError, match="not a DICOM output"):
        demo.series_description(OutputKind.NIFTI)
