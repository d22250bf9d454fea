"""The interactive service against a real, bare Orthanc (no node): one per test file."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dicompeers import PASSWORD, USER, start_orthanc, stop
from unit.interactive.helpers import OrthancServer


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """Debian's Orthanc with DICOMweb,
    authentication on, an empty storage, free ports."""
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        yield OrthancServer(server.url, (USER, PASSWORD))
    finally:
        stop(server.process)
