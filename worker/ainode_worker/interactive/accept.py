"""An accepted interactive mask as a DICOM-SEG that references the source series.

The SEG is built by the node's SEG writer (:func:`ainode_worker.results.write_seg`, BINARY,
empty frames omitted), with SegmentAlgorithmType SEMIAUTOMATIC: a user steered the mask, and
readers tell such results apart from the node's AUTOMATIC ones by it. Its UIDs are derived
from the session and a digest of the mask: the same mask accepted twice (a retried request)
gives the same SOP Instance UID, so Orthanc keeps one copy, while every different mask becomes
a new object.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom import Dataset, dcmwrite

from ainode.registry import LabelSpec
from ainode_worker.results import EmptyResultError, Provenance, write_seg

from .config import AcceptedLabel
from .errors import NothingToAcceptError

log = logging.getLogger(__name__)


def build_accepted_seg(
    mask: npt.NDArray[np.uint8],
    datasets: Sequence[Dataset],
    label: AcceptedLabel,
    *,
    model: str,
    kind: str,
    session_id: str,
) -> Dataset:
    """The DICOM-SEG of one accepted mask ``[slice, row, column]`` over ``datasets``."""
    digest = hashlib.sha256(np.packbits(mask.astype(bool)).tobytes()).hexdigest()[:16]
    provenance = Provenance(
        model_id=model,
        model_name=f"interactive {kind}",
        model_version="interactive",
        rule="interactive",
        pipeline=f"interactive/{session_id}/{digest}",
    )
    spec = LabelSpec(value=1, name=label.name, category=label.category, type=label.type)
    try:
        return write_seg(
            mask.astype(np.uint8),
            datasets,
            [spec],
            provenance,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
        )
    except EmptyResultError as error:
        raise NothingToAcceptError("the mask is empty; there is nothing to store") from error


def dicom_bytes(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()
