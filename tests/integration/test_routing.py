"""Routing on real nodes: which series get a job, once, and what happens around Orthanc restarts.

Every node here routes CT series of 10 or more images to the small ONNX demo model (rules of
the test's own, see ``nodeharness.ONNX_RULES``), so a job runs in about a second.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
from nodeharness import (
    ONNX_RULES,
    Node,
    settings_env,
    start_node,
    wait_for,
    write_phantom,
    write_rules,
)

from ainode.phantoms import SeriesIds

pytestmark = pytest.mark.integration

AINODE = [sys.executable, "-m", "ainode.cli"]


@pytest.fixture(scope="module")
def routing_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A node with the ONNX rules and the default StableAge of the harness (1 s)."""
    folder = tmp_path_factory.mktemp("routing")
    node = start_node(folder / "node", routing_rules=write_rules(folder / "rules.yaml", ONNX_RULES))
    yield node
    node.stop()


@pytest.fixture(scope="module")
def slow_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A node whose series take two minutes to become stable (so only explicit triggers or
    a restart decide them) and whose change-log sweep runs every second."""
    folder = tmp_path_factory.mktemp("slow")
    node = start_node(
        folder / "node",
        routing_rules=write_rules(folder / "rules.yaml", ONNX_RULES),
        stable_age_s=120,
        change_sweep_s=1.0,
    )
    yield node
    node.stop()


@pytest.fixture(scope="module")
def ct_job(routing_node: Node, tmp_path_factory: pytest.TempPathFactory) -> tuple[SeriesIds, Any]:
    """A 20-slice CT pushed by storescu, and its job once it has ended."""
    paths, ids = write_phantom(tmp_path_factory.mktemp("ct") / "series", 20, seed=1)
    routing_node.storescu(paths)
    return ids, routing_node.wait_for_run(ids.series_uid)


# -- the normal path ---------------------------------------------------------------------------


def test_ct_series_gets_exactly_one_job_that_ends_done(
    routing_node: Node, ct_job: tuple[SeriesIds, Any]
) -> None:
    ids, job = ct_job
    assert job["state"] == "done", job["error"]
    assert (job["rule"], job["pipeline"], job["attempts"]) == ("ct-demo", "demo-phantom-onnx", 1)
    assert job["series_id"] == routing_node.lookup(ids.series_uid)
    assert [j["id"] for j in routing_node.jobs(series=ids.series_uid)] == [job["id"]], (
        "one record for the series: no second, study-level decision"
    )
    assert len(job["outputs"]) == 2


def test_job_outputs_are_a_seg_and_an_rtstruct_of_the_source_series(
    routing_node: Node, ct_job: tuple[SeriesIds, Any]
) -> None:
    ids, job = ct_job
    results = {ds.Modality: ds for ds in map(routing_node.instance, job["outputs"])}
    assert set(results) == {"SEG", "RTSTRUCT"}
    source_uids = {i["MainDicomTags"]["SOPInstanceUID"] for i in _instances(routing_node, ids)}
    seg = results["SEG"]
    assert seg.StudyInstanceUID == ids.study_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ids.series_uid
    referenced = {
        r.ReferencedSOPInstanceUID
        for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert referenced and referenced <= source_uids
    rtstruct = results["RTSTRUCT"]
    assert rtstruct.StudyInstanceUID == ids.study_uid
    frame = rtstruct.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == ids.frame_of_reference_uid
    study = frame.RTReferencedStudySequence[0]
    assert study.RTReferencedSeriesSequence[0].SeriesInstanceUID == ids.series_uid


def test_job_filters_take_orthanc_ids_or_uids(
    routing_node: Node, ct_job: tuple[SeriesIds, Any]
) -> None:
    ids, job = ct_job
    study_id = routing_node.lookup(ids.study_uid)
    for query in (
        {"series": ids.series_uid},
        {"series": job["series_id"]},
        {"study": ids.study_uid, "rule": "ct-demo"},
        {"study": study_id, "state": "done,failed"},
    ):
        assert [j["id"] for j in routing_node.jobs(**query) if j["rule"]] == [job["id"]], query
    assert routing_node.jobs(study=ids.study_uid, state="failed,cancelled") == []
    assert routing_node.get("/ai/jobs", params={"state": "finished"}).status_code == 400


def test_each_decision_writes_one_audit_line_without_patient_values(
    routing_node: Node, ct_job: tuple[SeriesIds, Any]
) -> None:
    ids, job = ct_job
    log = (routing_node.settings.logs_dir / "orthanc.log").read_text(errors="replace")
    lines = [line for line in log.splitlines() if f"series_uid={ids.series_uid} " in line]
    assert len(lines) == 1, lines
    assert "audit: decision rule=ct-demo " in lines[0] and f"job={job['id']}" in lines[0]
    assert "outcome=run" in lines[0] and 'reason="matched rule' in lines[0]
    for identifying in (ids.patient_name, ids.patient_id, ids.patient_birth_date):
        assert identifying not in lines[0]


def test_the_nodes_own_results_never_get_a_job(
    routing_node: Node, ct_job: tuple[SeriesIds, Any]
) -> None:
    _, job = ct_job
    for instance_id in job["outputs"]:
        result = routing_node.instance(instance_id)
        decision = routing_node.wait_for_decision(result.SeriesInstanceUID)
        assert decision["state"] == "ignored"
        assert decision["decided_by"] == "guard:result-modality"
        assert f"Modality {result.Modality} is not an image" in decision["reason"]
        assert decision["pipeline"] is None


def test_mr_and_a_two_slice_ct_are_ignored_with_the_reason(
    routing_node: Node, tmp_path: Path
) -> None:
    mr, mr_ids = write_phantom(tmp_path / "mr", 12, modality="MR")
    short, short_ids = write_phantom(tmp_path / "short", 2)
    routing_node.storescu([*mr, *short])
    mr_decision = routing_node.wait_for_decision(mr_ids.series_uid)
    short_decision = routing_node.wait_for_decision(short_ids.series_uid)
    for decision in (mr_decision, short_decision):
        assert decision["state"] == "ignored"
        assert decision["decided_by"] == "no-rule-matched"
        assert decision["rule"] is None and decision["pipeline"] is None
    assert "Modality" in mr_decision["reason"] and "MR" in mr_decision["reason"]
    assert "InstanceCount" in short_decision["reason"] and "2" in short_decision["reason"]
    ignored = {j["id"] for j in routing_node.jobs(state="ignored")}
    assert {mr_decision["id"], short_decision["id"]} <= ignored


def test_ainode_jobs_lists_jobs_and_who_decided_ignored_series(
    routing_node: Node, ct_job: tuple[SeriesIds, Any], tmp_path: Path
) -> None:
    _, job = ct_job
    paths, ids = write_phantom(tmp_path / "mr", 12, modality="MR")
    routing_node.storescu(paths)
    ignored = routing_node.wait_for_decision(ids.series_uid)
    result = subprocess.run(
        [*AINODE, "jobs", "--limit", "1000"],
        env=settings_env(routing_node.settings),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert lines[job["id"]].split()[1:4] == ["done", "ct-demo", "demo-phantom-onnx"]
    assert lines[ignored["id"]].split()[1:4] == ["ignored", "no-rule-matched", "-"]
    assert "Modality" in lines[ignored["id"]], "the reason an ignored series was not run"


def test_the_same_series_pushed_twice_gets_one_job(routing_node: Node, tmp_path: Path) -> None:
    paths, ids = write_phantom(tmp_path / "ct", 12, seed=2)
    routing_node.storescu(paths)
    first = routing_node.wait_for_run(ids.series_uid, ("queued", "running", "done"))
    routing_node.storescu(paths)  # Orthanc overwrites the instances: a second STABLE_SERIES
    series_id = routing_node.lookup(ids.series_uid)
    wait_for(lambda: _stable_events(routing_node, series_id) >= 2, 30, 0.3, "a second StableSeries")
    # Decisions are made in event order: once a later series is decided, so is this one.
    barrier, barrier_ids = write_phantom(tmp_path / "barrier", 2)
    routing_node.storescu(barrier)
    routing_node.wait_for_decision(barrier_ids.series_uid)
    job = routing_node.wait_for_run(ids.series_uid)
    assert job["id"] == first["id"] and job["state"] == "done", job["error"]
    assert len(routing_node.jobs(series=ids.series_uid)) == 1
    assert len(routing_node.study_series(ids.study_uid, "SEG")) == 1


# -- rules -------------------------------------------------------------------------------------

SKIP_CT_RULES = """\
version: 1
mode: first-match
rules:
  - name: skip-ct
    action: ignore
    when:
      Modality: CT
