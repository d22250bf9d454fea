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
  the plugin forwards to the interactive segmentation service, as viewers see them (the
  service's own per-stage timings are in each answer's ``timings``).

The text is written here rather than with ``prometheus_client``: the plugin runs inside Orthanc
with only the node's light dependencies, and the format is a few lines of rules.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ainode.jobs import JobState
from ainode_plugin.jobstore import JobStore

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

JOB_DURATION_BUCKETS_S = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
INTERACTIVE_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
_FINISHED = (JobState.DONE, JobState.FAILED)


@dataclass(frozen=True)
class Sample:
    suffix: str  # "" or, for histograms, "_bucket", "_sum", "_count"
    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass
class Family:
    """One metric: its name, type, help line and samples.

    In format 0.0.4 a counter's name (in ``# TYPE`` too) ends with ``_total``; a histogram's
    samples add ``_bucket``, ``_sum`` and ``_count`` to its name.
    """

    name: str
    kind: str  # gauge | counter | histogram
    help: str
    samples: list[Sample] = field(default_factory=list)

    def add(self, value: float, suffix: str = "", **labels: str) -> None:
        self.samples.append(Sample(suffix, tuple(labels.items()), float(value)))


def render(families: Iterable[Family]) -> bytes:
    """The text exposition format 0.0.4 of ``families``."""
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for sample in family.samples:
            labels = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sample.labels)
            name = family.name + sample.suffix
            lines.append(
                f"{name}{{{labels}}} {_number(sample.value)}"
                if labels
                else f"{name} {_number(sample.value)}"
            )
    return ("\n".join(lines) + "\n").encode("utf-8")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def _le(bound: float) -> str:
    """A bucket bound as Prometheus' own clients write it (``1.0``, ``2.5``, ``+Inf``)."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


class Histogram:
    """A thread-safe in-memory histogram per label set (cumulative buckets at render)."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(sorted(buckets))
        self._lock = threading.Lock()
        self._series: dict[tuple[tuple[str, str], ...], list[float]] = {}

    def observe(self, seconds: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            # counts per bucket (non-cumulative), then +Inf count, then sum
            row = self._series.setdefault(key, [0.0] * (len(self.buckets) + 2))
            for i, bound in enumerate(self.buckets):
                if seconds <= bound:
                    row[i] += 1
                    break
            else:
                row[len(self.buckets)] += 1
            row[-1] += seconds

    def fill(self, family: Family) -> None:
        with self._lock:
            series = {key: list(row) for key, row in self._series.items()}
        for key, row in sorted(series.items()):
            labels = dict(key)
            cumulative = 0.0
            for bound, count in zip((*self.buckets, math.inf), row[:-1], strict=True):
                cumulative += count
                family.add(cumulative, "_bucket", **labels, le=_le(bound))
            family.add(row[-1], "_sum", **labels)
            family.add(cumulative, "_count", **labels)


class IngestCounter:
    """Instances Orthanc stored, by origin. The callback only increments: no work, no I/O."""

    def __init__(self, origin_names: Mapping[int, str] | None = None) -> None:
        self.origin_names = dict(origin_names or {})
        self._lock = threading.Lock()
        self._counts: dict[int, int] = {}

    def on_stored_instance(self, dicom: Any, instance_id: str) -> None:
        """Orthanc's stored-instance callback (runs on Orthanc's threads, holding the GIL)."""
        origin = int(dicom.GetInstanceOrigin())
        with self._lock:
            self._counts[origin] = self._counts.get(origin, 0) + 1

    def counts(self) -> dict[str, int]:
        """Counts by origin name (``dicom_protocol``, ``rest_api``, ``plugins``, ...)."""
        with self._lock:
            counts = dict(self._counts)
        named: dict[str, int] = {}
        for code, count in counts.items():
            name = self.origin_names.get(code, f"origin_{code}")
            named[name] = named.get(name, 0) + count
        return named


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
        self.queue_lengths = queue_lengths
        self.workers = workers
        self.ingest = IngestCounter(origin_names)
        self.interactive = Histogram(INTERACTIVE_BUCKETS_S)
        self.started_at = clock()

    def families(self) -> list[Family]:
        jobs = Family("ainode_jobs", "gauge", "Job records in each state (queued = queue depth).")
        for state, count in self.store.counts_by_state().items():
            jobs.add(count, state=state.value)

        decisions = Family(
            "ainode_decisions_total", "counter", "Routing decisions, by deciding rule or guard."
        )
        for name, count in sorted(self.store.counts_by_decider().items()):
            decisions.add(count, decided_by=name)

        durations = Family(
            "ainode_job_duration_seconds",
            "histogram",
            "Run time of finished jobs (started to finished), by pipeline and outcome; "
            "rebuilt from the job store at each scrape.",
        )
        for pipeline, outcome, cumulative, count, total in job_duration_rows(
            self.store.path, JOB_DURATION_BUCKETS_S
        ):
            for bound, n in zip(JOB_DURATION_BUCKETS_S, cumulative, strict=True):
                durations.add(n, "_bucket", pipeline=pipeline, outcome=outcome, le=_le(bound))
            durations.add(count, "_bucket", pipeline=pipeline, outcome=outcome, le="+Inf")
            durations.add(total, "_sum", pipeline=pipeline, outcome=outcome)
            durations.add(count, "_count", pipeline=pipeline, outcome=outcome)

        broker_up = Family("ainode_broker_up", "gauge", "1 when Redis answered this scrape.")
        queues = Family(
            "ainode_broker_queue_messages", "gauge", "Tasks waiting in each Celery queue."
        )
        lengths = self.queue_lengths()
        broker_up.add(1 if lengths is not None else 0)
        for name, length in sorted((lengths or {}).items()):
            queues.add(length, queue=name)

        workers = Family("ainode_workers", "gauge", "Celery workers answering a ping.")
        workers.add(len(self.workers()))

        ingest = Family(
            "ainode_instances_received_total", "counter", "Instances stored by Orthanc, by origin."
        )
        for origin, count in sorted(self.ingest.counts().items()):
            ingest.add(count, origin=origin)

        interactive = Family(
            "ainode_interactive_request_seconds",
            "histogram",
            "Round trip of requests forwarded to the interactive segmentation service.",
        )
        self.interactive.fill(interactive)

        started = Family(
            "ainode_plugin_start_time_seconds",
            "gauge",
            "When the plugin started (Unix time); in-memory counters restart from zero then.",
        )
        started.add(self.started_at)
        return [
            jobs,
            decisions,
            durations,
            broker_up,
            queues,
            workers,
            ingest,
            interactive,
            started,
        ]

    def render(self) -> bytes:
        return render(self.families())
