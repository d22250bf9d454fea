"""Fixtures: a real Orthanc for the session, a storescp per test, result files to send.

Orthanc runs with authentication on (unlike a bare test config) so that the node's credentials
from the settings are exercised, and a wrong password can be seen to fail for good.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from ainode_worker.results import Provenance, export_results
from dicompeers import OrthancServer, StoreScp, start_orthanc, start_storescp, stop
from nodeharness import free_port

from ainode.jobs import OutputKind
from ainode.phantoms import Geometry, SeriesIds, make_phantom, write_series
from ainode.registry import Code, LabelSpec

OBJECT = Code(value="260787004", meaning="Physical object")
LABELS = [
    LabelSpec(
        value=1,
        name="sphere",
        category=OBJECT,
        type=Code(value="122485", scheme="DCM", meaning="Sphere"),
    ),
    LabelSpec(
        value=2, name="box", category=OBJECT, type=Code(value="706342009", meaning="Phantom")
    ),
]
OUTPUTS = [OutputKind.SEG, OutputKind.SEG_LABELMAP, OutputKind.RTSTRUCT, OutputKind.SR]


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        yield server
    finally:
        stop(server.process)


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreScp]:
    scp = start_storescp(tmp_path / "storescp", free_port())
    try:
        yield scp
    finally:
        stop(scp.process)


@pytest.fixture
def result_files(tmp_path: Path, request: pytest.FixtureRequest) -> list[Path]:
    """SEG, LABELMAP SEG (RLE), RTSTRUCT and SR of a small phantom; UIDs unique per test."""
    phantom = make_phantom(Geometry(shape=(12, 32, 32)), seed=2)
    paths = write_series(phantom, tmp_path / "series", SeriesIds())
    sources = [pydicom.dcmread(p) for p in paths]
    provenance = Provenance("m", "Model", "1.0", rule=request.node.name, pipeline="p")
    written = export_results(
        phantom.labels.astype(np.uint8), sources, LABELS, provenance, OUTPUTS, tmp_path / "out"
    )
    return [r.path for r in written if r.is_dicom]
