"""Job decisions and state changes: a decision recorded once, the dispatch outbox, the
worker's reports and the operator's retry and cancel.

Dedup: a decision's key is (series UID, trigger, rule or deciding guard, pipeline, content
fingerprint). Repeated events and identical re-sends hit the same key and return the existing
job; a series that gained instances has a new fingerprint and may make a new job. A failed job
is not retried by re-sending the series: use :meth:`JobStore.retry`.

Outbox: a job to run is written ``dispatch_state = pending`` in the same transaction as its
decision; the dispatcher sends it to the broker and marks it ``sent``. A crash in between
leaves it pending, so it is sent after the restart: at least once, never zero times.

Audit: each new decision writes one line to the ``ainode.audit`` logger (rule or guard, series
UID, outcome, reason; never a patient's name, ID or birth date).
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from ainode.jobs import DestinationStatus, JobRequest, JobState, JobUpdate
from ainode.routing import Decision
from ainode_plugin.facts import SeriesFacts
from ainode_plugin.jobstore.outbox import NotificationOutbox
from ainode_plugin.jobstore.records import (
    DispatchState,
    InvalidTransition,
    Job,
    NotifyTarget,
    is_current_attempt,
)
from ainode_plugin.jobstore.rows import job_from_row, statuses_json, to_ts

log = logging.getLogger("ainode_plugin.jobstore")
audit = logging.getLogger("ainode.audit")

_KEY_SEPARATOR = "\x1f"

_IN_FLIGHT = (JobState.QUEUED, JobState.RUNNING)
_WORKER_STATES = (JobState.RUNNING, JobState.DONE, JobState.FAILED)


def dedup_key(
    series_uid: str, trigger: str, decided_by: str, pipeline: str | None, fingerprint: str
) -> str:
    """The identity of a decision: same series version, same rule (or guard), same pipeline."""
    text = _KEY_SEPARATOR.join((series_uid, trigger, decided_by, pipeline or "", fingerprint))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class JobStore(NotificationOutbox):
    """The job store: decisions, the dispatch outbox, state changes and notifications."""

    # --- decisions -------------------------------------------------------------------------

    def record_decision(self, facts: SeriesFacts, decision: Decision) -> tuple[Job, bool]:
        """Record one decision; returns the job and whether it is new (False: a duplicate)."""
        now = to_ts(self.clock())
        rule = decision.rule if decision.run else None  # the rule to run, if any
        pipeline = rule.pipeline if rule is not None else None
        notify = [
            NotifyTarget(webhook=target.webhook, events=list(target.events))
            for target in (rule.notify if rule is not None else ())
        ]
        key = dedup_key(
            facts.series_uid,
            decision.trigger.value,
            decision.decided_by,
            pipeline,
            facts.fingerprint,
        )
        job_id = uuid.uuid4().hex
        request: JobRequest | None = None
        statuses: list[DestinationStatus] = []
        if rule is not None and pipeline is not None:
            request = JobRequest(
                job_id=job_id,
                series_id=facts.series_id,
                series_uid=facts.series_uid,
                study_uid=facts.study_uid,
                rule=rule.name,
                pipeline=pipeline,
                outputs=list(rule.outputs),
                destinations=list(rule.destinations),
                params=rule.job_params(),
            )
            statuses = [DestinationStatus(destination=d) for d in rule.destinations]
        values = {
            "id": job_id,
            "dedup_key": key,
            "series_id": facts.series_id,
            "series_uid": facts.series_uid,
            "study_id": facts.study_id,
            "study_uid": facts.study_uid,
            "fingerprint": facts.fingerprint,
            "instance_count": facts.instance_count,
            "trigger_level": decision.trigger.value,
            "rule": decision.rule_name,
            "decided_by": decision.decided_by,
            "reason": decision.reason,
            "pipeline": pipeline,
            "state": JobState.QUEUED if request else JobState.IGNORED,
            "priority": rule.priority.value if request and rule else None,
            "queue": rule.queue if request and rule else None,
            "created_at": now,
            "updated_at": now,
            "finished_at": None if request else now,
            "dispatch_state": DispatchState.PENDING if request else DispatchState.NONE,
            "dispatch_after": now if request else None,
            "destinations": statuses_json(statuses),
            "request": request.model_dump_json() if request else None,
            "notify": json.dumps([target.model_dump(mode="json") for target in notify]),
        }
        columns = ", ".join(values)
        marks = ", ".join(f":{name}" for name in values)
        with self._write() as db:
            cursor = db.execute(
                f"INSERT INTO jobs ({columns}) VALUES ({marks}) "  # noqa: S608 (fixed names)
                "ON CONFLICT(dedup_key) DO NOTHING",
                values,
            )
            created = cursor.rowcount == 1
            row = db.execute("SELECT * FROM jobs WHERE dedup_key = ?", (key,)).fetchone()
            job = job_from_row(row)
            if created and request is not None:
                self._changed(db, None, job)
        if created:
            _audit(job)
        else:
            log.debug("series %s: decision by %s already recorded", job.series_uid, job.decided_by)
        return job, created

    # --- outbox ----------------------------------------------------------------------------

    def pending_dispatch(self, now: datetime | None = None, *, limit: int = 50) -> list[Job]:
        """Queued jobs waiting to be sent whose time has come, most urgent first."""
        moment = to_ts(now or self.clock())
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE dispatch_state = ? AND state = ? AND dispatch_after <= ? "
                "ORDER BY CASE priority WHEN 'high' THEN 0 WHEN 'normal' THEN 1 ELSE 2 END, "
                "dispatch_after, created_at LIMIT ?",
                (DispatchState.PENDING, JobState.QUEUED, moment, limit),
            ).fetchall()
        return [job_from_row(row) for row in rows]

    def new_attempt(self, job_id: str) -> JobRequest | None:
        """Give the job's next sending its own attempt id, before it is sent: the request to
        send (carrying the id, which is also the Celery task id), or None when the job is no
        longer waiting to be sent. Every earlier attempt is superseded from now on."""
        attempt = uuid.uuid4().hex
        with self._write() as db:
            cursor = db.execute(
                "UPDATE jobs SET attempt_id = ? WHERE id = ? AND state = ? AND dispatch_state = ?",
                (attempt, job_id, JobState.QUEUED, DispatchState.PENDING),
            )
            job = self._get_locked(db, job_id)
        if cursor.rowcount != 1 or job.request is None:
            return None
        return job.request.model_copy(update={"attempt": attempt})

    def stuck_jobs(
        self,
        now: datetime | None = None,
        *,
        queued_deadline: timedelta,
        running_deadline: timedelta,
        limit: int = 50,
    ) -> list[Job]:
        """Jobs handed to the broker that no worker took (queued) or stopped reporting (running)
        for longer than the deadlines."""
        moment = to_ts(now or self.clock())
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE "
                "(state = ? AND dispatch_state = ? AND updated_at <= ?) "
                "OR (state = ? AND updated_at <= ?) ORDER BY updated_at LIMIT ?",
                (
                    JobState.QUEUED,
                    DispatchState.SENT,
                    moment - queued_deadline.total_seconds(),
                    JobState.RUNNING,
                    moment - running_deadline.total_seconds(),
                    limit,
                ),
            ).fetchall()
        return [job_from_row(row) for row in rows]

    def follow_clock_jump(self, now: datetime, jump: timedelta) -> int:
        """Move in-flight jobs' times written before a wall-clock jump of ``jump`` into the new
        clock's frame (see :mod:`ainode_plugin.dispatcher`); returns how many jobs moved.

        Only times that cannot have been written after the jump move: after a forward jump,
        those up to ``now - jump``; after a backward one, those later than ``now``. Pending
        sends due later than ``now`` come earlier by a backward jump (never before ``now``).
        """
        moment, seconds = to_ts(now), jump.total_seconds()
        before_jump = moment - seconds  # now, as the old clock would tell it
        lower = float("-inf") if seconds > 0 else moment
        with self._write() as db:
            moved = db.execute(
                "UPDATE jobs SET updated_at = updated_at + ? "
                "WHERE state IN (?, ?) AND updated_at > ? AND updated_at <= ?",
                (seconds, *_IN_FLIGHT, lower, before_jump),
            ).rowcount
            if seconds < 0:
                db.execute(
                    "UPDATE jobs SET dispatch_after = MAX(?, dispatch_after + ?) "
                    "WHERE dispatch_state = ? AND dispatch_after > ?",
                    (moment, seconds, DispatchState.PENDING, moment),
                )
        return int(moved)

    def mark_sent(self, job_id: str) -> Job:
        """The broker accepted the job: count the attempt and wait for the worker."""
        now = to_ts(self.clock())
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET attempts = attempts + 1, dispatch_state = ?, sent_at = ?, "
                "dispatch_error = NULL, updated_at = CASE WHEN state = ? THEN ? ELSE updated_at "
                "END WHERE id = ? AND state IN (?, ?)",
                (DispatchState.SENT, now, JobState.QUEUED, now, job_id, *_IN_FLIGHT),
            )
            return self._get_locked(db, job_id)

    def defer_dispatch(self, job_id: str, until: datetime, error: str) -> Job:
        """Sending failed (broker unreachable): keep the job pending until ``until``.

        Not counted as an attempt: a broker outage must not use up a job's retries.
        """
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET dispatch_after = ?, dispatch_error = ? "
                "WHERE id = ? AND dispatch_state = ?",
                (to_ts(until), error, job_id, DispatchState.PENDING),
            )
            return self._get_locked(db, job_id)

    def reschedule(self, job_id: str, until: datetime, reason: str) -> tuple[Job, bool]:
        """Put a stuck in-flight job back in the outbox, to be sent again after ``until``."""
        now = to_ts(self.clock())
        with self._write() as db:
            before = self._get_locked(db, job_id)
            cursor = db.execute(
                "UPDATE jobs SET state = ?, dispatch_state = ?, dispatch_after = ?, "
                "dispatch_error = ?, updated_at = ?, attempt_id = ? "
                "WHERE id = ? AND state IN (?, ?)",
                (
                    JobState.QUEUED,
                    DispatchState.PENDING,
                    to_ts(until),
                    reason,
                    now,
                    uuid.uuid4().hex,  # the stuck attempt is superseded: its reports are ignored
                    job_id,
                    *_IN_FLIGHT,
                ),
            )
            return self._changed(db, before, self._get_locked(db, job_id)), cursor.rowcount == 1

    def fail(self, job_id: str, reason: str) -> tuple[Job, bool]:
        """End an in-flight job as failed with ``reason`` (False if it had ended meanwhile)."""
        now = to_ts(self.clock())
        with self._write() as db:
            before = self._get_locked(db, job_id)
            closed = _closed_statuses(before.destinations, "failed", "not sent: the job failed")
            cursor = db.execute(
                "UPDATE jobs SET state = ?, error = ?, dispatch_state = ?, finished_at = ?, "
                "updated_at = ?, destinations = ? WHERE id = ? AND state IN (?, ?)",
                (
                    JobState.FAILED,
                    reason,
                    DispatchState.NONE,
                    now,
                    now,
                    statuses_json(closed),
                    job_id,
                    *_IN_FLIGHT,
                ),
            )
            job = self._changed(db, before, self._get_locked(db, job_id))
        if cursor.rowcount == 1:
            log.warning("job %s failed: %s", job_id, reason)
        return job, cursor.rowcount == 1

    # --- worker updates and operator actions ----------------------------------------------

    def apply_update(self, update: JobUpdate) -> tuple[Job, bool]:
        """Apply a worker's report; returns the job and whether the report changed it.

        Reports for finished or cancelled jobs are ignored (a redelivered task may report
        late), except that what a cancelled attempt stored before it stopped is listed on the
        job; reports of a superseded attempt (see :meth:`new_attempt`) are ignored; reports
        that no worker should ever send raise :class:`InvalidTransition`.
        """
        if update.state not in _WORKER_STATES:
            raise InvalidTransition(
                f"a worker reports running, done or failed, not {update.state.value}"
            )
        now = to_ts(self.clock())
        with self._write() as db:
            job = self._get_locked(db, update.job_id)
            if job.state == JobState.IGNORED:
                raise InvalidTransition(f"job {job.id} was ignored; no worker should report on it")
            if not is_current_attempt(job, update.attempt):
                log.info(
                    "job %s: %s report of superseded attempt %s ignored",
                    job.id,
                    update.state.value,
                    update.attempt,
                )
                return job, False
            if job.state.is_final:
                if job.state == JobState.CANCELLED and (update.outputs or update.destinations):
                    # Stored before the cancel reached the worker: list it, keep the state.
                    db.execute(
                        "UPDATE jobs SET outputs = ?, destinations = ?, updated_at = ? "
                        "WHERE id = ?",
                        (
                            json.dumps(_merged_outputs(job.outputs, update.outputs)),
                            statuses_json(_merged_statuses(job.destinations, update.destinations)),
                            now,
                            job.id,
                        ),
                    )
                    job = self._get_locked(db, job.id)
                log.info(
                    "job %s is %s; late %s report ignored",
                    job.id,
                    job.state.value,
                    update.state.value,
                )
                return job, False
            changes: dict[str, Any] = {
                "state": update.state.value,
                "updated_at": now,
                "worker": update.worker or job.worker,
                "outputs": json.dumps(_merged_outputs(job.outputs, update.outputs)),
                "destinations": statuses_json(
                    _merged_statuses(job.destinations, update.destinations)
                ),
                "detail": json.dumps({**job.detail, **update.detail}, default=str),
            }
            if job.dispatch_state == DispatchState.PENDING:
                changes["dispatch_state"] = DispatchState.SENT.value  # it reached a worker
                changes["dispatch_error"] = None
            started = to_ts(job.started_at) if job.started_at else now
            changes["started_at"] = started
            if update.state == JobState.DONE:
                changes.update(finished_at=now, error=None, dispatch_state=DispatchState.NONE.value)
            elif update.state == JobState.FAILED:
                changes.update(
                    finished_at=now,
                    error=update.error or "the worker reported a failure without a reason",
                    dispatch_state=DispatchState.NONE.value,
                    destinations=statuses_json(
                        _closed_statuses(
                            _merged_statuses(job.destinations, update.destinations),
                            "failed",
                            "not sent: the job failed",
                        )
                    ),
                )
            assignments = ", ".join(f"{name} = :{name}" for name in changes)
            db.execute(
                f"UPDATE jobs SET {assignments} WHERE id = :id",  # noqa: S608 (fixed names)
                {**changes, "id": job.id},
            )
            after = self._changed(db, job, self._get_locked(db, job.id))
        if after.state == JobState.FAILED:
            log.warning("job %s failed on %s: %s", after.id, after.worker, after.error)
        return after, True

    def retry(self, job_id: str) -> Job:
        """Queue a failed or cancelled job again (its attempt count is kept)."""
        now = to_ts(self.clock())
        with self._write() as db:
            job = self._get_locked(db, job_id)
            if job.state not in (JobState.FAILED, JobState.CANCELLED) or job.request is None:
                raise InvalidTransition(
                    f"only failed or cancelled jobs can be retried; job {job_id} is "
                    f"{job.state.value}"
                )
            reopened = [
                s if s.state == "sent" else s.model_copy(update={"state": "pending", "error": None})
                for s in job.destinations
            ]
            db.execute(
                "UPDATE jobs SET state = ?, dispatch_state = ?, dispatch_after = ?, error = NULL, "
                "dispatch_error = NULL, started_at = NULL, finished_at = NULL, updated_at = ?, "
                "destinations = ?, attempt_id = ? WHERE id = ?",
                (
                    JobState.QUEUED,
                    DispatchState.PENDING,
                    now,
                    now,
                    statuses_json(reopened),
                    uuid.uuid4().hex,  # the failed or cancelled attempt stays superseded
                    job_id,
                ),
            )
            return self._changed(db, job, self._get_locked(db, job_id))

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job; the worker's later reports are then ignored."""
        now = to_ts(self.clock())
        with self._write() as db:
            job = self._get_locked(db, job_id)
            if job.state not in _IN_FLIGHT:
                raise InvalidTransition(
                    f"only queued or running jobs can be cancelled; job {job_id} is "
                    f"{job.state.value}"
                )
            closed = _closed_statuses(
                job.destinations, "cancelled", "not sent: the job was cancelled"
            )
            db.execute(
                "UPDATE jobs SET state = ?, dispatch_state = ?, finished_at = ?, updated_at = ?, "
                "destinations = ? WHERE id = ?",
                (JobState.CANCELLED, DispatchState.NONE, now, now, statuses_json(closed), job_id),
            )
            return self._changed(db, job, self._get_locked(db, job_id))


