"""The job store: every decision recorded once, durable across restarts, valid state changes."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from pathlib import Path

import pytest
from ainode_plugin.jobstore import (
    SCHEMA_VERSION,
    DispatchState,
    InvalidTransition,
    JobNotFound,
    JobStore,
    SchemaTooNew,
)
from jobstore_helpers import RULES, Clock, decide, series_facts

from ainode.jobs import DestinationKind, DestinationStatus, JobState, JobUpdate, OutputKind
from ainode.routing import GUARD_RESULT_MODALITY, NO_RULE_MATCHED


def record_first(store: JobStore, number: int = 1, **kwargs: object) -> str:
    facts = series_facts(number, **kwargs)  # type: ignore[arg-type]
    job, created = store.record_decision(facts, decide(facts)[0])
    assert created
    return job.id


def test_a_run_decision_becomes_a_queued_job_in_the_outbox(store: JobStore, clock: Clock) -> None:
    facts = series_facts(1, body_part="CHEST")
    decisions = decide(facts)
    assert [d.decided_by for d in decisions] == ["ct-demo", "chest-urgent"]
    job, created = store.record_decision(facts, decisions[1])
    assert created
    assert job.state == JobState.QUEUED
    assert (job.rule, job.pipeline, job.decided_by) == ("chest-urgent", "lungs", "chest-urgent")
    assert (job.priority, job.queue) == ("high", "ainode.gpu.high")
    assert (job.series_id, job.series_uid, job.study_uid) == (
        facts.series_id,
        facts.series_uid,
        facts.study_uid,
    )
    assert job.dispatch_state == DispatchState.PENDING
    assert job.dispatch_after == job.created_at == clock.now
    assert job.attempts == 0
    assert [s.destination.kind for s in job.destinations] == [
        DestinationKind.ORTHANC,
        DestinationKind.DICOM,
    ]
    assert all(s.state == "pending" for s in job.destinations)
    request = job.request
    assert request is not None
    assert request.job_id == job.id
    assert (request.rule, request.pipeline, request.params) == (
        "chest-urgent",
        "lungs",
        {"fold": 1},
    )
    assert request.series_id == facts.series_id
    assert store.get(job.id) == job


def test_ignored_decisions_are_recorded_with_their_reason(store: JobStore) -> None:
    mr = series_facts(1, modality="MR")
    seg = series_facts(2, modality="SEG")
    ignored_mr, _ = store.record_decision(mr, decide(mr)[0])
    ignored_seg, _ = store.record_decision(seg, decide(seg)[0])
    assert ignored_mr.state == ignored_seg.state == JobState.IGNORED
    assert (ignored_mr.rule, ignored_mr.decided_by) == (None, NO_RULE_MATCHED)
    assert "Modality is 'MR'" in ignored_mr.reason
    assert ignored_seg.decided_by == GUARD_RESULT_MODALITY
    assert ignored_mr.dispatch_state == DispatchState.NONE
    assert ignored_mr.request is None and ignored_mr.finished_at is not None
    assert store.pending_dispatch() == []


def test_duplicate_events_and_resent_series_make_no_second_job(store: JobStore) -> None:
    facts = series_facts(1)
    first, created = store.record_decision(facts, decide(facts)[0])
    again, created_again = store.record_decision(facts, decide(facts)[0])
    resent = series_facts(1)  # the same instances sent again: an equal, new facts object
    third, created_third = store.record_decision(resent, decide(resent)[0])
    assert created and not created_again and not created_third
    assert first.id == again.id == third.id
    assert len(store.list_jobs()) == 1

    mr = series_facts(2, modality="MR")
    store.record_decision(mr, decide(mr)[0])
    _, ignored_again = store.record_decision(mr, decide(mr)[0])
    assert not ignored_again


def test_a_grown_series_may_make_a_new_job(store: JobStore) -> None:
    before = series_facts(1)
    grown = series_facts(1, extra_instances=3)
    first, _ = store.record_decision(before, decide(before)[0])
    second, created = store.record_decision(grown, decide(grown)[0])
    assert created and second.id != first.id
    assert second.instance_count == 15


def test_each_rule_of_all_match_makes_its_own_job(store: JobStore) -> None:
    facts = series_facts(1, body_part="CHEST")
    jobs = [store.record_decision(facts, decision)[0] for decision in decide(facts)]
    assert len({job.id for job in jobs}) == 2
    assert {job.rule for job in jobs} == {"ct-demo", "chest-urgent"}


def test_concurrent_duplicate_events_make_one_job(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "jobs.sqlite3"
    stores = [JobStore(path, clock=clock), JobStore(path, clock=clock)]  # two connections too
    facts = series_facts(1)
    decision = decide(facts)[0]
    created: list[bool] = []
    ids: set[str] = set()
    guard = threading.Lock()
    barrier = threading.Barrier(8)

    def deliver(index: int) -> None:
        barrier.wait()
        for _ in range(10):
            job, new = stores[index % 2].record_decision(facts, decision)
            with guard:
                created.append(new)
                ids.add(job.id)

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert created.count(True) == 1 and len(created) == 80
    assert len(ids) == 1
    assert len(stores[0].list_jobs()) == 1
    for job_store in stores:
        job_store.close()


def test_survives_reopening(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "data" / "jobs.sqlite3"
    with JobStore(path, clock=clock) as store:
        job_id = record_first(store)
        store.apply_update(JobUpdate(job_id=job_id, state=JobState.RUNNING, worker="w1"))
        pending_id = record_first(store, 2)
        before = store.get(job_id)
    with JobStore(path, clock=clock) as reopened:
        assert reopened.get(job_id) == before
        assert [job.id for job in reopened.pending_dispatch()] == [pending_id]
        assert reopened.schema_version() == SCHEMA_VERSION == 3
        facts = series_facts(1)
        _, created = reopened.record_decision(facts, decide(facts)[0])
        assert not created  # dedup holds across restarts


def test_file_is_wal_json_and_versioned(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "jobs.sqlite3"
    with JobStore(path, clock=clock) as store:
        job_id = record_first(store)
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        request_text, outputs = raw.execute(
            "SELECT request, outputs FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        assert json.loads(request_text)["job_id"] == job_id  # plain JSON, never a pickle
        assert json.loads(outputs) == []
        versions = raw.execute("SELECT version FROM schema_migrations ORDER BY version")
        assert versions.fetchall() == [(1,), (2,), (3,)]
        raw.execute("INSERT INTO schema_migrations VALUES (99, 'from the future', 0)")
        raw.commit()
    finally:
        raw.close()
    with pytest.raises(SchemaTooNew, match="newer"):
        JobStore(path, clock=clock)


def test_worker_updates_follow_the_state_machine(store: JobStore, clock: Clock) -> None:
    job_id = record_first(store)
    clock.advance(5)
    running, applied = store.apply_update(
        JobUpdate(job_id=job_id, state=JobState.RUNNING, worker="gpu-1", detail={"step": 1})
    )
    assert applied and running.state == JobState.RUNNING
    assert running.started_at == clock.now and running.worker == "gpu-1"
    assert running.dispatch_state == DispatchState.SENT  # a worker has it: never send again
    clock.advance(30)
    seg = DestinationStatus(destination=running.destinations[0].destination, state="sent")
    done, applied = store.apply_update(
        JobUpdate(
            job_id=job_id,
            state=JobState.DONE,
            outputs=["seg-instance", "rtstruct-instance"],
            destinations=[seg],
        )
    )
    assert applied and done.state == JobState.DONE
    assert done.finished_at == clock.now and done.started_at == running.started_at
    assert done.outputs == ["seg-instance", "rtstruct-instance"]
    assert done.destinations[0].state == "sent"
    assert done.detail == {"step": 1}

    late, applied = store.apply_update(JobUpdate(job_id=job_id, state=JobState.RUNNING))
    assert not applied and late.state == JobState.DONE  # done never goes back to running
    assert store.get(job_id) == done


def test_failure_without_a_reason_still_says_something(store: JobStore) -> None:
    job_id = record_first(store)
    failed, _ = store.apply_update(JobUpdate(job_id=job_id, state=JobState.FAILED))
    assert failed.state == JobState.FAILED and failed.error
    specific = record_first(store, 2)
    failed, _ = store.apply_update(
        JobUpdate(job_id=specific, state=JobState.FAILED, error="CUDA out of memory")
    )
    assert failed.error == "CUDA out of memory"


def test_cancelled_jobs_keep_their_state_and_list_what_was_stored(store: JobStore) -> None:
    job_id = record_first(store)
    cancelled = store.cancel(job_id)
    assert cancelled.state == JobState.CANCELLED
    assert cancelled.dispatch_state == DispatchState.NONE
    assert [d.state for d in cancelled.destinations] == ["cancelled"], "no destination pending"
    # The worker had stored a result before the cancel reached it: listed, state kept.
    late, applied = store.apply_update(JobUpdate(job_id=job_id, state=JobState.DONE, outputs=["x"]))
    assert not applied and late.state == JobState.CANCELLED and late.outputs == ["x"]
    assert store.get(job_id).state == JobState.CANCELLED
    with pytest.raises(InvalidTransition, match="cancelled"):
        store.cancel(job_id)


def test_failed_jobs_close_their_destinations_and_retry_reopens_them(store: JobStore) -> None:
    job_id = record_first(store)
    failed, _ = store.apply_update(JobUpdate(job_id=job_id, state=JobState.FAILED, error="boom"))
    assert [(d.state, d.error) for d in failed.destinations] == [
        ("failed", "not sent: the job failed")
    ]
    retried = store.retry(job_id)
    assert [(d.state, d.error) for d in retried.destinations] == [("pending", None)]
    given_up, _ = store.fail(job_id, "gave up")
    assert [d.state for d in given_up.destinations] == ["failed"]


def test_each_sending_is_a_new_attempt_and_only_the_current_one_reports(store: JobStore) -> None:
    job_id = record_first(store)
    first = store.new_attempt(job_id)
    assert first is not None and first.attempt and first.job_id == job_id
    store.mark_sent(job_id)
    running, applied = store.apply_update(
        JobUpdate(job_id=job_id, state=JobState.RUNNING, attempt=first.attempt)
    )
    assert applied and running.state == JobState.RUNNING
    store.cancel(job_id)
    assert store.new_attempt(job_id) is None, "a cancelled job is not sent"
    store.retry(job_id)
    # Between the retry and its sending, the cancelled attempt cannot take the job back.
    stale, applied = store.apply_update(
        JobUpdate(job_id=job_id, state=JobState.RUNNING, attempt=first.attempt)
    )
    assert not applied and stale.state == JobState.QUEUED
    second = store.new_attempt(job_id)
    assert second is not None and second.attempt not in (None, first.attempt)
    store.mark_sent(job_id)
    done, applied = store.apply_update(
        JobUpdate(job_id=job_id, state=JobState.DONE, attempt=second.attempt)
    )
    assert applied and done.state == JobState.DONE and done.attempts == 2


def test_impossible_reports_are_refused(store: JobStore) -> None:
    job_id = record_first(store)
    with pytest.raises(InvalidTransition, match="running, done or failed"):
        store.apply_update(JobUpdate(job_id=job_id, state=JobState.QUEUED))
    mr = series_facts(2, modality="MR")
    ignored, _ = store.record_decision(mr, decide(mr)[0])
    with pytest.raises(InvalidTransition, match="ignored"):
        store.apply_update(JobUpdate(job_id=ignored.id, state=JobState.RUNNING))
    with pytest.raises(JobNotFound):
        store.apply_update(JobUpdate(job_id="nope", state=JobState.RUNNING))
    with pytest.raises(JobNotFound):
        store.get("nope")


def test_retry_requeues_failed_and_cancelled_jobs_keeping_attempts(store: JobStore) -> None:
    job_id = record_first(store)
    store.mark_sent(job_id)
    store.apply_update(JobUpdate(job_id=job_id, state=JobState.FAILED, error="boom"))
    retried = store.retry(job_id)
    assert retried.state == JobState.QUEUED
    assert retried.attempts == 1
    assert retried.error is None and retried.finished_at is None
    assert retried.dispatch_state == DispatchState.PENDING
    assert [job.id for job in store.pending_dispatch()] == [job_id]
    with pytest.raises(InvalidTransition, match="only failed or cancelled"):
        store.retry(job_id)
    store.cancel(job_id)
    assert store.retry(job_id).state == JobState.QUEUED
    store.apply_update(JobUpdate(job_id=job_id, state=JobState.DONE))
    with pytest.raises(InvalidTransition, match="done"):
        store.retry(job_id)
    with pytest.raises(InvalidTransition, match="done"):
        store.cancel(job_id)


def test_outbox_orders_by_priority_and_waits_for_dispatch_after(
    store: JobStore, clock: Clock
) -> None:
    low_id = record_first(store, 1)
    urgent = series_facts(2, body_part="CHEST")
    urgent_job, _ = store.record_decision(urgent, decide(urgent)[1])
    assert [job.id for job in store.pending_dispatch()] == [urgent_job.id, low_id]
    store.defer_dispatch(urgent_job.id, clock.now.replace(hour=9), "broker unavailable")
    assert [job.id for job in store.pending_dispatch()] == [low_id]
    assert store.get(urgent_job.id).dispatch_error == "broker unavailable"
    assert store.get(urgent_job.id).attempts == 0
    sent = store.mark_sent(low_id)
    assert (sent.attempts, sent.dispatch_state, sent.sent_at) == (
        1,
        DispatchState.SENT,
        clock.now,
    )
    assert store.pending_dispatch() == []
    clock.advance(3600)
    assert [job.id for job in store.pending_dispatch()] == [urgent_job.id]


def test_counts_and_listing(store: JobStore) -> None:
    chest = series_facts(1, body_part="CHEST")
    jobs = [store.record_decision(chest, d)[0] for d in decide(chest)]
    mr = series_facts(2, modality="MR")
    store.record_decision(mr, decide(mr)[0])
    store.apply_update(JobUpdate(job_id=jobs[0].id, state=JobState.DONE))
    counts = store.counts_by_state()
    assert counts[JobState.DONE] == 1
    assert counts[JobState.QUEUED] == 1
    assert counts[JobState.IGNORED] == 1
    assert counts[JobState.FAILED] == 0
    assert store.match_counts_by_rule() == {"ct-demo": 1, "chest-urgent": 1}
    assert store.counts_by_decider() == {"ct-demo": 1, "chest-urgent": 1, NO_RULE_MATCHED: 1}

    assert [j.id for j in store.list_jobs(state=JobState.DONE)] == [jobs[0].id]
    assert len(store.list_jobs(state=[JobState.DONE, JobState.QUEUED])) == 2
    assert {j.id for j in store.list_jobs(series=chest.series_uid)} == {j.id for j in jobs}
    assert {j.id for j in store.list_jobs(series=chest.series_id)} == {j.id for j in jobs}
    assert [j.rule for j in store.list_jobs(rule="chest-urgent")] == ["chest-urgent"]
    assert len(store.list_jobs(study=chest.study_uid)) == 3  # by StudyInstanceUID...
    assert len(store.list_jobs(study=chest.study_id, state=JobState.QUEUED)) == 1  # ...Orthanc id
    assert store.list_jobs(study="9.9.9") == []
    page = store.list_jobs(limit=2) + store.list_jobs(limit=2, offset=2)
    assert len({j.id for j in page}) == 3
    with pytest.raises(ValueError, match="limit"):
        store.list_jobs(limit=0)


def test_job_records_serialise_to_json(store: JobStore) -> None:
    job = store.get(record_first(store))
    data = json.loads(job.model_dump_json())
    assert data["state"] == "queued"
    assert data["request"]["outputs"] == [OutputKind.SEG.value, OutputKind.RTSTRUCT.value]
    assert RULES.get("ct-demo") is not None


def test_each_new_decision_writes_one_audit_line(
    store: JobStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ainode.audit")
    ct, mr = series_facts(1), series_facts(2, modality="MR")
    run, _ = store.record_decision(ct, decide(ct)[0])
    ignored, _ = store.record_decision(mr, decide(mr)[0])
    store.record_decision(ct, decide(ct)[0])  # a duplicate event: no new decision, no line
    lines = [r.getMessage() for r in caplog.records if r.name == "ainode.audit"]
    assert len(lines) == 2
    assert lines[0].startswith(f"audit: decision rule=ct-demo series_uid={ct.series_uid} ")
    assert "outcome=run pipeline=demo-phantom" in lines[0] and f"job={run.id}" in lines[0]
    assert f"rule={NO_RULE_MATCHED} series_uid={mr.series_uid}" in lines[1]
    assert "outcome=ignored" in lines[1] and f"job={ignored.id}" in lines[1]
    reason = lines[1].split(" reason=", 1)[1]
    assert json.loads(reason) == ignored.reason  # quoted: one line, unambiguous to parse
