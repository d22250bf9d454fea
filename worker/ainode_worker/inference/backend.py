"""The one interface every model backend implements, and the factory choosing one by kind."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch

from ainode.registry import InferenceParams, ModelKind, ModelSpec
from ainode_worker.inference.prediction import Prediction
from ainode_worker.volume import Volume


class Backend(Protocol):
    """Loads one model once; predicts many times.

    ``load`` receives the registry entry with ``weights`` already an absolute path.
    ``predict`` receives the input channels, all on one grid, in the model's channel order.
    """

    def load(self, spec: ModelSpec, device: torch.device) -> None: ...

    def predict(self, channels: Sequence[Volume], params: InferenceParams) -> Prediction: ...


def create_backend(kind: ModelKind, data_dir: Path) -> Backend:
    """A new, unloaded backend for ``kind``; ``data_dir`` is the node's state folder."""
    if kind is ModelKind.NNUNET:
        from ainode_worker.inference.nnunet import NnUNetBackend

        return NnUNetBackend()
    if kind is ModelKind.TOTALSEGMENTATOR:
        from ainode_worker.inference.totalseg import TotalSegmentatorBackend

        return TotalSegmentatorBackend(home=data_dir / "totalsegmentator")
    if kind is ModelKind.ONNX:
        from ainode_worker.inference.onnxrt import OnnxBackend

        return OnnxBackend()
    if kind is ModelKind.BIOMEDPARSE:
        from ainode_worker.inference.biomedparse import BiomedParseBackend

        return BiomedParseBackend()
    raise ValueError(f"no backend runs kind {kind!r} (cascades are run by the pipeline)")
