"""Sessions: one user's work on a series, kept within a memory budget.

A session is what makes the second click fast: the volume is loaded and the slices the first
click touched are already encoded. The volume and those features belong to the series, not to
the session: every session on a series shares one :class:`~.series.SharedSeries` (see
:mod:`.series`); a session itself holds its last mask. Sessions are independent, so several
users work on different series at once. The store evicts only when it must, and only what
nobody is using:

* a session idle for longer than ``idle_ttl_s`` expires;
* a series whose features outgrow ``max_session_bytes`` drops its own least recently used
  features first (one huge series must not push everybody else out);
* while the whole service holds more than ``max_total_bytes``, the least recently used series
  that no session uses goes first, then the least recently used *idle* session (releasing its
  series); a session serving a request is never touched.

Requests on one session are serialised by the session's lock (the caller holds it while it
works); the store's own lock only guards its table and is never held during slow work.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ainode_worker.volume import Volume

from .cache import FeatureCache, trim_largest_first
from .errors import SessionNotFoundError
from .prompts import Bounds, Mask
from .series import SeriesCache, SharedSeries

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(frozen=True)
class VolumeView:
    """What a backend sees of a volume: voxels and their spacing (slice, row, column) in mm."""

    array: np.ndarray[Any, np.dtype[np.float32]]
    spacing: tuple[float, float, float]


@dataclass
class Session:
    id: str
    series: str
    created: float
    last_used: float
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    volume: Volume | None = None
    caches: dict[str, FeatureCache] = field(default_factory=dict)  # the series' when shared
    shared: SharedSeries | None = None
    last_mask: Mask | None = None
    last_bounds: Bounds | None = None  # where last_mask is nonzero
    last_model: str | None = None
    requests: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    closed: bool = False

    @property
    def view(self) -> VolumeView:
        if self.volume is None:
            raise SessionNotFoundError(f"session {self.id} has no volume loaded")
        return VolumeView(self.volume.array, self.volume.spacing)

    def cache(self, model: str) -> FeatureCache:
        return self.caches.setdefault(model, FeatureCache())

    def attach(self, shared: SharedSeries) -> None:
        """Work on ``shared``'s volume and features (the caller opened it for this session)."""
        self.shared = shared
        self.volume = shared.volume
        self.caches = shared.caches

    @property
    def own_nbytes(self) -> int:
        """Memory this session alone holds: its mask, and volume and features if not shared."""
        mask = int(self.last_mask.nbytes) if self.last_mask is not None else 0
        return mask if self.shared is not None else self.nbytes

    @property
    def nbytes(self) -> int:
        """Host memory this session holds: volume, features and the last mask."""
        volume = int(self.volume.array.nbytes) if self.volume is not None else 0
        mask = int(self.last_mask.nbytes) if self.last_mask is not None else 0
        return volume + mask + sum(c.nbytes for c in self.caches.values())

    @property
    def gpu_nbytes(self) -> int:
        return sum(c.gpu_nbytes for c in self.caches.values())

    def trim_features(self, max_bytes: int) -> int:
        """Drop least recently used features, largest cache first, to fit ``max_bytes``."""
        return trim_largest_first(list(self.caches.values()), lambda: self.nbytes, max_bytes)

    def summary(self, now: float) -> dict[str, Any]:
        shape = list(self.volume.array.shape) if self.volume is not None else None
        return {
            "session": self.id,
            "series_uid": self.volume.series_uid if self.volume is not None else None,
            "shape": shape,
            "model": self.last_model,
            "bytes": self.nbytes,
            "gpu_bytes": self.gpu_nbytes,
            "idle_s": round(max(now - self.last_used, 0.0), 1),
            "requests": self.requests,
            "busy": self.lock.locked(),
            "peak_in_flight": self.peak_in_flight,
            "cache": {
                name: {"entries": len(c), "bytes": c.nbytes, "hits": c.hits, "misses": c.misses}
                for name, c in self.caches.items()
            },
        }


