"""The dispatcher's retry policy as the operator sets it (``job_*`` settings)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from ainode_plugin.dispatcher import RetryPolicy
from pydantic import ValidationError

from ainode.settings import Settings


def test_default_settings_give_the_default_policy(tmp_path: Path) -> None:
    assert RetryPolicy.from_settings(Settings(data_dir=tmp_path)) == RetryPolicy()


def test_settings_set_deadlines_attempts_and_backoff(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        job_max_attempts=5,
        job_queued_deadline_s=90,
        job_running_deadline_s=2.5,
        job_retry_backoff_s=1,
    )
    policy = RetryPolicy.from_settings(settings)
    assert policy.max_attempts == 5
    assert policy.queued_deadline == timedelta(seconds=90)
    assert policy.running_deadline == timedelta(seconds=2.5)
    assert [policy.backoff(n).total_seconds() for n in (1, 2, 3)] == [1, 2, 4]


@pytest.mark.parametrize(
    "field", ["job_running_deadline_s", "job_queued_deadline_s", "dispatch_sweep_s"]
)
def test_durations_must_be_positive(tmp_path: Path, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings.model_validate({"data_dir": tmp_path, field: 0})
