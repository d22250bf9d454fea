"""One decoded volume per series, shared by every session and user working on it.

Fetching and decoding a series is most of a first click (80-92 % on a 200 x 512^2 CT), and a
volume is the bulk of the memory a session holds. So the service keeps one
:class:`SharedSeries` per series: the volume and each model's per-volume features (region
growing's smoothed volume and grown regions, SAM's slice embeddings), which depend on the
voxels and the prompts only, never on who asked. Sessions attach to it (a count of users);
a series nobody uses stays, least recently used first, until memory is needed, so a viewer
that reopens a series, or a series prefetched when a viewer opened it, costs no fetch.

Locks: the table's lock only guards the table; a series' ``load_lock`` makes concurrent
openers wait for one load instead of each loading; its ``lock`` serialises the work on its
features (a backend's caches are not thread-safe), and is held for one click at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ainode_worker.volume import Volume

from .cache import FeatureCache, trim_largest_first
from .volumes import VolumeLoader

log = logging.getLogger(__name__)


@dataclass
class SharedSeries:
    reference: str  # the name it was first opened by (Orthanc id or SeriesInstanceUID)
    last_used: float
    volume: Volume | None = None
    caches: dict[str, FeatureCache] = field(default_factory=dict)
    users: int = 0  # sessions attached
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    load_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    load_ms: float = 0.0
    error: str | None = None  # why the last load failed (a prefetch reports it here)

    @property
    def nbytes(self) -> int:
        volume = int(self.volume.array.nbytes) if self.volume is not None else 0
        return volume + sum(c.nbytes for c in list(self.caches.values()))

    @property
    def gpu_nbytes(self) -> int:
        return sum(c.gpu_nbytes for c in list(self.caches.values()))

    def cache(self, model: str) -> FeatureCache:
        return self.caches.setdefault(model, FeatureCache())

    def trim(self, max_bytes: int) -> int:
        """Drop least recently used features, largest cache first, to fit ``max_bytes``."""
        return trim_largest_first(list(self.caches.values()), lambda: self.nbytes, max_bytes)

    def state(self) -> str:
        if self.volume is not None:
            return "ready"
        return "failed" if self.error is not None else "loading"

    def summary(self, now: float) -> dict[str, Any]:
        volume = self.volume
        return {
            "series": self.reference,
            "series_uid": volume.series_uid if volume is not None else None,
            "state": self.state(),
            "shape": list(volume.array.shape) if volume is not None else None,
            "users": self.users,
            "bytes": self.nbytes,
            "load_ms": round(self.load_ms, 1),
            "idle_s": round(max(now - self.last_used, 0.0), 1),
            "error": self.error,
        }


class SeriesCache:
    """The shared series, by name; every name a series is known by leads to one entry."""

    def __init__(self, loader: VolumeLoader, clock: Callable[[], float] = time.monotonic) -> None:
        self.loader = loader
        self._clock = clock
        self._lock = threading.Lock()
        self._names: dict[str, SharedSeries] = {}
        self._entries: OrderedDict[int, SharedSeries] = OrderedDict()  # least recent first

    def open(self, reference: str) -> SharedSeries:
        """The series, loaded (by this call or another), with one more user; release it later."""
        shared = self._entry(reference, user=True)
        try:
            self._load(shared)
        except BaseException:
            self.release(shared)
            raise
        return self._merged(shared)

    def release(self, shared: SharedSeries) -> None:
        with self._lock:
            shared.users = max(shared.users - 1, 0)
            shared.last_used = self._clock()
            if shared.users == 0 and shared.volume is None:  # a failed load: forget it
                self._forget(shared)

    def prefetch(self, reference: str) -> SharedSeries:
        """Start loading the series in the background (if nobody has); answer at once."""
        shared = self._entry(reference, user=False)
        if shared.volume is None and not shared.load_lock.locked():
            shared.error = None
            threading.Thread(
                target=self._prefetch, args=(shared,), name="prefetch", daemon=True
            ).start()
        return shared

    def find(self, reference: str) -> SharedSeries | None:
        with self._lock:
            return self._names.get(reference)

    def entries(self) -> list[SharedSeries]:
        with self._lock:
            return list(self._entries.values())

    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.entries())

    def drop(self, reference: str) -> SharedSeries | None:
        """Forget the series if no session uses it; the entry (users > 0 if still used)."""
        with self._lock:
            shared = self._names.get(reference)
            if shared is not None and shared.users == 0 and not shared.load_lock.locked():
                self._forget(shared)
        return shared

    def evict_unused(self) -> SharedSeries | None:
        """Drop the least recently used series nobody uses (nor is loading); ``None`` if none."""
        with self._lock:
            for shared in self._entries.values():
                if shared.users == 0 and not shared.load_lock.locked():
                    self._forget(shared)
                    break
            else:
                return None
        log.info("dropped unused series %s to stay within memory", shared.reference)
        return shared

    def _entry(self, reference: str, *, user: bool) -> SharedSeries:
        with self._lock:
            shared = self._names.get(reference)
            if shared is None:
                shared = SharedSeries(reference=reference, last_used=self._clock())
                self._names[reference] = shared
                self._entries[id(shared)] = shared
            self._entries.move_to_end(id(shared))
            shared.users += int(user)
            shared.last_used = self._clock()
            return shared

    def _load(self, shared: SharedSeries) -> None:
        with shared.load_lock:
            if shared.volume is not None:
                return
            started = time.perf_counter()
            try:
                volume = self.loader.load(shared.reference)
            except Exception as error:
                shared.error = str(error)
                raise
            shared.load_ms = (time.perf_counter() - started) * 1000.0
            shared.error = None
            shared.volume = volume

    def _merged(self, shared: SharedSeries) -> SharedSeries:
        """The one entry of this series: opened by two names (Orthanc id, UID), it is one."""
        assert shared.volume is not None
        uid = shared.volume.series_uid
        with self._lock:
            other = self._names.get(uid)
            if other is None or other is shared or other.volume is None:
                self._names[uid] = shared
                return shared
            # Loaded twice under two names: keep the first, point this name at it.
            self._names[shared.reference] = other
            other.users += 1
            shared.users -= 1
            if shared.users == 0:
                self._entries.pop(id(shared), None)
            return other

    def _prefetch(self, shared: SharedSeries) -> None:
        try:
            self._load(shared)
            log.info("prefetched series %s in %.0f ms", shared.reference, shared.load_ms)
            self._merged_unused(shared)
        except Exception as error:  # kept as the entry's state ("failed"); a click retries
            log.warning("prefetch of series %s failed: %s", shared.reference, error)

    def _merged_unused(self, shared: SharedSeries) -> None:
        with self._lock:
            shared.users += 1
        merged = self._merged(shared)
        self.release(merged)

    def _forget(self, shared: SharedSeries) -> None:
        """Remove ``shared`` from the table (the table lock is held) and free its memory."""
        self._entries.pop(id(shared), None)
        for name in [n for n, s in self._names.items() if s is shared]:
            del self._names[name]
        shared.caches = {}
        shared.volume = None
