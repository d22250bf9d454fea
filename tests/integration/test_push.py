"""``ainode push`` sends what it reads: compressed and deflated series arrive as they are at a
peer that accepts their syntax, decompressed at one that does not, and a stalled association
is replaced without losing a file.

The node is real (Orthanc with its default accepted syntaxes); the refusing and the stalling
peers are pynetdicom storage SCPs started here, each a real DICOM peer on a free port.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicompeers import StorageSCP
from nodeharness import Node, start_node
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from ainode.phantoms import Geometry, SeriesIds, make_phantom, phantom_datasets
from ainode.push import push_paths

pytestmark = pytest.mark.integration

SYNTAXES = {
    "jpeg2000": JPEG2000Lossless,
    "jpeg-ls": JPEGLSLossless,
    "rle": RLELossless,
    "deflated": DeflatedExplicitVRLittleEndian,
}
SLICES = 6


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    started = start_node(tmp_path_factory.mktemp("push") / "node")
    yield started
    started.stop()


def write_series(folder: Path, syntax: str, seed: int) -> dict[str, np.ndarray]:
    """A phantom CT series written in ``syntax``: SOP instance UID -> the original pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    phantom = make_phantom(Geometry(shape=(SLICES, 32, 32), spacing=(3.0, 1.5, 1.5)), seed=seed)
    pixels = {}
    for index, ds in enumerate(phantom_datasets(phantom, SeriesIds())):
        pixels[str(ds.SOPInstanceUID)] = ds.pixel_array.copy()
        if not pydicom.uid.UID(syntax).is_compressed:  # deflated or plain: written so
            ds.file_meta.TransferSyntaxUID = syntax
        else:
            ds.compress(syntax, generate_instance_uid=False)
        ds.save_as(folder / f"{index:03d}.dcm", enforce_file_format=True)
        assert pydicom.dcmread(folder / f"{index:03d}.dcm").file_meta.TransferSyntaxUID == syntax
    return pixels


@pytest.mark.parametrize("name", list(SYNTAXES))
def test_compressed_series_arrive_as_they_are(node: Node, tmp_path: Path, name: str) -> None:
    syntax = SYNTAXES[name]
    pixels = write_series(tmp_path / name, syntax, seed=len(name))
    report = push_paths(
        [tmp_path / name],
        host="127.0.0.1",
        port=node.settings.dicom_port,
        called_aet=node.settings.dicom_aet,
    )
    assert (report.sent, report.failed, report.failures) == (SLICES, 0, [])
    for uid, expected in pixels.items():
        instance = node.lookup(uid)
        stored = node.get(f"/instances/{instance}/metadata/TransferSyntax")
        assert stored.text == syntax, f"{name}: Orthanc holds {stored.text}, not the file's syntax"
        answer = node.get(f"/instances/{instance}/file")
        answer.raise_for_status()
        received = pydicom.dcmread(pydicom.filebase.DicomBytesIO(answer.content))
        np.testing.assert_array_equal(received.pixel_array, expected)


@pytest.mark.parametrize("name", list(SYNTAXES))
def test_a_peer_refusing_the_syntax_gets_the_files_decompressed(tmp_path: Path, name: str) -> None:
    pixels = write_series(tmp_path / name, SYNTAXES[name], seed=3 + len(name))
    peer = StorageSCP([ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    try:
        report = push_paths([tmp_path / name], host="127.0.0.1", port=peer.port, called_aet="PEER")
    finally:
        peer.stop()
    assert (report.sent, report.failed, report.failures) == (SLICES, 0, [])
    assert peer.syntaxes_seen <= {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
    assert set(peer.received) == set(pixels)
    for uid, ds in peer.received.items():
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        np.testing.assert_array_equal(ds.pixel_array, pixels[uid])


def test_a_stalled_association_is_replaced_and_nothing_is_lost(tmp_path: Path) -> None:
    pixels = write_series(tmp_path / "series", ExplicitVRLittleEndian, seed=9)
    peer = StorageSCP([ExplicitVRLittleEndian], stalls=1)
    try:
        report = push_paths(
            [tmp_path / "series"],
            host="127.0.0.1",
            port=peer.port,
            called_aet="PEER",
            associations=1,
            dimse_timeout_s=10,
        )
    finally:
        peer.stop()
    assert (report.sent, report.failed, report.failures) == (SLICES, 0, [])
    assert set(peer.received) == set(pixels), "a file of the stalled association was lost"
    assert peer.associations >= 2, "the stalled association was not replaced"
