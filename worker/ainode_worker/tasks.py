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
from celery.signals import celeryd_after_setup, worker_process_init, worker_ready, worker_shutdown
from celery.worker import state as worker_state
from kombu.exceptions import OperationalError

from ainode.broker import DELIVER_TASK, RUN_JOB_TASK
from ainode.jobs import JobRequest
from ainode.queues import is_delivery_queue
from ainode_worker.celery_app import app, settings
from ainode_worker.delivery import ReservedHeartbeat, deliver
from ainode_worker.jobrunner import (
    TRANSIENT_ERRORS,
    DeliveryNotQueuedError,
    DeliveryOrder,
    JobReporter,
    WorkerContext,
    run_job,
)

log = logging.getLogger(__name__)

TRANSIENT_RETRIES = 3


@celeryd_after_setup.connect  # type: ignore[untyped-decorator]
def _load_inference(instance: Any, **_: Any) -> None:
    """A worker with several pool processes that runs models loads torch and the backends once,
    before Celery forks its pool, for its processes to share. With one pool process the first
    model run loads them there (the main process then never holds them); a delivery worker
    never loads them (see :mod:`ainode_worker.jobrunner`)."""
    runs_models = not all(
        is_delivery_queue(queue) for queue in instance.app.amqp.queues.consume_from
    )
    if runs_models and instance.concurrency != 1:
        import ainode_worker.inference.pipeline  # noqa: F401


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


# Orthanc did not answer, or the broker did not take the delivery: Celery sends the task again
# after 5, 10, 20 s (each a random share of that, so that workers do not come back together);
# the job stays "running" meanwhile.
@app.task(  # type: ignore[untyped-decorator]
    name=RUN_JOB_TASK,
    bind=True,
    autoretry_for=TRANSIENT_ERRORS,
    max_retries=TRANSIENT_RETRIES,
    retry_backoff=5,
    retry_jitter=True,
)
def run_job_task(self: Task, payload: dict[str, Any]) -> str:
    request = JobRequest.model_validate(payload)
    worker_name = self.request.hostname or socket.gethostname()
    return run_job(request, context(worker_name), reporter(), hand_off).state.value


def hand_off(order: DeliveryOrder) -> None:
    """Queue the delivery of written results, as the same attempt (same task id: the cancel
    route's revoke reaches it). A broker that does not take it is retried as Orthanc is."""
    try:
        app.send_task(
            DELIVER_TASK,
            args=[order.model_dump(mode="json")],
            queue=settings.delivery_queue,
            task_id=order.request.attempt or None,
        )
    except (OperationalError, OSError) as error:
        raise DeliveryNotQueuedError(f"the broker did not take the delivery: {error}") from error


@app.task(name=DELIVER_TASK, bind=True)  # type: ignore[untyped-decorator]
def deliver_task(self: Task, payload: dict[str, Any]) -> str:
    order = DeliveryOrder.model_validate(payload)
    worker_name = self.request.hostname or socket.gethostname()
    # A reporter per task: pool processes run one task at a time, but never share sessions.
    return deliver(order, context(worker_name), JobReporter(settings)).state.value


_reserved_heartbeat: list[ReservedHeartbeat] = []


def _reserved_deliveries() -> list[DeliveryOrder]:
    return [
        DeliveryOrder.model_validate(request.args[0])
        for request in list(worker_state.reserved_requests)
        if request.name == DELIVER_TASK and request.args
    ]


@worker_ready.connect  # type: ignore[untyped-decorator]
def _start_reserved_heartbeat(sender: Any = None, **_: Any) -> None:
    """A worker serving the delivery queue keeps its waiting deliveries' leases alive."""
    queues = set(app.amqp.queues.consume_from or ())
    if settings.delivery_queue not in queues:
        return
    name = getattr(sender, "hostname", None) or socket.gethostname()
    heartbeat = ReservedHeartbeat(context(name), _reserved_deliveries)
    heartbeat.start()
    _reserved_heartbeat.append(heartbeat)


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _stop_reserved_heartbeat(**_: Any) -> None:
    for heartbeat in _reserved_heartbeat:
        heartbeat.stop()
