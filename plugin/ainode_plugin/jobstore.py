"""The durable record of every routing decision and of each job's life, in one SQLite file.

Why SQLite: Orthanc's callbacks arrive on several threads and may repeat (``STABLE_SERIES`` can
fire twice; a modality re-sends a series; the node restarts mid-job). One file under the data
directory, in WAL mode, with a UNIQUE dedup key, makes "one decision per series version" a
database guarantee rather than a hope, and survives restarts. Records are columns plus JSON
(never pickles), and the schema is versioned by the ``schema_migrations`` table, so a newer
node can upgrade an older file in place.

Dedup: a decision's key is (series UID, trigger, rule or deciding guard, pipeline, content
fingerprint). Repeated events and identical re-sends hit the same key and return the existing
job; a series that gained instances has a new fingerprint and may make a new job. A failed job
is not retried by re-sending the series: use :meth:`JobStore.retry`.

Outbox: a job to run is written ``dispatch_state = pending`` in the same transaction as its
decision; the dispatcher sends it to the broker and marks it ``sent``. A crash in between
leaves it pending, so it is sent after the restart: at least once, never zero times.

Notifications use the same pattern: every state change of a job whose rule has ``notify:``
writes one ``notifications`` row per interested webhook in the transaction that changes the
state, with the payload as it was at that moment. :mod:`ainode_plugin.webhooks` delivers them
later on its own thread, so a slow receiver never delays a job and a restart loses none.

Audit: each new decision writes one line to the ``ainode.audit`` logger (rule or guard, series
UID, outcome, reason; never a patient's name, ID or birth date).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ainode.jobs import (
    DestinationStatus,
    JobRequest,
    JobState,
    JobUpdate,
    utcnow,
)
from ainode.routing import Decision
from ainode_plugin.facts import SeriesFacts
from ainode_plugin.webhooks import NotificationPayload

log = logging.getLogger(__name__)
audit = logging.getLogger("ainode.audit")

DB_FILENAME = "ai-jobs.sqlite3"
MAX_PAGE = 1000
_KEY_SEPARATOR = "\x1f"


class DispatchState(StrEnum):
    NONE = "none"  # nothing to send (ignored, finished or cancelled)
    PENDING = "pending"  # to be sent to the broker once dispatch_after has passed
    SENT = "sent"  # handed to the broker; the worker's updates tell the rest


class NotificationState(StrEnum):
    PENDING = "pending"  # to be delivered once next_attempt_at has passed
    DELIVERED = "delivered"  # the receiver answered 2xx
    FAILED = "failed"  # given up after the maximum attempts, or the webhook is gone


class NotifyTarget(BaseModel):
    """A webhook a job's rule names, and the states it is told about (pinned on the job)."""

    model_config = ConfigDict(frozen=True)

    webhook: str
    events: list[JobState]


class JobStoreError(Exception):
    """Base of the job store's errors."""


class JobNotFound(JobStoreError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}")
        self.job_id = job_id


class InvalidTransition(JobStoreError):
    """The requested change does not fit the job's state (e.g. retrying a running job)."""


class SchemaTooNew(JobStoreError):
    """The file was written by a newer version of the node; refuse rather than corrupt it."""


class Job(BaseModel):
    """One decision about one series, and for a run decision the job's whole life."""

    model_config = ConfigDict(frozen=True)

    id: str
    dedup_key: str
    series_id: str
    series_uid: str
    study_id: str
    study_uid: str
    fingerprint: str
    instance_count: int
    trigger: str
    rule: str | None = Field(description="the rule that decided; None for guards / no match")
    decided_by: str
    reason: str
    pipeline: str | None
    state: JobState
    attempts: int = Field(description="times the job was handed to the broker")
    error: str | None
    priority: str | None
    queue: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    dispatch_state: DispatchState
    dispatch_after: datetime | None
    sent_at: datetime | None
    dispatch_error: str | None
    worker: str | None
    outputs: list[str]
    destinations: list[DestinationStatus]
    detail: dict[str, Any]
    request: JobRequest | None
    notify: list[NotifyTarget] = Field(default_factory=list)
    attempt_id: str | None = Field(
        default=None, description="the current attempt; reports of any other one are ignored"
    )


