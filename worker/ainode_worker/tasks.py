"""Celery tasks of the worker: thin wrappers that give each job its process-wide context."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from functools import cache
from typing import Any

from celery import Task
from celery.signals import worker_process_init

from ainode.broker import RUN_JOB_TASK
from ainode.jobs import JobRequest
from ainode_worker.celery_app import app, settings
from ainode_worker.jobrunner import JobReporter, WorkerContext, run_job
from ainode_worker.orthanc import OrthancUnavailable

log = logging.getLogger(__name__)

TRANSIENT_RETRIES = 3


@cache
def context(worker_name: str) -> WorkerContext:
    """Built on the first job, once per worker process: models stay loaded between jobs.

    ``worker_name`` is Celery's node name (``worker@<name>``), unique per worker even when
    several run on one machine; job records carry it.
    """
    return WorkerContext.from_settings(settings, hostname=worker_name, pool_process=_in_pool[0])


_in_pool = [False]  # set in Celery's pool processes (prefork), never in a solo worker


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _end_with_parent(**_: Any) -> None:
    """A pool process outlives a worker killed with SIGKILL and would finish its job as a
    superseded attempt, unseen; it ends within a second of its parent instead."""
    _in_pool[0] = True
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        log.warning("the worker process %d is gone; its pool process %d ends", parent, os.getpid())
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


@cache
def reporter() -> JobReporter:
    return JobReporter(settings)


# Orthanc did not answer: Celery sends the task again after 5, 10, 20 s (each a random share
# of that, so that workers do not come back together); the job stays "running" meanwhile.
@app.task(  # type: ignore[untyped-decorator]
    name=RUN_JOB_TASK,
    bind=True,
    autoretry_for=(OrthancUnavailable,),
    max_retries=TRANSIENT_RETRIES,
    retry_backoff=5,
    retry_jitter=True,
)
def run_job_task(self: Task, payload: dict[str, Any]) -> str:
    request = JobRequest.model_validate(payload)
    worker_name = self.request.hostname or socket.gethostname()
    return run_job(request, context(worker_name), reporter()).state.value
