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
    ]


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
