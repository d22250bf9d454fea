"""The one interface every interactive method implements.

A backend turns prompts on a volume into a 3D mask, using (and filling) the session's feature
cache for that backend. It reports where its time went, so a slow first click and fast
follow-ups can be told apart in the timings the service returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ..cache import FeatureCache
from ..prompts import Bounds, Mask, Prompts
from ..sessions import VolumeView


@dataclass
class SegmentOutcome:
    mask: Mask  # uint8 0/1, [slice, row, column]
    embed_ms: float = 0.0  # computing features (slice embeddings, smoothed volume)
    decode_ms: float = 0.0  # everything prompt-dependent
    features_computed: int = 0
    features_reused: int = 0
    slices_decoded: int = 0  # decoder calls made
    decodes_reused: int = 0  # decoder results (grown regions) taken from the cache
    bounds: Bounds | None = None  # where ``mask`` may be nonzero, if the backend knows


class Backend(Protocol):
    name: str
    kind: str  # "regiongrow", "sam2", "sam-onnx"

    def ensure_ready(self) -> None:
        """Load weights if needed; raise :class:`~..errors.ModelUnavailableError` if impossible."""

    def describe(self) -> dict[str, Any]:
        """Name, kind and state for ``/health`` and MONAI Label's ``/info``."""

    def segment(self, view: VolumeView, prompts: Prompts, cache: FeatureCache) -> SegmentOutcome:
        """A 3D mask for the prompts (already validated against the volume's shape)."""
