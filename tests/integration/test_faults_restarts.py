"""Parts of the node killed and restarted under load: Redis with jobs queued and running, Orthanc
with a series half received.

One supervised node for the module: a killed part is started again by the supervisor, as under
`ainode up`; so is a Celery worker that exits when Redis goes mid-acknowledgement (kombu's
"Unrecoverable error: 'NoneType' object has no attribute 'hostname'"). A short sweep and short
deadlines send a job lost with a part again within the test. Each test asserts that every
series ends with exactly one job, done, and exactly one set of results in Orthanc: no job
lost, none duplicated.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from nodeharness import ONNX_RULES, Node, start_node, wait_for, write_phantom, write_rules

from ainode.phantoms import SeriesIds

pytestmark = [pytest.mark.integration, pytest.mark.fault]

RUN_TIMEOUT_S = 180.0


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    folder = tmp_path_factory.mktemp("restarts")
    rules = write_rules(folder / "rules.yaml", ONNX_RULES)
    started = start_node(
        folder / "node",
        supervised=True,
        routing_rules=rules,
        stable_age_s=3,  # time to stop Orthanc before the half series counts as complete
        dispatch_sweep_s=1.0,
        job_queued_deadline_s=30.0,  # a job lost from the broker is sent again after 30 s
        job_running_deadline_s=30.0,
        job_retry_backoff_s=1.0,
    )
    yield started
    started.stop()


def assert_done_once(node: Node, ids: SeriesIds) -> dict[str, object]:
    """The series' one job ended done, with one SEG and one RTSTRUCT in Orthanc."""
    job = node.wait_for_run(ids.series_uid, timeout_s=RUN_TIMEOUT_S)
    assert job["state"] == "done", job["error"]
    assert [j["id"] for j in node.runs(ids.series_uid)] == [job["id"]], "a second job"
    assert len(node.study_series(ids.study_uid, "SEG")) == 1
    assert len(node.study_series(ids.study_uid, "RTSTRUCT")) == 1
    return job


def test_redis_killed_with_jobs_queued_and_running_every_job_ends_done_once(
    node: Node, tmp_path: Path
) -> None:
    broker = redis.Redis(port=node.settings.redis_port)
    assert broker.config_get("appendonly") == {"appendonly": "yes"}, "queued jobs need the AOF"
    assert broker.config_get("appendfsync") == {"appendfsync": "everysec"}
    series = []
    for index in range(5):
        # Big enough that the first job still runs while the others wait in the queue.
        paths, ids = write_phantom(tmp_path / f"s{index}", 48, size=96, seed=index)
        node.storescu(paths)
        series.append(ids)

    def running_and_waiting() -> bool:
        states = [j["state"] for ids in series for j in node.runs(ids.series_uid)]
        return "running" in states and states.count("queued") >= 2

    wait_for(running_and_waiting, 120, 0.1, "one job running and others queued")
    wait_for(lambda: broker.llen("ainode.default") >= 1, 10, 0.1, "a job waiting in Redis")
    node.kill("redis")  # no shutdown save: only the AOF (fsync each second) holds
    jobs = [assert_done_once(node, ids) for ids in series]
    assert all(int(str(job["attempts"])) <= 2 for job in jobs), [j["attempts"] for j in jobs]
    assert node.json("/ai/health")["broker"]["healthy"]


def test_orthanc_stopped_with_a_series_half_received_makes_one_job_for_the_whole_series(
    node: Node, tmp_path: Path
) -> None:
    paths, ids = write_phantom(tmp_path / "ct", 20, seed=31)
    node.storescu(paths[:12])  # enough to match the rule (10 or more images) on its own
    node.kill("orthanc")  # within the 3 s before the series is stable
    node.storescu(paths[12:])  # the modality sends the rest
    job = assert_done_once(node, ids)
    assert job["instance_count"] == 20, "the job is for the whole series, not the half"
    assert len(node.json(f"/series/{node.lookup(ids.series_uid)}/instances")) == 20