def is_current_attempt(job: Job, attempt: str | None) -> bool:
    """Whether a worker holding ``attempt`` of ``job`` holds the job's current attempt.

    Reports without an attempt (a message queued by an older node) count as current.
    """
    return attempt is None or job.attempt_id is None or attempt == job.attempt_id


class Notification(BaseModel):
    """One webhook call about one state change of one job, and how its delivery went."""

    model_config = ConfigDict(frozen=True)

    id: str
    seq: int = Field(description="order of creation; a job's calls to a webhook go in order")
    job_id: str
    webhook: str
    event: JobState
    state: NotificationState
    attempts: int
    next_attempt_at: datetime | None
    last_status: int | None = Field(description="HTTP status of the last attempt, if any")
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None
    payload: NotificationPayload


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "jobs: decisions, job states, dedup key and dispatch outbox",
        (
            """
            CREATE TABLE jobs (
                id TEXT PRIMARY KEY,
                dedup_key TEXT NOT NULL UNIQUE,
                series_id TEXT NOT NULL,
                series_uid TEXT NOT NULL,
                study_id TEXT NOT NULL,
                study_uid TEXT NOT NULL,
                fingerprint TEXT NOT NULL,
                instance_count INTEGER NOT NULL,
                trigger_level TEXT NOT NULL,
                rule TEXT,
                decided_by TEXT NOT NULL,
                reason TEXT NOT NULL,
                pipeline TEXT,
                state TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                error TEXT,
                priority TEXT,
                queue TEXT,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL,
                started_at REAL,
                finished_at REAL,
                dispatch_state TEXT NOT NULL,
                dispatch_after REAL,
                sent_at REAL,
                dispatch_error TEXT,
                worker TEXT,
                outputs TEXT NOT NULL DEFAULT '[]',
                destinations TEXT NOT NULL DEFAULT '[]',
                detail TEXT NOT NULL DEFAULT '{}',
                request TEXT
            )
            """,
            "CREATE INDEX jobs_state ON jobs(state)",
            "CREATE INDEX jobs_series_uid ON jobs(series_uid)",
            "CREATE INDEX jobs_series_id ON jobs(series_id)",
            "CREATE INDEX jobs_rule ON jobs(rule)",
            "CREATE INDEX jobs_created ON jobs(created_at)",
            "CREATE INDEX jobs_outbox ON jobs(dispatch_state, dispatch_after)",
        ),
    ),
    Migration(
        2,
        "notifications outbox, each job's notify targets, study filters",
        (
            "ALTER TABLE jobs ADD COLUMN notify TEXT NOT NULL DEFAULT '[]'",
            "CREATE INDEX jobs_study_uid ON jobs(study_uid)",
            "CREATE INDEX jobs_study_id ON jobs(study_id)",
            """
            CREATE TABLE notifications (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                id TEXT NOT NULL UNIQUE,
                job_id TEXT NOT NULL REFERENCES jobs(id),
                webhook TEXT NOT NULL,
                event TEXT NOT NULL,
                state TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                next_attempt_at REAL,
                last_status INTEGER,
                last_error TEXT,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL,
                delivered_at REAL,
                payload TEXT NOT NULL
            )
            """,
            "CREATE INDEX notifications_due ON notifications(state, next_attempt_at)",
            "CREATE INDEX notifications_job ON notifications(job_id, webhook, seq)",
        ),
    ),
    Migration(
        3,
        "each sending of a job is an attempt with its own id (its Celery task id)",
        ("ALTER TABLE jobs ADD COLUMN attempt_id TEXT",),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1].version

_IN_FLIGHT = (JobState.QUEUED, JobState.RUNNING)
_WORKER_STATES = (JobState.RUNNING, JobState.DONE, JobState.FAILED)


def dedup_key(
    series_uid: str, trigger: str, decided_by: str, pipeline: str | None, fingerprint: str
) -> str:
    """The identity of a decision: same series version, same rule (or guard), same pipeline."""
    text = _KEY_SEPARATOR.join((series_uid, trigger, decided_by, pipeline or "", fingerprint))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _ts(moment: datetime) -> float:
    if moment.tzinfo is None:
        raise ValueError("job store times must be timezone-aware (use ainode.jobs.utcnow)")
    return moment.timestamp()


