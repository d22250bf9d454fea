"""Webhook notifications and rules validation on a real node, with real local HTTP receivers.

One node for the module: its rule sends CT series to the ONNX demo model and notifies two
webhooks, ``ris`` (every event) and ``flaky`` (done only), which refuses its first two calls.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from typing import Any

import pytest
from nodeharness import ONNX_RULES, Node, start_node, wait_for, write_phantom, write_rules
from webhook_receiver import Call, WebhookReceiver

from ainode.phantoms import SeriesIds

pytestmark = pytest.mark.integration

RIS_SECRET = "ris-shared-secret-0123456789"
FLAKY_SECRET = "flaky-shared-secret-9876543210"
NOTIFY_RULES = (
    ONNX_RULES
    + """\
    notify:
      - ris
      - {webhook: flaky, events: [done]}
"""
)


@dataclass
class Setup:
    node: Node
    ris: WebhookReceiver
    flaky: WebhookReceiver
    ids: SeriesIds
    job: dict[str, Any]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    folder = tmp_path_factory.mktemp("notify")
    with WebhookReceiver() as ris, WebhookReceiver(fail_first=2) as flaky:
        node = start_node(
            folder / "node",
            routing_rules=write_rules(folder / "rules.yaml", NOTIFY_RULES),
            webhooks={
                "ris": {"url": ris.url, "secret": RIS_SECRET},
                "flaky": {"url": flaky.url, "secret": FLAKY_SECRET},
            },
            webhook_retry_backoff_s=0.5,
            webhook_sweep_s=0.5,
        )
        try:
            paths, ids = write_phantom(folder / "ct", 12, seed=7)
            node.storescu(paths)
            job = node.wait_for_run(ids.series_uid)
            yield Setup(node, ris, flaky, ids, job)
        finally:
            node.stop()


def _signed_by(call: Call, secret: str) -> bool:
    timestamp = call.headers["x-ainode-timestamp"]
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + call.body, hashlib.sha256)
    return hmac.compare_digest(call.headers["x-ainode-signature"], f"sha256={mac.hexdigest()}")


def test_a_ct_series_sends_signed_queued_running_done_with_uids_and_outputs(
    setup: Setup,
) -> None:
    job = setup.job
    assert job["state"] == "done", job["error"]
    calls = wait_for(
        lambda: len(setup.ris.delivered()) >= 3 and setup.ris.delivered(), 30, 0.2, "3 calls"
    )
    assert [c.json()["state"] for c in calls] == ["queued", "running", "done"]
    assert all(c.status == 200 for c in setup.ris.calls), "ris never refused a call"
    for call in calls:
        body = call.json()
        assert _signed_by(call, RIS_SECRET) and not _signed_by(call, FLAKY_SECRET)
        assert (body["job_id"], body["rule"]) == (job["id"], "ct-demo")
        assert (body["series_uid"], body["study_uid"]) == (
            setup.ids.series_uid,
            setup.ids.study_uid,
        )
        assert body["event"] == f"job.{body['state']}" == call.headers["x-ainode-event"]
        assert call.headers["x-ainode-delivery"] == body["delivery_id"]
        text = call.body.decode()
        for identifying in ("Phantom^Test", "PHANTOM-0001", "19700101", RIS_SECRET):
            assert identifying not in text
    done = calls[2].json()
    assert done["previous_state"] == "running" and done["error"] is None
    assert sorted(done["output_instances"]) == sorted(job["outputs"])
    by_uid = {o["sop_instance_uid"]: o["kind"] for o in done["outputs"]}
    stored = {setup.node.instance(i).SOPInstanceUID: i for i in job["outputs"]}
    assert set(by_uid.values()) == {"SEG", "RTSTRUCT"}
    for uid, kind in by_uid.items():  # each output UID is an instance of that kind in Orthanc
        assert setup.node.instance(stored[uid]).Modality == kind


def test_a_receiver_that_fails_at_first_gets_done_after_retries(setup: Setup) -> None:
    wait_for(setup.flaky.delivered, 30, 0.2, "the flaky receiver's delivery")
    calls = setup.flaky.calls
    assert [c.status for c in calls] == [503, 503, 200]
    assert len({c.headers["x-ainode-delivery"] for c in calls}) == 1, "one notification, retried"
    assert len({c.body for c in calls}) == 1 and calls[0].json()["state"] == "done"
    assert all(_signed_by(c, FLAKY_SECRET) for c in calls)
    gaps = [later.received_at - earlier.received_at for earlier, later in pairwise(calls)]
    assert gaps[0] >= 0.4 and gaps[1] >= 0.9, f"backoff 0.5 s, then 1 s: {gaps}"
    job = setup.node.json(f"/ai/jobs/{setup.job['id']}")
    assert job["state"] == "done"
    finished = datetime.fromisoformat(job["finished_at"]).timestamp()
    assert finished < calls[-1].received_at, "the job ended before the webhook took the call"
    by_webhook = {(n["webhook"], n["event"]): n for n in job["notifications"]}
    flaky = by_webhook[("flaky", "done")]
    assert (flaky["state"], flaky["attempts"], flaky["last_status"]) == ("delivered", 3, 200)
    assert [n["event"] for n in job["notifications"] if n["webhook"] == "ris"] == [
        "queued",
        "running",
        "done",
    ]
    listed = setup.node.json("/ai/notifications?webhook=flaky")
    assert [n["id"] for n in listed["notifications"]] == [flaky["id"]]
    assert listed["notifications"][0]["payload"]["job_id"] == job["id"]


def test_rules_validate_checks_without_changing_the_rules_in_force(setup: Setup) -> None:
    node = setup.node
    before = node.json("/ai/rules")
    good = NOTIFY_RULES.replace("name: ct-demo", "name: ct-other")
    answer = node.post("/ai/rules/validate", data=good)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["valid"] and [r["name"] for r in body["rules"]] == ["ct-other"]
    assert body["rules"][0]["notify"] == [
        {"webhook": "ris", "events": ["queued", "running", "done", "failed", "cancelled"]},
        {"webhook": "flaky", "events": ["done"]},
    ]
    bad = good.replace("- ris", "- pager").replace("demo-phantom-onnx", "no-such-model")
    refused = node.post("/ai/rules/validate", data=bad)
    assert refused.status_code == 422, refused.text
    problems = refused.json()["error"]["problems"]
    assert [(p["line"], p["field"]) for p in problems] == [
        (9, "rules[0].pipeline"),
        (13, "rules[0].notify[0].webhook"),
    ]
    assert "no webhook named 'pager'" in problems[1]["message"]
    assert "flaky, ris" in problems[1]["message"]
    assert node.post("/ai/rules/validate", data=b"").status_code == 400
    after = node.json("/ai/rules")
    assert (after["sha256"], [r["name"] for r in after["rules"]]) == (
        before["sha256"],
        ["ct-demo"],
    )
