"""Cascades (crop, intersect, channel), parameters and post-processing, on real models."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from ainode_worker.inference.cascade import bounding_box, keep_overlapping, paste
from ainode_worker.inference.errors import InputMismatchError, ParamsError
from ainode_worker.inference.pipeline import BackendCache, run_pipeline
from ainode_worker.inference.postprocess import postprocess
from ainode_worker.inference.prediction import Prediction
from ainode_worker.volume import Volume

from ainode.phantoms import Phantom
from ainode.registry import InferenceParams, Registry, load_registry
from ainode.settings import REPO_ROOT

from .helpers import dice


def test_crop_cascade_runs_the_second_stage_in_the_first_ones_box(
    registry: Registry, cache: BackendCache, phantom: tuple[Phantom, Volume]
) -> None:
    truth, volume = phantom
    result = run_pipeline(registry, "demo-cascade", {"main": volume}, {}, cache=cache)
    assert result.pipeline_id == "demo-phantom-refined"
    for label in (1, 2):
        assert dice(result.labels, truth.labels, label) >= 0.9
    assert {"stage0.demo-phantom.predict_s", "stage1.demo-phantom.predict_s"} <= set(result.timings)
    assert result.stage_versions == {"demo-phantom": "2.0.0"}


def test_crop_cascade_with_classes_keeps_only_those(
    registry: Registry, cache: BackendCache, phantom: tuple[Phantom, Volume]
) -> None:
    truth, volume = phantom
    result = run_pipeline(
        registry,
        "demo-cascade",
        {"main": volume},
        {"classes": [2], "stages": [{"classes": [2]}]},
        cache=cache,
    )
    assert set(np.unique(result.labels)) == {0, 2}
    assert dice(result.labels, truth.labels, 2) >= 0.9
    assert [label.value for label in result.label_specs] == [2]


def test_crop_cascade_after_an_empty_first_stage_is_empty(
    registry: Registry, cache: BackendCache, phantom: tuple[Phantom, Volume]
) -> None:
    result = run_pipeline(
        registry,
        "demo-cascade",
        {"main": phantom[1]},
        {"proba_threshold": 0.5, "return_probabilities": True, "stages": [{"classes": []}]},
        cache=cache,
    )
    assert not result.labels.any()
    assert result.probabilities is not None and (result.probabilities[0] == 1).all()


def test_intersect_cascade_drops_components_the_first_model_did_not_see(
    registry: Registry, cache: BackendCache, phantom: tuple[Phantom, Volume]
) -> None:
    truth, volume = phantom
    # The first stage only keeps the box; the ONNX model finds every object (label 1), and its
    # spheres overlap nothing of the first stage and go.
    result = run_pipeline(
        registry,
        "demo-phantom-confirmed",
        {"main": volume},
        {"stages": [{"classes": [2]}]},
        cache=cache,
    )
    assert set(np.unique(result.labels)) == {0, 1}
    assert not result.labels[truth.labels == 1].any()
    assert dice(result.labels == 1, truth.labels == 2, True) >= 0.9


def test_channel_cascade_feeds_the_previous_output_as_a_channel(
    cache: BackendCache, tmp_path: Path, phantom: tuple[Phantom, Volume]
) -> None:
    models = tmp_path / "models"
    subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "build_test_onnx_model.py"),
            "--gate-channel",
            "--output",
            str(models / "gated.onnx"),
        ],
        check=True,
    )
    registry_text = (REPO_ROOT / "configs" / "models.yaml").read_text()
    registry_text = registry_text.replace(
        "models_root: ../sample-data/models", f"models_root: {REPO_ROOT / 'sample-data/models'}"
    )
    gated = """
  - id: gated-onnx
    name: gated
    kind: onnx
    version: "1"
    weights: WEIGHTS
    input: {channels: [main]}
    labels:
      - value: 1
        name: Object
        category: {value: "260787004", meaning: Physical object}
        type: {value: "706342009", meaning: Phantom}
  - id: box-then-gated
    name: box gate
    kind: cascade
    version: "1"
    stages:
      - model: demo-phantom
        params: {classes: [2]}
      - model: gated-onnx
        from_previous: {mode: channel}
