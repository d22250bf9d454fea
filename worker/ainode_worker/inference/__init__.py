"""The worker's inference engine: registry entries run as nnU-Net, TotalSegmentator, ONNX or
BiomedParse models, alone or in cascades, with post-processing."""

from ainode_worker.inference.backend import Backend, create_backend
from ainode_worker.inference.errors import (
    BackendUnavailableError,
    GpuMemoryError,
    InferenceError,
    InputMismatchError,
    ModelLoadError,
    ParamsError,
    RemoteServiceError,
    WeightsMissingError,
)
from ainode_worker.inference.pipeline import (
    BackendCache,
    PipelineResult,
    default_cache,
    run_pipeline,
)
from ainode_worker.inference.prediction import Prediction

__all__ = [
    "Backend",
    "BackendCache",
    "BackendUnavailableError",
    "GpuMemoryError",
    "InferenceError",
    "InputMismatchError",
    "ModelLoadError",
    "ParamsError",
    "PipelineResult",
    "Prediction",
    "RemoteServiceError",
    "WeightsMissingError",
    "create_backend",
    "default_cache",
    "run_pipeline",
]
