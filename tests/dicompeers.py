"""Real peers for tests of sending results: a bare Orthanc (REST + DICOMweb), dcmtk storescp and
a pynetdicom storage peer that can leave C-STOREs unanswered."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
from nodeharness import free_port
from pydicom import Dataset
from pydicom.uid import CTImageStorage
from pynetdicom import AE, evt
from pynetdicom.events import Event

ORTHANC_BINARY = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
ORTHANC_AET = "ORTHANCTEST"
USER, PASSWORD = "ainode", "destination-tests"


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout_s} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class OrthancServer:
    url: str
    dicom_port: int
    process: subprocess.Popen[bytes]

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=(USER, PASSWORD), timeout=10.0)

    def find_instance(self, sop_instance_uid: str) -> list[str]:
        """Orthanc ids of the instances with this SOP Instance UID (empty when absent)."""
        with self.client() as client:
            answer = client.post(
                "/tools/find",
                json={"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}},
            )
            answer.raise_for_status()
            return [str(i) for i in answer.json()]


def start_orthanc(folder: Path) -> OrthancServer:
    """Orthanc with DICOMweb, authentication on, storage and index under ``folder``."""
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "ainode-destination-tests",
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": ORTHANC_AET,
        "DicomCheckCalledAet": True,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config))
    with (folder / "orthanc.log").open("wb") as log:
        process = subprocess.Popen(
            [ORTHANC_BINARY, str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
    server = OrthancServer(f"http://127.0.0.1:{http_port}", dicom_port, process)
    try:
        _wait_for_system(server)
    except BaseException:
        stop(process)
        raise
    return server


def _wait_for_system(server: OrthancServer, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {server.process.returncode} at startup")
        try:
            with server.client() as client:
                if client.get("/system").status_code == 200:
                    return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"Orthanc did not answer /system within {timeout_s} s")


@dataclass
class StoreScp:
    port: int
    folder: Path
    process: subprocess.Popen[bytes]

    def received(self) -> list[pydicom.Dataset]:
        return [pydicom.dcmread(p) for p in sorted(self.folder.iterdir()) if p.is_file()]


def start_storescp(folder: Path, port: int, *extra: str) -> StoreScp:
    """storescp accepting any SOP class (-pm), writing a new file per received instance (+uf)."""
    folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        ["storescp", "-pm", "+uf", "-od", str(folder), *extra, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    wait_for_port(port, process)
    return StoreScp(port=port, folder=folder, process=process)


class StorageSCP:
    """A pynetdicom storage peer on a free port; ``syntaxes`` are the transfer syntaxes it
    accepts for each of ``sop_classes``.

    Its first ``stalls`` C-STOREs get no answer until :meth:`stop` (a peer that hangs
    mid-association, or a sender whose response went astray).
    """

    def __init__(
        self,
        syntaxes: list[str],
        stalls: int = 0,
        sop_classes: Sequence[str] = (CTImageStorage,),
    ) -> None:
        self.received: dict[str, Dataset] = {}
        self.syntaxes_seen: set[str] = set()
        self.associations = 0
        self.release = threading.Event()
        self._stalls = stalls
        self._lock = threading.Lock()
        ae = AE(ae_title="PEER")
        for sop_class in sop_classes:
            ae.add_supported_context(sop_class, syntaxes)
        self.port = free_port()
        handlers = [(evt.EVT_C_STORE, self._store), (evt.EVT_ACCEPTED, self._accepted)]
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)

    def _accepted(self, event: Event) -> None:
        with self._lock:
            self.associations += 1

    def _store(self, event: Event) -> int:
        with self._lock:
            stall = self._stalls > 0
            self._stalls = max(0, self._stalls - 1)
        if stall:
            self.release.wait(300)
            return 0xA700  # too late: the sender has given up on this association
        ds = event.dataset
        with self._lock:
            self.received[str(ds.SOPInstanceUID)] = ds
            self.syntaxes_seen.add(str(event.context.transfer_syntax))
        return 0x0000

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
