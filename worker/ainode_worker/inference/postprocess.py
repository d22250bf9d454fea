"""Post-processing of a label map: classes kept, probability threshold, component filters."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from ainode.registry import InferenceParams

_CONNECTIVITY = ndimage.generate_binary_structure(3, 3)  # 26-connected components


def postprocess(
    labels: npt.NDArray[np.unsignedinteger],
    probabilities: npt.NDArray[np.float32] | None,
    params: InferenceParams,
    spacing: tuple[float, float, float],
) -> npt.NDArray[np.unsignedinteger]:
    """A new label map with ``params``' filters applied (the input is not modified).

    ``proba_threshold`` and ``min_confidence`` need ``probabilities`` (index = label value).
    """
    out = labels.copy()
    if params.classes is not None:
        out[~np.isin(out, params.classes)] = 0
    needs = params.proba_threshold is not None or params.min_confidence is not None
    if needs and probabilities is None:
        raise ValueError("probability threshold or minimum confidence without probabilities")
    if params.proba_threshold is not None and probabilities is not None:
        for value in _values(out):
            out[(out == value) & (probabilities[value] < params.proba_threshold)] = 0
    if params.min_component_mm3 > 0 or params.min_confidence is not None:
        voxel_mm3 = float(np.prod(spacing))
        for value in _values(out):
            mask = out == value
            components, count = ndimage.label(mask, structure=_CONNECTIVITY)
            if count == 0:
                continue
            sizes = np.bincount(components.ravel(), minlength=count + 1)
            drop = np.zeros(count + 1, dtype=bool)
            drop[1:] = sizes[1:] * voxel_mm3 < params.min_component_mm3
            if params.min_confidence is not None and probabilities is not None:
                sums = np.bincount(
                    components.ravel(), weights=probabilities[value].ravel(), minlength=count + 1
                )
                means = sums[1:] / np.maximum(sizes[1:], 1)
                drop[1:] |= means < params.min_confidence
            drop[0] = False
            out[drop[components]] = 0
    return out


def _values(labels: npt.NDArray[np.unsignedinteger]) -> list[int]:
    return [int(v) for v in np.unique(labels) if v != 0]
