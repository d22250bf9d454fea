"""Routing under faults: the broker away while series arrive, the worker killed mid-job.

Each test has a node of its own and asserts that every series ends with exactly one job,
done, and one set of results in Orthanc.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from nodeharness import ONNX_RULES, start_node, wait_for, write_phantom, write_rules

pytestmark = [pytest.mark.integration, pytest.mark.fault]


def test_series_pushed_while_redis_is_down_all_complete_once_it_is_back(tmp_path: Path) -> None:
    """Five series complete; a sixth, cancelled during the outage, never runs."""
    rules = write_rules(tmp_path / "rules.yaml", ONNX_RULES)
    node = start_node(tmp_path / "node", routing_rules=rules)
    try:
        redis = node.service("redis")
        redis.stop()
        series = []
        for index in range(6):
            paths, ids = write_phantom(tmp_path / f"s{index}", 12, seed=index)
            node.storescu(paths)
            series.append(ids)
        jobs = [node.wait_for_run(ids.series_uid, ("queued",)) for ids in series]
        assert {job["dispatch_state"] for job in jobs} == {"pending"}, "no broker to send to"
        wait_for(
            lambda: any("broker unavailable" in (j["dispatch_error"] or "") for j in node.jobs()),
            30,
            0.3,
            "the dispatcher to find the broker away",
        )
        *completing, cancelled = series
        answer = node.post(f"/ai/jobs/{jobs[-1]['id']}/cancel")
        assert answer.status_code == 200 and answer.json()["state"] == "cancelled", answer.text
        redis.start()
        redis.wait_ready()
        for ids in completing:
            job = node.wait_for_run(ids.series_uid, timeout_s=120)
            assert job["state"] == "done", job["error"]
            assert job["attempts"] == 1, "a broker outage uses up no attempt"
            assert len(node.study_series(ids.study_uid, "SEG")) == 1
        (job,) = node.runs(cancelled.series_uid)
        assert (job["state"], job["attempts"], job["outputs"]) == ("cancelled", 0, [])
        assert node.study_series(cancelled.study_uid, "SEG") == []
    finally:
        node.stop()


def test_a_job_whose_worker_is_killed_completes_once_on_the_restarted_worker(
    tmp_path: Path,
) -> None:
    rules = write_rules(tmp_path / "rules.yaml", ONNX_RULES)
    node = start_node(
        tmp_path / "node",
        supervised=True,  # restarts the killed worker, as `ainode up` does
        routing_rules=rules,
        dispatch_sweep_s=1.0,
        job_running_deadline_s=20.0,  # no news from a running job for 20 s: send it again
        job_retry_backoff_s=1.0,
    )
    try:
        # Large enough that the job still runs a moment after it reports "running".
        paths, ids = write_phantom(tmp_path / "ct", 96, size=128, seed=7)
        node.storescu(paths)
        running = wait_for(
            lambda: next((j for j in node.runs(ids.series_uid) if j["state"] != "queued"), None),
            60,
            0.05,
            "the job to start",
        )
        assert running["state"] == "running", "the job ended before the worker could be killed"
        node.kill("worker")
        job = node.wait_for_run(ids.series_uid, timeout_s=180)
        assert job["state"] == "done", job["error"]
        assert job["id"] == running["id"]
        assert job["attempts"] == 2, "sent once, then once more by the sweeper"
        assert [j["id"] for j in node.runs(ids.series_uid)] == [job["id"]]
        assert len(node.study_series(ids.study_uid, "SEG")) == 1
        assert len(node.study_series(ids.study_uid, "RTSTRUCT")) == 1
    finally:
        node.stop()
