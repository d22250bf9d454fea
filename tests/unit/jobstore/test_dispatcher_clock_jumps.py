"""The sweeper when the wall clock jumps: no in-flight job looks stuck because the clock leapt
forward, and nothing due waits for hours because it leapt back.

The system clock of a test machine cannot be changed safely, so the jump is made on the clocks
the dispatcher is given: the job store's wall clock and the monotonic clock, moved by hand
(together for time passing, the wall clock alone for a jump). The store is a real SQLite file.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from ainode_plugin.dispatcher import BrokerUnavailable, Dispatcher, RetryPolicy
from ainode_plugin.jobstore import DispatchState, JobStore
from jobstore_helpers import Clock, decide, series_facts

from ainode.jobs import JobRequest, JobState, JobUpdate

pytestmark = pytest.mark.fault

POLICY = RetryPolicy(
    max_attempts=3,
    queued_deadline=timedelta(seconds=60),
    running_deadline=timedelta(seconds=300),
    backoff_base=timedelta(seconds=10),
    broker_retry=timedelta(seconds=5),
)
HOURS_2 = 2 * 3600.0


class Clocks:
    """The wall clock (the store's) and the monotonic clock (the dispatcher's)."""

    def __init__(self) -> None:
        self.wall = Clock()
        self.mono = 1000.0

    def monotonic(self) -> float:
        return self.mono

    def elapse(self, seconds: float) -> None:
        """Time passes: both clocks move."""
        self.wall.advance(seconds)
        self.mono += seconds

    def jump(self, seconds: float) -> None:
        """The wall clock alone is set forward (or back)."""
        self.wall.advance(seconds)


class Broker:
    """A ``send`` that is up or down, and remembers what it took."""

    def __init__(self) -> None:
        self.up = True
        self.sent: list[str] = []

    def __call__(self, request: JobRequest, queue: str) -> None:
        if not self.up:
            raise BrokerUnavailable("connection refused")
        self.sent.append(request.job_id)


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


@pytest.fixture
def store(tmp_path: Path, clocks: Clocks) -> Iterator[JobStore]:
    with JobStore(tmp_path / "jobs.sqlite3", clock=clocks.wall) as job_store:
        yield job_store


def record(store: JobStore, number: int = 1) -> str:
    facts = series_facts(number)
    job, _ = store.record_decision(facts, decide(facts)[0])
    return job.id


def test_a_forward_jump_makes_no_running_job_look_stuck(store: JobStore, clocks: Clocks) -> None:
    broker = Broker()
    dispatcher = Dispatcher(store, broker, policy=POLICY, monotonic=clocks.monotonic)
    job_id = record(store)
    assert dispatcher.sweep().sent == (job_id,)
    store.apply_update(JobUpdate(job_id=job_id, state=JobState.RUNNING))
    clocks.elapse(100)
    assert dispatcher.sweep().rescheduled == ()
    clocks.jump(HOURS_2)  # 2 h forward: the running job's last report seems 2 h old
    clocks.elapse(1)
    report = dispatcher.sweep()
    assert report.rescheduled == () and report.failed == (), "a jump is not a stuck worker"
    assert (store.get(job_id).state, store.get(job_id).attempts) == (JobState.RUNNING, 1)
    # The worker really goes quiet: stuck after the deadline of real time, not before.
    clocks.elapse(300 - 101 - 1)
    assert dispatcher.sweep().rescheduled == ()
    clocks.elapse(2)
    report = dispatcher.sweep()
    assert report.rescheduled == report.sent == (job_id,), "its lease expired: sent again at once"
    store.apply_update(JobUpdate(job_id=job_id, state=JobState.DONE))
    job = store.get(job_id)
    assert (job.state, job.attempts) == (JobState.DONE, 2), "sent once more, never lost"
    assert broker.sent == [job_id, job_id]


def test_a_backward_jump_delays_neither_a_deferred_send_nor_a_stuck_job(
    store: JobStore, clocks: Clocks
) -> None:
    broker = Broker()
    dispatcher = Dispatcher(store, broker, policy=POLICY, monotonic=clocks.monotonic)
    broker.up = False
    deferred = record(store, 1)
    assert dispatcher.sweep().deferred == (deferred,)  # waits 5 s for the broker
    broker.up = True
    running = record(store, 2)
    clocks.elapse(1)
    assert dispatcher.dispatch_due().sent == (running,)
    store.apply_update(JobUpdate(job_id=running, state=JobState.RUNNING))

    clocks.jump(-HOURS_2)  # 2 h back: without care, the deferred send waits 2 h
    clocks.elapse(5)
    report = dispatcher.sweep()
    assert report.sent == (deferred,), "the deferred job is due 5 s after deferral, real time"
    store.apply_update(JobUpdate(job_id=deferred, state=JobState.DONE))
    # The running job's worker dies: noticed after 300 s of real time, not 2 h more.
    clocks.elapse(300)
    report = dispatcher.sweep()
    assert report.rescheduled == report.sent == (running,), "its lease expired: sent at once"
    job = store.get(running)
    assert (job.state, job.dispatch_state, job.attempts) == (
        JobState.QUEUED,
        DispatchState.SENT,
        2,
    )
    assert broker.sent == [running, deferred, running]


def test_clock_jumps_both_ways_lose_and_duplicate_nothing(store: JobStore, clocks: Clocks) -> None:
    """Ten jobs through jumps of +1 h and -3 h: each is sent exactly once and ends done."""
    broker = Broker()
    dispatcher = Dispatcher(store, broker, policy=POLICY, monotonic=clocks.monotonic)
    jobs = [record(store, n) for n in range(1, 11)]
    assert set(dispatcher.sweep().sent) == set(jobs)
    for step, jump in enumerate((3600.0, -3 * 3600.0, 0.0, 3600.0)):
        clocks.jump(jump)
        clocks.elapse(10)  # 40 s in all: within the 60 s a sent job may wait for a worker
        for job_id in jobs[step::4]:
            store.apply_update(JobUpdate(job_id=job_id, state=JobState.RUNNING))
        report = dispatcher.sweep()
        assert (report.rescheduled, report.failed, report.sent) == ((), (), ()), step
    for job_id in jobs:
        store.apply_update(JobUpdate(job_id=job_id, state=JobState.DONE))
    assert sorted(broker.sent) == sorted(jobs)
    assert all(store.get(j).state == JobState.DONE for j in jobs)
