"""A TID 1500 Measurement Report: the volume of each segment of a DICOM-SEG, in millilitres.

The SR references the SEG's segments (and through them the source images), so a viewer can
show "liver: 1523.4 mL" next to the outline. Volumes are counted from the same label map the
SEG was written from: voxels x row spacing x column spacing x slice spacing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code as DicomCode

from ainode.jobs import OutputKind
from ainode.registry import LabelSpec

from .errors import ResultInputError
from .geometry import SliceGeometry
from .provenance import MANUFACTURER, Provenance, truncate
from .segments import Segment, dicom_code, present_segments
from .sources import Sources, SourceSeries
from .uids import hashed_uid, result_uids

logger = logging.getLogger(__name__)

_MILLILITRE = DicomCode("mL", "UCUM", "milliliter")
_PROCEDURES = {
    "CT": codes.LN.CTUnspecifiedBodyRegion,
    "MR": codes.LN.MRIUnspecifiedBodyRegion,
    "PT": codes.LN.PETUnspecifiedBodyRegion,
}
_IMAGING_PROCEDURE = DicomCode("363679005", "SCT", "Imaging")


def write_sr(
    seg: Dataset,
    label_map: npt.NDArray[np.integer],
    source_datasets: Sources,
    labels: Sequence[LabelSpec],
    provenance: Provenance,
) -> hd.sr.Comprehensive3DSR:
    """Build the measurement report for a BINARY or LABELMAP ``seg`` made from ``label_map``."""
    sources = SourceSeries.of(source_datasets)
    geometry = sources.geometry
    geometry.check_volume(label_map.shape, "label map")
    segments = present_segments(label_map, labels)
    _check_matches(seg, segments)
    voxel_ml = _voxel_volume_mm3(geometry, sources.first) / 1000.0
    algorithm = hd.sr.AlgorithmIdentification(
        name=truncate(provenance.model_name), version=truncate(provenance.model_version)
    )
    uids = result_uids(provenance, str(sources.first.SeriesInstanceUID), OutputKind.SR)
    groups = [
        _volume_group(
            seg,
            segment,
            volume_ml=int(np.count_nonzero(label_map == segment.label.value)) * voxel_ml,
            algorithm=algorithm,
            sr_uid=uids.instance_uid,
        )
        for segment in segments
    ]
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(provenance),
        procedure_reported=_PROCEDURES.get(str(sources.first.Modality), _IMAGING_PROCEDURE),
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[seg, *sources.headers],
        content=report,
        series_instance_uid=uids.series_uid,
        series_number=provenance.series_number(OutputKind.SR, sources.first.get("SeriesNumber")),
        sop_instance_uid=uids.instance_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=provenance.series_description(OutputKind.SR),
    )
    logger.info("built SR with %d volume measurements", len(groups))
    return sr


def _volume_group(
    seg: Dataset,
    segment: Segment,
    *,
    volume_ml: float,
    algorithm: hd.sr.AlgorithmIdentification,
    sr_uid: str,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    label = segment.label
    region = label.anatomic_region
    sites = [hd.sr.FindingSite(dicom_code(region))] if region else None
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hashed_uid(sr_uid, "tracking", str(segment.number)),
            identifier=truncate(label.name),
        ),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=segment.number,
            source_series=hd.sr.SourceSeriesForSegmentation(
                seg.ReferencedSeriesSequence[0].SeriesInstanceUID
            ),
        ),
        finding_type=dicom_code(label.type),
        finding_category=dicom_code(label.category),
        finding_sites=sites,
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(
                name=codes.SCT.Volume,
                value=round(volume_ml, 3),
                unit=_MILLILITRE,
                algorithm_id=algorithm,
            )
        ],
    )


def _observation_context(provenance: Provenance) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=hashed_uid("device", provenance.model_id, provenance.model_version),
        name=truncate(provenance.model_name),
        manufacturer_name=MANUFACTURER,
        model_name=truncate(provenance.model_id),
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def _voxel_volume_mm3(geometry: SliceGeometry, first: Dataset) -> float:
    if geometry.shape[0] > 1:
        depth = geometry.slice_spacing()
    elif "SliceThickness" in first:
        depth = float(first.SliceThickness)
    else:
        raise ResultInputError("a single slice without SliceThickness has no voxel volume")
    return geometry.row_spacing * geometry.column_spacing * depth


def _check_matches(seg: Dataset, segments: Sequence[Segment]) -> None:
    """The SR's segment numbers must mean the same labels in the SEG it references."""
    if seg.get("SegmentationType") not in ("BINARY", "LABELMAP"):
        raise ResultInputError("the SR must reference a BINARY or LABELMAP SEG")
    described = {int(item.SegmentNumber): str(item.SegmentLabel) for item in seg.SegmentSequence}
    expected = {s.number: truncate(s.label.name) for s in segments}
    if any(described.get(number) != name for number, name in expected.items()):
        raise ResultInputError("the SEG was not written from this label map and label list")
