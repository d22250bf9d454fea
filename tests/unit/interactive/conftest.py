"""Fixtures of the interactive service's tests: phantom volumes, small SAM models.

Everything is real: volumes are phantom DICOM series read by the service's own volume reader,
SAM models are built by ``scripts/build_test_sam_models.py`` (random weights, reduced size).
The tests against a real Orthanc are in tests/integration/test_interactive_orthanc.py.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@pytest.fixture(scope="session")
def sam_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The models file of freshly built random-weight SAM 2 models (256 px input)."""
    out = tmp_path_factory.mktemp("sam-models")
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "build_test_sam_models.py"),
            str(out),
            "--image-size",
            "256",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out / "interactive-models.yaml"


@pytest.fixture(scope="session", autouse=True)
def single_threaded() -> Iterator[None]:
    """PyTorch and BLAS on one thread: on two busy cores their pools spin 10-100x slower."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(before)
