"""The outbox sender: hands pending jobs to the broker, and re-sends those that got stuck.

Orthanc's callbacks only record decisions (see :mod:`ainode_plugin.jobstore`); this module
sends them, on the scheduler's thread, in short bursts, so the plugin's Python thread is never
busy for long. The broker being down is not a job failure: the job stays pending and is sent
when the broker returns, without using up an attempt. A job sent but never taken by a worker,
or whose worker stopped reporting, is sent again after an exponentially growing pause, up to
:attr:`RetryPolicy.max_attempts`; then it fails with the reason. Results carry deterministic
UIDs, so a job that runs twice stores its results once.

Every sending is an attempt with its own id, which is also its Celery task id
(:meth:`JobStore.new_attempt`): a retry after a cancel is a new task that no revoke of the old
one touches, and a worker that receives a superseded attempt's message (redelivered after its
worker died, or sent before a re-send) is told so by its first report and discards it.

A worker that dies takes no news with it, so running jobs are held by a lease: the worker
reports every ``job_heartbeat_s`` (5 s), and a running job without news for
``job_running_deadline_s`` (30 s) is sent again at once as a new attempt. Celery's late
acknowledgement with rejection on worker loss covers a killed pool process (the message comes
back at once, and is discarded as superseded or runs as the current attempt), but not a killed
worker: its unacknowledged message comes back only after Redis's visibility timeout (an hour).
Measured on the fault tests (tests/integration/test_faults_worker.py, sweep every second):
SIGKILL of the worker mid-inference to the job sent again as a new attempt took 30.9-31.1 s
(the deadline plus at most one sweep); its pool process ends within a second of the worker
(``ainode_worker.tasks``), so the superseded attempt stores nothing.

The store's times are wall-clock (they must mean something after a restart), so a jump of the
wall clock (an NTP step, a VM resumed, an operator) would make every in-flight job look stuck
(forward) or put due work hours away (backward). Each pass measures the jump as wall-clock
time elapsed minus monotonic time elapsed since the last pass, and moves the in-flight jobs'
times with it (:meth:`JobStore.follow_clock_jump`); the loop itself waits on the monotonic
clock, so it neither stalls nor races when the wall clock jumps.

``send`` is any ``(JobRequest, queue) -> None`` callable that raises :class:`BrokerUnavailable`
when the broker cannot take the message; :func:`celery_sender` makes one from a Celery app.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from celery import Celery
from kombu.exceptions import OperationalError

from ainode.broker import RUN_JOB_TASK
from ainode.jobs import JobRequest, JobState
from ainode.routing import queue_name
from ainode.settings import Settings
from ainode_plugin.backoff import AttemptPolicy
from ainode_plugin.jobstore import JobStore
from ainode_plugin.outboxsender import OutboxSender

log = logging.getLogger(__name__)

SendJob = Callable[[JobRequest, str], None]
# Wall clock and monotonic clock disagreeing by more than this between two passes is a jump.
CLOCK_JUMP_TOLERANCE = timedelta(seconds=5)
# Publishing: one quick reconnect (a broker restart leaves a stale pooled connection), no more;
# the sweeper retries later, so a dead broker never holds the scheduler's thread.
_PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}


class BrokerUnavailable(Exception):
    """The broker could not take the job now; it stays pending and is sent later."""


@dataclass(frozen=True)
class RetryPolicy(AttemptPolicy):
    """When a sent job counts as stuck, how long to wait before re-sending, when to give up."""

    max_attempts: int = 3
    queued_deadline: timedelta = timedelta(minutes=30)  # sent, but no worker started it
    running_deadline: timedelta = timedelta(seconds=30)  # running, no heartbeat from its worker
    backoff_base: timedelta = timedelta(seconds=30)
    backoff_max: timedelta = timedelta(minutes=30)
    broker_retry: timedelta = timedelta(seconds=10)  # broker unreachable: try again after this

    def durations(self) -> tuple[timedelta, ...]:
        deadlines = (self.queued_deadline, self.running_deadline, self.broker_retry)
        return (*super().durations(), *deadlines)

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        """The operator's deadlines and attempts (``job_*`` settings); the rest as defaults."""
        return cls(
            max_attempts=settings.job_max_attempts,
            queued_deadline=timedelta(seconds=settings.job_queued_deadline_s),
            running_deadline=timedelta(seconds=settings.job_running_deadline_s),
            backoff_base=timedelta(seconds=settings.job_retry_backoff_s),
        )


@dataclass(frozen=True)
class SweepReport:
    """Job ids touched by one pass, for logs and tests."""

    sent: tuple[str, ...] = ()
    deferred: tuple[str, ...] = ()  # broker unavailable: still pending
    rescheduled: tuple[str, ...] = ()  # stuck: will be sent again after a pause
    failed: tuple[str, ...] = ()
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


