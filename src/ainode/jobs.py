"""The job contract shared by the plugin (which records and dispatches jobs) and the worker.

A job is one decision about one series (or study) under one rule. The plugin is the only writer
of job records; the worker receives a :class:`JobRequest` through Celery and reports progress
back as :class:`JobUpdate` records. Both are plain pydantic models so they serialise as JSON:
a schema change never breaks a message already in a queue the way a pickle would.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class JobState(StrEnum):
    IGNORED = "ignored"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in {JobState.IGNORED, JobState.DONE, JobState.FAILED, JobState.CANCELLED}


class OutputKind(StrEnum):
    SEG = "SEG"  # BINARY DICOM-SEG, one segment per label
    SEG_LABELMAP = "SEG_LABELMAP"
    SEG_FRACTIONAL = "SEG_FRACTIONAL"
    RTSTRUCT = "RTSTRUCT"
    SR = "SR"  # TID 1500 measurement report: volume per label
    NIFTI = "NIFTI"  # research export, never sent to a PACS


class DestinationKind(StrEnum):
    ORTHANC = "orthanc"  # store back into this node's Orthanc
    DICOM = "dicom"  # C-STORE to a remote modality named in settings
    DICOMWEB = "dicomweb"  # STOW-RS to a DICOMweb server named in settings


class Destination(BaseModel):
    kind: DestinationKind
    name: str = "local"


class DestinationStatus(BaseModel):
    destination: Destination
    state: str = "pending"  # pending | sent | failed
    attempts: int = 0
    error: str | None = None


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobRequest(BaseModel):
    """What the worker needs to run a job; sent as the Celery task's only argument."""

    job_id: str
    series_id: str = Field(description="Orthanc id of the (first) input series")
    series_uid: str
    study_uid: str
    rule: str
    pipeline: str
    outputs: list[OutputKind] = Field(default_factory=lambda: [OutputKind.SEG])
    destinations: list[Destination] = Field(
        default_factory=lambda: [Destination(kind=DestinationKind.ORTHANC)]
    )
    params: dict[str, Any] = Field(default_factory=dict)
    extra_series: dict[str, str] = Field(
        default_factory=dict, description="channel name -> Orthanc series id, for multi-series"
    )
    attempt: str | None = Field(
        default=None,
        description="this sending's id (also its Celery task id); a worker holding an attempt "
        "the node no longer counts as current discards it",
    )


class JobUpdate(BaseModel):
    """A progress report from the worker to the plugin's job store."""

    job_id: str
    state: JobState
    error: str | None = None
    outputs: list[str] = Field(default_factory=list, description="Orthanc instance ids stored")
    destinations: list[DestinationStatus] = Field(default_factory=list)
    worker: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)
    attempt: str | None = Field(default=None, description="the JobRequest.attempt reported on")
