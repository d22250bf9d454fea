"""Compressed transfer syntaxes decode to exactly the phantom's CT numbers."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from ainode_worker.volume import PixelDataError, volume_from_datasets
from pydicom import Dataset
from pydicom.uid import (
    UID,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from ainode.phantoms import Geometry, SeriesIds, make_phantom, phantom_datasets

GEOMETRY = Geometry(shape=(4, 48, 40), spacing=(2.5, 0.8, 0.8))


def _phantom() -> tuple[np.ndarray, list[Dataset]]:
    phantom = make_phantom(GEOMETRY, seed=11)
    return phantom.image, list(phantom_datasets(phantom, SeriesIds()))


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_pydicom_encoded_series_decode_losslessly(syntax: UID, tmp_path: Path) -> None:
    image, datasets = _phantom()
    read = []
    for index, ds in enumerate(datasets):
        ds.compress(syntax)
        path = tmp_path / f"{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        read.append(pydicom.dcmread(path))
    assert read[0].file_meta.TransferSyntaxUID == syntax
    volume = volume_from_datasets(read)
    np.testing.assert_array_equal(volume.array, image.astype(np.float32))


@pytest.mark.skipif(shutil.which("dcmcjpeg") is None, reason="dcmtk's dcmcjpeg not installed")
def test_dcmtk_jpeg_lossless_series_decodes(tmp_path: Path) -> None:
    image, datasets = _phantom()
    read = []
    for index, ds in enumerate(datasets):
        plain, packed = tmp_path / f"{index}.dcm", tmp_path / f"{index}.jpg.dcm"
        ds.save_as(plain, enforce_file_format=True)
        subprocess.run(["dcmcjpeg", "+e1", str(plain), str(packed)], check=True)
        read.append(pydicom.dcmread(packed))
    assert read[0].file_meta.TransferSyntaxUID == JPEGLosslessSV1
    np.testing.assert_array_equal(volume_from_datasets(read).array, image.astype(np.float32))


def test_undecodable_pixel_data_names_the_transfer_syntax() -> None:
    _, datasets = _phantom()
    for ds in datasets:
        ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2, no decoder
        ds.PixelData = b"\x00" * 16
    with pytest.raises(PixelDataError, match="MPEG2"):
        volume_from_datasets(datasets)
