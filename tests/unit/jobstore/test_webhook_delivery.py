"""Webhook notifications: written with each job state change, signed, delivered over real HTTP,
retried with backoff, failed with the reason, durable across restarts."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import textwrap
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from ainode_plugin.jobstore import (
    MIGRATIONS,
    SCHEMA_VERSION,
    JobStore,
    NotificationState,
)
from ainode_plugin.webhooks import (
    DeliveryPolicy,
    NotificationSender,
    signature,
    verify_signature,
)
from jobstore_helpers import Clock, decide, series_facts
from nodeharness import free_port, wait_for
from pydantic import ValidationError
from webhook_receiver import WebhookReceiver

from ainode.jobs import JobState, JobUpdate
from ainode.routing import KnownDestinations, parse_rules
from ainode.settings import Settings, Webhook

SECRET = "s3cret-shared-with-the-ris"
NOTIFY_RULES = parse_rules(
    textwrap.dedent(
        """\
        version: 1
        mode: first-match
        rules:
          - name: ct-all
            when: {Modality: CT, BodyPartExamined: ABDOMEN}
            pipeline: demo-phantom
            notify: [ris]
          - name: ct-final
            when: {Modality: CT}
            pipeline: demo-phantom
            notify:
              - {webhook: ris, events: [done, failed]}
              - {webhook: audit, events: [failed]}
        """
    ),
    destinations=KnownDestinations(webhooks=frozenset({"ris", "audit"})),
)
POLICY = DeliveryPolicy(
    max_attempts=4, backoff_base=timedelta(seconds=5), backoff_max=timedelta(seconds=15)
)


def record(store: JobStore, number: int = 1, body_part: str = "ABDOMEN") -> str:
    facts = series_facts(number, body_part=body_part)
    job, created = store.record_decision(facts, decide(facts, NOTIFY_RULES)[0])
    assert created
    return job.id


def events(store: JobStore, job_id: str) -> list[tuple[str, str]]:
    return [(n.webhook, n.event.value) for n in store.list_notifications(job_id=job_id)]


def webhook(url: str) -> Webhook:
    return Webhook(url=url, secret=SECRET, timeout_s=5)


# -- what is written, and when -------------------------------------------------------------------


def test_each_state_change_writes_one_notification_with_the_payload(store: JobStore) -> None:
    job_id = record(store)
    store.apply_update(JobUpdate(job_id=job_id, state=JobState.RUNNING, worker="w1"))
    store.apply_update(JobUpdate(job_id=job_id, state=JobState.RUNNING, worker="w1"))  # again
    store.apply_update(
        JobUpdate(
            job_id=job_id,
            state=JobState.DONE,
            outputs=["orthanc-seg", "orthanc-rtstruct"],
            detail={"results": {"SEG": "1.2.9.1", "RTSTRUCT": "1.2.9.2"}},
        )
    )
    assert events(store, job_id) == [("ris", "queued"), ("ris", "running"), ("ris", "done")]
    queued, _, done = store.list_notifications(job_id=job_id)
    assert all(n.state == NotificationState.PENDING and n.attempts == 0 for n in (queued, done))
    payload = done.payload
    assert (payload.job_id, payload.state, payload.previous_state) == (
        job_id,
        JobState.DONE,
        JobState.RUNNING,
    )
    assert (payload.event, payload.rule, payload.pipeline) == ("job.done", "ct-all", "demo-phantom")
    assert (payload.series_uid, payload.study_uid) == ("1.2.3.1", "1.2.3")
    assert [(o.kind, o.sop_instance_uid) for o in payload.outputs] == [
        ("SEG", "1.2.9.1"),
        ("RTSTRUCT", "1.2.9.2"),
    ]
    assert payload.output_instances == ["orthanc-seg", "orthanc-rtstruct"]
    assert payload.delivery_id == done.id and payload.error is None
    assert queued.payload.previous_state is None and queued.payload.outputs == []
    assert "patient" not in done.payload.model_dump_json().lower()


def test_only_the_events_a_webhook_asked_for(store: JobStore) -> None:
    job_id = record(store, body_part="CHEST")  # ct-final: ris on done/failed, audit on failed
    store.apply_update(JobUpdate(job_id=job_id, state=JobState.RUNNING))
    assert events(store, job_id) == []
    store.fail(job_id, "its worker sent no news for 1 h")
    assert events(store, job_id) == [("ris", "failed"), ("audit", "failed")]
    assert {n.payload.error for n in store.list_notifications(job_id=job_id)} == {
        "its worker sent no news for 1 h"
    }


def test_cancel_and_retry_notify_and_ignored_series_never_do(store: JobStore) -> None:
    job_id = record(store)
    store.cancel(job_id)
    store.retry(job_id)
    assert [e for _, e in events(store, job_id)] == ["queued", "cancelled", "queued"]
    assert store.list_notifications(job_id=job_id)[2].payload.previous_state == JobState.CANCELLED
    mr = series_facts(2, modality="MR")
    ignored, _ = store.record_decision(mr, decide(mr, NOTIFY_RULES)[0])
    assert ignored.state == JobState.IGNORED and events(store, ignored.id) == []
    plain = series_facts(3)
    no_notify, _ = store.record_decision(plain, decide(plain)[0])  # rules without notify
    assert events(store, no_notify.id) == []


def test_a_job_keeps_the_notify_targets_of_its_rule(store: JobStore) -> None:
    job = store.get(record(store, body_part="CHEST"))
    assert [(t.webhook, [e.value for e in t.events]) for t in job.notify] == [
        ("ris", ["done", "failed"]),
        ("audit", ["failed"]),
    ]


def test_the_listener_is_called_after_the_commit_only_when_something_was_written(
    store: JobStore,
) -> None:
    calls: list[int] = []

    def listener() -> None:  # runs after the commit: a fresh read sees the row
        calls.append(len(store.list_notifications(state=NotificationState.PENDING)))

    store.on_notification = listener
    job_id = record(store, body_part="CHEST")
    store.apply_update(JobUpdate(job_id=job_id, state=JobState.RUNNING))
    assert calls == []
    store.apply_update(JobUpdate(job_id=job_id, state=JobState.DONE))
    assert calls == [1]


def test_notifications_of_a_job_go_to_a_webhook_in_order(store: JobStore) -> None:
    first = record(store, 1)
    store.apply_update(JobUpdate(job_id=first, state=JobState.RUNNING))
    second = record(store, 2)
    due = store.due_notifications()
    assert [(n.job_id, n.event.value) for n in due] == [(first, "queued"), (second, "queued")]
    store.notification_delivered(due[0].id, 200)
    assert [(n.job_id, n.event.value) for n in store.due_notifications()] == [
        (first, "running"),
        (second, "queued"),
    ]


def test_pending_notifications_survive_a_restart(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "jobs.sqlite3"
    with JobStore(path, clock=clock) as store:
        job_id = record(store)
    with JobStore(path, clock=clock) as reopened:
        (due,) = reopened.due_notifications()
        assert (due.job_id, due.event, due.state) == (job_id, JobState.QUEUED, "pending")


def test_a_schema_1_file_is_upgraded_in_place(tmp_path: Path, clock: Clock) -> None:
    with JobStore(tmp_path / "new.sqlite3", clock=clock) as new:
        row = dict(new._db.execute("SELECT * FROM jobs WHERE id = ?", (record(new),)).fetchone())
    old_path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(old_path)
    for statement in MIGRATIONS[0].statements:
        old.execute(statement)
    old.execute("CREATE TABLE schema_migrations (version INTEGER, description TEXT, applied_at)")
    old.execute("INSERT INTO schema_migrations VALUES (1, 'v1', 0)")
    del row["notify"], row["attempt_id"]
    marks = ", ".join(f":{name}" for name in row)
    old.execute(f"INSERT INTO jobs ({', '.join(row)}) VALUES ({marks})", row)
    old.commit()
    old.close()
    with JobStore(old_path, clock=clock) as upgraded:
        assert upgraded.schema_version() == SCHEMA_VERSION
        job = upgraded.get(row["id"])
        assert job.notify == [] and job.state == JobState.QUEUED
        upgraded.apply_update(JobUpdate(job_id=job.id, state=JobState.DONE))
        assert upgraded.list_notifications() == []


# -- signing -------------------------------------------------------------------------------------


def test_the_signature_is_hmac_sha256_of_timestamp_and_body() -> None:
    body = b'{"job_id": "abc", "state": "done"}'
    expected = hmac.new(SECRET.encode(), b"1767254400." + body, hashlib.sha256).hexdigest()
    assert signature(SECRET, 1767254400, body) == f"sha256={expected}"
    good = signature(SECRET, 1767254400, body)
    assert verify_signature(SECRET, body, "1767254400", good, now=1767254400 + 60)
    assert not verify_signature(SECRET, body + b" ", "1767254400", good, now=1767254400)
    assert not verify_signature("another-secret-1234", body, "1767254400", good, now=1767254400)
    assert not verify_signature(SECRET, body, "1767254400", good, now=1767254400 + 301)
    assert not verify_signature(SECRET, body, "1767254401", good, now=1767254400)
    assert not verify_signature(SECRET, body, "soon", good)


def test_webhook_settings_hide_the_secret_and_refuse_bad_values(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AINODE_WEBHOOKS__RIS__URL", "https://ris.example/hooks")
    monkeypatch.setenv("AINODE_WEBHOOKS__RIS__SECRET", SECRET)
    settings = Settings(data_dir=tmp_path)
    assert settings.webhooks["ris"].secret == SECRET  # from the environment, as documented
    assert SECRET not in repr(settings) + repr(settings.webhooks["ris"])
    with pytest.raises(ValidationError, match="at least 16"):
        Webhook(url="https://ris.example/hooks", secret="short")
    with pytest.raises(ValidationError, match="url"):
        Webhook(url="file:///etc/passwd", secret=SECRET)


def test_backoff_doubles_up_to_the_maximum() -> None:
    pauses = [POLICY.backoff(n).total_seconds() for n in range(1, 6)]
    assert pauses == [5, 10, 15, 15, 15]
    with pytest.raises(ValueError, match="max_attempts"):
        DeliveryPolicy(max_attempts=0)


# -- delivery over real HTTP -----------------------------------------------------------------------


def test_delivers_signed_calls_in_order_to_a_real_receiver(store: JobStore, clock: Clock) -> None:
    job_id = record(store)
    store.apply_update(JobUpdate(job_id=job_id, state=JobState.RUNNING))
    with WebhookReceiver() as receiver:
        sender = NotificationSender(store, {"ris": webhook(receiver.url)}, policy=POLICY)
        report = sender.deliver_due()
    assert len(report.delivered) == 2 and report.retrying == report.failed == ()
    assert [call.json()["state"] for call in receiver.calls] == ["queued", "running"]
    for call, stored in zip(receiver.calls, store.list_notifications(job_id=job_id), strict=True):
        headers = call.headers
        assert call.path == "/hooks/ainode"
        assert headers["content-type"] == "application/json"
        assert headers["x-ainode-timestamp"] == str(int(clock.now.timestamp()))
        expected = hmac.new(
            SECRET.encode(), headers["x-ainode-timestamp"].encode() + b"." + call.body, "sha256"
        ).hexdigest()
        assert headers["x-ainode-signature"] == f"sha256={expected}"
        assert headers["x-ainode-delivery"] == stored.id == call.json()["delivery_id"]
        assert headers["x-ainode-event"] == f"job.{stored.event.value}"
        assert SECRET not in call.body.decode()
        assert (stored.state, stored.attempts, stored.last_status) == ("delivered", 1, 200)
        assert stored.delivered_at == clock.now


def test_a_failing_receiver_gets_the_notification_after_retries(
    store: JobStore, clock: Clock
) -> None:
    job_id = record(store)
    with WebhookReceiver(fail_first=2) as receiver:
        sender = NotificationSender(store, {"ris": webhook(receiver.url)}, policy=POLICY)
        assert len(sender.deliver_due().retrying) == 1
        (pending,) = store.list_notifications(job_id=job_id)
        assert (pending.state, pending.attempts, pending.last_status) == ("pending", 1, 503)
        assert pending.last_error is not None and "HTTP 503" in pending.last_error
        assert pending.next_attempt_at == clock.now + timedelta(seconds=5)
        assert sender.deliver_due().retrying == ()  # not due yet: no call
        assert len(receiver.calls) == 1
        clock.advance(5)
        sender.deliver_due()
        (retried,) = store.list_notifications(job_id=job_id)
        assert retried.next_attempt_at == clock.now + timedelta(seconds=10)
        clock.advance(9)
        sender.deliver_due()
        assert len(receiver.calls) == 2
        clock.advance(1)
        assert len(sender.deliver_due().delivered) == 1
    assert [call.status for call in receiver.calls] == [503, 503, 200]
    assert len({call.body for call in receiver.calls}) == 1, "every retry sends the same body"
    (delivered,) = store.list_notifications(job_id=job_id)
    assert (delivered.state, delivered.attempts, delivered.last_error) == ("delivered", 3, None)
    assert store.get(job_id).state == JobState.QUEUED  # the job never waited for the webhook


def test_gives_up_after_the_maximum_attempts_with_the_reason(store: JobStore, clock: Clock) -> None:
    job_id = record(store)
    closed = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens: connection refused
    sender = NotificationSender(store, {"ris": webhook(closed)}, policy=POLICY)
    for _ in range(POLICY.max_attempts):
        sender.deliver_due()
        clock.advance(POLICY.backoff_max.total_seconds())
    (failed,) = store.list_notifications(job_id=job_id)
    assert (failed.state, failed.attempts, failed.last_status) == ("failed", 4, None)
    assert failed.last_error is not None
    assert failed.last_error.startswith("gave up after 4 attempts: no answer:")
    assert "refused" in failed.last_error.lower()
    assert store.list_notifications(state=NotificationState.FAILED) == [failed]
    assert store.due_notifications() == []


def test_a_down_receiver_holds_its_other_notifications_without_using_attempts(
    store: JobStore, clock: Clock
) -> None:
    first, second = record(store, 1), record(store, 2)
    closed = f"http://127.0.0.1:{free_port()}/hook"
    report = NotificationSender(store, {"ris": webhook(closed)}, policy=POLICY).deliver_due()
    assert len(report.retrying) == 1
    tried, held = (store.list_notifications(job_id=job) for job in (first, second))
    assert (tried[0].attempts, held[0].attempts) == (1, 0)
    assert held[0].next_attempt_at == clock.now + POLICY.backoff_base


def test_a_webhook_removed_from_the_settings_fails_its_notifications(store: JobStore) -> None:
    job_id = record(store)
    report = NotificationSender(store, {}, policy=POLICY).deliver_due()
    (failed,) = store.list_notifications(job_id=job_id)
    assert report.failed == (failed.id,)
    assert (failed.state, failed.attempts) == ("failed", 0)
    assert "'ris' is no longer in the node's settings" in (failed.last_error or "")


def test_the_sender_thread_delivers_soon_after_a_state_change(store: JobStore) -> None:
    with WebhookReceiver() as receiver:
        sender = NotificationSender(store, {"ris": webhook(receiver.url)}, policy=POLICY)
        store.on_notification = sender.wake
        sender.start(interval_s=60.0)  # only the wake can make it deliver within the test
        try:
            threading.Event().wait(0.2)  # its first, empty pass is over
            job_id = record(store)
            wait_for(receiver.delivered, 10, 0.05, "the queued notification")
        finally:
            sender.stop()
    assert receiver.calls[0].json()["job_id"] == job_id
    assert json.loads(receiver.calls[0].body)["event"] == "job.queued"