class SessionStore:
    def __init__(
        self,
        *,
        max_total_bytes: int,
        max_session_bytes: int,
        idle_ttl_s: float,
        clock: Clock = time.monotonic,
        series: SeriesCache | None = None,
    ) -> None:
        self.series = series
        self.max_total_bytes = max_total_bytes
        self.max_session_bytes = max_session_bytes
        self.idle_ttl_s = idle_ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # least recently used first

    def create(self, series: str, session_id: str | None = None) -> Session:
        now = self._clock()
        session = Session(
            id=session_id or uuid.uuid4().hex, series=series, created=now, last_used=now
        )
        with self._lock:
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str) -> Session:
        self.sweep()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                raise SessionNotFoundError(
                    f"no session '{session_id}': it expired after "
                    f"{self.idle_ttl_s:g} s idle, was evicted for memory, or never existed; "
                    "send the request without a session to start a new one"
                )
            self._sessions.move_to_end(session_id)
            return session

    def get_or_create(self, session_id: str, series: str) -> Session:
        """The session with this fixed id (MONAI Label's per-series sessions), made if absent."""
        self.sweep()
        now = self._clock()
        with self._lock:  # one lookup-and-insert, so concurrent callers share one session
            session = self._sessions.get(session_id)
            if session is None or session.closed:
                session = Session(id=session_id, series=series, created=now, last_used=now)
                self._sessions[session_id] = session
            self._sessions.move_to_end(session_id)
            return session

    def touch(self, session: Session) -> None:
        session.last_used = self._clock()
        with self._lock:
            if session.id in self._sessions:
                self._sessions.move_to_end(session.id)

    def remove(self, session_id: str) -> bool:
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        session.closed = True
        self.detach(session)
        return True

    def sessions(self) -> list[Session]:
        with self._lock:
            return list(self._sessions.values())

    def total_bytes(self) -> int:
        """Sessions' own memory plus every shared series once."""
        shared = self.series.nbytes() if self.series is not None else 0
        return shared + sum(s.own_nbytes for s in self.sessions())

    def sweep(self) -> list[str]:
        """Close sessions idle for longer than the TTL (busy ones are left alone)."""
        deadline = self._clock() - self.idle_ttl_s
        expired = [s for s in self.sessions() if s.last_used < deadline]
        closed = [s.id for s in expired if self._close_if_idle(s)]
        if closed:
            log.info("expired %d idle session(s)", len(closed))
        return closed

    def enforce_budget(self, current: Session | None = None) -> list[str]:
        """Bring memory within the budgets; returns the ids of evicted sessions.

        ``current`` is the session whose request just finished; the caller still holds its
        lock, so it may be trimmed but is never evicted.
        """
        self.sweep()
        if current is not None and current.nbytes > self.max_session_bytes:
            freed = current.trim_features(self.max_session_bytes)
            log.info("session %s over its budget: dropped %d bytes of features", current.id, freed)
        evicted: list[str] = []
        while self.series is not None and self.total_bytes() > self.max_total_bytes:
            if self.series.evict_unused() is None:
                break
        for candidate in self.sessions():  # least recently used first
            if self.total_bytes() <= self.max_total_bytes:
                break
            if candidate is current:
                continue
            if self._close_if_idle(candidate):
                evicted.append(candidate.id)
                while self.series is not None and self.total_bytes() > self.max_total_bytes:
                    if self.series.evict_unused() is None:
                        break
        if evicted:
            log.info("evicted %d idle session(s) to stay within memory", len(evicted))
        if current is not None and self.total_bytes() > self.max_total_bytes:
            allowed = max(self.max_total_bytes - (self.total_bytes() - current.nbytes), 0)
            current.trim_features(allowed)
        return evicted

    def _close_if_idle(self, session: Session) -> bool:
        if not session.lock.acquire(blocking=False):
            return False
        try:
            with self._lock:
                if self._sessions.get(session.id) is session:
                    del self._sessions[session.id]
            session.closed = True
            self.detach(session)
            session.last_mask = None
            session.last_bounds = None
            return True
        finally:
            session.lock.release()

    def detach(self, session: Session) -> None:
        """Let go of the session's volume and features (its series keeps them if shared)."""
        shared, session.shared = session.shared, None
        session.caches = {}
        session.volume = None
        if shared is not None and self.series is not None:
            self.series.release(shared)