class Dispatcher(OutboxSender):
    """Sends the store's pending jobs through ``send``; :meth:`start` runs it periodically."""

    stop_timeout_s = 30.0

    def __init__(
        self,
        store: JobStore,
        send: SendJob,
        *,
        policy: RetryPolicy | None = None,
        batch_size: int = 50,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        """``monotonic`` (``time.monotonic`` in the node) turns on following wall-clock jumps;
        without it the store's clock alone is time (tests that move it by hand)."""
        super().__init__("ainode-dispatch", store, batch_size=batch_size)
        self.policy = policy or RetryPolicy()
        self._send = send
        self._monotonic = monotonic
        self._last_pass: tuple[datetime, float] | None = None  # (wall, monotonic) of the last
        self.last_report: SweepReport | None = None

    @property
    def clock(self) -> Callable[[], datetime]:
        return self.store.clock

    def dispatch_due(self) -> SweepReport:
        """Send every pending job whose time has come (stops at the first broker failure)."""
        with self._lock:
            return self._dispatch_due()

    def sweep(self) -> SweepReport:
        """Re-schedule or fail stuck jobs, then send what is due: the periodic pass."""
        with self._lock:
            now = self.clock()
            self._follow_clock_jump(now)
            rescheduled: list[str] = []
            failed: list[str] = []
            stuck = self.store.stuck_jobs(
                now,
                queued_deadline=self.policy.queued_deadline,
                running_deadline=self.policy.running_deadline,
                limit=self.batch_size,
            )
            for job in stuck:
                if job.state == JobState.QUEUED:
                    what = f"no worker started it within {_duration(self.policy.queued_deadline)}"
                else:
                    what = f"its worker sent no news for {_duration(self.policy.running_deadline)}"
                if job.attempts >= self.policy.max_attempts:
                    reason = f"gave up after {job.attempts} attempts: {what}"
                    if self.store.fail(job.id, reason)[1]:
                        failed.append(job.id)
                else:
                    # A running job's lease expired: its worker is gone, a live one can take it
                    # now. A job no worker took waits longer each time (the queue is busy).
                    pause = (
                        timedelta(0)
                        if job.state == JobState.RUNNING
                        else self.policy.backoff(job.attempts)
                    )
                    when = f"after {_duration(pause)}" if pause else "now"
                    reason = f"attempt {job.attempts} stuck ({what}); sending again {when}"
                    if self.store.reschedule(job.id, now + pause, reason)[1]:
                        log.warning("job %s: %s", job.id, reason)
                        rescheduled.append(job.id)
            sent = self._dispatch_due()
            report = SweepReport(
                sent=sent.sent,
                deferred=sent.deferred,
                rescheduled=tuple(rescheduled),
                failed=(*failed, *sent.failed),
                at=now,
            )
            self.last_report = report
            return report

    def _follow_clock_jump(self, now: datetime) -> None:
        if self._monotonic is None:
            return
        monotonic = self._monotonic()
        last, self._last_pass = self._last_pass, (now, monotonic)
        if last is None:
            return
        jump = (now - last[0]) - timedelta(seconds=monotonic - last[1])
        if abs(jump) < CLOCK_JUMP_TOLERANCE:
            return
        moved = self.store.follow_clock_jump(now, jump)
        log.warning(
            "the wall clock jumped by %+.0f s; %d in-flight job(s) moved with it",
            jump.total_seconds(),
            moved,
        )

    def _dispatch_due(self) -> SweepReport:
        now = self.clock()
        sent: list[str] = []
        deferred: list[str] = []
        failed: list[str] = []
        for job in self.store.pending_dispatch(now, limit=self.batch_size):
            if job.request is None:  # cannot happen for queued jobs; never send nothing
                self.store.fail(job.id, "the job has no request to send")
                failed.append(job.id)
                continue
            request = self.store.new_attempt(job.id)
            if request is None:  # cancelled meanwhile
                continue
            try:
                self._send(request, job.queue or queue_name())
            except BrokerUnavailable as error:
                self.store.defer_dispatch(
                    job.id, now + self.policy.broker_retry, f"broker unavailable: {error}"
                )
                deferred.append(job.id)
                log.warning("job %s stays pending: broker unavailable (%s)", job.id, error)
                break  # the others would fail the same way; they wait for the next pass
            except Exception as error:  # a message the broker refuses for good: fail that job only
                log.exception("job %s could not be sent", job.id)
                self.store.fail(job.id, f"could not be sent to the broker: {error}")
                failed.append(job.id)
                continue
            self.store.mark_sent(job.id)
            sent.append(job.id)
            log.info("job %s sent to queue %s as attempt %s", job.id, job.queue, request.attempt)
        return SweepReport(sent=tuple(sent), deferred=tuple(deferred), failed=tuple(failed), at=now)

    def run_pass(self) -> None:
        """The periodic pass: :meth:`sweep`."""
        self.sweep()


def celery_sender(app: Celery, task_name: str = RUN_JOB_TASK) -> SendJob:
    """A ``send`` that publishes the job as ``task_name`` with the request as its only argument.

    The Celery task id is the attempt's id (the job id for a request without one): each
    attempt is its own task, so revoking one never touches the next.
    """

    def send(request: JobRequest, queue: str) -> None:
        try:
            app.send_task(
                task_name,
                args=[request.model_dump(mode="json")],
                queue=queue,
                task_id=request.attempt or request.job_id,
                retry=True,
                retry_policy=_PUBLISH_RETRY,
            )
        except (OperationalError, OSError) as error:
            raise BrokerUnavailable(str(error)) from error

    return send


def _duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"
