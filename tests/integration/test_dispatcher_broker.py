"""The outbox through a real Celery app on a real redis-server, down and up again."""

from __future__ import annotations

import queue
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from ainode_plugin.dispatcher import Dispatcher, RetryPolicy, celery_sender
from ainode_plugin.jobstore import DispatchState, JobStore
from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery_probe_tasks import probe_app
from nodeharness import free_port
from unit.jobstore.jobstore_helpers import Clock, clock, decide, series_facts, store

from ainode.jobs import JobRequest, JobState, JobUpdate
from ainode.routing import all_queue_names

__all__ = ["clock", "store"]  # fixtures shared with tests/unit/jobstore


class RedisServer:
    """A throw-away redis-server on its own port that a test can stop and start again."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        arguments = ["--save", "", "--appendonly", "no", "--port", str(self.port)]
        self._process = subprocess.Popen(
            [binary, *arguments, "--bind", "127.0.0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def queue_length(self, queue: str) -> int:
        return int(redis.Redis(port=self.port).llen(queue))


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """Started; tests may stop and start it again."""
    server = RedisServer(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def stopped_redis_server() -> Iterator[RedisServer]:
    """A port where a redis-server is not (yet) running."""
    server = RedisServer(free_port())
    yield server
    server.stop()


POLICY = RetryPolicy(
    max_attempts=3, queued_deadline=timedelta(minutes=10), broker_retry=timedelta(seconds=10)
)
QUEUES = [*all_queue_names(), *all_queue_names("gpu")]


@contextmanager
def worker(app: Celery) -> Iterator[None]:
    with start_worker(app, pool="solo", perform_ping_check=False, queues=QUEUES):
        yield


def receive(received: queue.Queue[dict[str, Any]], count: int) -> list[JobRequest]:
    return [JobRequest.model_validate(received.get(timeout=30)) for _ in range(count)]


def record(store: JobStore, number: int, **kwargs: Any) -> str:
    facts = series_facts(number, **kwargs)
    job, _ = store.record_decision(facts, decide(facts)[-1])
    return job.id


def test_jobs_reach_a_celery_worker_and_report_back(
    redis_server: RedisServer, store: JobStore, tmp_path: Path
) -> None:
    app, received = probe_app(redis_server.url, tmp_path)
    dispatcher = Dispatcher(store, celery_sender(app), policy=POLICY)
    normal = record(store, 1)
    urgent = record(store, 2, body_part="CHEST")

    report = dispatcher.dispatch_due()
    assert report.sent == (urgent, normal)  # most urgent first
    assert store.get(urgent).queue == "ainode.gpu.high"
    assert redis_server.queue_length("ainode.gpu.high") == 1
    assert redis_server.queue_length("ainode.default") == 1
    for job_id in (normal, urgent):
        job = store.get(job_id)
        assert (job.dispatch_state, job.attempts) == (DispatchState.SENT, 1)

    with worker(app):
        requests = receive(received, 2)
    assert {request.job_id for request in requests} == {normal, urgent}
    by_id = {request.job_id: request for request in requests}
    assert by_id[urgent].pipeline == "lungs" and by_id[urgent].params == {"fold": 1}
    for request in requests:
        store.apply_update(JobUpdate(job_id=request.job_id, state=JobState.RUNNING))
        store.apply_update(JobUpdate(job_id=request.job_id, state=JobState.DONE))
    assert store.counts_by_state()[JobState.DONE] == 2
    assert dispatcher.dispatch_due().sent == ()  # nothing is ever sent twice


def test_broker_down_keeps_the_job_pending_until_it_returns(
    stopped_redis_server: RedisServer, store: JobStore, clock: Clock, tmp_path: Path
) -> None:
    server = stopped_redis_server
    app, received = probe_app(server.url, tmp_path)
    dispatcher = Dispatcher(store, celery_sender(app), policy=POLICY)
    job_id = record(store, 1)

    report = dispatcher.sweep()
    assert report.deferred == (job_id,) and report.sent == ()
    job = store.get(job_id)
    assert job.state == JobState.QUEUED
    assert job.dispatch_state == DispatchState.PENDING
    assert job.attempts == 0  # an outage does not use up attempts
    assert job.dispatch_error is not None and "broker unavailable" in job.dispatch_error

    server.start()
    assert dispatcher.sweep().sent == ()  # not before the broker retry pause
    clock.advance(POLICY.broker_retry.total_seconds())
    assert dispatcher.sweep().sent == (job_id,)
    assert store.get(job_id).dispatch_error is None
    with worker(app):
        assert [r.job_id for r in receive(received, 1)] == [job_id]


def test_broker_restart_loses_a_message_and_the_sweeper_sends_it_again(
    redis_server: RedisServer, store: JobStore, clock: Clock, tmp_path: Path
) -> None:
    app, received = probe_app(redis_server.url, tmp_path)
    dispatcher = Dispatcher(store, celery_sender(app), policy=POLICY)
    first = record(store, 1)
    assert dispatcher.sweep().sent == (first,)

    redis_server.stop()  # started with --save '': the queued message is gone for good
    second = record(store, 2)
    assert dispatcher.sweep().deferred == (second,)
    redis_server.start()
    clock.advance(POLICY.broker_retry.total_seconds())
    assert dispatcher.sweep().sent == (second,)  # the pooled connection recovered

    # The first job was sent a broker-retry pause before the second: only it is overdue now.
    clock.advance((POLICY.queued_deadline - POLICY.broker_retry).total_seconds())
    report = dispatcher.sweep()
    assert report.rescheduled == (first,)  # no worker ever started it: stuck
    assert store.get(first).dispatch_state == DispatchState.PENDING
    clock.advance(POLICY.backoff(1).total_seconds())
    assert dispatcher.sweep().sent == (first,)
    assert store.get(first).attempts == 2

    with worker(app):
        requests = receive(received, 2)
    assert sorted(r.job_id for r in requests) == sorted([first, second])
