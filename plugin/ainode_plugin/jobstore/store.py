"""The jobs file: one SQLite connection, one lock, short write transactions, and the queries.

Why SQLite: Orthanc's callbacks arrive on several threads and may repeat (``STABLE_SERIES`` can
fire twice; a modality re-sends a series; the node restarts mid-job). One file under the data
directory, in WAL mode, with a UNIQUE dedup key, makes "one decision per series version" a
database guarantee rather than a hope, and survives restarts.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Self

from ainode.jobs import JobState, utcnow
from ainode_plugin.jobstore.records import DB_FILENAME, MAX_PAGE, Job, JobNotFound
from ainode_plugin.jobstore.rows import job_from_row, to_ts
from ainode_plugin.jobstore.schema import migrate

log = logging.getLogger("ainode_plugin.jobstore")


class StoreFile:
    """Thread-safe access to the jobs file; :class:`~ainode_plugin.jobstore.JobStore` adds the
    changes."""

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
        with self._write() as db:
            migrate(db, self.path, to_ts(self.clock()))

    @classmethod
    def in_data_dir(cls, data_dir: Path | str, *, clock: Callable[[], datetime] = utcnow) -> Self:
        return cls(Path(data_dir) / DB_FILENAME, clock=clock)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

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

    # --- queries ---------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return job_from_row(row)

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
        return [job_from_row(row) for row in rows]

    def counts_by_state(self) -> dict[JobState, int]:
        """Number of records in each state (every state present, zero included)."""
        counts = dict.fromkeys(JobState, 0)
        counts.update({JobState(k): n for k, n in self._count_by("jobs", "state").items()})
        return counts

    def match_counts_by_rule(self) -> dict[str, int]:
        """How many series versions each rule has decided (run or ignore), by rule name."""
        return self._count_by("jobs", "rule")

    def counts_by_decider(self) -> dict[str, int]:
        """Records per deciding rule or guard (``no-rule-matched``, ``guard:...``, rule names)."""
        return self._count_by("jobs", "decided_by")

    def _count_by(self, table: str, column: str) -> dict[str, int]:
        """Rows of ``table`` per value of ``column`` (fixed names; rows without one left out)."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {column}, COUNT(*) FROM {table} "  # noqa: S608 (fixed names)
                f"WHERE {column} IS NOT NULL GROUP BY {column}"
            ).fetchall()
        return {str(value): int(count) for value, count in rows}

    def _get_locked(self, db: sqlite3.Connection, job_id: str) -> Job:
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return job_from_row(row)
