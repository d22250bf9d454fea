"""The plugin's composition root: settings, logging, routes and lifecycle inside Orthanc.

Orthanc calls back on its own threads holding the Python lock, so callbacks here only record and
enqueue; periodic work runs in pass loops (``passloop``) started on ``ORTHANC_STARTED`` and
stopped on ``ORTHANC_STOPPED``. They keep time on the monotonic clock: an interval scheduler
that waits for a wall-clock time (APScheduler 3's) stalls for as long as a backward step of the
clock (measured: a 1 s job stopped running after a one-hour step back), and an NTP correction at
boot must not stop the change sweep or the rules check.
"""

from __future__ import annotations

import logging
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml

from ainode.broker import make_celery
from ainode.inputcheck import VolumeBudget
from ainode.node.health import probe_redis
from ainode.registry import Registry, RegistryError, load_registry
from ainode.routing import KnownDestinations, RulesWatcher, Trigger
from ainode.settings import Settings
from ainode.worker_runtime import WorkerRuntime, job_workers, worker_runtimes
from ainode_plugin.dispatcher import Dispatcher, RetryPolicy, celery_sender
from ainode_plugin.http import Request, Response, Router
from ainode_plugin.interactive_routes import add_interactive_routes
from ainode_plugin.job_routes import JobRoutes
from ainode_plugin.jobstore import JobStore
from ainode_plugin.passloop import PassLoop
from ainode_plugin.routing_service import Evaluate, EvaluateStudy, RoutingService
from ainode_plugin.ui_routes import register_ui
from ainode_plugin.webhooks import DeliveryPolicy, NotificationSender

log = logging.getLogger("ainode_plugin")