""".replace("WEIGHTS", str(models / "gated.onnx"))
    (tmp_path / "models.yaml").write_text(registry_text + gated)
    registry = load_registry(tmp_path / "models.yaml")
    truth, volume = phantom
    result = run_pipeline(registry, "box-then-gated", {"main": volume}, {}, cache=cache)
    # objects vetoed outside the previous output (the box): the spheres are not found
    assert (result.labels[truth.labels == 1] == 1).sum() < 0.05 * (truth.labels == 1).sum()
    assert dice(result.labels == 1, truth.labels == 2, True) >= 0.9


def test_second_run_reuses_the_loaded_model(
    registry: Registry, cache: BackendCache, phantom: tuple[Phantom, Volume]
) -> None:
    run_pipeline(registry, "demo-onnx", {"main": phantom[1]}, {}, cache=cache)
    again = run_pipeline(registry, "demo-onnx", {"main": phantom[1]}, {}, cache=cache)
    assert not any(key.endswith(".load_s") for key in again.timings)


def test_bad_params_and_missing_channels_are_clear_errors(
    registry: Registry, cache: BackendCache, phantom: tuple[Phantom, Volume]
) -> None:
    with pytest.raises(ParamsError, match="thresold"):
        run_pipeline(registry, "demo-onnx", {"main": phantom[1]}, {"thresold": 1}, cache=cache)
    with pytest.raises(ParamsError, match="stages"):
        run_pipeline(registry, "demo-onnx", {"main": phantom[1]}, {"stages": [{}, {}]}, cache=cache)
    with pytest.raises(InputMismatchError, match="main"):
        run_pipeline(registry, "demo-onnx", {"ADC": phantom[1]}, {}, cache=cache)
    mr = replace(phantom[1], modality="MR")
    with pytest.raises(InputMismatchError, match="expects a CT series; the job's series is MR"):
        run_pipeline(registry, "demo-onnx", {"main": mr}, {}, cache=cache)


def test_postprocess_threshold_confidence_and_size() -> None:
    labels = np.zeros((10, 10, 10), dtype=np.uint8)
    labels[1:4, 1:4, 1:4] = 1  # 27 voxels, confident
    labels[6:9, 6:9, 6:9] = 1  # 27 voxels, unsure
    labels[0, 9, 9] = 2  # a single voxel
    probabilities = np.zeros((3, 10, 10, 10), dtype=np.float32)
    probabilities[1][1:4, 1:4, 1:4] = 0.95
    probabilities[1][6:9, 6:9, 6:9] = 0.55
    probabilities[1][7, 7, 7] = 0.4
    probabilities[2][0, 9, 9] = 0.99
    spacing = (2.0, 1.0, 1.0)

    out = postprocess(labels, probabilities, InferenceParams(proba_threshold=0.5), spacing)
    assert out[7, 7, 7] == 0 and out[6, 6, 6] == 1 and out[2, 2, 2] == 1
    out = postprocess(labels, probabilities, InferenceParams(min_confidence=0.7), spacing)
    assert not out[6:9, 6:9, 6:9].any() and out[1:4, 1:4, 1:4].all() and out[0, 9, 9] == 2
    out = postprocess(labels, None, InferenceParams(min_component_mm3=4.0), spacing)
    assert out[0, 9, 9] == 0 and out[2, 2, 2] == 1
    out = postprocess(labels, None, InferenceParams(classes=[2]), spacing)
    assert set(np.unique(out)) == {0, 2}
    with pytest.raises(ValueError, match="without probabilities"):
        postprocess(labels, None, InferenceParams(min_confidence=0.5), spacing)


def test_crop_box_padding_in_mm_and_paste_back() -> None:
    mask = np.zeros((20, 30, 30), dtype=bool)
    mask[10:12, 5:8, 20:22] = True
    box = bounding_box(mask, (5.0, 2.0, 2.0), (2.5, 1.0, 1.0))
    assert box == (slice(8, 14), slice(3, 10), slice(18, 24))
    assert bounding_box(np.zeros_like(mask), (1, 1, 1), (1, 1, 1)) is None
    cropped = Prediction(labels=np.ones((6, 7, 6), dtype=np.uint8))
    full = paste(cropped, box, mask.shape)
    assert full.labels.sum() == 6 * 7 * 6 and full.labels[box].all()


def test_keep_overlapping_uses_the_fraction_of_each_component() -> None:
    labels = np.zeros((10, 10, 10), dtype=np.uint8)
    labels[0:2, 0:2, 0:2] = 1  # 8 voxels, 2 inside previous (25 %)
    labels[5:7, 5:7, 5:7] = 1  # 8 voxels, all inside
    previous = np.zeros_like(labels, dtype=bool)
    previous[0, 0, 0:2] = True
    previous[5:7, 5:7, 5:7] = True
    assert keep_overlapping(labels, previous, 0.2)[0, 0, 0] == 1
    kept = keep_overlapping(labels, previous, 0.5)
    assert kept[0:2, 0:2, 0:2].sum() == 0 and kept[5:7, 5:7, 5:7].all()
