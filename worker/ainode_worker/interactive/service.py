"""The interactive service without HTTP: sessions, backends, concurrency and results.

One request runs as: pick the backend (unknown model: error before any work), find or create
the session, take the session's lock (requests on one session run one after another), load
the volume once per session, take a compute slot (at most ``max_concurrent`` segmentations
run at once across sessions), segment, remember the mask, then let the store trim memory.
Waiting for the session or for a slot is bounded by ``wait_timeout_s``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset

from ainode_worker.orthanc import OrthancClient, StoredInstance
from ainode_worker.volume import Volume

from .accept import build_accepted_seg, dicom_bytes
from .backends import Backend, build_backend
from .config import AcceptedLabel, InteractiveConfig
from .errors import (
    BadRequestError,
    BusyError,
    ModelUnavailableError,
    NothingToAcceptError,
    SeriesMismatchError,
    SeriesNotFoundError,
    SessionNotFoundError,
    UnknownModelError,
)
from .metrics import ServiceMetrics
from .orthanc import orthanc_errors
from .prompts import Bounds, Box, Mask, Point, Prompts, mask_bounds, voxel_count
from .series import SeriesCache, SharedSeries
from .sessions import Clock, Session, SessionStore, VolumeView
from .volumes import VolumeLoader

log = logging.getLogger(__name__)


@dataclass
class Timings:
    queue_ms: float = 0.0  # waiting for the session and for a compute slot
    load_ms: float = 0.0  # loading the series (first request of a session)
    embed_ms: float = 0.0  # computing features (slice embeddings, smoothed volume)
    decode_ms: float = 0.0  # prompt-dependent work
    total_ms: float = 0.0
    features_computed: int = 0
    features_reused: int = 0
    slices_decoded: int = 0
    decodes_reused: int = 0
    compute_started_s: float = 0.0  # server monotonic clock: lets clients order requests
    compute_finished_s: float = 0.0

    def rounded(self) -> dict[str, float | int]:
        """To 1 us (``*_ms`` to 3 decimals, ``*_s`` clock readings to 6): clicks can be < 1 ms."""
        return {
            k: round(v, 6 if k.endswith("_s") else 3) if isinstance(v, float) else v
            for k, v in self.__dict__.items()
        }


@dataclass
class SegmentResult:
    session: str
    series_uid: str
    model: str
    mask: Mask
    volume: Volume
    timings: Timings
    bounds: Bounds  # where ``mask`` is nonzero: later steps skip the empty rest of the grid
    opened: bool = False  # this request opened the session's series (its first click)

    @property
    def voxels(self) -> int:
        return voxel_count(self.mask, self.bounds)


@dataclass
class AcceptResult:
    session: str
    series_uid: str
    mask: Mask
    seg: Dataset
    stored: StoredInstance | None
    bounds: Bounds | None = None  # where ``mask`` is nonzero, when known

    def seg_bytes(self) -> bytes:
        return dicom_bytes(self.seg)


class InteractiveService:
    def __init__(
        self,
        config: InteractiveConfig,
        loader: VolumeLoader,
        *,
        backends: Mapping[str, Backend] | None = None,
        orthanc: OrthancClient | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.config = config
        self.loader = loader
        self.orthanc = orthanc
        self.backends: dict[str, Backend] = (
            dict(backends)
            if backends is not None
            else {
                name: build_backend(name, model, gpu_min_free_bytes=config.gpu_min_free_bytes)
                for name, model in config.models.items()
            }
        )
        self._clock = clock
        self.store = SessionStore(
            max_total_bytes=config.max_total_bytes,
            max_session_bytes=config.max_session_bytes,
            idle_ttl_s=config.idle_ttl_s,
            clock=clock,
            series=SeriesCache(loader, clock),
        )
        self._slots = threading.BoundedSemaphore(config.max_concurrent)
        self._gauge_lock = threading.Lock()
        self.in_flight = 0
        self.peak_in_flight = 0
        self.started = time.monotonic()
        self.metrics = ServiceMetrics(self.store, in_flight=lambda: self.in_flight)

    def loadable_backends(self) -> dict[str, Backend]:
        """The backends whose weights load, as MONAI Label lists its models (it loads at start).

        Each is loaded once, on the first ask (weights are otherwise loaded on first use); one
        that cannot be is left out with its reason logged, and asked again next time, so weights
        installed later appear without a restart.
        """
        loadable = {}
        for name, backend in self.backends.items():
            try:
                backend.ensure_ready()
            except ModelUnavailableError as error:
                log.warning("interactive model %s is not offered: %s", name, error)
                continue
            loadable[name] = backend
        return loadable

    def backend(self, model: str) -> Backend:
        try:
            return self.backends[model]
        except KeyError:
            raise UnknownModelError(
                f"unknown model '{model}'; this service offers: {', '.join(sorted(self.backends))}"
            ) from None

    def segment(
        self,
        *,
        model: str,
        series: str | None = None,
        points: tuple[Point, ...] = (),
        boxes: tuple[Box, ...] = (),
        session: str | None = None,
        use_previous_mask: bool = False,
        keyed_session: str | None = None,
    ) -> SegmentResult:
        """Segment from prompts; ``keyed_session`` names a session that is made if missing."""
        try:
            result = self._segment(
                model, series, points, boxes, session, use_previous_mask, keyed_session
            )
        except Exception as error:
            self.metrics.click_failed(model if model in self.backends else "unknown", error)
            raise
        self.metrics.click(model, result.timings.total_ms / 1000.0, first=result.opened)
        return result

    def _segment(
        self,
        model: str,
        series: str | None,
        points: tuple[Point, ...],
        boxes: tuple[Box, ...],
        session: str | None,
        use_previous_mask: bool,
        keyed_session: str | None,
    ) -> SegmentResult:
        begin = time.perf_counter()
        backend = self.backend(model)
        state = self._session(series, session, keyed_session)
        timings = Timings()
        with self._locked(state):
            opened = state.volume is None
            shared, timings.load_ms = self._attach(state, series)
            source = state.volume
            if source is None:  # closed by another request since
                raise SessionNotFoundError(f"session {state.id} was closed; start a new one")
            view = VolumeView(source.array, source.spacing)
            keep = use_previous_mask and state.last_model == model
            prompts = Prompts(
                points=points,
                boxes=boxes,
                previous_mask=state.last_mask if keep else None,
                previous_bounds=state.last_bounds if keep else None,
            )
            prompts.validate(source.shape)
            backend.ensure_ready()
            waited = time.perf_counter()
            with self._slot(), self._features(shared):
                timings.queue_ms += (time.perf_counter() - waited) * 1000.0
                timings.compute_started_s = time.monotonic()
                outcome = backend.segment(view, prompts, state.cache(model))
                timings.compute_finished_s = time.monotonic()
                bounds = outcome.bounds if outcome.bounds is not None else mask_bounds(outcome.mask)
                state.last_mask = outcome.mask
                state.last_bounds = bounds
                state.last_model = model
                state.requests += 1
                self.store.touch(state)
                self.store.enforce_budget(state)  # may trim the series' features: under its lock
        timings.embed_ms = outcome.embed_ms
        timings.decode_ms = outcome.decode_ms
        timings.features_computed = outcome.features_computed
        timings.features_reused = outcome.features_reused
        timings.slices_decoded = outcome.slices_decoded
        timings.decodes_reused = outcome.decodes_reused
        timings.total_ms = (time.perf_counter() - begin) * 1000.0
        result = SegmentResult(
            state.id, source.series_uid, model, outcome.mask, source, timings, bounds, opened
        )
        log.info(
            "segment %s session=%s voxels=%d load=%.0fms embed=%.0fms decode=%.0fms total=%.0fms",
            model,
            state.id,
            result.voxels,
            timings.load_ms,
            timings.embed_ms,
            timings.decode_ms,
            timings.total_ms,
        )
        return result

    def reset(self, session: str) -> dict[str, Any]:
        """Forget the session's mask (start a new object); keep its volume and features."""
        state = self.store.get(session)
        with self._locked(state):
            state.last_mask = None
            state.last_bounds = None
            state.last_model = None
            self.store.touch(state)
        return {"session": state.id, "reset": True}

    def accept(
        self, session: str, *, label: AcceptedLabel | None = None, store: bool | None = None
    ) -> AcceptResult:
        """The session's last mask as a DICOM-SEG, stored in Orthanc when configured."""
        state = self.store.get(session)
        with self._locked(state):
            if state.last_mask is None or state.volume is None or not state.last_mask.any():
                raise NothingToAcceptError(
                    f"session {state.id} holds no mask yet; segment first, then accept"
                )
            mask = state.last_mask
            bounds = state.last_bounds
            volume = state.volume
            model = state.last_model or "unknown"
            seg = build_accepted_seg(
                mask,
                volume.datasets,
                label or self.config.accepted_label,
                model=model,
                kind=self.backends[model].kind if model in self.backends else "unknown",
                session_id=state.id,
            )
            self.store.touch(state)
        stored = None
        if (self.config.store_accepted if store is None else store) and self.orthanc is not None:
            with orthanc_errors():
                stored = self.orthanc.store(dicom_bytes(seg))
            log.info(
                "accepted mask of session %s stored as Orthanc %s", state.id, stored.orthanc_id
            )
        return AcceptResult(state.id, volume.series_uid, mask, seg, stored, bounds)

    def close_session(self, session: str) -> bool:
        return self.store.remove(session)

    def prefetch(self, series: str) -> dict[str, Any]:
        """Start loading a series that a viewer opened, so that its first click finds it."""
        if not series.strip():
            raise BadRequestError("name the series to prefetch")
        assert self.store.series is not None
        return self.store.series.prefetch(series.strip()).summary(self._clock())

    def drop_series(self, series: str) -> dict[str, Any]:
        """Free a series no session uses (its next first click loads it again)."""
        assert self.store.series is not None
        shared = self.store.series.drop(series)
        if shared is None:
            raise SeriesNotFoundError(f"this service holds no series '{series}'")
        return {"series": series, "dropped": shared.users == 0, "users": shared.users}

    def series(self) -> list[dict[str, Any]]:
        """The shared series held: state, users, memory."""
        assert self.store.series is not None
        now = self._clock()
        return [s.summary(now) for s in self.store.series.entries()]

    def sessions(self) -> list[dict[str, Any]]:
        now = self._clock()
        return [s.summary(now) for s in self.store.sessions()]

    def health(self) -> dict[str, Any]:
        sessions = self.store.sessions()
        return {
            "status": "ok",
            "uptime_s": round(time.monotonic() - self.started, 1),
            "models": [b.describe() for b in self.backends.values()],
            "sessions": len(sessions),
            "series": len(self.store.series.entries()) if self.store.series is not None else 0,
            "bytes": self.store.total_bytes(),
            "gpu_bytes": sum(s.gpu_nbytes for s in self.store.series.entries())
            if self.store.series is not None
            else 0,
            "max_total_bytes": self.config.max_total_bytes,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "max_concurrent": self.config.max_concurrent,
        }

    def _session(self, series: str | None, session: str | None, keyed: str | None) -> Session:
        if session:
            return self.store.get(session)
        if not series:
            raise BadRequestError("name the series (or a session) to segment")
        if keyed:
            return self.store.get_or_create(keyed, series)
        return self.store.create(series)

    @contextmanager
    def _locked(self, state: Session) -> Iterator[None]:
        if not state.lock.acquire(timeout=self.config.wait_timeout_s):
            raise BusyError(
                f"session {state.id} stayed busy for {self.config.wait_timeout_s:g} s; try again"
            )
        try:
            if state.closed:
                self.store.get(state.id)  # raises SessionNotFoundError with the usual message
            yield
        finally:
            state.lock.release()

    @contextmanager
    def _slot(self) -> Iterator[None]:
        if not self._slots.acquire(timeout=self.config.wait_timeout_s):
            raise BusyError(
                f"all {self.config.max_concurrent} segmentation slots stayed busy for "
                f"{self.config.wait_timeout_s:g} s; try again"
            )
        with self._gauge_lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            yield
        finally:
            with self._gauge_lock:
                self.in_flight -= 1
            self._slots.release()

    @contextmanager
    def _features(self, shared: SharedSeries | None) -> Iterator[None]:
        """Hold the series' features: sessions on one series take turns at its caches."""
        if shared is None:
            yield
            return
        if not shared.lock.acquire(timeout=self.config.wait_timeout_s):
            raise BusyError(
                f"series {shared.reference} stayed busy for {self.config.wait_timeout_s:g} s; "
                "try again"
            )
        try:
            yield
        finally:
            shared.lock.release()

    def _attach(self, state: Session, series: str | None) -> tuple[SharedSeries | None, float]:
        """The session's shared series, opened if it has none, and the milliseconds it took.

        Opening a series another session holds (or a prefetch loaded) costs nothing; one
        being loaded is waited for; else this request loads it.
        """
        if state.volume is not None:
            if series and series not in (state.series, state.volume.series_uid):
                raise SeriesMismatchError(
                    f"session {state.id} holds series {state.volume.series_uid}, "
                    f"not '{series}'; send the request without a session to start a new one"
                )
            return state.shared, 0.0
        assert self.store.series is not None
        started = time.perf_counter()
        try:
            shared = self.store.series.open(state.series)
        except BaseException:
            # The session never became usable; drop it (a keyed one is made again).
            self.store.remove(state.id)
            raise
        state.attach(shared)
        if state.closed:  # closed while its series loaded
            self.store.detach(state)
            self.store.get(state.id)  # raises SessionNotFoundError with the usual message
        return shared, (time.perf_counter() - started) * 1000.0
