"""The durable record of every routing decision and of each job's life, in one SQLite file.

Rooms: :mod:`.records` (jobs, notifications, their states, the webhook payload),
:mod:`.schema` (tables and migrations), :mod:`.rows` (times and rows to records),
:mod:`.store` (the file, its lock and the queries), :mod:`.outbox` (the notification outbox)
and :mod:`.jobs` (decisions and state changes; :class:`JobStore` is the whole store).

Records are columns plus JSON (never pickles), and the schema is versioned by the
``schema_migrations`` table, so a newer node can upgrade an older file in place.
"""

from ainode_plugin.jobstore.jobs import JobStore, dedup_key
from ainode_plugin.jobstore.records import (
    DB_FILENAME,
    MAX_PAGE,
    DispatchState,
    InvalidTransition,
    Job,
    JobNotFound,
    JobStoreError,
    Notification,
    NotificationPayload,
    NotificationState,
    NotifyTarget,
    OutputRef,
    SchemaTooNew,
    is_current_attempt,
)
from ainode_plugin.jobstore.schema import MIGRATIONS, SCHEMA_VERSION, Migration

__all__ = [
    "DB_FILENAME",
    "MAX_PAGE",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "DispatchState",
    "InvalidTransition",
    "Job",
    "JobNotFound",
    "JobStore",
    "JobStoreError",
    "Migration",
    "Notification",
    "NotificationPayload",
    "NotificationState",
    "NotifyTarget",
    "OutputRef",
    "SchemaTooNew",
    "dedup_key",
    "is_current_attempt",
]