def _dt(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


class JobStore:
    """Thread-safe access to the jobs file: one connection, one lock, short transactions."""

    def __init__(self, path: Path | str, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.path = Path(path)
        self.clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._enqueued = False  # a notification was written in the open transaction
        self.on_notification: Callable[[], None] | None = None  # called after such a commit
        self._db = sqlite3.connect(
            self.path, timeout=10.0, isolation_level=None, check_same_thread=False
        )
        self._db.row_factory = sqlite3.Row
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("job store %s: WAL mode unavailable (journal mode %s)", self.path, mode)
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._migrate()

    @classmethod
    def in_data_dir(
        cls, data_dir: Path | str, *, clock: Callable[[], datetime] = utcnow
    ) -> JobStore:
        return cls(Path(data_dir) / DB_FILENAME, clock=clock)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- schema ----------------------------------------------------------------------------

    def _migrate(self) -> None:
        with self._write() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            current = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            version = int(current.fetchone()[0])
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"{self.path} has job-store schema version {version}, newer than this "
                    f"node's {SCHEMA_VERSION}; upgrade the node or move the file aside"
                )
            for migration in MIGRATIONS:
                if migration.version <= version:
                    continue
                for statement in migration.statements:
                    db.execute(statement)
                db.execute(
                    "INSERT INTO schema_migrations (version, description, applied_at) "
                    "VALUES (?, ?, ?)",
                    (migration.version, migration.description, _ts(self.clock())),
                )
                log.info("job store %s migrated to schema %d", self.path, migration.version)

    def schema_version(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0])

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._enqueued = False
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            enqueued, self._enqueued = self._enqueued, False
        listener = self.on_notification
        if enqueued and listener is not None:
            listener()  # wakes the sender; never delivers here

    # --- decisions -------------------------------------------------------------------------

    def record_decision(self, facts: SeriesFacts, decision: Decision) -> tuple[Job, bool]:
        """Record one decision; returns the job and whether it is new (False: a duplicate)."""
        now = _ts(self.clock())
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
            "destinations": _statuses_json(statuses),
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
            job = _job(row)
            if created and request is not None:
                self._changed(db, None, job)
        if created:
            _audit(job)
        else:
            log.debug("series %s: decision by %s already recorded", job.series_uid, job.decided_by)
        return job, created

    # --- queries ---------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return _job(row)

    def list_jobs(
        self,
        *,
        state: JobState | Iterable[JobState] | None = None,
        series: str | None = None,
        study: str | None = None,
        rule: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Job]:
        """Jobs, newest first; ``series`` matches an Orthanc series id or a SeriesInstanceUID,
        ``study`` an Orthanc study id or a StudyInstanceUID."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE}")
        if offset < 0:
            raise ValueError("offset must not be negative")
        clauses: list[str] = []
        params: list[Any] = []
        if state is not None:
            states = [JobState(state)] if isinstance(state, str) else [JobState(s) for s in state]
            clauses.append(f"state IN ({', '.join('?' for _ in states)})")
            params += [s.value for s in states]
        if series is not None:
            clauses.append("(series_id = ? OR series_uid = ?)")
            params += [series, series]
        if study is not None:
            clauses.append("(study_id = ? OR study_uid = ?)")
            params += [study, study]
        if rule is not None:
            clauses.append("rule = ?")
            params.append(rule)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        query = f"SELECT * FROM jobs {where} ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?"  # noqa: S608
        with self._lock:
            rows = self._db.execute(query, (*params, limit, offset)).fetchall()
        return [_job(row) for row in rows]

    def counts_by_state(self) -> dict[JobState, int]:
        """Number of records in each state (every state present, zero included)."""
        counts = dict.fromkeys(JobState, 0)
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        for state, count in rows:
            counts[JobState(state)] = int(count)
        return counts

    def match_counts_by_rule(self) -> dict[str, int]:
        """How many series versions each rule has decided (run or ignore), by rule name."""
        with self._lock:
            rows = self._db.execute(
                "SELECT rule, COUNT(*) FROM jobs WHERE rule IS NOT NULL GROUP BY rule"
            ).fetchall()
        return {str(rule): int(count) for rule, count in rows}

    def counts_by_decider(self) -> dict[str, int]:
        """Records per deciding rule or guard (``no-rule-matched``, ``guard:...``, rule names)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT decided_by, COUNT(*) FROM jobs GROUP BY decided_by"
            ).fetchall()
        return {str(name): int(count) for name, count in rows}

    # --- outbox ----------------------------------------------------------------------------

    def pending_dispatch(self, now: datetime | None = None, *, limit: int = 50) -> list[Job]:
        """Queued jobs waiting to be sent whose time has come, most urgent first."""
        moment = _ts(now or self.clock())
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE dispatch_state = ? AND state = ? AND dispatch_after <= ? "
                "ORDER BY CASE priority WHEN 'high' THEN 0 WHEN 'normal' THEN 1 ELSE 2 END, "
                "dispatch_after, created_at LIMIT ?",
                (DispatchState.PENDING, JobState.QUEUED, moment, limit),
            ).fetchall()
        return [_job(row) for row in rows]

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
        moment = _ts(now or self.clock())
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
        return [_job(row) for row in rows]

    def follow_clock_jump(self, now: datetime, jump: timedelta) -> int:
        """Move in-flight jobs' times written before a wall-clock jump of ``jump`` into the new
        clock's frame (see :mod:`ainode_plugin.dispatcher`); returns how many jobs moved.

        Only times that cannot have been written after the jump move: after a forward jump,
        those up to ``now - jump``; after a backward one, those later than ``now``. Pending
        sends due later than ``now`` come earlier by a backward jump (never before ``now``).
        """
        moment, seconds = _ts(now), jump.total_seconds()
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
        now = _ts(self.clock())
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
                (_ts(until), error, job_id, DispatchState.PENDING),
            )
            return self._get_locked(db, job_id)

    def reschedule(self, job_id: str, until: datetime, reason: str) -> tuple[Job, bool]:
        """Put a stuck in-flight job back in the outbox, to be sent again after ``until``."""
        now = _ts(self.clock())
        with self._write() as db:
            before = self._get_locked(db, job_id)
            cursor = db.execute(
                "UPDATE jobs SET state = ?, dispatch_state = ?, dispatch_after = ?, "
                "dispatch_error = ?, updated_at = ?, attempt_id = ? "
                "WHERE id = ? AND state IN (?, ?)",
                (
                    JobState.QUEUED,
                    DispatchState.PENDING,
                    _ts(until),
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
        now = _ts(self.clock())
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
                    _statuses_json(closed),
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
        now = _ts(self.clock())
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
                            _statuses_json(_merged_statuses(job.destinations, update.destinations)),
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
                "destinations": _statuses_json(
                    _merged_statuses(job.destinations, update.destinations)
                ),
                "detail": json.dumps({**job.detail, **update.detail}, default=str),
            }
            if job.dispatch_state == DispatchState.PENDING:
                changes["dispatch_state"] = DispatchState.SENT.value  # it reached a worker
                changes["dispatch_error"] = None
            started = _ts(job.started_at) if job.started_at else now
            changes["started_at"] = started
            if update.state == JobState.DONE:
                changes.update(finished_at=now, error=None, dispatch_state=DispatchState.NONE.value)
            elif update.state == JobState.FAILED:
                changes.update(
                    finished_at=now,
                    error=update.error or "the worker reported a failure without a reason",
                    dispatch_state=DispatchState.NONE.value,
                    destinations=_statuses_json(
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
        now = _ts(self.clock())
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
                    _statuses_json(reopened),
                    uuid.uuid4().hex,  # the failed or cancelled attempt stays superseded
                    job_id,
                ),
            )
            return self._changed(db, job, self._get_locked(db, job_id))

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job; the worker's later reports are then ignored."""
        now = _ts(self.clock())
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
                (JobState.CANCELLED, DispatchState.NONE, now, now, _statuses_json(closed), job_id),
            )
            return self._changed(db, job, self._get_locked(db, job_id))

    # --- notifications ---------------------------------------------------------------------

    def _changed(self, db: sqlite3.Connection, before: Job | None, after: Job) -> Job:
        """Write the notifications a state change calls for, in the open transaction."""
        previous = before.state if before is not None else None
        if previous == after.state:
            return after
        now = _ts(self.clock())
        for target in after.notify:
            if after.state not in target.events:
                continue
            notification_id = uuid.uuid4().hex
            payload = NotificationPayload.for_job(after, previous, notification_id)
            db.execute(
                "INSERT INTO notifications (id, job_id, webhook, event, state, next_attempt_at, "
                "created_at, updated_at, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    notification_id,
                    after.id,
                    target.webhook,
                    after.state.value,
                    NotificationState.PENDING,
                    now,
                    now,
                    now,
                    payload.model_dump_json(),
                ),
            )
            self._enqueued = True
        return after

    def due_notifications(
        self, now: datetime | None = None, *, limit: int = 50
    ) -> list[Notification]:
        """Pending notifications whose time has come, each the oldest of its (job, webhook)
        still pending, so one receiver hears about one job in order."""
        moment = _ts(now or self.clock())
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM notifications AS n WHERE n.state = ? AND n.next_attempt_at <= ? "
                "AND NOT EXISTS (SELECT 1 FROM notifications AS e WHERE e.job_id = n.job_id "
                "AND e.webhook = n.webhook AND e.state = ? AND e.seq < n.seq) "
                "ORDER BY n.next_attempt_at, n.seq LIMIT ?",
                (NotificationState.PENDING, moment, NotificationState.PENDING, limit),
            ).fetchall()
        return [_notification(row) for row in rows]

    def next_notification_at(self) -> datetime | None:
        """When the next notification :meth:`due_notifications` would give is due (None:
        nothing pending)."""
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(n.next_attempt_at) FROM notifications AS n WHERE n.state = ? "
                "AND NOT EXISTS (SELECT 1 FROM notifications AS e WHERE e.job_id = n.job_id "
                "AND e.webhook = n.webhook AND e.state = ? AND e.seq < n.seq)",
                (NotificationState.PENDING, NotificationState.PENDING),
            ).fetchone()
        return _dt(row[0])

    def postpone_notifications(self, webhook: str, until: datetime) -> int:
        """Hold a failing webhook's pending notifications until ``until`` (no attempt used)."""
        with self._write() as db:
            cursor = db.execute(
                "UPDATE notifications SET next_attempt_at = ? "
                "WHERE webhook = ? AND state = ? AND next_attempt_at < ?",
                (_ts(until), webhook, NotificationState.PENDING, _ts(until)),
            )
        return int(cursor.rowcount)

    def notification_delivered(self, notification_id: str, status: int) -> Notification:
        now = _ts(self.clock())
        return self._notification_attempt(
            notification_id,
            "state = ?, last_status = ?, last_error = NULL, delivered_at = ?, "
            "next_attempt_at = NULL",
            (NotificationState.DELIVERED, status, now),
        )

    def notification_retry(
        self, notification_id: str, until: datetime, error: str, status: int | None
    ) -> Notification:
        """An attempt failed; try again after ``until``."""
        return self._notification_attempt(
            notification_id,
            "next_attempt_at = ?, last_status = ?, last_error = ?",
            (_ts(until), status, error),
        )

    def notification_failed(
        self, notification_id: str, error: str, status: int | None, *, attempted: bool = True
    ) -> Notification:
        """Give up on a notification with the reason (``attempted``: this try counts)."""
        return self._notification_attempt(
            notification_id,
            "state = ?, next_attempt_at = NULL, last_status = ?, last_error = ?",
            (NotificationState.FAILED, status, error),
            attempted=attempted,
        )

    def _notification_attempt(
        self,
        notification_id: str,
        assignments: str,
        values: tuple[Any, ...],
        *,
        attempted: bool = True,
    ) -> Notification:
        now = _ts(self.clock())
        counted = "attempts = attempts + 1, " if attempted else ""
        with self._write() as db:
            db.execute(
                f"UPDATE notifications SET {counted}{assignments}, updated_at = ? "  # noqa: S608
                "WHERE id = ? AND state = ?",
                (*values, now, notification_id, NotificationState.PENDING),
            )
            row = db.execute(
                "SELECT * FROM notifications WHERE id = ?", (notification_id,)
            ).fetchone()
        if row is None:
            raise JobStoreError(f"no notification with id {notification_id!r}")
        return _notification(row)

    def list_notifications(
        self,
        *,
        job_id: str | None = None,
        state: NotificationState | None = None,
        webhook: str | None = None,
        limit: int = 100,
    ) -> list[Notification]:
        """Notifications, oldest first (a job's story in order), filtered as asked."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE}")
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("job_id", job_id), ("state", state), ("webhook", webhook)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(str(value))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        query = f"SELECT * FROM notifications {where} ORDER BY seq LIMIT ?"  # noqa: S608
        with self._lock:
            rows = self._db.execute(query, (*params, limit)).fetchall()
        return [_notification(row) for row in rows]

    def notification_counts(self) -> dict[NotificationState, int]:
        counts = dict.fromkeys(NotificationState, 0)
        with self._lock:
            rows = self._db.execute(
                "SELECT state, COUNT(*) FROM notifications GROUP BY state"
            ).fetchall()
        for state, count in rows:
            counts[NotificationState(state)] = int(count)
        return counts

    def _get_locked(self, db: sqlite3.Connection, job_id: str) -> Job:
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return _job(row)


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


def _statuses_json(statuses: Iterable[DestinationStatus]) -> str:
    return json.dumps([status.model_dump(mode="json") for status in statuses])


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


def _job(row: sqlite3.Row) -> Job:
    created = _dt(row["created_at"])
    updated = _dt(row["updated_at"])
    if created is None or updated is None:  # NOT NULL columns
        raise JobStoreError(f"job {row['id']} has no creation time")
    return Job(
        id=row["id"],
        dedup_key=row["dedup_key"],
        series_id=row["series_id"],
        series_uid=row["series_uid"],
        study_id=row["study_id"],
        study_uid=row["study_uid"],
        fingerprint=row["fingerprint"],
        instance_count=row["instance_count"],
        trigger=row["trigger_level"],
        rule=row["rule"],
        decided_by=row["decided_by"],
        reason=row["reason"],
        pipeline=row["pipeline"],
        state=JobState(row["state"]),
        attempts=row["attempts"],
        error=row["error"],
        priority=row["priority"],
        queue=row["queue"],
        created_at=created,
        updated_at=updated,
        started_at=_dt(row["started_at"]),
        finished_at=_dt(row["finished_at"]),
        dispatch_state=DispatchState(row["dispatch_state"]),
        dispatch_after=_dt(row["dispatch_after"]),
        sent_at=_dt(row["sent_at"]),
        dispatch_error=row["dispatch_error"],
        worker=row["worker"],
        outputs=json.loads(row["outputs"]),
        destinations=[DestinationStatus.model_validate(s) for s in json.loads(row["destinations"])],
        detail=json.loads(row["detail"]),
        request=JobRequest.model_validate_json(row["request"]) if row["request"] else None,
        notify=[NotifyTarget.model_validate(t) for t in json.loads(row["notify"])],
        attempt_id=row["attempt_id"],
    )


def _notification(row: sqlite3.Row) -> Notification:
    created = _dt(row["created_at"])
    updated = _dt(row["updated_at"])
    if created is None or updated is None:  # NOT NULL columns
        raise JobStoreError(f"notification {row['id']} has no creation time")
    return Notification(
        id=row["id"],
        seq=row["seq"],
        job_id=row["job_id"],
        webhook=row["webhook"],
        event=JobState(row["event"]),
        state=NotificationState(row["state"]),
        attempts=row["attempts"],
        next_attempt_at=_dt(row["next_attempt_at"]),
        last_status=row["last_status"],
        last_error=row["last_error"],
        created_at=created,
        updated_at=updated,
        delivered_at=_dt(row["delivered_at"]),
        payload=NotificationPayload.model_validate_json(row["payload"]),
    )
