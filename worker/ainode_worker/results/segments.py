"""Which labels of a label map become segments / ROIs, and in which order.

The one rule every writer shares: labels are numbered 1..N in ascending label value, counting
only labels present in the map. BINARY SEG segment numbers, LABELMAP pixel values, RTSTRUCT
ROI numbers and the SR's referenced segment numbers therefore always agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.sr.coding import Code as DicomCode
from scipy import ndimage

from ainode.registry import Code, LabelSpec

from .errors import EmptyResultError, ResultInputError

# Shown by viewers when a label has no colour of its own (distinct, colour-blind friendly).
_DEFAULT_COLOURS: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
    (153, 153, 153),
)


@dataclass(frozen=True)
class Segment:
    """A label present in the map, with its 1-based number in the result objects."""

    number: int
    label: LabelSpec

    @property
    def colour(self) -> tuple[int, int, int]:
        if self.label.color is not None:
            return self.label.color
        return _DEFAULT_COLOURS[(self.number - 1) % len(_DEFAULT_COLOURS)]


def present_segments(
    label_map: npt.NDArray[np.integer], labels: Sequence[LabelSpec]
) -> list[Segment]:
    """The segments to write; raises if the map holds undescribed values or nothing at all."""
    if not np.issubdtype(label_map.dtype, np.integer):
        raise ResultInputError(f"the label map must hold integers, not {label_map.dtype}")
    if label_map.size and int(label_map.min()) < 0:
        raise ResultInputError("the label map holds negative values")
    by_value = _index_labels(labels)
    boxes = ndimage.find_objects(label_map)  # one C pass; None for absent values
    present = [value for value, box in enumerate(boxes, start=1) if box is not None]
    unknown = sorted(set(present) - set(by_value))
    if unknown:
        raise ResultInputError(
            f"the label map holds values {unknown} that the model's label list does not describe"
        )
    if not present:
        raise EmptyResultError("the model found none of its labels in this series")
    return [Segment(number=i + 1, label=by_value[v]) for i, v in enumerate(present)]


def relabel(label_map: npt.NDArray[np.integer], segments: Sequence[Segment]) -> npt.NDArray[Any]:
    """The label map with label values replaced by segment numbers (0 stays background)."""
    top = max(int(label_map.max()), max(s.label.value for s in segments))
    dtype = np.uint8 if len(segments) < 256 else np.uint16
    lookup = np.zeros(top + 1, dtype=dtype)
    for segment in segments:
        lookup[segment.label.value] = segment.number
    relabelled: npt.NDArray[Any] = lookup[label_map]
    return relabelled


def dicom_code(code: Code) -> DicomCode:
    return DicomCode(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _index_labels(labels: Sequence[LabelSpec]) -> dict[int, LabelSpec]:
    by_value: dict[int, LabelSpec] = {}
    for label in labels:
        if label.value in by_value:
            raise ResultInputError(f"label value {label.value} is described twice")
        by_value[label.value] = label
    return by_value
