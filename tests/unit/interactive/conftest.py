"""Fixtures of the interactive service's tests: phantom volumes, small SAM models, Orthanc.

Everything is real: volumes are phantom DICOM series read by the service's own volume reader,
SAM models are built by ``scripts/build_test_sam_models.py`` (random weights, reduced size),
and Orthanc is Debian's binary started on a free port with an empty storage.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from nodeharness import free_port

from .helpers import OrthancServer

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


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    if not ORTHANC.exists():
        pytest.fail(f"{ORTHANC} is missing; install Debian's orthanc package")
    folder = tmp_path_factory.mktemp("orthanc")
    port = free_port()
    config = {
        "Name": "INTERACTIVE-TEST",
        "HttpPort": port,
        "DicomServerEnabled": False,
        "DicomPort": free_port(),
        "StorageDirectory": str(folder / "db"),
        "IndexDirectory": str(folder / "db"),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {"tester": "secret"},
        # The service reads a series in one WADO-RS request (DICOMweb plugin).
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = (folder / "orthanc.log").open("w")
    process = subprocess.Popen([str(ORTHANC), str(folder / "orthanc.json")], stdout=log, stderr=log)
    server = OrthancServer(f"http://127.0.0.1:{port}", ("tester", "secret"))
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(f"{server.url}/system", auth=server.auth, timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Orthanc did not start; see {folder / 'orthanc.log'}")
            time.sleep(0.05)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(folder / "db", ignore_errors=True)
