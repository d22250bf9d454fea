"""Starting real nodes for tests: Orthanc with the real plugin, Redis and a Celery worker.

Every node gets its own temporary data directory and free ports, so test runs can go in
parallel. Authentication is turned off explicitly unless a test asks for it. ``Node.url`` is
Orthanc's own loopback port; ``Node.door_url`` and ``Node.door_session()`` reach the node's front
door (nginx, HTTPS with the node's self-signed certificate, trusted by the session). A node started
with ``supervised=True`` runs the supervisor's watch loop on a thread, as ``ainode up`` does in
the foreground, so a part that dies (a killed worker) is restarted.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import IO, Any

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset, dcmread

from ainode.credentials import orthanc_auth
from ainode.jobs import JobState
from ainode.node.door import door_session
from ainode.node.processes import ManagedProcess
from ainode.node.supervisor import Supervisor
from ainode.phantoms import Geometry, SeriesIds, make_phantom, phantom_datasets
from ainode.settings import Settings

# Test ports: blocks of 200 between 20000 and 32000, below Linux's ephemeral range (32768-60999).
PORT_BLOCK_SIZE = 200
PORT_BLOCKS = range(20000, 32000, PORT_BLOCK_SIZE)
_PORT_LOCKS = Path(tempfile.gettempdir()) / "ainode-test-ports"
_ports_lock = threading.Lock()
_ports: Iterator[int] = iter(())
_held_port_locks: list[IO[str]] = []

# Rules for tests: CT series of 10 or more images go to the small, fast ONNX demo model.
ONNX_RULES = """\
version: 1
mode: first-match
rules:
  - name: ct-demo
    when:
      all:
        - Modality: CT
        - InstanceCount: {ge: 10}
    pipeline: demo-phantom-onnx
    outputs: [SEG, RTSTRUCT]
    destinations: [orthanc]
