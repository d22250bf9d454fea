"""Interactive segmentation methods behind one interface (:class:`~.base.Backend`).

``regiongrow`` needs nothing; ``sam2`` needs PyTorch and the ``sam2`` package; ``sam-onnx``
needs ONNX Runtime. Each is imported only when configured, so a node without PyTorch can still
serve the other two.
"""

from __future__ import annotations

from ..config import ModelConfig, Propagation, RegionGrowModel, Sam2Model, SamOnnxModel
from .base import Backend, SegmentOutcome
from .regiongrow import RegionGrowBackend, RegionGrowParams
from .sam_slices import PropagationParams, SamBackend

__all__ = ["Backend", "SegmentOutcome", "build_backend"]


def build_backend(name: str, config: ModelConfig, *, gpu_min_free_bytes: int) -> Backend:
    """The backend for one configured model; weights are loaded on first use."""
    if isinstance(config, RegionGrowModel):
        params = RegionGrowParams(
            smoothing_mm=config.smoothing_mm,
            stats_radius_mm=config.stats_radius_mm,
            tolerance_sd=config.tolerance_sd,
            band_voxels=config.band_voxels,
            window_mm=config.window_mm,
            max_fraction=config.max_fraction,
        )
        return RegionGrowBackend(name, params)
    if isinstance(config, Sam2Model):
        from .sam2_torch import Sam2TorchModel

        torch_model = Sam2TorchModel(
            config.checkpoint,
            config.config,
            config.hydra_overrides,
            device=config.device,
            cache_dtype=config.cache_dtype,
            gpu_min_free_bytes=gpu_min_free_bytes,
        )
        return SamBackend(
            name,
            "sam2",
            torch_model,
            _propagation(config.propagation),
            weights=config.checkpoint.name,
        )
    if isinstance(config, SamOnnxModel):
        from .sam_onnx import SamOnnxModel as OnnxRuntimeModel

        onnx_model = OnnxRuntimeModel(
            config.encoder,
            config.decoder,
            family=config.family,
            providers=config.providers,
            threads=config.threads,
        )
        return SamBackend(
            name,
            "sam-onnx",
            onnx_model,
            _propagation(config.propagation),
            weights=f"{config.encoder.name} + {config.decoder.name}",
        )
    raise TypeError(f"no backend for {type(config).__name__}")


def _propagation(config: Propagation) -> PropagationParams:
    return PropagationParams(**config.model_dump())
