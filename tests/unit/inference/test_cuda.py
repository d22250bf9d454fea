"""On a CUDA GPU (``make gpu-check``; skipped elsewhere): the runtime sees it, nnU-Net and ONNX
Runtime really run on it, and their masks match the truth as on the CPU."""

from __future__ import annotations

import pytest
import torch
from ainode_worker.inference.device import DevicePolicy
from ainode_worker.inference.onnxrt import OnnxBackend
from ainode_worker.inference.pipeline import BackendCache, run_pipeline
from ainode_worker.runtime import measure
from ainode_worker.volume import Volume

from ainode.phantoms import Phantom
from ainode.registry import Registry

from .helpers import dice

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_runtime_reports_a_usable_gpu_and_onnx_cuda() -> None:
    runtime = measure()
    assert runtime.cuda_usable, runtime.cuda_reason
    assert runtime.gpus and runtime.gpus[0].total_mb > 0
    assert "CUDAExecutionProvider" in runtime.onnx_providers, runtime.warnings
    assert not runtime.warnings, runtime.warnings


def test_nnunet_runs_on_the_gpu(
    registry: Registry, phantom: tuple[Phantom, Volume], tmp_path_factory: pytest.TempPathFactory
) -> None:
    cache = BackendCache(tmp_path_factory.mktemp("cuda"), devices=DevicePolicy())
    truth, volume = phantom
    result = run_pipeline(registry, "demo-phantom", {"main": volume}, {}, cache=cache)
    assert [device.type for _, device in cache.loaded()] == ["cuda"]
    assert dice(result.labels, truth.labels, 1) >= 0.9


def test_onnx_runs_on_the_cuda_provider(registry: Registry) -> None:
    spec = registry.get("demo-phantom-onnx")
    spec = spec.model_copy(update={"weights": str(registry.weights_path(spec))})
    backend = OnnxBackend()
    backend.load(spec, torch.device("cuda"))
    assert backend.providers[0] == "CUDAExecutionProvider"
