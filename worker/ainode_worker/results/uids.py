"""Deterministic result UIDs: the heart of "exactly once".

A retried job (worker crash, redelivered Celery message, STABLE_SERIES fired twice) writes
objects with the very same SeriesInstanceUID and SOPInstanceUID as the first attempt, so a PACS
or Orthanc that already holds them keeps one copy instead of growing duplicates. The UID is
``2.25.<decimal of 128 bits of SHA-256>`` (PS3.5 B.2: UUID-derived root), at most 44 characters.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum

from ainode.jobs import OutputKind

from .provenance import Provenance

_NAMESPACE = "ainode-result-uid-v1"
_SEPARATOR = "\x1f"  # cannot appear in a UID or a rule name typed in YAML


class UidRole(StrEnum):
    SERIES = "series"
    INSTANCE = "instance"


@dataclass(frozen=True)
class ResultUids:
    series_uid: str
    instance_uid: str


def result_uid(
    *,
    source_series_uid: str,
    rule: str,
    pipeline: str,
    model_version: str,
    kind: OutputKind,
    role: UidRole,
) -> str:
    """One UID, a pure function of what produced the result and which part of it is named."""
    return hashed_uid(source_series_uid, rule, pipeline, model_version, kind.value, role.value)


def hashed_uid(*parts: str) -> str:
    """``2.25.<128 bits of SHA-256 of the parts>``: equal parts, equal UID; else unrelated."""
    text = _SEPARATOR.join((_NAMESPACE, *parts))
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def result_uids(provenance: Provenance, source_series_uid: str, kind: OutputKind) -> ResultUids:
    """The series and instance UIDs of the one result object of ``kind`` for this job."""

    def uid(role: UidRole) -> str:
        return result_uid(
            source_series_uid=source_series_uid,
            rule=provenance.rule,
            pipeline=provenance.pipeline,
            model_version=provenance.model_version,
            kind=kind,
            role=role,
        )

    return ResultUids(series_uid=uid(UidRole.SERIES), instance_uid=uid(UidRole.INSTANCE))
