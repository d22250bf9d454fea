"""A Celery app configured as the node's, with a ``run_job`` task that hands payloads to the test.

The worker runs in a thread of the test process (``celery.contrib.testing.worker``), so what the
task receives is put on a queue the test reads.
"""

from __future__ import annotations

import queue
from pathlib import Path
from typing import Any

from celery import Celery

from ainode.broker import RUN_JOB_TASK, make_celery
from ainode.settings import Settings


def probe_app(broker_url: str, data_dir: Path) -> tuple[Celery, queue.Queue[dict[str, Any]]]:
    app = make_celery(Settings(redis_url=broker_url, data_dir=data_dir))
    received: queue.Queue[dict[str, Any]] = queue.Queue()

    @app.task(name=RUN_JOB_TASK, shared=False)  # type: ignore[untyped-decorator]
    def run_job(payload: dict[str, Any]) -> None:
        received.put(payload)

    return app, received
