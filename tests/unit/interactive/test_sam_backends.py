"""SAM 2 (PyTorch) and SAM ONNX on random-weight models: the real loading and inference paths.

Random weights cannot be judged for quality; what is checked is what must hold for any
weights: masks have the series' shape, the same prompts give the same mask, the second click
reuses every cached slice embedding, and PyTorch and ONNX Runtime compute the same thing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from ainode_worker.interactive.config import InteractiveConfig, load_models_file
from ainode_worker.interactive.errors import ModelUnavailableError
from ainode_worker.interactive.prompts import Box, Point
from ainode_worker.interactive.service import InteractiveService
from ainode_worker.interactive.volumes import InMemoryVolumeLoader

from ainode.phantoms import Geometry

from .helpers import PhantomSeries, dice, object_click, phantom_series


@pytest.fixture(scope="module")
def series() -> PhantomSeries:
    return phantom_series(Geometry(shape=(10, 64, 64), spacing=(3.0, 0.8, 0.8)), seed=2)


def _service(models_file: Path, series: PhantomSeries, **overrides: object) -> InteractiveService:
    loader = InMemoryVolumeLoader()
    loader.add(series.volume)
    data = {**load_models_file(models_file), "store_accepted": False, **overrides}
    return InteractiveService(InteractiveConfig.model_validate(data), loader)


@pytest.fixture(scope="module")
def service(sam_models: Path, series: PhantomSeries) -> InteractiveService:
    return _service(sam_models, series)


@pytest.mark.parametrize("model", ["sam2", "sam-onnx"])
def test_masks_are_deterministic_and_reuse_embeddings(
    service: InteractiveService, series: PhantomSeries, model: str
) -> None:
    x, y, z = object_click(series.phantom, 1)
    click = (Point(x, y, z, True),)
    first = service.segment(model=model, series=series.uid, points=click)
    assert first.mask.shape == series.volume.array.shape
    assert first.mask.dtype == np.uint8 and set(np.unique(first.mask)) <= {0, 1}
    assert first.timings.features_computed >= 1 and first.timings.features_reused == 0
    assert first.timings.slices_decoded >= 1

    # The seeded random model propagates through every slice, so every slice is embedded.
    assert first.timings.features_computed == series.volume.shape[0]

    repeated = service.segment(model=model, session=first.session, points=click)
    assert np.array_equal(repeated.mask, first.mask)
    assert repeated.timings.slices_decoded == 0  # identical inputs: every decode is cached
    assert repeated.timings.decodes_reused == first.timings.slices_decoded

    corrected = service.segment(
        model=model, session=first.session, points=(*click, Point(x + 5, y, z, False))
    )
    assert corrected.timings.slices_decoded >= 1  # the anchor's prompts changed
    assert corrected.timings.features_computed == 0  # but no slice is encoded again
    assert corrected.timings.features_reused == corrected.timings.slices_decoded
    assert corrected.timings.embed_ms == 0.0

    # Another session on the series shares its embeddings and decodes: nothing is computed.
    fresh = service.segment(model=model, series=series.uid, points=click)
    assert fresh.session != first.session
    assert np.array_equal(fresh.mask, first.mask)
    assert fresh.timings.features_computed == 0 and fresh.timings.slices_decoded == 0


def test_a_correction_on_another_slice_recomputes_only_what_it_changes(
    sam_models: Path, series: PhantomSeries
) -> None:
    service = _service(sam_models, series)  # nothing cached yet
    slices = series.volume.shape[0]
    x, y, z = object_click(series.phantom, 1)
    first = service.segment(model="sam-onnx", series=series.uid, points=(Point(x, y, z),))
    other = z + 2 if z + 2 < slices else z - 2
    prompts = (Point(x, y, z), Point(x, y, other, False))
    corrected = service.segment(model="sam-onnx", session=first.session, points=prompts)
    assert 0 < corrected.timings.slices_decoded < first.timings.slices_decoded
    assert corrected.timings.decodes_reused >= 2  # the anchor and the untouched side
    # Cached pieces give exactly what a fresh service computes from scratch.
    fresh = _service(sam_models, series).segment(
        model="sam-onnx", series=series.uid, points=prompts
    )
    assert fresh.timings.decodes_reused == 0
    assert np.array_equal(fresh.mask, corrected.mask)


def test_pytorch_and_onnx_runtime_agree(service: InteractiveService, series: PhantomSeries) -> None:
    x, y, z = object_click(series.phantom, 2)
    prompts = {
        "points": (Point(x, y, z, True), Point(5, 5, z, False)),
        "boxes": (Box(z + 1, x - 8.0, y - 8.0, x + 8.0, y + 8.0),),
    }
    by_torch = service.segment(model="sam2", series=series.uid, **prompts)  # type: ignore[arg-type]
    by_onnx = service.segment(model="sam-onnx", series=series.uid, **prompts)  # type: ignore[arg-type]
    assert by_torch.timings.slices_decoded == by_onnx.timings.slices_decoded
    # The seeded random model marks voxels here, so the comparison is not vacuous.
    assert by_torch.mask.any()
    assert dice(by_torch.mask, by_onnx.mask) >= 0.99
    # Both anchors (the click's slice and the box's slice) were decoded.
    assert by_torch.timings.slices_decoded >= 2


def test_refining_with_the_previous_mask(
    service: InteractiveService, series: PhantomSeries
) -> None:
    x, y, z = object_click(series.phantom, 1)
    first = service.segment(model="sam2", series=series.uid, points=(Point(x, y, z, True),))
    refined = service.segment(
        model="sam2",
        session=first.session,
        points=(Point(x, y, z, True), Point(x + 3, y, z, False)),
        use_previous_mask=True,
    )
    assert refined.mask.shape == first.mask.shape
    assert refined.timings.features_computed == 0


def test_a_missing_checkpoint_disables_only_that_model(
    sam_models: Path, series: PhantomSeries, tmp_path: Path
) -> None:
    data = load_models_file(sam_models)
    data["models"]["sam2"]["checkpoint"] = str(tmp_path / "absent.pt")
    data["models"]["sam-onnx"]["decoder"] = str(tmp_path / "absent.onnx")
    loader = InMemoryVolumeLoader()
    loader.add(series.volume)
    service = InteractiveService(
        InteractiveConfig.model_validate({**data, "store_accepted": False}), loader
    )
    x, y, z = object_click(series.phantom, 1)
    for model in ("sam2", "sam-onnx"):
        with pytest.raises(ModelUnavailableError, match="does not exist"):
            service.segment(model=model, series=series.uid, points=(Point(x, y, z),))
    result = service.segment(model="regiongrow", series=series.uid, points=(Point(x, y, z),))
    assert result.mask.any()


def test_checkpoint_and_onnx_files_have_the_deployed_layout(sam_models: Path) -> None:
    folder = sam_models.parent
    state = torch.load(folder / "sam2_reduced.pt", map_location="cpu", weights_only=True)
    assert set(state) == {"model"} and any(k.startswith("image_encoder.") for k in state["model"])
    encoder = onnx.load(str(folder / "sam2_reduced.encoder.onnx"))
    decoder = onnx.load(str(folder / "sam2_reduced.decoder.onnx"))
    assert encoder.opset_import[0].version == 18
    assert [i.name for i in encoder.graph.input] == ["image"]
    assert [o.name for o in encoder.graph.output] == [
        "high_res_feats_0",
        "high_res_feats_1",
        "image_embed",
    ]
    assert [i.name for i in decoder.graph.input] == [
        "image_embed",
        "high_res_feats_0",
        "high_res_feats_1",
        "point_coords",
        "point_labels",
        "mask_input",
        "has_mask_input",
        "orig_im_size",
    ]
    # The decoder upsamples to whatever original size it is given.
    encoder_session = ort.InferenceSession(str(folder / "sam2_reduced.encoder.onnx"))
    decoder_session = ort.InferenceSession(str(folder / "sam2_reduced.decoder.onnx"))
    hr0, hr1, embed = encoder_session.run(None, {"image": np.zeros((1, 3, 256, 256), np.float32)})
    masks, iou, low_res, object_score = decoder_session.run(
        None,
        {
            "image_embed": embed,
            "high_res_feats_0": hr0,
            "high_res_feats_1": hr1,
            "point_coords": np.array([[[100.0, 120.0], [30.0, 40.0], [60, 70]]], np.float32),
            "point_labels": np.array([[1.0, 0.0, 1.0]], np.float32),
            "mask_input": np.zeros((1, 1, 64, 64), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array([50.0, 70.0], np.float32),
        },
    )
    assert masks.shape == (1, 1, 50, 70) and low_res.shape == (1, 1, 64, 64)
    assert iou.shape == (1, 1) and object_score.shape == (1, 1)
