"""Starting real nodes for tests: Orthanc with the real plugin, Redis and a Celery worker.

Every node gets its own temporary data directory and free ports, so test runs can go in
parallel. Authentication is turned off explicitly unless a test asks for it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread

from ainode.credentials import orthanc_auth
from ainode.node.supervisor import Supervisor
from ainode.settings import Settings

_used_ports: set[int] = set()


def free_port() -> int:
    """A TCP port free now, never handed out twice in this process."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _used_ports:
            _used_ports.add(port)
            return port


def node_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "http_port": free_port(),
        "dicom_port": free_port(),
        "redis_port": free_port(),
        "interactive_port": free_port(),
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

    @property
    def url(self) -> str:
        return self.settings.http_url

    @property
    def auth(self) -> tuple[str, str] | None:
        return orthanc_auth(self.settings)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(f"{self.url}{path}", auth=self.auth, timeout=30, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.post(f"{self.url}{path}", auth=self.auth, timeout=60, **kwargs)

    def json(self, path: str) -> Any:
        response = self.get(path)
        response.raise_for_status()
        return response.json()

    def pid(self, service: str) -> int:
        for managed in self.supervisor.services:
            if managed.name == service and managed.process is not None:
                return managed.process.pid
        raise KeyError(service)

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
        self.supervisor.stop()


def start_node(data_dir: Path, **overrides: Any) -> Node:
    settings = node_settings(data_dir, **overrides)
    supervisor = Supervisor(settings)
    supervisor.prepare()
    supervisor.start()
    return Node(settings, supervisor)


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
