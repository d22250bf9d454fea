"""JobReporter against a peer standing where the plugin's ``/ai/jobs/<id>/updates`` is.

A report the node answers with a 5xx, or not at all, is sent again (urllib3's
``Retry`` on its session); a refusal (4xx) is not; after the last try the job goes on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ainode_worker.jobrunner import JobReporter, ReportReceipt
from httppeer import ScriptedPeer

from ainode.jobs import JobState, JobUpdate
from ainode.settings import Settings

JOB_ID = "0123456789abcdef0123456789abcdef"
RECEIPT = b'{"applied": true, "state": "running", "current": false}'


@pytest.fixture
def node(request: pytest.FixtureRequest) -> Iterator[ScriptedPeer]:
    server = ScriptedPeer(request.param, body=RECEIPT)
    yield server
    server.close()


def _report(node: ScriptedPeer, tmp_path: Path) -> ReportReceipt | None:
    settings = Settings(data_dir=tmp_path, orthanc_url=node.url)
    return JobReporter(settings).report(JobUpdate(job_id=JOB_ID, state=JobState.RUNNING))


@pytest.mark.parametrize("node", [[503, 0, 200]], indirect=True)
def test_a_report_is_sent_again_until_the_node_takes_it(node: ScriptedPeer, tmp_path: Path) -> None:
    receipt = _report(node, tmp_path)
    assert receipt is not None
    assert (receipt.applied, receipt.state, receipt.current) == (True, JobState.RUNNING, False)
    assert node.requests == [f"POST /ai/jobs/{JOB_ID}/updates HTTP/1.1".encode()] * 3


@pytest.mark.parametrize("node", [[500]], indirect=True)
def test_a_node_that_keeps_failing_is_given_up_on(node: ScriptedPeer, tmp_path: Path) -> None:
    assert _report(node, tmp_path) is None
    assert len(node.requests) == 3  # the first try and two more


@pytest.mark.parametrize("node", [[409, 200]], indirect=True)
def test_a_refused_report_is_not_sent_again(node: ScriptedPeer, tmp_path: Path) -> None:
    assert _report(node, tmp_path) is None
    assert len(node.requests) == 1
