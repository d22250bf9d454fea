"""Mask outputs: compact JSON, NIfTI and NRRD on the series' grid, read back independently."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from ainode_worker.interactive import create_app
from ainode_worker.interactive.config import InteractiveConfig
from ainode_worker.interactive.encoding import decode_mask, encode_mask, nrrd_bytes
from ainode_worker.interactive.prompts import EMPTY_BOUNDS, mask_bounds
from ainode_worker.interactive.volumes import InMemoryVolumeLoader
from fastapi.testclient import TestClient

from ainode.phantoms import Geometry

from .helpers import PhantomSeries, dice, object_click, phantom_series

OBLIQUE = Geometry(
    shape=(30, 56, 48),
    spacing=(2.5, 0.9, 0.7),
    origin=(-12.0, 30.0, 80.0),
    row_direction=(0.6, 0.8, 0.0),
    column_direction=(0.0, 0.0, -1.0),
)


@pytest.fixture(scope="module")
def series() -> PhantomSeries:
    return phantom_series(OBLIQUE, seed=5)


@pytest.fixture(scope="module")
def client(series: PhantomSeries) -> TestClient:
    loader = InMemoryVolumeLoader()
    loader.add(series.volume)
    return TestClient(create_app(InteractiveConfig(store_accepted=False), loader=loader))


def _patient_lps(geometry: Geometry, x: int, y: int, z: int) -> np.ndarray:
    """Where DICOM puts voxel (column x, row y, slice z): IPP + x*dc*row_dir + y*dr*col_dir."""
    return (
        geometry.position(z)
        + x * geometry.spacing[2] * np.asarray(geometry.row_direction)
        + y * geometry.spacing[1] * np.asarray(geometry.column_direction)
    )


def test_json_mask_round_trips(client: TestClient, series: PhantomSeries) -> None:
    x, y, z = object_click(series.phantom, 1)
    answer = client.post(
        "/segment", json={"series": series.uid, "points": [{"x": x, "y": y, "z": z, "label": 1}]}
    )
    assert answer.status_code == 200
    body = answer.json()
    mask = decode_mask(body["mask"])
    assert body["shape"] == list(series.volume.array.shape) == list(mask.shape)
    assert body["voxels"] == int(mask.sum())
    assert dice(mask, series.phantom.labels == 1) >= 0.85
    assert set(body["timings"]) >= {"load_ms", "embed_ms", "decode_ms", "total_ms"}


def test_nifti_is_on_the_series_grid(
    client: TestClient, series: PhantomSeries, tmp_path: Path
) -> None:
    x, y, z = object_click(series.phantom, 2)
    answer = client.post(
        "/segment?format=nifti",
        json={"series": series.uid, "points": [{"x": x, "y": y, "z": z}]},
    )
    assert answer.status_code == 200
    assert answer.headers["x-session"]
    assert json.loads(answer.headers["x-timings"])["total_ms"] > 0
    path = tmp_path / "mask.nii.gz"
    path.write_bytes(answer.content)
    image: Any = nib.load(path)
    data = np.asarray(image.dataobj)
    assert data.shape == (OBLIQUE.shape[2], OBLIQUE.shape[1], OBLIQUE.shape[0])  # x, y, z
    assert dice(data.transpose(2, 1, 0), series.phantom.labels == 2) >= 0.85
    for voxel in [(0, 0, 0), (x, y, z), (47, 55, 29), (3, 40, 17)]:
        ras = image.affine @ np.array([*voxel, 1.0])
        assert np.allclose(ras[:3], _patient_lps(OBLIQUE, *voxel) * [-1, -1, 1], atol=1e-3)
    # SimpleITK, an independent reader, puts the file at the same place (LPS).
    itk: Any = sitk.ReadImage(str(path))
    assert np.allclose(itk.GetOrigin(), _patient_lps(OBLIQUE, 0, 0, 0), atol=1e-3)


def test_nrrd_is_on_the_series_grid(series: PhantomSeries, tmp_path: Path) -> None:
    label_map = (series.phantom.labels == 1).astype(np.uint8) * 3
    for compress in (False, True):
        path = tmp_path / f"labels-{compress}.nrrd"
        path.write_bytes(nrrd_bytes(label_map, series.volume, dtype="uint16", compress=compress))
        image: Any = sitk.ReadImage(str(path))
        assert image.GetPixelID() == sitk.sitkUInt16
        assert np.array_equal(sitk.GetArrayFromImage(image), label_map)  # [z, y, x]
        for voxel in [(0, 0, 0), (10, 20, 5), (47, 55, 29)]:
            point = image.TransformIndexToPhysicalPoint(voxel)
            assert np.allclose(point, _patient_lps(OBLIQUE, *voxel), atol=1e-3)


def _gunzip(data: str) -> bytes:
    """Decompressed by GNU gzip, a reader independent of Python's zlib bindings."""
    done = subprocess.run(
        ["gzip", "-dc"], input=base64.b64decode(data), capture_output=True, check=True
    )
    return done.stdout


def test_mask_encoding_is_compact_and_exact() -> None:
    rng = np.random.default_rng(0)
    mask = (rng.random((20, 33, 17)) > 0.7).astype(np.uint8)
    encoded = encode_mask(mask)
    assert np.array_equal(decode_mask(encoded), mask)
    solid = np.zeros((100, 256, 256), np.uint8)
    solid[30:60, 50:150, 60:200] = 1
    packed = encode_mask(solid)
    assert len(packed["data"]) < 20_000  # 6.5 M voxels, 819 kB of bits
    assert np.array_equal(decode_mask(packed), solid)
    assert _gunzip(packed["data"]) == np.packbits(solid).tobytes()


@pytest.mark.parametrize("shape", [(40, 300, 301), (3, 5, 7), (300, 200, 256)])
def test_masks_encode_from_their_bounds(shape: tuple[int, int, int]) -> None:
    """Only the bytes over the bounds are packed; the stream is that of the whole grid.

    (300, 200, 256) holds 1.9 MB of bits: runs of zeros over 1 MiB, written from the cached
    compressed run, lie before the first and after the last object (the first two boxes).
    """
    rng = np.random.default_rng(sum(shape))
    boxes: list[tuple[slice, ...]] = [(slice(shape[0] - 2, shape[0]), slice(1, 3), slice(0, 1))]
    boxes.append((slice(0, 1), slice(0, 1), slice(0, 2)))  # all at the start
    for _ in range(4):
        low = [int(rng.integers(0, n)) for n in shape]
        high = [int(rng.integers(a + 1, n + 1)) for a, n in zip(low, shape, strict=True)]
        boxes.append(tuple(slice(a, b) for a, b in zip(low, high, strict=True)))
    for box in boxes:
        mask = np.zeros(shape, np.uint8)
        mask[box] = rng.random(mask[box].shape) > 0.4
        encoded = encode_mask(mask, mask_bounds(mask))
        assert encoded == encode_mask(mask)
        assert _gunzip(encoded["data"]) == np.packbits(mask).tobytes()
        assert np.array_equal(decode_mask(encoded), mask)
    empty = encode_mask(np.zeros(shape, np.uint8), EMPTY_BOUNDS)
    assert _gunzip(empty["data"]) == bytes((int(np.prod(shape)) + 7) // 8)
