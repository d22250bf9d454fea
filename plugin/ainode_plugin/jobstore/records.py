"""What the job store holds: jobs, notifications and their states, and the store's errors.

The webhook payload lives here too: the store writes it in the transaction that changes a job's
state, and :mod:`ainode_plugin.webhooks` only sends it.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ainode.jobs import DestinationStatus, JobRequest, JobState

DB_FILENAME = "ai-jobs.sqlite3"
MAX_PAGE = 1000


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


class OutputRef(BaseModel):
    """One result the job produced, by DICOM identity."""

    kind: str = Field(description="SEG, RTSTRUCT, SR, ...")
    sop_instance_uid: str


class NotificationPayload(BaseModel):
    """The JSON body of a webhook call (the contract with receivers: add fields, never rename)."""

    delivery_id: str = Field(description="unique per notification; the same on every retry")
    event: str = Field(description='"job.<state>", e.g. "job.done"')
    occurred_at: datetime
    job_id: str
    state: JobState
    previous_state: JobState | None
    rule: str | None
    pipeline: str | None
    series_uid: str
    study_uid: str
    series_id: str = Field(description="Orthanc id of the series")
    study_id: str = Field(description="Orthanc id of the study")
    attempts: int = Field(description="times the job was handed to a worker so far")
    outputs: list[OutputRef] = Field(description="results written, by SOP Instance UID")
    output_instances: list[str] = Field(description="Orthanc ids of results stored in this node")
    error: str | None = Field(description="why the job failed (failed only)")

    @classmethod
    def for_job(cls, job: Job, previous: JobState | None, delivery_id: str) -> NotificationPayload:
        results = job.detail.get("results")
        outputs = (
            [OutputRef(kind=str(k), sop_instance_uid=str(v)) for k, v in results.items() if v]
            if isinstance(results, dict)
            else []
        )
        return cls(
            delivery_id=delivery_id,
            event=f"job.{job.state.value}",
            occurred_at=job.updated_at,
            job_id=job.id,
            state=job.state,
            previous_state=previous,
            rule=job.rule,
            pipeline=job.pipeline,
            series_uid=job.series_uid,
            study_uid=job.study_uid,
            series_id=job.series_id,
            study_id=job.study_id,
            attempts=job.attempts,
            outputs=outputs,
            output_instances=list(job.outputs),
            error=job.error if job.state == JobState.FAILED else None,
        )


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