def _audit(job: Job) -> None:
    """The one audit line of a decision: who decided, about which series, what, and why."""
    audit.info(
        "audit: decision rule=%s series_uid=%s study_uid=%s trigger=%s outcome=%s pipeline=%s "
        "job=%s reason=%s",
        job.decided_by,
        job.series_uid,
        job.study_uid,
        job.trigger,
        "ignored" if job.request is None else "run",
        job.pipeline or "-",
        job.id,
        json.dumps(job.reason),
    )


def _merged_outputs(old: list[str], new: list[str]) -> list[str]:
    return list(dict.fromkeys([*old, *new]))


def _merged_statuses(
    old: list[DestinationStatus], new: list[DestinationStatus]
) -> list[DestinationStatus]:
    """The worker's statuses replace ours destination by destination."""
    merged = {(s.destination.kind, s.destination.name): s for s in old}
    for status in new:
        merged[(status.destination.kind, status.destination.name)] = status
    return list(merged.values())


def _closed_statuses(
    statuses: Iterable[DestinationStatus], state: str, reason: str
) -> list[DestinationStatus]:
    """A job that ended without reaching some destinations closes them: none stays pending."""
    return [
        s.model_copy(update={"state": state, "error": s.error or reason})
        if s.state == "pending"
        else s
        for s in statuses
    ]
