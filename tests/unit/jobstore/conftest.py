"""Fixtures for the job-store and dispatcher tests: a clock and a store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ainode_plugin.jobstore import JobStore
from jobstore_helpers import Clock


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[JobStore]:
    with JobStore(tmp_path / "jobs.sqlite3", clock=clock) as job_store:
        yield job_store
