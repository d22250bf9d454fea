"""BiomedParse over HTTP against a stand-in service implementing its 3D NIfTI contract.

The stand-in (FastAPI + uvicorn, started here) plays an external BiomedParse server: it takes
``POST /api/biomedparse/v1/predict-3d-nifti`` (NIfTI upload + prompts) and serves npz masks and
heatmaps under ``/files/``; it segments by thresholding CT numbers per prompt, so the phantom
here gives its spheres and boxes different CT numbers (the specification lets them overlap).
"""

from __future__ import annotations

import gzip
import io
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
import uvicorn
from ainode_worker.inference.biomedparse import BiomedParseBackend
from ainode_worker.inference.errors import BackendUnavailableError, RemoteServiceError
from ainode_worker.inference.nifti import nifti_affine
from ainode_worker.inference.pipeline import BackendCache, run_pipeline
from ainode_worker.volume import Volume, volume_from_datasets
from fastapi import FastAPI, File, HTTPException, Query, UploadFile
from fastapi.responses import Response
from scipy import ndimage

from ainode.phantoms import (
    Box,
    Geometry,
    Phantom,
    SeriesIds,
    Sphere,
    make_phantom,
    phantom_datasets,
)
from ainode.registry import load_registry

from .helpers import dice

BANDS = {"sphere": (100.0, 210.0), "box": (210.0, 10_000.0)}


def _service(seen: dict[str, Any]) -> FastAPI:
    app = FastAPI()
    files: dict[str, bytes] = {}

    def store(prefix: str, key: str, array: np.ndarray) -> str:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **{key: array})  # type: ignore[arg-type]
        name = f"{prefix}_{uuid.uuid4().hex}.npz"
        files[name] = buffer.getvalue()
        return f"/files/{name}"

    @app.post("/api/biomedparse/v1/predict-3d-nifti")
    async def predict(
        file: UploadFile = File(...),  # noqa: B008 - FastAPI's declaration style
        prompts: list[str] | None = Query(None),  # noqa: B008
        threshold: float = Query(0.5),
        return_heatmap: bool = Query(False),
    ) -> dict[str, Any]:
        if not prompts:
            raise HTTPException(status_code=400, detail="No prompts provided")
        if "fail" in prompts:
            raise HTTPException(status_code=500, detail="3D NIfTI inference failed: out of memory")
        image = nib.Nifti1Image.from_bytes(gzip.decompress(await file.read()))
        seen["affine"] = np.asarray(image.affine)
        volume = ndimage.median_filter(np.asarray(image.get_fdata()), size=3)
        results = []
        for prompt in prompts:
            low, high = BANDS[prompt]
            mask = ((volume >= low) & (volume < high)).astype(np.uint8)
            entry: dict[str, Any] = {
                "prompt": prompt,
                "description": prompt,
                "presence_confidence": 0.99,
                "mask_confidence": 0.9,
                "mask_format": "npz",
                "mask_shape": list(mask.shape),
                "mask_url": store("seg", "seg", mask),
            }
            if return_heatmap:
                entry["heatmap_url"] = store("prob", "prob", (mask * 230).astype(np.uint8))
            results.append(entry)
        return {"status": "success", "results": results}

    @app.get("/files/{name}")
    def artifact(name: str) -> Response:
        if name not in files:
            raise HTTPException(status_code=404)
        return Response(files[name], media_type="application/octet-stream")

    return app


@pytest.fixture(scope="module")
def service() -> Iterator[tuple[str, dict[str, Any]]]:
    seen: dict[str, Any] = {}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(_service(seen), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}/api/biomedparse/v1", seen
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def phantom() -> tuple[Phantom, Volume]:
    """Spheres at 150 HU and a box at 260 HU, in the stand-in's two CT-number bands."""
    shapes = [
        Sphere((25.0, 18.0, 20.0), 12.0, 150.0),
        Sphere((95.0, 30.0, 30.0), 10.0, 150.0),
        Box((60.0, 30.0, 30.0), (12.0, 14.0, 12.0), 260.0),
    ]
    truth = make_phantom(Geometry(), seed=5, shapes=shapes)
    return truth, volume_from_datasets(list(phantom_datasets(truth, SeriesIds())))


def _registry(tmp_path: Path, url: str, prompts: str = "{1: sphere, 2: box}") -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(
        f"""\
models:
  - id: bp
    name: BiomedParse objects
    kind: biomedparse
    version: "2.0"
    biomedparse:
      service_url: {url}
      prompts: {prompts}
    labels:
      - value: 1
        name: Sphere
        category: {{value: "260787004", meaning: Physical object}}
        type: {{value: "122485", scheme: DCM, meaning: Sphere}}
      - value: 2
        name: Box
        category: {{value: "260787004", meaning: Physical object}}
        type: {{value: "706342009", meaning: Phantom}}
"""
    )
    return path


def test_http_mode_segments_by_prompt_with_correct_geometry(
    service: tuple[str, dict[str, Any]], tmp_path: Path, phantom: tuple[Phantom, Volume]
) -> None:
    url, seen = service
    registry = load_registry(_registry(tmp_path, url))
    assert registry.check("bp").available
    truth, volume = phantom
    result = run_pipeline(
        registry,
        "bp",
        {"main": volume},
        {"return_probabilities": True},
        cache=BackendCache(tmp_path / "data"),
    )
    assert dice(result.labels, truth.labels, 1) >= 0.9
    assert dice(result.labels, truth.labels, 2) >= 0.9
    assert result.probabilities is not None
    assert result.probabilities[2][truth.labels == 2].mean() == pytest.approx(230 / 255, abs=0.05)
    # the service got a NIfTI whose affine puts voxel (i=column, j=row, k=slice) at its RAS place
    np.testing.assert_allclose(seen["affine"], nifti_affine(volume), atol=1e-4)
    corner = seen["affine"] @ np.array([0, 0, 0, 1.0])
    lps = np.asarray(volume.origin)
    np.testing.assert_allclose(corner[:3], [-lps[0], -lps[1], lps[2]], atol=1e-4)


def test_service_error_is_reported_with_its_status(
    service: tuple[str, dict[str, Any]], tmp_path: Path, phantom: tuple[Phantom, Volume]
) -> None:
    url, _ = service
    registry = load_registry(_registry(tmp_path, url, prompts="{1: fail, 2: box}"))
    with pytest.raises(RemoteServiceError, match=r"HTTP 500 .*out of memory"):
        run_pipeline(
            registry, "bp", {"main": phantom[1]}, {}, cache=BackendCache(tmp_path / "data")
        )


def test_unreachable_service_is_a_remote_service_error(
    tmp_path: Path, phantom: tuple[Phantom, Volume]
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    registry = load_registry(_registry(tmp_path, f"http://127.0.0.1:{port}/api/biomedparse/v1"))
    with pytest.raises(RemoteServiceError, match="failed"):
        run_pipeline(
            registry, "bp", {"main": phantom[1]}, {}, cache=BackendCache(tmp_path / "data")
        )


def test_in_process_mode_without_the_package_says_what_is_missing(tmp_path: Path) -> None:
    registry = load_registry(Path(__file__).parents[3] / "configs" / "models.yaml")
    spec = registry.get("biomedparse-abdomen")
    assert not registry.check(spec.id).available
    with pytest.raises(BackendUnavailableError, match="service_url"):
        BiomedParseBackend().load(spec, torch.device("cpu"))
