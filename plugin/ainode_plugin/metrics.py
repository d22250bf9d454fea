"""Prometheus metrics of the node at ``GET /ai/metrics`` (text exposition format 0.0.4).

Most values are read from the job store when Prometheus scrapes, so they survive restarts and
cost nothing between scrapes:

* ``ainode_jobs{state}`` (gauge): records in each job state; ``state="queued"`` is the queue
  depth as the node sees it, ``ainode_broker_queue_messages{queue}`` the tasks waiting in each
  Celery queue in Redis (``LLEN``), absent when Redis does not answer (``ainode_broker_up 0``).
* ``ainode_decisions_total{decided_by}`` (counter): routing decisions per deciding rule or
  guard (``no-rule-matched``, ``guard:...``, ``manual:<pipeline>`` for "Run AI").
* ``ainode_job_duration_seconds{pipeline,outcome}`` (histogram): started-to-finished time of
  every done or failed job, built at scrape time from the store's ``started_at``/``finished_at``.
  Being rebuilt from the records, it moves back when a failed job is retried (its times are
  cleared); Prometheus reads that as a counter reset, which ``rate()`` tolerates.

Two values are counted in memory since the plugin started (``ainode_plugin_start_time_seconds``
tells Prometheus when they restarted from zero):

* ``ainode_instances_received_total{origin}``: instances Orthanc stored (its stored-instance
  callback only increments a counter).
* ``ainode_interactive_request_seconds{route,status}`` (histogram): round trip of the requests
  the plugin forwards to the interactive segmentation service, which are those of clients of
  Orthanc's own port. Clicks through the node's door go straight to the service and are not
  here: the service counts every click itself at ``/ai/interactive/metrics``
  (``ainode_worker.interactive.metrics``).

``prometheus_client`` writes the text: the in-memory values are its ``Counter`` and
``Histogram`` (which add the standard ``_created`` series), the job store's are read by a custom
collector, :class:`JobStoreCollector`, at each scrape.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector

from ainode.jobs import JobState
from ainode_plugin.jobstore import JobStore

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

JOB_DURATION_BUCKETS_S = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
INTERACTIVE_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
_FINISHED = (JobState.DONE, JobState.FAILED)


class IngestCounter:
    """Instances Orthanc stored, by origin. The callback only increments: no work, no I/O."""

    def __init__(self, counter: Counter, origin_names: Mapping[int, str] | None = None) -> None:
        self.origin_names = dict(origin_names or {})
        self._counter = counter

    def on_stored_instance(self, dicom: Any, instance_id: str) -> None:
        """Orthanc's stored-instance callback (runs on Orthanc's threads, holding the GIL)."""
        code = int(dicom.GetInstanceOrigin())
        self._counter.labels(origin=self.origin_names.get(code, f"origin_{code}")).inc()


class RequestTimings:
    """Round trips of forwarded requests, ``observe(seconds, route=..., status=...)``."""

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram

    def observe(self, seconds: float, **labels: str) -> None:
        self._histogram.labels(**labels).observe(seconds)


def job_duration_rows(
    db_path: Path, buckets: Sequence[float]
) -> list[tuple[str, str, list[int], int, float]]:
    """Per (pipeline, outcome): cumulative bucket counts, count and sum of run durations.

    Aggregated by SQLite in one query over a read-only connection of its own (WAL lets it read
    beside the plugin's writer), so a scrape costs one pass over finished jobs and builds no
    objects. It reads the job store's ``jobs`` columns directly, as :mod:`.jobstore` has no
    aggregate for durations; tests/integration/test_metrics.py keeps the two in step.
    """
    bucket_columns = ", ".join("SUM(CASE WHEN d <= ? THEN 1 ELSE 0 END)" for _ in buckets)
    query = (
        f"SELECT pipeline, state, {bucket_columns}, COUNT(*), SUM(d) FROM ("  # noqa: S608
        "SELECT COALESCE(pipeline, '') AS pipeline, state, "
        "MAX(finished_at - started_at, 0.0) AS d FROM jobs "
        f"WHERE state IN ({', '.join('?' for _ in _FINISHED)}) "
        "AND started_at IS NOT NULL AND finished_at IS NOT NULL"
        ") GROUP BY pipeline, state ORDER BY pipeline, state"
    )
    params = (*(float(b) for b in buckets), *(state.value for state in _FINISHED))
    db = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    try:
        rows = db.execute(query, params).fetchall()
    finally:
        db.close()
    result = []
    for row in rows:
        pipeline, state, *bucket_counts, count, total = row
        result.append(
            (str(pipeline), str(state), [int(c) for c in bucket_counts], int(count), float(total))
        )
    return result


QueueLengths = Callable[[], Mapping[str, int] | None]


class JobStoreCollector(Collector):
    """The values read at each scrape: job store counts and durations, broker and workers."""

    def __init__(
        self,
        store: JobStore,
        queue_lengths: QueueLengths,
        workers: Callable[[], Sequence[str]],
    ) -> None:
        self.store = store
        self.queue_lengths = queue_lengths
        self.workers = workers

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            "ainode_jobs", "Job records in each state (queued = queue depth).", labels=["state"]
        )
        for state, count in self.store.counts_by_state().items():
            jobs.add_metric([state.value], count)
        yield jobs

        decisions = CounterMetricFamily(
            "ainode_decisions",
            "Routing decisions, by deciding rule or guard.",
            labels=["decided_by"],
        )
        for name, count in sorted(self.store.counts_by_decider().items()):
            decisions.add_metric([name], count)
        yield decisions

        durations = HistogramMetricFamily(
            "ainode_job_duration_seconds",
            "Run time of finished jobs (started to finished), by pipeline and outcome; "
            "rebuilt from the job store at each scrape.",
            labels=["pipeline", "outcome"],
        )
        for pipeline, outcome, cumulative, count, total in job_duration_rows(
            self.store.path, JOB_DURATION_BUCKETS_S
        ):
            buckets = [
                *(
                    (repr(bound), n)
                    for bound, n in zip(JOB_DURATION_BUCKETS_S, cumulative, strict=True)
                ),
                ("+Inf", count),
            ]
            durations.add_metric([pipeline, outcome], buckets, sum_value=total)
        yield durations

        lengths = self.queue_lengths()
        yield GaugeMetricFamily(
            "ainode_broker_up", "1 when Redis answered this scrape.", value=int(lengths is not None)
        )
        queues = GaugeMetricFamily(
            "ainode_broker_queue_messages", "Tasks waiting in each Celery queue.", labels=["queue"]
        )
        for name, length in sorted((lengths or {}).items()):
            queues.add_metric([name], length)
        yield queues
        yield GaugeMetricFamily(
            "ainode_workers", "Celery workers answering a ping.", value=len(self.workers())
        )


class NodeMetrics:
    """Everything ``/ai/metrics`` reports; ``render()`` is called once per scrape."""

    def __init__(
        self,
        store: JobStore,
        *,
        queue_lengths: QueueLengths,
        workers: Callable[[], Sequence[str]],
        origin_names: Mapping[int, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        # A registry of its own: nothing of prometheus_client's process-wide default one.
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(JobStoreCollector(store, queue_lengths, workers))
        received = Counter(
            "ainode_instances_received",
            "Instances stored by Orthanc, by origin.",
            ["origin"],
            registry=self.registry,
        )
        self.ingest = IngestCounter(received, origin_names)
        self.interactive = RequestTimings(
            Histogram(
                "ainode_interactive_request_seconds",
                "Round trip of requests the plugin forwards to the interactive segmentation "
                "service (clients of Orthanc's port; the door's go straight to the service).",
                ["route", "status"],
                buckets=INTERACTIVE_BUCKETS_S,
                registry=self.registry,
            )
        )
        self.started_at = clock()
        Gauge(
            "ainode_plugin_start_time_seconds",
            "When the plugin started (Unix time); in-memory counters restart from zero then.",
            registry=self.registry,
        ).set(self.started_at)

    def render(self) -> bytes:
        return generate_latest(self.registry)
