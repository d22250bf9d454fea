"""The Celery application shared by the plugin (which sends jobs) and the worker (which runs them).

Only configuration lives here: no task bodies, no heavy imports, so the Orthanc plugin can use it.
"""

from __future__ import annotations

from celery import Celery
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from ainode.settings import Settings

RUN_JOB_TASK = "ainode.run_job"
DELIVER_TASK = "ainode.deliver"  # a job's written results to its destinations
DEFAULT_QUEUE = "ainode.default"


def make_celery(settings: Settings) -> Celery:
    app = Celery("ainode", broker=settings.broker_url)
    app.conf.update(
        task_default_queue=DEFAULT_QUEUE,
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        # A job is acknowledged only when it ends, so a worker killed mid-job gives it back.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        # Redis refusing a command (MISCONF while its disk is full, NOREPLICAS) is a channel
        # error: without this, a worker's consumer dies of it ("Unrecoverable error") instead
        # of reconnecting and going on once Redis accepts writes again.
        broker_channel_error_retry=True,
        broker_transport_options={"visibility_timeout": 3600},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


def ping_workers(app: Celery, timeout_s: float = 1.0) -> list[str]:
    """Names of the workers that answered a broadcast ping; none when the broker is away."""
    try:
        replies = app.control.ping(timeout=timeout_s) or []
    except (OSError, OperationalError, RedisError):  # down, restarting or still loading
        return []
    return sorted(name for reply in replies for name in reply)
