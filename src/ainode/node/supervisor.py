"""Starts, watches and stops the node's processes on one machine, in dependency order."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import sysconfig
import threading
import time
from pathlib import Path
from types import FrameType
from typing import IO

from ainode.credentials import ensure_credentials, orthanc_auth
from ainode.node.commands import delivery_argv, interactive_argv, orthanc_argv, worker_argv
from ainode.node.door import door_verify, nginx_argv, write_door_files
from ainode.node.health import probe_http, probe_redis, probe_worker
from ainode.node.orthanc_config import (
    check_plugins_installed,
    render_orthanc_config,
    write_orthanc_config,
)
from ainode.node.processes import ManagedProcess, StartError
from ainode.settings import REPO_ROOT, Settings

log = logging.getLogger(__name__)

RESTART_WINDOW_S = 60.0
MAX_RESTARTS_IN_WINDOW = 3


class AlreadyRunningError(RuntimeError):
    """Another supervisor holds this data directory."""


class Supervisor:
    """Owns the child processes of one node (one data directory)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.services: list[ManagedProcess] = []
        self._lock_file: IO[str] | None = None
        self._stopping = threading.Event()
        self._restarts: dict[str, list[float]] = {}
        self.credentials_created = False

    # -- preparation -------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the data directory, credentials and configuration files of every part."""
        s = self.settings
        for folder in (s.data_dir, s.logs_dir, s.run_dir, s.data_dir / "redis"):
            folder.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        credentials = None
        if s.auth_enabled:
            user, password, self.credentials_created = ensure_credentials(s.credentials_file)
            credentials = (user, password)
        settings_file = s.run_dir / "settings.json"
        settings_file.touch(mode=0o600)
        settings_file.write_text(s.model_dump_json(indent=2))
        config = render_orthanc_config(
            s,
            credentials=credentials,
            settings_file=settings_file,
            site_packages=[sysconfig.get_paths()["purelib"]],
        )
        check_plugins_installed(config)
        orthanc_json = write_orthanc_config(s, config)
        door_config = write_door_files(s, credentials) if s.door_enabled else None
        self.services = self._define_services(orthanc_json, settings_file, door_config)

    def _take_lock(self) -> None:
        lock = (self.settings.run_dir / "supervisor.lock").open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            lock.close()
            raise AlreadyRunningError(
                f"a node is already running on {self.settings.data_dir} (ainode down stops it)"
            ) from error
        self._lock_file = lock
        pid_file = self.settings.run_dir / "supervisor.pid"
        pid_file.write_text(str(os.getpid()))

    def _define_services(
        self, orthanc_json: Path, settings_file: Path, door_config: Path | None
    ) -> list[ManagedProcess]:
        s = self.settings
        auth = orthanc_auth(s)
        env = {"AINODE_SETTINGS": str(settings_file), "TCP_NODELAY": "1"}
        services = []
        if s.redis_url is None:
            services.append(
                ManagedProcess(
                    name="redis",
                    argv=["redis-server", str(self._write_redis_config())],
                    log_file=s.logs_dir / "redis.log",
                    probe=lambda: probe_redis(s.broker_url),
                )
            )
        services.append(
            ManagedProcess(
                name="orthanc",
                argv=orthanc_argv(s, orthanc_json),
                log_file=s.logs_dir / "orthanc.log",
                probe=lambda: probe_http(f"{s.http_url}/ai/health", auth),
                env=env,
                cwd=s.data_dir,
            )
        )
        if s.worker_enabled:
            host = f"{s.node_name}-{s.http_port}"  # the workers' Celery names: worker@, delivery@

            def celery_worker(name: str, argv: list[str]) -> ManagedProcess:
                """A Celery worker, ready once it answers a ping to its own name."""
                return ManagedProcess(
                    name=name,
                    argv=argv,
                    log_file=s.logs_dir / f"{name}.log",
                    probe=lambda: probe_worker(s, timeout_s=0.5, name=f"{name}@{host}"),
                    env=env,
                    cwd=REPO_ROOT,
                    start_timeout_s=120.0,
                )

            services.append(celery_worker("worker", worker_argv(s, host)))
            # Delivery of written results (a slow PACS never holds the worker above).
            delivery = s.model_copy(
                update={
                    "worker_queues": [s.delivery_queue],
                    "worker_concurrency": s.delivery_concurrency,
                }
            )
            services.append(celery_worker("delivery", delivery_argv(delivery, host)))
        if s.interactive_enabled:
            services.append(
                ManagedProcess(
                    name="interactive",
                    argv=interactive_argv(s),
                    log_file=s.logs_dir / "interactive.log",
                    probe=lambda: probe_http(f"{s.interactive_url}/health", auth),
                    env=env,
                    cwd=REPO_ROOT,
                    start_timeout_s=120.0,
                )
            )
        if door_config is not None:
            services.append(
                ManagedProcess(
                    name="door",
                    argv=nginx_argv(s, door_config),
                    log_file=s.logs_dir / "door.log",
                    probe=lambda: probe_http(
                        f"{s.door_url}/ai/health", auth, verify=door_verify(s)
                    ),
                )
            )
        return services

    def _write_redis_config(self) -> Path:
        s = self.settings
        path = s.run_dir / "redis.conf"
        path.write_text(
            "\n".join(
                [
                    f"port {s.redis_port}",
                    "bind 127.0.0.1",
                    "protected-mode yes",
                    "daemonize no",
                    f"dir {s.data_dir / 'redis'}",
                    # Queued jobs survive a Redis restart: append-only file, fsync each second.
                    "appendonly yes",
                    "appendfsync everysec",
                    "save 60 1",
                    "loglevel notice",
                    "",
                ]
            )
        )
        return path

    # -- running -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start every part in order and wait until each answers; undo all on failure.

        A stop requested meanwhile (Ctrl-C during start-up) ends the start early.
        """
        try:
            for service in self.services:
                if self._stopping.is_set():
                    return
                service.start()
                service.wait_ready(self._stopping)
        except (StartError, OSError):
            self.stop()
            raise

    def stop(self) -> None:
        self._stopping.set()
        for service in reversed(self.services):
            service.stop()
        if self._lock_file is not None:
            (self.settings.run_dir / "supervisor.pid").unlink(missing_ok=True)
            self._lock_file.close()
            self._lock_file = None

    def stop_on_signals(self) -> None:
        """SIGINT (Ctrl-C) and SIGTERM (``ainode down``) stop the node in order."""

        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("signal %d: stopping the node", signum)
            self.request_stop()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)

    def request_stop(self) -> None:
        """Ask :meth:`run_forever` (on whatever thread it runs) to stop the node and return."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def run_forever(self) -> None:
        """Foreground mode: restart a part that dies until a stop is requested.

        It may run on a background thread (tests do); :meth:`request_stop` then ends it, and
        it stops the parts itself, so no part is restarted while another thread stops them.
        """
        try:
            while not self._stopping.wait(1.0):
                for service in self.services:
                    if not service.running:
                        self._restart(service)
        finally:
            self.stop()

    def _restart(self, service: ManagedProcess) -> None:
        if self._stopping.is_set():
            return  # the part was stopped on purpose
        now = time.monotonic()
        recent = [t for t in self._restarts.get(service.name, []) if now - t < RESTART_WINDOW_S]
        if len(recent) >= MAX_RESTARTS_IN_WINDOW:
            log.error(
                "%s keeps exiting (status %s); stopping the node", service.name, service.returncode
            )
            self._stopping.set()
            return
        log.warning("%s exited with status %s; restarting it", service.name, service.returncode)
        self._restarts[service.name] = [*recent, now]
        service.start()
        try:
            service.wait_ready(self._stopping)
        except StartError as error:
            log.error("%s", error)

    def describe(self) -> dict[str, object]:
        return {
            "data_dir": str(self.settings.data_dir),
            "pids": {s.name: s.process.pid for s in self.services if s.process},
        }


def read_supervisor_pid(settings: Settings) -> int | None:
    path = settings.run_dir / "supervisor.pid"
    try:
        pid = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def dump_json(data: object) -> str:
    return json.dumps(data, indent=2, sort_keys=True)
