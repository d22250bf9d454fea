"""The plugin's composition root: settings, logging, routes and lifecycle inside Orthanc.

Orthanc calls back on its own threads holding the Python lock, so callbacks here only record and
enqueue; periodic work runs in schedulers started on ``ORTHANC_STARTED`` and stopped on
``ORTHANC_STOPPED``.
"""

from __future__ import annotations

import logging
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml

from ainode.broker import make_celery, ping_workers
from ainode.node.health import probe_redis
from ainode.settings import Settings
from ainode_plugin.http import Request, Response, Router

log = logging.getLogger("ainode_plugin")

WORKER_PING_CACHE_S = 3.0


def node_version() -> str:
    try:
        return version("ainode")
    except PackageNotFoundError:
        return "unknown"


class OrthancLogHandler(logging.Handler):
    """Python logging into Orthanc's log, so one log file tells the whole story.

    Orthanc prints its own normal-operation lines ("Orthanc has started") at its warning level
    and shows its info level only with ``--verbose``; our INFO follows that convention.
    """

    def __init__(self, orthanc: Any) -> None:
        super().__init__()
        self.orthanc = orthanc

    def emit(self, record: logging.LogRecord) -> None:
        message = self.format(record)
        if record.levelno >= logging.ERROR:
            self.orthanc.LogError(message)
        elif record.levelno >= logging.INFO:
            self.orthanc.LogWarning(message)
        else:
            self.orthanc.LogInfo(message)


class NodePlugin:
    """State of the plugin for the life of one Orthanc process."""

    def __init__(self, orthanc: Any, settings: Settings) -> None:
        self.orthanc = orthanc
        self.settings = settings
        self.celery = make_celery(settings)
        self.router = Router()
        self._worker_ping: tuple[float, list[str]] = (0.0, [])
        self._ping_lock = threading.Lock()
        self.router.add(r"/ai/health", "GET", self.health)

    def workers(self) -> list[str]:
        """Workers answering Celery pings, cached briefly so health polls stay cheap."""
        with self._ping_lock:
            checked_at, names = self._worker_ping
            if time.monotonic() - checked_at > WORKER_PING_CACHE_S:
                names = ping_workers(self.celery, timeout_s=0.5)
                self._worker_ping = (time.monotonic(), names)
            return names

    def health(self, request: Request) -> Response:
        broker_error = probe_redis(self.settings.broker_url)
        workers = self.workers() if broker_error is None else []
        return Response.json(
            {
                "version": node_version(),
                "orthanc": {"healthy": True, "detail": "plugin loaded and serving"},
                "broker": {
                    "healthy": broker_error is None,
                    "detail": broker_error or f"answers at {self.settings.broker_url}",
                },
                "worker": {
                    "healthy": bool(workers),
                    "detail": ", ".join(workers) if workers else "no worker answered",
                    "workers": workers,
                },
            }
        )

    def on_change(self, change_type: int, level: int, resource_id: str) -> None:
        if change_type == self.orthanc.ChangeType.ORTHANC_STARTED:
            log.info("Orthanc started; the node's plugin is ready")
        elif change_type == self.orthanc.ChangeType.ORTHANC_STOPPED:
            log.info("Orthanc stopping")


def load_plugin_settings(settings_file: str | None) -> Settings:
    if not settings_file:
        return Settings()
    data = yaml.safe_load(Path(settings_file).read_text()) or {}
    return Settings(**data)


def config_summary(settings: Settings) -> str:
    """One log line an operator can check at a glance; never any secret."""
    return (
        f"AET={settings.dicom_aet} DICOM port={settings.dicom_port} HTTP port={settings.http_port} "
        f"auth={'on' if settings.auth_enabled else 'OFF'} broker={settings.broker_url} "
        f"rules={settings.routing_rules} models={settings.models_registry} "
        f"data={settings.data_dir}"
    )


def start_plugin(orthanc: Any, settings_file: str | None) -> NodePlugin:
    root = logging.getLogger()
    root.handlers = [OrthancLogHandler(orthanc)]
    settings = load_plugin_settings(settings_file)
    root.setLevel(settings.log_level)
    plugin = NodePlugin(orthanc, settings)
    plugin.router.register(orthanc)
    orthanc.RegisterOnChangeCallback(plugin.on_change)
    log.info("AI node plugin %s loaded: %s", node_version(), config_summary(settings))
    return plugin
