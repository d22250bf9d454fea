"""Health probes for each part of the node, used by the supervisor, ``ainode status`` and tests."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import redis
import requests

from ainode.broker import make_celery, ping_workers
from ainode.credentials import orthanc_auth
from ainode.node.door import door_verify
from ainode.settings import Settings, redact_url
from ainode.worker_runtime import job_workers, worker_runtimes


@dataclass(frozen=True)
class PartHealth:
    healthy: bool
    detail: str


@dataclass
class NodeStatus:
    http_url: str
    url: str | None
    dicom_port: int
    dicom_aet: str
    parts: dict[str, PartHealth] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return bool(self.parts) and all(p.healthy for p in self.parts.values())

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "healthy": self.healthy}


def probe_redis(url: str) -> str | None:
    try:
        redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping()
    except redis.RedisError as error:
        return f"Redis at {redact_url(url)} does not answer: {error}"
    return None


def probe_http(
    url: str, auth: tuple[str, str] | None, timeout_s: float = 2.0, verify: str | bool = True
) -> str | None:
    try:
        response = requests.get(url, auth=auth, timeout=timeout_s, verify=verify)
    except requests.RequestException as error:
        return f"{url} does not answer: {type(error).__name__}"
    if response.status_code != 200:
        return f"{url} answered HTTP {response.status_code}"
    return None


def probe_worker(settings: Settings, timeout_s: float = 1.0, name: str | None = None) -> str | None:
    """None when a worker answers a Celery ping (``name``: that worker, e.g. ``delivery@x``)."""
    names = ping_workers(make_celery(settings), timeout_s)
    if name is not None:
        return None if name in names else f"{name} did not answer a Celery ping"
    return None if names else "no worker answered a Celery ping"


def collect_status(settings: Settings) -> NodeStatus:
    """Ask each part directly, so a broken part never hides behind another one."""
    door_url = settings.door_url if settings.door_enabled else None
    status = NodeStatus(settings.http_url, door_url, settings.dicom_port, settings.dicom_aet)
    auth = orthanc_auth(settings)

    def record(name: str, reason: str | None, ok_detail: str) -> None:
        status.parts[name] = PartHealth(reason is None, reason or ok_detail)

    record("redis", probe_redis(settings.broker_url), f"answers at {settings.broker_url_redacted}")
    record(
        "orthanc",
        probe_http(f"{settings.orthanc_base_url}/system", auth),
        f"answers at {settings.orthanc_base_url}",
    )
    record("plugin", probe_http(f"{settings.orthanc_base_url}/ai/health", auth), "loaded")
    if status.parts["redis"].healthy:
        runtimes = worker_runtimes(make_celery(settings))
        record(
            "worker",
            None
            if job_workers(runtimes)
            else "no worker answered a Celery ping"
            + (f" (only delivery: {', '.join(runtimes)})" if runtimes else ""),
            "; ".join(
                f"{name}: {runtime.summary() if runtime else 'answers'}"
                for name, runtime in runtimes.items()
            ),
        )
    else:
        record("worker", "unknown: the broker is down", "")
    if settings.interactive_enabled:
        record(
            "interactive",
            probe_http(f"{settings.interactive_url}/health", auth),
            f"answers at {settings.interactive_url}",
        )
    if settings.door_enabled:
        record(
            "door",
            probe_http(f"{settings.door_url}/ai/health", auth, verify=door_verify(settings)),
            f"answers at {settings.door_url}",
        )
    return status
