"""DICOM-SEG from a label map (BINARY, LABELMAP) or from probabilities (FRACTIONAL).

BINARY is the default because every PACS and viewer reads it; LABELMAP (Label Map
Segmentation Storage, DICOM 2024) is much smaller but new; FRACTIONAL carries probabilities.
Empty frames are omitted, which is what keeps a 512x512x300 volume with 10 labels fast and
small: a BINARY SEG only holds the frames where a label is present.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from ainode.jobs import OutputKind
from ainode.registry import LabelSpec

from .errors import EmptyResultError, ResultInputError
from .geometry import SliceGeometry
from .provenance import (
    CONTENT_CREATOR,
    MANUFACTURER,
    MANUFACTURER_MODEL_NAME,
    SOFTWARE_VERSION,
    Provenance,
    truncate,
)
from .segments import Segment, dicom_code, present_segments, relabel
from .sources import Sources, SourceSeries
from .uids import result_uids

logger = logging.getLogger(__name__)

SEG_KINDS = frozenset({OutputKind.SEG, OutputKind.SEG_LABELMAP, OutputKind.SEG_FRACTIONAL})
_SEGMENTATION_TYPES = {
    OutputKind.SEG: hd.seg.SegmentationTypeValues.BINARY,
    OutputKind.SEG_LABELMAP: hd.seg.SegmentationTypeValues.LABELMAP,
    OutputKind.SEG_FRACTIONAL: hd.seg.SegmentationTypeValues.FRACTIONAL,
}
# LABELMAP frames are 8/16-bit and compress ~20x with RLE; BINARY cannot be encapsulated;
# FRACTIONAL stays uncompressed for the widest support (dcmqi, older viewers).
_TRANSFER_SYNTAXES = {
    OutputKind.SEG: ExplicitVRLittleEndian,
    OutputKind.SEG_LABELMAP: RLELossless,
    OutputKind.SEG_FRACTIONAL: ExplicitVRLittleEndian,
}
_MAX_FRACTIONAL = 255


def write_seg(
    label_map: npt.NDArray[np.integer],
    source_datasets: Sources,
    labels: Sequence[LabelSpec],
    provenance: Provenance,
    *,
    kind: OutputKind = OutputKind.SEG,
    probabilities: npt.NDArray[np.floating] | None = None,
    algorithm_type: hd.seg.SegmentAlgorithmTypeValues = hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
) -> hd.seg.Segmentation:
    """Build one DICOM-SEG instance (not yet written to disk).

    ``label_map`` is ``[slice, row, column]`` aligned with ``source_datasets`` (sorted along the
    slice normal). For ``SEG_FRACTIONAL``, ``probabilities`` is ``[class, slice, row, column]``
    in 0..1 where either channel ``c`` is label value ``c`` (channel 0, background, ignored) or
    there is one channel per entry of ``labels``, in order. ``algorithm_type`` is SEMIAUTOMATIC
    for masks a user steered (interactive segmentation). Raises :class:`EmptyResultError`
    when nothing would be written and :class:`ResultInputError` when inputs do not fit.
    """
    if kind not in SEG_KINDS:
        raise ValueError(f"{kind} is not a DICOM-SEG output")
    sources = SourceSeries.of(source_datasets)
    geometry = sources.geometry
    geometry.check_volume(label_map.shape, "label map")
    pixels: npt.NDArray[Any]
    if kind is OutputKind.SEG_FRACTIONAL:
        if probabilities is None:
            raise ResultInputError("a FRACTIONAL SEG needs the model's probabilities")
        segments, pixels = _fractional_pixels(probabilities, labels, geometry)
    else:
        segments = present_segments(label_map, labels)
        pixels = relabel(label_map, segments)
    uids = result_uids(provenance, str(sources.first.SeriesInstanceUID), kind)
    seg = hd.seg.Segmentation(
        source_images=sources.headers,
        pixel_array=pixels,
        segmentation_type=_SEGMENTATION_TYPES[kind],
        segment_descriptions=[_describe(s, provenance, algorithm_type) for s in segments],
        series_instance_uid=uids.series_uid,
        series_number=provenance.series_number(kind, sources.first.get("SeriesNumber")),
        sop_instance_uid=uids.instance_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MANUFACTURER_MODEL_NAME,
        software_versions=SOFTWARE_VERSION,
        device_serial_number=truncate(provenance.model_id),
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=_MAX_FRACTIONAL,
        content_label="AI_SEG",
        content_description=provenance.content_description(),
        transfer_syntax_uid=_TRANSFER_SYNTAXES[kind],
        omit_empty_frames=True,
        series_description=provenance.series_description(kind),
        content_creator_name=CONTENT_CREATOR,
    )
    logger.info(
        "built %s with %d segments, %d frames", kind.value, len(segments), seg.NumberOfFrames
    )
    return seg


def _describe(
    segment: Segment,
    provenance: Provenance,
    algorithm_type: hd.seg.SegmentAlgorithmTypeValues,
) -> hd.seg.SegmentDescription:
    label = segment.label
    algorithm = hd.AlgorithmIdentificationSequence(
        name=truncate(provenance.model_name),
        family=codes.DCM.ArtificialIntelligence,
        version=truncate(provenance.model_version),
        source=MANUFACTURER,
        parameters={"model": provenance.model_id, "rule": provenance.rule},
    )
    return hd.seg.SegmentDescription(
        segment_number=segment.number,
        segment_label=truncate(label.name),
        segmented_property_category=dicom_code(label.category),
        segmented_property_type=dicom_code(label.type),
        algorithm_type=algorithm_type,
        algorithm_identification=algorithm,
        anatomic_regions=[dicom_code(label.anatomic_region)] if label.anatomic_region else None,
        display_color=hd.color.CIELabColor.from_rgb(*segment.colour),
    )


def _fractional_pixels(
    probabilities: npt.NDArray[np.floating],
    labels: Sequence[LabelSpec],
    geometry: SliceGeometry,
) -> tuple[list[Segment], npt.NDArray[np.float32]]:
    """Segments and ``[slice, row, column, segment]`` probabilities for a FRACTIONAL SEG.

    Values that would quantise to 0 are zeroed first so that whole frames of near-zero
    probability are omitted and a label whose probability is nowhere above 1/510 is left out.
    """
    if probabilities.ndim != 4:
        raise ResultInputError("probabilities must be [class, slice, row, column]")
    geometry.check_volume(probabilities.shape[1:], "probability map")
    channels = _channels_by_label(probabilities.shape[0], labels)
    floor = np.float32(0.5 / _MAX_FRACTIONAL)
    kept: list[tuple[LabelSpec, npt.NDArray[np.float32]]] = []
    for label, channel in channels:
        values = np.asarray(probabilities[channel], dtype=np.float32)
        if not np.isfinite(values).all() or values.min() < 0.0 or values.max() > 1.0:
            raise ResultInputError(f"probabilities of '{label.name}' are not all within 0..1")
        if values.max() >= floor:
            kept.append((label, np.where(values >= floor, values, np.float32(0.0))))
    if not kept:
        raise EmptyResultError("the model gave no label a probability above zero")
    segments = [Segment(number=i + 1, label=label) for i, (label, _) in enumerate(kept)]
    return segments, np.stack([values for _, values in kept], axis=-1)


def _channels_by_label(n_channels: int, labels: Sequence[LabelSpec]) -> list[tuple[LabelSpec, int]]:
    ordered = sorted(labels, key=lambda label: label.value)
    if n_channels == len(ordered):
        channel_of = {label.value: index for index, label in enumerate(labels)}
        return [(label, channel_of[label.value]) for label in ordered]
    if ordered and n_channels == ordered[-1].value + 1:
        return [(label, label.value) for label in ordered]
    raise ResultInputError(
        f"probabilities have {n_channels} channels; expected one per label ({len(ordered)}) "
        "or one per label value including background"
    )
