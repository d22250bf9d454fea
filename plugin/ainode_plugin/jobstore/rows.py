"""Times and rows as SQLite holds them, and back: one mapper for every table.

Times are stored as Unix seconds (REAL), structured values as JSON text (never pickles); a row
becomes its record by turning those columns back and letting the record's model validate it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from ainode.jobs import DestinationStatus
from ainode_plugin.jobstore.records import Job, Notification

M = TypeVar("M", bound=BaseModel)


def to_ts(moment: datetime) -> float:
    """A store time from an aware datetime (naive ones are refused: their zone is a guess)."""
    if moment.tzinfo is None:
        raise ValueError("job store times must be timezone-aware (use ainode.jobs.utcnow)")
    return moment.timestamp()


def from_ts(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def statuses_json(statuses: Iterable[DestinationStatus]) -> str:
    return json.dumps([status.model_dump(mode="json") for status in statuses])


@dataclass(frozen=True)
class RowMapper(Generic[M]):
    """How one table's rows become its records: which columns hold times or JSON, and the
    columns whose field has another name."""

    model: type[M]
    times: frozenset[str]
    json: frozenset[str] = frozenset()
    renames: Mapping[str, str] = field(default_factory=dict)

    def __call__(self, row: sqlite3.Row) -> M:
        values: dict[str, Any] = {}
        for column in row.keys():  # noqa: SIM118 (sqlite3.Row is not a mapping)
            value = row[column]
            if value is not None and column in self.times:
                value = from_ts(value)
            elif value is not None and column in self.json:
                value = json.loads(value)
            values[self.renames.get(column, column)] = value
        return self.model.model_validate(values)


job_from_row = RowMapper(
    Job,
    times=frozenset(
        ("created_at", "updated_at", "started_at", "finished_at", "dispatch_after", "sent_at")
    ),
    json=frozenset(("outputs", "destinations", "detail", "request", "notify")),
    renames={"trigger_level": "trigger"},
)
notification_from_row = RowMapper(
    Notification,
    times=frozenset(("next_attempt_at", "created_at", "updated_at", "delivered_at")),
    json=frozenset(("payload",)),
)