WORKER_PING_CACHE_S = 3.0
RULES_CHECK_S = 2.0  # how soon an edit of routing-rules.yaml takes effect
RESTART_GRACE_MAX_S = 10.0  # a sender cut off by a restart resumes within this, or is complete


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
        self._worker_ping: tuple[float, dict[str, WorkerRuntime | None]] = (0.0, {})
        self._ping_lock = threading.Lock()
        self.registry = _load_registry(settings)
        self.store = JobStore.in_data_dir(settings.data_dir)
        known = {name for spec in self.registry for name in (spec.id, *spec.aliases)}
        self.watcher = RulesWatcher(
            settings.routing_rules,
            known_pipelines=known,
            destinations=KnownDestinations.from_settings(settings),
        )
        self.dispatcher = Dispatcher(
            self.store,
            celery_sender(self.celery),
            policy=RetryPolicy.from_settings(settings),
            monotonic=time.monotonic,  # follow wall-clock jumps (see the dispatcher)
        )
        self.routing = RoutingService(
            orthanc,
            self.store,
            self.watcher,
            self.dispatcher,
            settings.rules_budget_s,
            VolumeBudget.for_machine(settings.job_max_voxels, settings.job_max_memory_gib),
        )
        self.notifier = NotificationSender(
            self.store, settings.webhooks, policy=DeliveryPolicy.from_settings(settings)
        )
        self.store.on_notification = self.notifier.wake
        self.rules_loop = PassLoop("ainode-rules", self.watcher.check)
        self.changes_loop = PassLoop("ainode-changes", self.routing.sweep_changes)
        self.router.add(r"/ai/health", "GET", self.health)
        JobRoutes(
            self.store, self.watcher, self.registry, self.routing, self.dispatcher, self.celery
        ).register(self.router)
        self.ui = register_ui(self.router, self)
        if settings.interactive_enabled:
            add_interactive_routes(self.router, settings.interactive_url)

    def workers(self) -> list[str]:
        """Workers answering Celery pings, cached briefly so health polls stay cheap."""
        return list(self.worker_runtimes())

    def worker_runtimes(self) -> dict[str, WorkerRuntime | None]:
        """Each answering worker's devices and queues (the runtime broadcast is the ping)."""
        with self._ping_lock:
            checked_at, found = self._worker_ping
            if time.monotonic() - checked_at > WORKER_PING_CACHE_S:
                found = worker_runtimes(self.celery, timeout_s=0.5)
                self._worker_ping = (time.monotonic(), found)
            return found

    def health(self, request: Request) -> Response:
        broker_error = probe_redis(self.settings.broker_url)
        runtimes = self.worker_runtimes() if broker_error is None else {}
        workers = list(runtimes)
        return Response.json(
            {
                "version": node_version(),
                "orthanc": {"healthy": True, "detail": "plugin loaded and serving"},
                "broker": {
                    "healthy": broker_error is None,
                    "detail": broker_error or f"answers at {self.settings.broker_url_redacted}",
                },
                "worker": {
                    "healthy": bool(job_workers(runtimes)),
                    "detail": ", ".join(workers)
                    if job_workers(runtimes)
                    else "no worker answered"
                    + (f" (only delivery: {', '.join(workers)})" if workers else ""),
                    "workers": workers,
                    "runtime": {
                        name: None if runtime is None else runtime.model_dump(mode="json")
                        for name, runtime in runtimes.items()
                    },
                },
            }
        )

    def on_change(self, change_type: int, level: int, resource_id: str) -> None:
        """Orthanc's change callback: enqueue and return (it runs on Orthanc's threads)."""
        changes = self.orthanc.ChangeType
        if change_type == changes.STABLE_SERIES:
            self.routing.notify(Evaluate(resource_id, Trigger.SERIES))
        elif change_type == changes.STABLE_STUDY:
            self.routing.notify(EvaluateStudy(resource_id))
        elif change_type == changes.ORTHANC_STARTED:
            self.start_background()
        elif change_type == changes.ORTHANC_STOPPED:
            self.stop_background()

    def start_background(self) -> None:
        # Orthanc forgets its stability timers when it stops and calls every series stable at
        # start: a series cut off mid-transfer would be routed half. Its sender gets a grace to
        # go on (StableAge, at most RESTART_GRACE_MAX_S) before the change sweep routes it.
        self.routing.start(restart_grace_s=self.restart_grace_s())
        self.dispatcher.start(self.settings.dispatch_sweep_s)
        self.notifier.start(self.settings.webhook_sweep_s)
        self.rules_loop.start(RULES_CHECK_S)
        self.changes_loop.start(self.settings.change_sweep_s)
        log.info("routing started: %s", self.watcher.status().as_dict()["rule_count"])

    def restart_grace_s(self) -> float:
        return min(float(self.settings.stable_age_s), RESTART_GRACE_MAX_S) + 1.0

    def stop_background(self) -> None:
        self.rules_loop.stop(timeout_s=5)
        self.changes_loop.stop(timeout_s=10)
        self.dispatcher.stop()
        self.routing.stop()
        self.notifier.stop()
        self.store.close()


def _load_registry(settings: Settings) -> Registry:
    """A broken models.yaml must not stop Orthanc from receiving images: log it, run no model."""
    try:
        return load_registry(settings.models_registry)
    except (RegistryError, OSError) as error:
        log.error("model registry not loaded, no model can run: %s", error)
        return Registry([], settings.models_registry.parent)


def load_plugin_settings(settings_file: str | None) -> Settings:
    if not settings_file:
        return Settings()
    data = yaml.safe_load(Path(settings_file).read_text()) or {}
    return Settings(**data)


def config_summary(settings: Settings) -> str:
    """One log line an operator can check at a glance; never any secret."""
    return (
        f"AET={settings.dicom_aet} DICOM port={settings.dicom_port} HTTP port={settings.http_port} "
        f"auth={'on' if settings.auth_enabled else 'OFF'} broker={settings.broker_url_redacted} "
        f"rules={settings.routing_rules} models={settings.models_registry} "
        f"data={settings.data_dir}"
    )


def start_plugin(orthanc: Any, settings_file: str | None) -> NodePlugin:
    root = logging.getLogger()
    root.handlers = [OrthancLogHandler(orthanc)]
    settings = load_plugin_settings(settings_file)
    root.setLevel(settings.log_level)
    plugin = NodePlugin(orthanc, settings)
    plugin.ui.attach(orthanc, plugin.router)  # Explorer extension, ingest counter
    plugin.router.register(orthanc)
    orthanc.RegisterOnChangeCallback(plugin.on_change)
    log.info("AI node plugin %s loaded: %s", node_version(), config_summary(settings))
    return plugin
