"""What a backend returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(eq=False)
class Prediction:
    """A label map on the input grid, and optionally per-class probabilities.

    ``labels``: uint8/uint16 ``[slice, row, column]`` with the registry's label values.
    ``probabilities``: float32 ``[class, slice, row, column]``; index 0 is background and index
    ``k`` the probability of label value ``k`` (so its length is the largest value + 1).
    """

    labels: npt.NDArray[np.unsignedinteger]
    probabilities: npt.NDArray[np.float32] | None = None

    def __post_init__(self) -> None:
        if self.labels.ndim != 3:
            raise ValueError(f"labels must be 3D, got shape {self.labels.shape}")
        if self.probabilities is not None and self.probabilities.shape[1:] != self.labels.shape:
            raise ValueError(
                f"probabilities {self.probabilities.shape} do not match labels {self.labels.shape}"
            )


def label_dtype(max_value: int) -> type[np.unsignedinteger]:
    """uint8 when every label fits, else uint16."""
    return np.uint8 if max_value < 256 else np.uint16