"""


def write_rules(path: Path, text: str) -> Path:
    """Replace a rules file in one step, as an editor saving it would (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    partial.replace(path)
    return path


def free_port() -> int:
    """A TCP port free now and handed out to no other test process on this machine.

    Ports come from a block of ``PORT_BLOCK_SIZE`` ports that this process holds by a lock file
    (``flock``, released by the kernel when the process ends, however it ends), so parallel
    pytest workers (xdist) and other test runs never get the same port. The blocks lie below the
    kernel's ephemeral range, so no outgoing connection and no ``bind(0)`` takes one meanwhile.
    Each port is still checked free when handed out (a stray server, a socket in TIME_WAIT).
    """
    with _ports_lock:
        while True:
            port = next(_ports, None)
            if port is None:
                _claim_port_block()
                continue
            if _bindable(port):
                return port


def _claim_port_block() -> None:
    global _ports
    count = len(PORT_BLOCKS)
    first = os.getpid() % count  # processes started together try different blocks first
    _PORT_LOCKS.mkdir(parents=True, exist_ok=True)
    for offset in range(count):
        start = PORT_BLOCKS[(first + offset) % count]
        lock = (_PORT_LOCKS / f"{start}.lock").open("a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        _held_port_locks.append(lock)  # open (so held) until this process ends
        _ports = iter(range(start, start + PORT_BLOCK_SIZE))
        return
    raise RuntimeError(f"every test port block is held by another process (see {_PORT_LOCKS})")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def write_phantom(
    folder: Path, slices: int = 20, *, modality: str = "CT", size: int = 48, seed: int = 0
) -> tuple[list[Path], SeriesIds]:
    """A small phantom series of new UIDs, one file per slice, in any modality."""
    geometry = Geometry(shape=(slices, size, size), spacing=(3.0, 96.0 / size, 96.0 / size))
    ids = SeriesIds()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, dataset in enumerate(
        phantom_datasets(make_phantom(geometry, seed=seed), ids, modality=modality)
    ):
        path = folder / f"IM{index:05d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths, ids


def node_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "http_port": free_port(),
        "dicom_port": free_port(),
        "redis_port": free_port(),
        "interactive_port": free_port(),
        "door_port": free_port(),
        "door_bind_all": False,
        "auth_enabled": False,
        "http_bind_all": False,
        "stable_age_s": 1,
    }
    values.update(overrides)
    return Settings(**values)


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment that makes an `ainode` command (or any node process) use these settings."""
    path = settings.data_dir / "test-settings.json"
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(settings.model_dump_json())
    return {**os.environ, "AINODE_SETTINGS": str(path)}


@dataclass
class Node:
    settings: Settings
    supervisor: Supervisor
    watcher: threading.Thread | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return self.settings.http_url

    @property
    def auth(self) -> tuple[str, str] | None:
        return orthanc_auth(self.settings)

    @property
    def door_url(self) -> str:
        """The node's front door (nginx, HTTPS unless door_tls is off); ``url`` is Orthanc's."""
        return self.settings.door_url

    def door_session(self, *, authenticated: bool = True) -> requests.Session:
        """A session to the door that trusts the node's own certificate, logged in or not."""
        return door_session(self.settings, self.auth if authenticated else None)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(f"{self.url}{path}", auth=self.auth, timeout=30, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.post(f"{self.url}{path}", auth=self.auth, timeout=60, **kwargs)

    def json(self, path: str) -> Any:
        response = self.get(path)
        response.raise_for_status()
        return response.json()

    def pid(self, service: str) -> int:
        process = self.service(service).process
        if process is None:
            raise KeyError(service)
        return process.pid

    def service(self, name: str) -> ManagedProcess:
        """One part of the node (redis, orthanc, worker), to stop, start or kill it."""
        for managed in self.supervisor.services:
            if managed.name == name:
                return managed
        raise KeyError(name)

    def restart(self, name: str) -> None:
        """Stop a part and start it again, waiting until it answers."""
        part = self.service(name)
        part.stop()
        part.start()
        part.wait_ready()

    def kill(self, name: str) -> None:
        """SIGKILL a part of a supervised node; return once the supervisor has started it again
        and it answers."""
        assert self.watcher is not None, "only a supervised node restarts a killed part"
        killed = self.pid(name)
        os.kill(killed, signal.SIGKILL)
        part = self.service(name)
        wait_for(
            lambda: part.running and self.pid(name) != killed,
            60,
            0.1,
            f"the supervisor to restart {name}",
        )
        part.wait_ready()

    def jobs(self, **query: str | int) -> list[dict[str, Any]]:
        """GET /ai/jobs: every recorded decision (ignored ones too), newest first."""
        response = self.get("/ai/jobs", params={"limit": 1000, **query})
        response.raise_for_status()
        return list(response.json()["jobs"])

    def runs(self, series_uid: str) -> list[dict[str, Any]]:
        """The series' decisions to run a pipeline (every record but the ignored ones)."""
        return [j for j in self.jobs(series=series_uid) if j["state"] != JobState.IGNORED]

    def wait_for_run(
        self, series_uid: str, states: Iterable[str] = ("done", "failed"), timeout_s: float = 90
    ) -> dict[str, Any]:
        """The series' one job, once it is in one of ``states``."""
        wanted = set(states)

        def reached() -> dict[str, Any] | None:
            runs = self.runs(series_uid)
            assert len(runs) <= 1, f"more than one job for series {series_uid}: {runs}"
            return runs[0] if runs and runs[0]["state"] in wanted else None

        job: dict[str, Any] = wait_for(reached, timeout_s, 0.2, f"a job {sorted(wanted)}")
        return job

    def wait_for_decision(self, series_uid: str, timeout_s: float = 30) -> dict[str, Any]:
        """The series' one recorded decision, once it exists."""

        def recorded() -> dict[str, Any] | None:
            found = self.jobs(series=series_uid)
            assert len(found) <= 1, f"more than one decision for series {series_uid}: {found}"
            return found[0] if found else None

        decision: dict[str, Any] = wait_for(recorded, timeout_s, 0.2, "a routing decision")
        return decision

    def lookup(self, uid: str) -> str:
        """Orthanc's id of the resource with this DICOM UID."""
        response = self.post("/tools/lookup", data=uid)
        response.raise_for_status()
        found = response.json()
        if len(found) != 1:
            raise KeyError(f"Orthanc knows {len(found)} resources with UID {uid}")
        return str(found[0]["ID"])

    def study_series(self, study_uid: str, modality: str | None = None) -> list[dict[str, Any]]:
        """The study's series in Orthanc (expanded), optionally only those of one modality."""
        series = self.json(f"/studies/{self.lookup(study_uid)}/series")
        return [
            s for s in series if modality is None or s["MainDicomTags"].get("Modality") == modality
        ]

    def instance(self, instance_id: str) -> Dataset:
        """One stored instance, read back by pydicom."""
        response = self.get(f"/instances/{instance_id}/file")
        response.raise_for_status()
        return dcmread(BytesIO(response.content))

    def storescu(self, paths: Iterable[Path], *, calling_aet: str = "TESTSCU") -> None:
        """C-STORE with DCMTK's storescu, as a modality would."""
        subprocess.run(
            [
                "storescu",
                "-xs",
                "--max-pdu",
                "131072",
                "-aet",
                calling_aet,
                "-aec",
                self.settings.dicom_aet,
                "+sd",
                "+r",
                "127.0.0.1",
                str(self.settings.dicom_port),
                *map(str, paths),
            ],
            check=True,
            env={**os.environ, "TCP_NODELAY": "1"},
            capture_output=True,
        )

    def dicomweb(self) -> DICOMwebClient:
        client = DICOMwebClient(f"{self.url}/dicom-web")
        if self.auth:
            client._session.auth = self.auth
        return client

    def stow(self, paths: Sequence[Path], batch: int = 50) -> None:
        client = self.dicomweb()
        for start in range(0, len(paths), batch):
            client.store_instances([dcmread(p) for p in paths[start : start + batch]])

    def count_instances(self) -> int:
        return int(self.json("/statistics")["CountInstances"])

    def stop(self) -> None:
        if self.watcher is None:
            _stop_together([s for s in self.supervisor.services if s.name in LATE])
            self.supervisor.stop()  # the rest in the supervisor's order; stopped parts are skipped
            return
        self.supervisor.request_stop()  # the watch loop stops the parts, then returns
        self.watcher.join(180)
        if self.watcher.is_alive():
            raise AssertionError("the supervisor's watch loop did not stop within 180 s")


def start_node(data_dir: Path, *, supervised: bool = False, **overrides: Any) -> Node:
    """Start a node; ``supervised`` also runs the loop that restarts parts that die."""
    settings = node_settings(data_dir, **overrides)
    supervisor = Supervisor(settings)
    supervisor.prepare()
    try:
        _start_together(supervisor)
    except BaseException:
        supervisor.stop()
        raise
    watcher = None
    if supervised:
        watcher = threading.Thread(
            target=supervisor.run_forever, name=f"supervisor-{settings.http_port}", daemon=True
        )
        watcher.start()
    return Node(settings, supervisor, watcher)


# The parts that need only Redis and Orthanc: a test node starts them together and stops them
# together (``ainode up`` goes one by one), which saves ~10 s a start and ~5 s a stop, most of
# it the two Celery workers' imports and warm shutdowns.
LATE = frozenset({"worker", "delivery", "interactive", "door"})


def _start_together(supervisor: Supervisor) -> None:
    """Start the parts as ``Supervisor.start`` does, but the ``LATE`` ones all at once."""
    late = [s for s in supervisor.services if s.name in LATE]
    for service in supervisor.services:
        if service.name not in LATE:
            service.start()
            service.wait_ready()
    for service in late:
        service.start()
    for service in late:
        service.wait_ready()


def _stop_together(services: list[ManagedProcess]) -> None:
    stoppers = [threading.Thread(target=service.stop) for service in services]
    for stopper in stoppers:
        stopper.start()
    for stopper in stoppers:
        stopper.join()


def wait_for(
    predicate: Callable[[], Any], timeout_s: float = 30.0, interval_s: float = 0.2, what: str = ""
) -> Any:
    """Poll until ``predicate`` returns something truthy; fail with ``what`` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what or predicate}")
