"""Fixtures for the job-store and dispatcher tests: a clock, a store, a real redis-server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ainode_plugin.jobstore import JobStore
from jobstore_helpers import Clock, RedisServer
from nodeharness import free_port


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[JobStore]:
    with JobStore(tmp_path / "jobs.sqlite3", clock=clock) as job_store:
        yield job_store


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """Started; tests may stop and start it again."""
    server = RedisServer(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def stopped_redis_server() -> Iterator[RedisServer]:
    """A port where a redis-server is not (yet) running."""
    server = RedisServer(free_port())
    yield server
    server.stop()
