"""The jobs file's tables, versioned: each migration upgrades an older file in place."""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from ainode_plugin.jobstore.records import SchemaTooNew

log = logging.getLogger("ainode_plugin.jobstore")


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


def migrate(db: sqlite3.Connection, path: Path, applied_at: float) -> None:
    """Bring the file to :data:`SCHEMA_VERSION`, inside the caller's open transaction."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        "version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    current = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
    version = int(current.fetchone()[0])
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"{path} has job-store schema version {version}, newer than this "
            f"node's {SCHEMA_VERSION}; upgrade the node or move the file aside"
        )
    for migration in MIGRATIONS:
        if migration.version <= version:
            continue
        for statement in migration.statements:
            db.execute(statement)
        db.execute(
            "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?)",
            (migration.version, migration.description, applied_at),
        )
        log.info("job store %s migrated to schema %d", path, migration.version)
