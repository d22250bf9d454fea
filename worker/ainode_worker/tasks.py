"""Celery tasks of the worker."""

from __future__ import annotations

import logging
from typing import Any

from ainode.broker import RUN_JOB_TASK
from ainode.jobs import JobRequest
from ainode_worker.celery_app import app

log = logging.getLogger(__name__)


@app.task(name=RUN_JOB_TASK)  # type: ignore[untyped-decorator]
def run_job(payload: dict[str, Any]) -> None:
    request = JobRequest.model_validate(payload)
    log.info("job %s received (pipeline %s)", request.job_id, request.pipeline)
