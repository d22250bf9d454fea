"""The notification outbox: the webhook calls a job's state changes call for, until delivered.

Every state change of a job whose rule has ``notify:`` writes one ``notifications`` row per
interested webhook in the transaction that changes the state, with the payload as it was at
that moment. :mod:`ainode_plugin.webhooks` delivers them later on its own thread, so a slow
receiver never delays a job and a restart loses none.
"""

from __future__ import annotations

import sqlite3
import uuid
from datetime import datetime
from typing import Any

from ainode_plugin.jobstore.records import (
    MAX_PAGE,
    Job,
    JobStoreError,
    Notification,
    NotificationPayload,
    NotificationState,
)
from ainode_plugin.jobstore.rows import from_ts, notification_from_row, to_ts
from ainode_plugin.jobstore.store import StoreFile


class NotificationOutbox(StoreFile):
    """The store's notification rows: written by state changes, read and settled by the
    webhook sender."""

    def _changed(self, db: sqlite3.Connection, before: Job | None, after: Job) -> Job:
        """Write the notifications a state change calls for, in the open transaction."""
        previous = before.state if before is not None else None
        if previous == after.state:
            return after
        now = to_ts(self.clock())
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
        moment = to_ts(now or self.clock())
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM notifications AS n WHERE n.state = ? AND n.next_attempt_at <= ? "
                "AND NOT EXISTS (SELECT 1 FROM notifications AS e WHERE e.job_id = n.job_id "
                "AND e.webhook = n.webhook AND e.state = ? AND e.seq < n.seq) "
                "ORDER BY n.next_attempt_at, n.seq LIMIT ?",
                (NotificationState.PENDING, moment, NotificationState.PENDING, limit),
            ).fetchall()
        return [notification_from_row(row) for row in rows]

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
        return from_ts(row[0])

    def postpone_notifications(self, webhook: str, until: datetime) -> int:
        """Hold a failing webhook's pending notifications until ``until`` (no attempt used)."""
        with self._write() as db:
            cursor = db.execute(
                "UPDATE notifications SET next_attempt_at = ? "
                "WHERE webhook = ? AND state = ? AND next_attempt_at < ?",
                (to_ts(until), webhook, NotificationState.PENDING, to_ts(until)),
            )
        return int(cursor.rowcount)

    def notification_delivered(self, notification_id: str, status: int) -> Notification:
        now = to_ts(self.clock())
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
            (to_ts(until), status, error),
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
        now = to_ts(self.clock())
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
        return notification_from_row(row)

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
        return [notification_from_row(row) for row in rows]

    def notification_counts(self) -> dict[NotificationState, int]:
        counts = dict.fromkeys(NotificationState, 0)
        found = self._count_by("notifications", "state")
        counts.update({NotificationState(k): n for k, n in found.items()})
        return counts