"""

# Line 7 names a pipeline the registry does not know.
UNKNOWN_PIPELINE_RULES = """\
version: 1
mode: first-match
rules:
  - name: ct-typo
    when:
      Modality: CT
    pipeline: demo-phantom-onx
"""


def test_rules_reload_on_edit_and_a_broken_file_keeps_the_last_good_rules(
    tmp_path: Path,
) -> None:
    rules = write_rules(tmp_path / "rules.yaml", ONNX_RULES)
    node = start_node(tmp_path / "node", routing_rules=rules, worker_enabled=False)
    try:
        assert _rule_names(node) == ["ct-demo"]
        write_rules(rules, SKIP_CT_RULES)
        wait_for(lambda: _rule_names(node) == ["skip-ct"], 15, 0.3, "the edited rules in force")
        paths, ids = write_phantom(tmp_path / "first", 12)
        node.storescu(paths)
        decision = node.wait_for_decision(ids.series_uid)
        assert (decision["state"], decision["decided_by"]) == ("ignored", "skip-ct")
        good_sha = node.json("/ai/rules")["sha256"]

        write_rules(rules, UNKNOWN_PIPELINE_RULES)
        status = wait_for(
            lambda: (s := node.json("/ai/rules"))["error"] and s, 15, 0.3, "the refusal"
        )
        problem = status["error"]["problems"][0]
        assert (problem["line"], problem["field"]) == (7, "rules[0].pipeline")
        assert "demo-phantom-onx" in problem["message"]
        assert "line 7" in status["error"]["message"]
        assert status["loaded"] and status["sha256"] == good_sha
        assert [r["name"] for r in status["rules"]] == ["skip-ct"]
        reload = node.post("/ai/rules/reload")
        assert reload.status_code == 422
        assert reload.json()["error"]["problems"][0]["field"] == "rules[0].pipeline"

        paths, ids = write_phantom(tmp_path / "second", 12)
        node.storescu(paths)
        decision = node.wait_for_decision(ids.series_uid)
        assert (decision["state"], decision["decided_by"]) == ("ignored", "skip-ct")
    finally:
        node.stop()


# -- explicit triggers, manual runs, cancel and retry -------------------------------------------


def test_series_complete_creates_the_job_at_once(slow_node: Node, tmp_path: Path) -> None:
    paths, ids = write_phantom(tmp_path / "ct", 12, seed=3)
    slow_node.storescu(paths)
    series_id = slow_node.lookup(ids.series_uid)
    assert not slow_node.json(f"/series/{series_id}")["IsStable"]
    answer = slow_node.post(f"/ai/series/{series_id}/complete")
    assert answer.status_code == 200, answer.text
    (created,) = answer.json()["jobs"]
    assert created["created"] and created["rule"] == "ct-demo"
    assert created["state"] in ("queued", "running")
    again = slow_node.post(f"/ai/series/{series_id}/complete").json()["jobs"]
    assert [(j["id"], j["created"]) for j in again] == [(created["id"], False)]
    job = slow_node.wait_for_run(ids.series_uid)
    assert job["state"] == "done", job["error"]
    assert (
        slow_node.post(
            "/ai/series/0000000f-00000000-00000000-00000000-00000000/complete"
        ).status_code
        == 404
    )


def test_manual_run_makes_a_job_outside_the_rules(slow_node: Node, tmp_path: Path) -> None:
    # The slow node decides nothing by itself for two minutes: only the manual run acts.
    paths, ids = write_phantom(tmp_path / "ct", 12, seed=4)
    slow_node.storescu(paths)
    series_id = slow_node.lookup(ids.series_uid)
    unknown = slow_node.post(f"/ai/series/{series_id}/run", json={"pipeline": "no-such-model"})
    assert unknown.status_code == 404 and "no-such-model" in unknown.text
    assert slow_node.post(f"/ai/series/{series_id}/run", json={}).status_code == 400
    answer = slow_node.post(
        f"/ai/series/{series_id}/run", json={"pipeline": "demo-onnx", "outputs": ["SEG"]}
    )
    assert answer.status_code == 200, answer.text
    created = answer.json()
    assert created["created"] and created["decided_by"] == "manual:demo-phantom-onnx"
    assert created["outputs_requested"] == ["SEG"]
    job = slow_node.wait_for_run(ids.series_uid)
    assert job["id"] == created["id"] and job["state"] == "done", job["error"]
    (seg,) = job["outputs"]
    assert slow_node.instance(seg).ReferencedSeriesSequence[0].SeriesInstanceUID == ids.series_uid


def test_manual_run_of_a_ct_model_on_mr_fails_with_the_reason(
    slow_node: Node, tmp_path: Path
) -> None:
    paths, ids = write_phantom(tmp_path / "mr", 12, modality="MR")
    slow_node.storescu(paths)
    series_id = slow_node.lookup(ids.series_uid)
    answer = slow_node.post(f"/ai/series/{series_id}/run", json={"pipeline": "demo-onnx"})
    assert answer.status_code == 200, answer.text
    job = slow_node.wait_for_run(ids.series_uid)
    assert job["state"] == "failed"
    assert "expects a CT series" in job["error"] and "MR" in job["error"]


def test_cancel_and_retry(slow_node: Node, tmp_path: Path) -> None:
    """A cancelled job never runs, even though its task is still in the queue; a retried one
    runs once."""
    worker = slow_node.service("worker")
    worker.stop()
    try:
        jobs = {}
        for name in ("cancelled", "retried"):
            paths, ids = write_phantom(tmp_path / name, 12)
            slow_node.storescu(paths)
            (job,) = slow_node.post(
                f"/ai/series/{slow_node.lookup(ids.series_uid)}/complete"
            ).json()["jobs"]
            jobs[name] = (ids, job["id"])
        for ids, _ in jobs.values():
            slow_node.wait_for_run(ids.series_uid, ("queued",))
            wait_for(partial(_sent_to_broker, slow_node, ids.series_uid), 30, 0.2, "the job sent")
        cancelled_ids, cancelled = jobs["cancelled"]
        retried_ids, retried = jobs["retried"]

        answer = slow_node.post(f"/ai/jobs/{cancelled}/cancel")
        assert answer.status_code == 200 and answer.json()["state"] == "cancelled"
        assert slow_node.post(f"/ai/jobs/{cancelled}/cancel").status_code == 409
        assert slow_node.post(f"/ai/jobs/{retried}/retry").status_code == 409, "queued: no retry"
        assert slow_node.post(f"/ai/jobs/{retried}/cancel").status_code == 200
        answer = slow_node.post(f"/ai/jobs/{retried}/retry")
        assert answer.status_code == 200 and answer.json()["state"] == "queued"
        assert slow_node.post("/ai/jobs/" + "0" * 32 + "/retry").status_code == 404
    finally:
        worker.start()
        worker.wait_ready()

    done = slow_node.wait_for_run(retried_ids.series_uid)
    assert done["state"] == "done" and done["attempts"] == 2, done
    # Three tasks were queued (cancelled, retried, its retry); wait until all were taken.
    wait_for(lambda: _queued_tasks(slow_node) == 0, 60, 0.3, "the queues to drain")
    job = slow_node.json(f"/ai/jobs/{cancelled}")
    assert job["state"] == "cancelled" and job["outputs"] == [] and job["started_at"] is None
    assert slow_node.study_series(cancelled_ids.study_uid, "SEG") == []
    assert len(slow_node.study_series(retried_ids.study_uid, "SEG")) == 1
    assert slow_node.json(f"/ai/jobs/{retried}")["state"] == "done"


# -- Orthanc restarts --------------------------------------------------------------------------


def test_a_series_that_became_stable_while_orthanc_was_stopped_is_processed(
    slow_node: Node, tmp_path: Path
) -> None:
    paths, ids = write_phantom(tmp_path / "ct", 12, seed=4)
    slow_node.storescu(paths)
    log = slow_node.settings.logs_dir / "orthanc.log"
    start = log.stat().st_size
    time.sleep(3.0)  # the once-a-second sweeps of the change log see the series arriving...
    assert "still arriving" in _read_from(log, start)
    assert slow_node.jobs(series=ids.series_uid) == [], "not decided before it is stable"
    slow_node.service("orthanc").stop()  # ...then Orthanc stops long before StableAge (120 s)
    slow_node.service("orthanc").start()
    slow_node.service("orthanc").wait_ready()
    job = slow_node.wait_for_run(ids.series_uid, timeout_s=60)
    assert job["state"] == "done", job["error"]
    assert job["trigger"] == "series"


def test_orthanc_restart_between_decision_and_run_gives_one_job(tmp_path: Path) -> None:
    rules = write_rules(tmp_path / "rules.yaml", ONNX_RULES)
    node = start_node(tmp_path / "node", routing_rules=rules)
    try:
        node.service("worker").stop()
        paths, ids = write_phantom(tmp_path / "ct", 12, seed=5)
        node.storescu(paths)
        queued = node.wait_for_run(ids.series_uid, ("queued",))
        node.restart("orthanc")
        node.service("worker").start()
        node.service("worker").wait_ready()
        job = node.wait_for_run(ids.series_uid)
        assert job["id"] == queued["id"] and job["state"] == "done", job["error"]
        assert len(node.jobs(series=ids.series_uid)) == 1
        assert len(node.study_series(ids.study_uid, "SEG")) == 1
    finally:
        node.stop()


# -- helpers -----------------------------------------------------------------------------------


def _instances(node: Node, ids: SeriesIds) -> list[dict[str, Any]]:
    return list(node.json(f"/series/{node.lookup(ids.series_uid)}/instances"))


def _read_from(path: Path, offset: int) -> str:
    with path.open("rb") as file:
        file.seek(offset)
        return file.read().decode("utf-8", "replace")


def _sent_to_broker(node: Node, series_uid: str) -> bool:
    return bool(node.runs(series_uid)[0]["dispatch_state"] == "sent")


def _rule_names(node: Node) -> list[str]:
    return [rule["name"] for rule in node.json("/ai/rules")["rules"]]


def _stable_events(node: Node, series_id: str) -> int:
    changes = node.json("/changes?limit=10000")["Changes"]
    return sum(1 for c in changes if c["ChangeType"] == "StableSeries" and c["ID"] == series_id)


def _queued_tasks(node: Node) -> int:
    """Tasks waiting in the node's Celery queues or taken but not yet acknowledged."""
    client = redis.Redis(port=node.settings.redis_port)
    waiting = sum(int(client.llen(key)) for key in client.scan_iter("ainode.*"))
    return waiting + int(client.hlen("unacked"))
