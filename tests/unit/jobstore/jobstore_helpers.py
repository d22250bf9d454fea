"""Helpers for the job-store and dispatcher tests: a clock, a store, series facts, decisions.

The ``clock`` and ``store`` fixtures are here, not in a conftest, so that the tests in
``tests/integration/test_dispatcher_broker.py`` import the same ones.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType

import pytest
from ainode_plugin.facts import SeriesFacts, content_fingerprint
from ainode_plugin.jobstore import JobStore

from ainode.routing import Decision, RuleSet, normalize_attributes, parse_rules

START = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)

RULES = parse_rules(
    textwrap.dedent(
        """\
        version: 1
        mode: all-match
        rules:
          - name: ct-demo
            when: {Modality: CT, InstanceCount: {ge: 10}}
            pipeline: demo-phantom
            outputs: [SEG, RTSTRUCT]
          - name: chest-urgent
            when: {Modality: CT, BodyPartExamined: CHEST}
            pipeline: lungs
            destinations: [orthanc, dicom:PACS]
            priority: high
            pool: gpu
            params: {fold: 1}
        """
    )
)


class Clock:
    """A clock the test moves by hand, so deadlines pass without sleeping."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def series_facts(
    number: int = 1,
    *,
    modality: str = "CT",
    body_part: str = "ABDOMEN",
    instances: int = 12,
    extra_instances: int = 0,
) -> SeriesFacts:
    """Facts of series ``number``; ``extra_instances`` models the same series grown later."""
    ids = [f"series{number}-instance{i}" for i in range(instances + extra_instances)]
    attributes = normalize_attributes(
        {
            "Modality": modality,
            "BodyPartExamined": body_part,
            "InstanceCount": len(ids),
            "SeriesInstanceUID": f"1.2.3.{number}",
            "StudyInstanceUID": "1.2.3",
        }
    )
    return SeriesFacts(
        series_id=f"orthanc-series-{number}",
        study_id="orthanc-study-1",
        series_uid=f"1.2.3.{number}",
        study_uid="1.2.3",
        instance_count=len(ids),
        fingerprint=content_fingerprint(ids),
        attributes=MappingProxyType(attributes),
    )


def decide(facts: SeriesFacts, rules: RuleSet = RULES) -> list[Decision]:
    return rules.evaluate(facts)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[JobStore]:
    with JobStore(tmp_path / "jobs.sqlite3", clock=clock) as job_store:
        yield job_store
