"""Header-only views of the source images, with the patient/study attributes results copy.

Results copy the patient and study modules from the source series. Real series sometimes
lack Type 2 attributes (AccessionNumber, StudyID, ...); a result must still carry them, empty.
Dropping pixel data also keeps the writers from copying megabytes they never read.

:class:`SourceSeries` derives the headers and the checked geometry once for all the writers of
a job, and can derive them ahead (the job runner does so while the model runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TypeAlias

from pydicom import Dataset

from .geometry import SliceGeometry

# Type 2 attributes of the Patient and General Study modules: present, possibly empty.
_TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
# Optional attributes copied when the source has them.
_OPTIONAL_PATIENT_STUDY = (
    "SpecificCharacterSet",
    "IssuerOfPatientID",
    "OtherPatientIDsSequence",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "StudyDescription",
    "IssuerOfAccessionNumberSequence",
)
PATIENT_STUDY_KEYWORDS = ("StudyInstanceUID", *_TYPE2_PATIENT_STUDY, *_OPTIONAL_PATIENT_STUDY)
_PIXEL_KEYWORDS = frozenset({"PixelData", "FloatPixelData", "DoubleFloatPixelData"})


class SourceSeries:
    """The sorted source slices of a result, with what every writer derives from them."""

    def __init__(self, datasets: Sequence[Dataset]) -> None:
        self.datasets = datasets

    @classmethod
    def of(cls, sources: Sources) -> SourceSeries:
        """``sources`` itself if already a :class:`SourceSeries`, else one over the slices."""
        return sources if isinstance(sources, SourceSeries) else cls(sources)

    @cached_property
    def geometry(self) -> SliceGeometry:
        """Raises :class:`.errors.ResultInputError` when the slices are no regular volume."""
        return SliceGeometry.from_datasets(self.datasets)

    @cached_property
    def headers(self) -> list[Dataset]:
        """Pixel-free copies whose slice spacing is the one the positions show.

        highdicom copies PixelMeasures (SliceThickness, SpacingBetweenSlices) from the source
        images into a SEG. Older GE MR writes the gap between slices as SpacingBetweenSlices;
        copied, it makes dcmqi and highdicom build a volume that misplaces every frame. The
        copies carry the spacing computed from the checked positions instead, or none where the
        slices are unevenly spaced (the standard allows that), and a SliceThickness.
        """
        spacing = self.geometry.even_slice_spacing()
        headers = source_headers(self.datasets)
        for header in headers:
            _set_slice_measures(header, spacing)
        return headers

    @property
    def first(self) -> Dataset:
        return self.datasets[0]

    def prepare(self) -> SourceSeries:
        """Derive everything now (e.g. in a thread, while the model runs); returns itself."""
        _ = self.geometry, self.headers
        return self


Sources: TypeAlias = Sequence[Dataset] | SourceSeries


def source_headers(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Copies of the sources without pixel data and with Type 2 patient/study attributes set."""
    return [_header(ds) for ds in datasets]


def copy_patient_study(source: Dataset, target: Dataset) -> None:
    """Copy the Patient and General Study module attributes the result must repeat."""
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in source:
            target[keyword] = source[keyword]
        elif keyword in _TYPE2_PATIENT_STUDY:
            setattr(target, keyword, "")


def _set_slice_measures(header: Dataset, spacing: float | None) -> None:
    # Elements are shared with the source dataset: replace them, never assign their values.
    if "SpacingBetweenSlices" in header:
        del header.SpacingBetweenSlices
    if spacing is not None:
        header.SpacingBetweenSlices = _decimal_string(spacing)
    if not header.get("SliceThickness") and spacing is not None:
        # absent or empty (Type 2 in CT), while a SEG's pixel measures need one: best estimate
        if "SliceThickness" in header:
            del header.SliceThickness
        header.SliceThickness = _decimal_string(spacing)


def _decimal_string(value: float) -> str:
    """A DS within DICOM's 16 characters (micrometre precision is plenty for spacing)."""
    return f"{value:.6g}"


def _header(ds: Dataset) -> Dataset:
    header = Dataset()
    for element in ds:
        if element.keyword not in _PIXEL_KEYWORDS:
            header.add(element)
    if hasattr(ds, "file_meta"):
        header.file_meta = ds.file_meta
    for keyword in _TYPE2_PATIENT_STUDY:
        if keyword not in header:
            setattr(header, keyword, "")
    return header
