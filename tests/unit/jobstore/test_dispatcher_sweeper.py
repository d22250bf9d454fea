"""The sweeper with a hand-moved clock: stuck jobs, exponential backoff, giving up with a reason.

``send`` here is a plain function that records what it is given: the dispatcher's contract is
a callable, and these tests are about timing decisions, not the broker (see the broker tests).
"""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from ainode_plugin.dispatcher import BrokerUnavailable, Dispatcher, RetryPolicy
from ainode_plugin.jobstore import DispatchState, JobStore
from jobstore_helpers import Clock, decide, series_facts

from ainode.jobs import JobRequest, JobState, JobUpdate

POLICY = RetryPolicy(
    max_attempts=3,
    queued_deadline=timedelta(seconds=60),
    running_deadline=timedelta(seconds=300),
    backoff_base=timedelta(seconds=10),
    backoff_max=timedelta(seconds=25),
    broker_retry=timedelta(seconds=5),
)


class Recorder:
    """A ``send`` that keeps what it was given (thread-safe: the scheduler calls it too)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.requests: list[JobRequest] = []
        self.lock = threading.Lock()
        self.event = threading.Event()

    def __call__(self, request: JobRequest, queue: str) -> None:
        with self.lock:
            self.sent.append((request.job_id, queue))
            self.requests.append(request)
        self.event.set()


def record(store: JobStore, number: int = 1) -> str:
    facts = series_facts(number)
    job, _ = store.record_decision(facts, decide(facts)[0])
    return job.id


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [POLICY.backoff(n).total_seconds() for n in range(1, 5)] == [10, 20, 25, 25]
    assert RetryPolicy().backoff(1000) == RetryPolicy().backoff_max
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="positive"):
        RetryPolicy(queued_deadline=timedelta(0))


def test_stuck_job_is_resent_with_backoff_then_fails_with_the_reason(
    store: JobStore, clock: Clock
) -> None:
    send = Recorder()
    dispatcher = Dispatcher(store, send, policy=POLICY)
    job_id = record(store)
    assert dispatcher.sweep().sent == (job_id,)

    clock.advance(59)
    assert dispatcher.sweep().rescheduled == ()  # within the deadline
    clock.advance(1)
    report = dispatcher.sweep()
    assert report.rescheduled == (job_id,) and report.sent == ()
    job = store.get(job_id)
    assert (job.state, job.dispatch_state, job.attempts) == (
        JobState.QUEUED,
        DispatchState.PENDING,
        1,
    )
    assert job.dispatch_error is not None and "attempt 1 stuck" in job.dispatch_error

    clock.advance(9)
    assert dispatcher.sweep().sent == ()  # backoff after attempt 1: 10 s
    clock.advance(1)
    assert dispatcher.sweep().sent == (job_id,)
    assert store.get(job_id).attempts == 2

    clock.advance(60)
    assert dispatcher.sweep().rescheduled == (job_id,)
    clock.advance(19)
    assert dispatcher.sweep().sent == ()  # backoff after attempt 2: 20 s
    clock.advance(1)
    assert dispatcher.sweep().sent == (job_id,)
    assert store.get(job_id).attempts == 3

    clock.advance(60)
    report = dispatcher.sweep()
    assert report.failed == (job_id,)
    failed = store.get(job_id)
    assert failed.state == JobState.FAILED
    assert failed.error == "gave up after 3 attempts: no worker started it within 1 min"
    assert failed.finished_at == clock.now
    assert [sent_id for sent_id, _ in send.sent] == [job_id] * 3

    clock.advance(3600)
    assert dispatcher.sweep() == dispatcher.last_report
    assert send.sent == [(job_id, "ainode.default")] * 3  # a failed job is left alone


def test_a_running_job_is_stuck_only_when_its_worker_goes_quiet(
    store: JobStore, clock: Clock
) -> None:
    send = Recorder()
    dispatcher = Dispatcher(store, send, policy=POLICY)
    job_id = record(store)
    dispatcher.sweep()
    first = send.requests[0].attempt
    assert first is not None and store.get(job_id).attempt_id == first
    store.apply_update(JobUpdate(job_id=job_id, state=JobState.RUNNING, attempt=first))
    for _ in range(3):  # heartbeats keep it alive past the queued deadline
        clock.advance(200)
        store.apply_update(JobUpdate(job_id=job_id, state=JobState.RUNNING, attempt=first))
        assert dispatcher.sweep().rescheduled == ()
    clock.advance(300)
    report = dispatcher.sweep()
    # The lease expired: a live worker can take it now, as a new attempt, with no pause.
    assert report.rescheduled == (job_id,) and report.sent == (job_id,)
    job = store.get(job_id)
    assert job.state == JobState.QUEUED and job.attempts == 2
    second = send.requests[1].attempt
    assert second not in (None, first) and job.attempt_id == second
    # The first worker finishes after all: its attempt is superseded, its report ignored.
    late, applied = store.apply_update(
        JobUpdate(job_id=job_id, state=JobState.DONE, outputs=["seg"], attempt=first)
    )
    assert not applied and late.state == JobState.QUEUED and late.outputs == []
    done, applied = store.apply_update(
        JobUpdate(job_id=job_id, state=JobState.DONE, outputs=["seg"], attempt=second)
    )
    assert applied and done.state == JobState.DONE and done.outputs == ["seg"]
    clock.advance(60)
    assert dispatcher.sweep().sent == ()


def test_broker_outage_uses_no_attempts_and_holds_back_the_batch(
    store: JobStore, clock: Clock
) -> None:
    up = threading.Event()
    sent: list[str] = []

    def send(request: JobRequest, queue: str) -> None:
        if not up.is_set():
            raise BrokerUnavailable("connection refused")
        sent.append(request.job_id)

    dispatcher = Dispatcher(store, send, policy=POLICY)
    first, second = record(store, 1), record(store, 2)
    for _ in range(5):
        report = dispatcher.sweep()
        assert report.deferred == (first,) or report.deferred == (second,) or not report.deferred
        clock.advance(5)
    assert sent == []
    assert {store.get(first).attempts, store.get(second).attempts} == {0}
    up.set()
    clock.advance(5)
    assert set(dispatcher.sweep().sent) == {first, second}
    assert sorted(sent) == sorted([first, second])


def test_a_message_the_broker_refuses_fails_that_job_only(store: JobStore, clock: Clock) -> None:
    poisoned = record(store, 1)
    healthy = record(store, 2)
    sent: list[str] = []

    def send(request: JobRequest, queue: str) -> None:
        if request.job_id == poisoned:
            raise TypeError("cannot serialise")
        sent.append(request.job_id)

    report = Dispatcher(store, send, policy=POLICY).dispatch_due()
    assert report.failed == (poisoned,) and report.sent == (healthy,)
    job = store.get(poisoned)
    assert job.state == JobState.FAILED
    assert job.error == "could not be sent to the broker: cannot serialise"


def test_scheduler_starts_on_demand_wakes_and_stops(tmp_path: Path) -> None:
    with JobStore(tmp_path / "jobs.sqlite3") as store:  # real time
        send = Recorder()
        dispatcher = Dispatcher(store, send, policy=POLICY)
        assert not dispatcher.running  # nothing runs until started
        first = record(store, 1)
        dispatcher.start(interval_s=3600)  # first pass at once, the next only in an hour
        assert send.event.wait(timeout=30)
        send.event.clear()
        second = record(store, 2)
        dispatcher.wake()
        assert send.event.wait(timeout=30)
        dispatcher.stop()
        assert not dispatcher.running
        assert [job_id for job_id, _ in send.sent] == [first, second]
        assert store.get(second).dispatch_state == DispatchState.SENT
        dispatcher.stop()  # stopping twice is harmless
