"""ONNX Runtime backend: provider choice, Gaussian-weighted sliding window, Dice on phantoms."""

from __future__ import annotations

import itertools
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ainode_worker.inference.errors import WeightsMissingError
from ainode_worker.inference.pipeline import BackendCache, run_pipeline
from ainode_worker.inference.sliding_window import gaussian_weights, sliding_window, window_starts
from ainode_worker.volume import Volume

from ainode.phantoms import Phantom
from ainode.registry import InferenceParams, Registry
from ainode.settings import REPO_ROOT

from .helpers import dice

SCRIPT = REPO_ROOT / "scripts" / "build_test_onnx_model.py"


def test_window_starts_cover_the_axis_with_overlap() -> None:
    assert window_starts(20, 32, 0.5) == [0]
    starts = window_starts(100, 32, 0.5)
    assert starts[0] == 0 and starts[-1] == 100 - 32
    assert all(b - a <= 16 for a, b in itertools.pairwise(starts))


def test_gaussian_weights_peak_at_the_centre_and_never_vanish() -> None:
    weights = gaussian_weights((8, 16, 16))
    assert weights.shape == (8, 16, 16)
    assert weights[4, 8, 8] == pytest.approx(1.0)
    assert weights.min() > 0
    assert weights[0, 0, 0] < weights[2, 4, 4] < weights[4, 8, 8]


def test_sliding_window_equals_whole_volume_for_a_pointwise_model() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 21, 37, 30)).astype(np.float32)

    def run(batch: np.ndarray) -> np.ndarray:
        assert batch.shape == (1, 1, 8, 16, 16)
        positive = 1 / (1 + np.exp(-batch))
        return np.concatenate([1 - positive, positive], axis=1).astype(np.float32)

    result = sliding_window(image, (8, 16, 16), 0.5, run)
    positive = 1 / (1 + np.exp(-image[0]))
    np.testing.assert_allclose(result[1], positive, rtol=1e-5)
    np.testing.assert_allclose(result.sum(axis=0), 1.0, rtol=1e-5)


def test_onnx_model_segments_the_phantom_with_a_sliding_window(
    registry: Registry,
    phantom: tuple[Phantom, Volume],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    truth, volume = phantom
    assert volume.shape[1] > 48  # larger than the model's 32x48x48 patch
    # A cache of its own: the provider choice is logged at load, and the session's cache may
    # hold the model already, loaded by another test file that ran first in this process.
    cache = BackendCache(tmp_path / "data")
    with caplog.at_level(logging.INFO, logger="ainode_worker.inference.onnxrt"):
        result = run_pipeline(registry, "demo-onnx", {"main": volume}, {}, cache=cache)
    assert "using: ['CPUExecutionProvider']" in caplog.text
    # an intensity model: one label, 1 "object", for spheres and boxes alike
    assert set(np.unique(result.labels)) == {0, 1}
    assert dice(result.labels == 1, truth.labels > 0, True) > 0.95
    for label in (1, 2):  # spheres and boxes alike are found
        inside = truth.labels == label
        assert (result.labels[inside] == 1).mean() > 0.95, label
    assert result.model_version == "2.0.0"
    assert [label.name for label in result.label_specs] == ["Object"]


def test_onnx_probabilities_are_returned_on_request(
    registry: Registry, cache: BackendCache, phantom: tuple[Phantom, Volume]
) -> None:
    truth, volume = phantom
    result = run_pipeline(
        registry, "demo-onnx", {"main": volume}, {"return_probabilities": True}, cache=cache
    )
    assert result.probabilities is not None
    assert result.probabilities.shape == (2, *volume.shape)
    np.testing.assert_allclose(result.probabilities.sum(axis=0), 1.0, rtol=1e-4)
    objects = truth.labels > 0
    assert float(result.probabilities[1][objects].mean()) > 0.9
    assert float(result.probabilities[1][~objects].mean()) < 0.1


def test_build_script_is_reproducible(tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    subprocess.run([sys.executable, str(SCRIPT), "--output", str(out)], check=True)
    committed = REPO_ROOT / "sample-data" / "models" / "demo-phantom-onnx" / "model.onnx"
    assert out.read_bytes() == committed.read_bytes()


def test_missing_onnx_file_is_a_clear_error(registry: Registry, tmp_path: Path) -> None:
    import torch
    from ainode_worker.inference.onnxrt import OnnxBackend

    spec = registry.get("demo-onnx").model_copy(update={"weights": str(tmp_path / "none.onnx")})
    with pytest.raises(WeightsMissingError, match=r"none\.onnx"):
        OnnxBackend().load(spec, torch.device("cpu"))
    assert InferenceParams().tile_step_size == 0.5


def test_a_gpu_worker_without_onnx_cuda_says_onnx_runs_on_the_cpu(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import onnxruntime as ort
    import torch
    from ainode_worker.inference.onnxrt import choose_providers

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has the CUDA provider")
    with caplog.at_level(logging.WARNING, logger="ainode_worker.inference.onnxrt"):
        providers = choose_providers(torch.device("cuda"))  # a name: no GPU is touched
    assert providers == ["CPUExecutionProvider"]
    assert "ONNX models run on the CPU" in caplog.text
    assert "onnxruntime-gpu" in caplog.text
