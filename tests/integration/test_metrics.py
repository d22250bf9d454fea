"""``/ai/metrics``: Prometheus text that parses, and counters that move with what the node does."""

from __future__ import annotations

import math
import socket
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from ainode_plugin.http import Request, Response, Router
from ainode_plugin.jobstore import JobStore
from ainode_plugin.metrics import NodeMetrics
from ainode_plugin.ui_routes import broker_queue_lengths, instrument_interactive
from nodeharness import Node, start_node, wait_for, write_rules
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from ainode.phantoms import Geometry, SeriesIds, make_phantom, write_series
from ainode.queues import every_queue_name

RULES = """\
version: 1
mode: first-match
rules:
  - name: metrics-onnx
    when:
      all:
        - Modality: CT
        - InstanceCount: {ge: 10}
    pipeline: demo-phantom-onnx
    outputs: [SEG]
    destinations: [orthanc]
"""


@pytest.fixture(scope="module")
def metrics_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    folder = tmp_path_factory.mktemp("metrics-node")
    rules = write_rules(folder / "rules.yaml", RULES)
    node = start_node(folder / "node", routing_rules=rules)
    yield node
    node.stop()


def scrape(node: Node) -> dict[str, Metric]:
    response = node.get("/ai/metrics")
    response.raise_for_status()
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def value(families: dict[str, Metric], name: str, sample: str, **labels: str) -> float:
    """One sample's value; 0 when the labelled series does not exist yet (a fresh counter)."""
    for s in families[name].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    return 0.0


