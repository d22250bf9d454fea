"""The command lines of the node's processes, shared by the supervisor and the container image."""

from __future__ import annotations

import sys
from pathlib import Path

from ainode.settings import Settings


def orthanc_argv(settings: Settings, config_path: Path) -> list[str]:
    verbose = ["--verbose"] if settings.orthanc_verbose else []
    return [str(settings.orthanc_binary), *verbose, str(config_path)]


def worker_argv(settings: Settings, hostname: str) -> list[str]:
    """The Celery worker; health checks ping it by this name (``worker@<hostname>``)."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "ainode_worker.celery_app",
        "worker",
        "--loglevel",
        settings.log_level,
        "--concurrency",
        str(settings.worker_concurrency),
        "--queues",
        ",".join(settings.worker_queues),
        "--hostname",
        f"worker@{hostname}",
        "--without-gossip",
        "--without-mingle",
        # A delivery worker reserves many deliveries ahead, to keep their leases alive while
        # a slow destination holds the ones running (ainode_worker.delivery).
        *(
            ["--prefetch-multiplier", "50"]
            if settings.worker_queues == [settings.delivery_queue]
            else []
        ),
    ]


def delivery_argv(settings: Settings, hostname: str) -> list[str]:
    """The node's delivery worker, ``delivery@<hostname>`` (``settings`` serving only the
    delivery queue)."""
    argv = worker_argv(settings, hostname)
    argv[argv.index(f"worker@{hostname}")] = f"delivery@{hostname}"
    return argv


def interactive_argv(settings: Settings) -> list[str]:
    models = settings.interactive_models_file
    return [
        sys.executable,
        "-m",
        "ainode_worker.interactive",
        "--port",
        str(settings.interactive_port),
        *(["--models", str(models)] if models is not None else []),
    ]
