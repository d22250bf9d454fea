"""The interactive service's Prometheus metrics, ``GET /metrics`` (text format 0.0.4).

Clicks reach the service through the node's door without passing the plugin, so the service
times them itself; through the door this is ``/ai/interactive/metrics``, behind the node's
login like every other route of the service. Counted in memory since the service started
(``ainode_interactive_start_time_seconds`` says when):

* ``ainode_interactive_click_seconds{model,click}`` (histogram): the service's time for each
  answered segmentation request (its ``timings.total_ms``: waiting, opening the series,
  features, decoding), viewers' clicks and MONAI Label's ``infer`` alike. ``click="first"`` is
  the click that opened its session (it waits for the series when no prefetch loaded it),
  ``click="next"`` every later one.
* ``ainode_interactive_click_errors_total{model,error}``: segmentation requests refused or
  failed, by error type (``model="unknown"`` for a model the service does not offer).

Read from the service at each scrape:

* ``ainode_interactive_sessions``: open sessions.
* ``ainode_interactive_series{state}``: shared series held (``loading``, ``ready``,
  ``failed``), each once for all its sessions; ``ainode_interactive_series_bytes`` the memory
  they hold (volumes and cached features), ``ainode_interactive_series_gpu_bytes`` the part on
  the GPU.
* ``ainode_interactive_segmentations_in_flight``: segmentations computing now.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector

from .sessions import SessionStore

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
CLICK_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
SERIES_STATES = ("loading", "ready", "failed")


class ServiceCollector(Collector):
    """The values read at each scrape: sessions, shared series and their memory, work now."""

    def __init__(self, store: SessionStore, in_flight: Callable[[], int]) -> None:
        self.store = store
        self.in_flight = in_flight

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "ainode_interactive_sessions", "Open sessions.", value=len(self.store.sessions())
        )
        held = self.store.series.entries() if self.store.series is not None else []
        series = GaugeMetricFamily(
            "ainode_interactive_series",
            "Shared series held, each once for all its sessions, by state.",
            labels=["state"],
        )
        for state in SERIES_STATES:
            series.add_metric([state], sum(1 for s in held if s.state() == state))
        yield series
        yield GaugeMetricFamily(
            "ainode_interactive_series_bytes",
            "Memory of the shared series held: volumes and cached features.",
            value=sum(s.nbytes for s in held),
        )
        yield GaugeMetricFamily(
            "ainode_interactive_series_gpu_bytes",
            "The part of the shared series' cached features held on the GPU.",
            value=sum(s.gpu_nbytes for s in held),
        )
        yield GaugeMetricFamily(
            "ainode_interactive_segmentations_in_flight",
            "Segmentations computing now (at most max_concurrent).",
            value=self.in_flight(),
        )


class ServiceMetrics:
    """Everything the service's ``/metrics`` reports; ``render()`` is called once per scrape."""

    def __init__(
        self,
        store: SessionStore,
        *,
        in_flight: Callable[[], int],
        clock: Callable[[], float] = time.time,
    ) -> None:
        # A registry of its own: nothing of prometheus_client's process-wide default one.
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ServiceCollector(store, in_flight))
        self._clicks = Histogram(
            "ainode_interactive_click_seconds",
            "The service's time for each answered segmentation request, by model; "
            'click="first" opened its session.',
            ["model", "click"],
            buckets=CLICK_BUCKETS_S,
            registry=self.registry,
        )
        self._errors = Counter(
            "ainode_interactive_click_errors",
            "Segmentation requests refused or failed, by model and error type.",
            ["model", "error"],
            registry=self.registry,
        )
        Gauge(
            "ainode_interactive_start_time_seconds",
            "When the service started (Unix time); in-memory counters restart from zero then.",
            registry=self.registry,
        ).set(clock())

    def click(self, model: str, seconds: float, *, first: bool) -> None:
        self._clicks.labels(model=model, click="first" if first else "next").observe(seconds)

    def click_failed(self, model: str, error: BaseException) -> None:
        self._errors.labels(model=model, error=type(error).__name__).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