@pytest.mark.integration
def test_counters_move_with_a_push_through_a_rule(metrics_node: Node, tmp_path: Path) -> None:
    before = scrape(metrics_node)
    assert {f.type for f in before.values()} <= {"gauge", "counter", "histogram"}
    assert value(before, "ainode_broker_up", "ainode_broker_up") == 1
    assert value(before, "ainode_workers", "ainode_workers") >= 1
    queues = {s.labels["queue"] for s in before["ainode_broker_queue_messages"].samples}
    assert queues == set(every_queue_name())

    ids = SeriesIds()
    phantom = make_phantom(Geometry(shape=(16, 40, 40), spacing=(3.0, 1.5, 1.5)), seed=11)
    paths = write_series(phantom, tmp_path / "series", ids)
    metrics_node.storescu(paths)

    def finished() -> bool:
        jobs = metrics_node.json(f"/ai/jobs?series={ids.series_uid}")["jobs"]
        return bool(jobs) and jobs[0]["state"] in ("done", "failed")

    wait_for(finished, 90, 0.3, "the pushed series' job to finish")
    job = metrics_node.json(f"/ai/jobs?series={ids.series_uid}")["jobs"][0]
    assert job["state"] == "done", job
    after = scrape(metrics_node)

    received = "ainode_instances_received_total"
    assert value(after, "ainode_instances_received", received, origin="dicom_protocol") - value(
        before, "ainode_instances_received", received, origin="dicom_protocol"
    ) == len(paths)
    # The worker stored its SEG through Orthanc's REST API.
    assert value(after, "ainode_instances_received", received, origin="rest_api") > value(
        before, "ainode_instances_received", received, origin="rest_api"
    )
    decided = "ainode_decisions_total"
    assert (
        value(after, "ainode_decisions", decided, decided_by="metrics-onnx")
        - value(before, "ainode_decisions", decided, decided_by="metrics-onnx")
        == 1
    )
    assert (
        value(after, "ainode_jobs", "ainode_jobs", state="done")
        - value(before, "ainode_jobs", "ainode_jobs", state="done")
        == 1
    )

    labels = {"pipeline": "demo-phantom-onnx", "outcome": "done"}
    name = "ainode_job_duration_seconds"
    count = value(after, name, f"{name}_count", **labels)
    assert count - value(before, name, f"{name}_count", **labels) == 1
    assert value(after, name, f"{name}_sum", **labels) > 0
    buckets = [
        (float(s.labels["le"]), s.value)
        for s in after[name].samples
        if s.name == f"{name}_bucket" and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert buckets == sorted(buckets), "buckets in increasing order"
    assert [n for _, n in buckets] == sorted(n for _, n in buckets), "cumulative counts"
    assert buckets[-1] == (math.inf, count)
    # The finished job's own duration falls in the buckets it should.
    seconds = (_parse(job["finished_at"]) - _parse(job["started_at"])).total_seconds()
    for bound, n in buckets:
        if bound >= seconds:
            assert n >= 1


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- the parts, without a node ------------------------------------------------------------


class _StoredDicom:
    """What Orthanc hands the stored-instance callback, as far as the counter reads it."""

    def __init__(self, origin: int) -> None:
        self.origin = origin

    def GetInstanceOrigin(self) -> int:  # Orthanc's name
        return self.origin


def test_label_values_with_quotes_backslashes_and_newlines_parse_back(tmp_path: Path) -> None:
    odd = 'rule "a"\\b\nc'
    with JobStore.in_data_dir(tmp_path) as store:
        metrics = NodeMetrics(
            store, queue_lengths=lambda: None, workers=list, origin_names={7: odd, 1: "plain"}
        )
        for origin in (7, 7, 7, 1):
            metrics.ingest.on_stored_instance(_StoredDicom(origin), "instance-id")
        text = metrics.render().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {
        tuple(s.labels.items()): s.value
        for s in families["ainode_instances_received"].samples
        if s.name == "ainode_instances_received_total"
    }
    assert samples == {(("origin", odd),): 3.0, (("origin", "plain"),): 1.0}


def test_in_memory_histogram_is_cumulative_and_parses(tmp_path: Path) -> None:
    with JobStore.in_data_dir(tmp_path) as store:
        metrics = NodeMetrics(store, queue_lengths=lambda: None, workers=list)
        for seconds in (0.05, 0.5, 0.7, 3.0):
            metrics.interactive.observe(seconds, route="segment", status="2xx")
        text = metrics.render().decode()
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    name = "ainode_interactive_request_seconds"
    got = {(s.name, s.labels.get("le")): s.value for s in parsed[name].samples}
    assert got[(f"{name}_bucket", "0.1")] == 1
    assert got[(f"{name}_bucket", "1.0")] == 3
    assert got[(f"{name}_bucket", "+Inf")] == 4
    assert got[(f"{name}_count", None)] == 4
    assert got[(f"{name}_sum", None)] == pytest.approx(4.25)


def test_forwarded_interactive_requests_are_timed(tmp_path: Path) -> None:
    router = Router()
    router.add(r"/ai/interactive/segment", "POST", lambda request: Response.json({"session": "s"}))
    router.add(
        r"/ai/interactive/sessions/([a-z]+)/(reset|accept)",
        "POST",
        lambda request: Response.json({"error": "no session"}, 404),
    )
    router.add(r"/ai/jobs", "GET", lambda request: Response.json({}))
    with JobStore.in_data_dir(tmp_path) as store:
        metrics = NodeMetrics(store, queue_lengths=lambda: None, workers=list)
        instrument_interactive(router, metrics)
        instrument_interactive(router, metrics)  # idempotent: timed once
        router.dispatch(Request("POST", "/ai/interactive/segment"))
        router.dispatch(Request("POST", "/ai/interactive/sessions/abc/accept"))
        router.dispatch(Request("GET", "/ai/jobs"))
        text = metrics.render().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    counts = {
        (s.labels["route"], s.labels["status"]): s.value
        for s in families["ainode_interactive_request_seconds"].samples
        if s.name.endswith("_count")
    }
    assert counts == {("segment", "2xx"): 1, ("accept", "4xx"): 1}
    assert value(families, "ainode_broker_up", "ainode_broker_up") == 0


def test_queue_lengths_are_none_when_redis_does_not_answer() -> None:
    port = _closed_port()
    lengths = broker_queue_lengths(f"redis://127.0.0.1:{port}/0", ["ainode.default"], 0.2)
    assert lengths() is None


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
