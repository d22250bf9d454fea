"""RT Structure Set from a label map, written with pydicom (highdicom has no RTSTRUCT writer).

One ROI per label present, one CLOSED_PLANAR contour per boundary per slice, in patient
coordinates computed from each slice's own position and orientation (so oblique planes and
anisotropic pixels come out right). Holes are separate contours on the same slice, to be
combined with the even-odd rule (see :mod:`.contours`). Every Type 1 and Type 2 attribute of
the RT Structure Set IOD is present so that ``dciodvfy`` reports no error.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

import numpy as np
import numpy.typing as npt
from pydicom import DataElement, Dataset, config
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, RTStructureSetStorage
from scipy import ndimage

from ainode.jobs import OutputKind
from ainode.registry import Code, LabelSpec

from .contours import slice_contours
from .errors import ResultInputError
from .geometry import SliceGeometry
from .provenance import (
    MANUFACTURER,
    MANUFACTURER_MODEL_NAME,
    SOFTWARE_VERSION,
    Provenance,
    truncate,
)
from .segments import Segment, present_segments
from .sources import Sources, SourceSeries, copy_patient_study
from .uids import result_uids

logger = logging.getLogger(__name__)

# PS3.3 C.8.8.5: RT Referenced Study Sequence items reference the study by this SOP class.
_STUDY_COMPONENT_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"
_MAX_DS_MAGNITUDE = 1e11  # "-99999999999.999" is 16 characters
_ANATOMICAL_CATEGORIES = frozenset({"123037004", "91723000"})  # SCT Anatomical Structure


def write_rtstruct(
    label_map: npt.NDArray[np.integer],
    source_datasets: Sources,
    labels: Sequence[LabelSpec],
    provenance: Provenance,
) -> Dataset:
    """Build one RT Structure Set instance (not yet written to disk).

    Same inputs as :func:`.seg.write_seg`; raises :class:`.errors.EmptyResultError` when no
    label is present and :class:`.errors.ResultInputError` when the inputs do not fit.
    """
    sources = SourceSeries.of(source_datasets)
    geometry = sources.geometry
    geometry.check_volume(label_map.shape, "label map")
    segments = present_segments(label_map, labels)
    source = sources.first
    uids = result_uids(provenance, str(source.SeriesInstanceUID), OutputKind.RTSTRUCT)
    now = datetime.now()

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RTStructureSetStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID(uids.instance_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = uids.instance_uid
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    copy_patient_study(source, ds)
    # RT Series and General Equipment modules
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = uids.series_uid
    ds.SeriesNumber = provenance.series_number(OutputKind.RTSTRUCT, source.get("SeriesNumber"))
    ds.SeriesDescription = provenance.series_description(OutputKind.RTSTRUCT)
    ds.SeriesDate = ds.InstanceCreationDate
    ds.SeriesTime = ds.InstanceCreationTime
    ds.OperatorsName = ""
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MANUFACTURER_MODEL_NAME
    ds.SoftwareVersions = SOFTWARE_VERSION
    # Frame of Reference module
    ds.FrameOfReferenceUID = geometry.frame_of_reference_uid
    ds.PositionReferenceIndicator = source.get("PositionReferenceIndicator", "")
    # Structure Set module
    ds.StructureSetLabel = "AI"
    ds.StructureSetName = truncate(provenance.model_name)
    ds.StructureSetDescription = provenance.series_description(OutputKind.RTSTRUCT)
    ds.InstanceNumber = 1
    ds.StructureSetDate = ds.InstanceCreationDate
    ds.StructureSetTime = ds.InstanceCreationTime
    ds.ReferencedFrameOfReferenceSequence = [_referenced_frame(sources.datasets, geometry)]
    ds.StructureSetROISequence = [_roi(s, geometry, provenance) for s in segments]
    ds.ROIContourSequence = _roi_contours(label_map, segments, sources.datasets, geometry)
    ds.RTROIObservationsSequence = [_observation(s) for s in segments]
    ds.ApprovalStatus = "UNAPPROVED"
    logger.info(
        "built RTSTRUCT with %d ROIs, %d contours",
        len(segments),
        sum(len(item.get("ContourSequence", [])) for item in ds.ROIContourSequence),
    )
    return ds


def _referenced_frame(sources: Sequence[Dataset], geometry: SliceGeometry) -> Dataset:
    images = []
    for image in sources:
        item = Dataset()
        item.ReferencedSOPClassUID = image.SOPClassUID
        item.ReferencedSOPInstanceUID = image.SOPInstanceUID
        images.append(item)
    series = Dataset()
    series.SeriesInstanceUID = sources[0].SeriesInstanceUID
    series.ContourImageSequence = images
    study = Dataset()
    study.ReferencedSOPClassUID = _STUDY_COMPONENT_MANAGEMENT
    study.ReferencedSOPInstanceUID = sources[0].StudyInstanceUID
    study.RTReferencedSeriesSequence = [series]
    frame = Dataset()
    frame.FrameOfReferenceUID = geometry.frame_of_reference_uid
    frame.RTReferencedStudySequence = [study]
    return frame


def _roi(segment: Segment, geometry: SliceGeometry, provenance: Provenance) -> Dataset:
    item = Dataset()
    item.ROINumber = segment.number
    item.ReferencedFrameOfReferenceUID = geometry.frame_of_reference_uid
    item.ROIName = truncate(segment.label.name)
    item.ROIGenerationAlgorithm = "AUTOMATIC"
    item.ROIGenerationDescription = provenance.content_description()
    return item


def _observation(segment: Segment) -> Dataset:
    item = Dataset()
    item.ObservationNumber = segment.number
    item.ReferencedROINumber = segment.number
    item.ROIObservationLabel = truncate(segment.label.name, 16)
    is_anatomy = segment.label.category.value in _ANATOMICAL_CATEGORIES
    item.RTROIInterpretedType = "ORGAN" if is_anatomy else ""
    item.ROIInterpreter = ""
    item.RTROIIdentificationCodeSequence = [_code_item(segment.label.type)]
    return item


def _code_item(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme
    item.CodeMeaning = truncate(code.meaning)
    return item


def _roi_contours(
    label_map: npt.NDArray[np.integer],
    segments: Sequence[Segment],
    sources: Sequence[Dataset],
    geometry: SliceGeometry,
) -> DicomSequence:
    boxes = ndimage.find_objects(label_map)
    items = []
    for segment in segments:
        box = boxes[segment.label.value - 1]
        item = Dataset()
        item.ReferencedROINumber = segment.number
        item.ROIDisplayColor = list(segment.colour)
        contours = []
        if box is not None:
            contours = _segment_contours(label_map, segment.label.value, box, sources, geometry)
        item.ContourSequence = contours
        items.append(item)
    return DicomSequence(items)


def _segment_contours(
    label_map: npt.NDArray[np.integer],
    value: int,
    box: tuple[slice, ...],
    sources: Sequence[Dataset],
    geometry: SliceGeometry,
) -> list[Dataset]:
    slices, rows, cols = box
    offset = np.array([rows.start, cols.start], dtype=np.float64)
    items: list[Dataset] = []
    for k in range(slices.start, slices.stop):
        mask = label_map[k, rows, cols] == value
        if not mask.any():
            continue
        for polygon in slice_contours(mask):
            points = geometry.pixel_to_patient(k, polygon + offset)
            items.append(_contour(points, sources[k], len(items) + 1))
    return items


def _contour(points: npt.NDArray[np.float64], image: Dataset, number: int) -> Dataset:
    reference = Dataset()
    reference.ReferencedSOPClassUID = image.SOPClassUID
    reference.ReferencedSOPInstanceUID = image.SOPInstanceUID
    item = Dataset()
    item.ContourImageSequence = [reference]
    item.ContourGeometricType = "CLOSED_PLANAR"
    item.NumberOfContourPoints = len(points)
    item.ContourNumber = number
    # Values are formatted here, so pydicom's per-value DS validation (slow for ~10^6 values)
    # is skipped for this one element.
    item.add(
        DataElement(
            0x30060050,  # ContourData
            "DS",
            format_decimal_strings(points.ravel()),
            validation_mode=config.IGNORE,
        )
    )
    return item


def format_decimal_strings(values: npt.NDArray[np.float64]) -> list[str]:
    """DS values with 3 decimals (micrometres), always within DICOM's 16 characters."""
    if values.size and float(np.abs(values).max()) >= _MAX_DS_MAGNITUDE:
        raise ResultInputError("contour coordinates beyond 10^11 mm: the geometry is broken")
    text = [f"{v:.3f}" for v in np.round(values, 3).tolist()]
    return ["0.000" if t == "-0.000" else t for t in text]
