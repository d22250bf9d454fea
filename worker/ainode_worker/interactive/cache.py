"""A session's cache of expensive per-slice (or per-volume) features, with byte accounting.

SAM-family models encode each slice once (the expensive half) and decode prompts against the
cached embedding many times (the cheap half); region growing caches its smoothed volume. The
cache knows the size of everything it holds, so the session store can keep the whole service
within a memory budget, and evicts its own least recently used entries when asked to shrink.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any


@dataclass
class CacheEntry:
    value: Any
    nbytes: int
    on_gpu: bool = False


@dataclass(frozen=True)
class Computed:
    """What a compute function hands to :meth:`FeatureCache.get_or_compute`."""

    value: Any
    nbytes: int
    on_gpu: bool = False


class FeatureCache:
    """LRU cache of one model's features for one session's volume.

    Not thread-safe by itself: a series' caches are only changed under the series' lock
    (requests) or once no session uses the series (eviction); only the byte counts are read
    from other threads.
    """

    def __init__(self) -> None:
        self._entries: OrderedDict[Hashable, CacheEntry] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def get_or_compute(self, key: Hashable, compute: Callable[[], Computed]) -> tuple[Any, bool]:
        """The cached value and ``True``, or the freshly computed value and ``False``."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return entry.value, True
        self.misses += 1
        computed = compute()
        self._entries[key] = CacheEntry(computed.value, computed.nbytes, computed.on_gpu)
        return computed.value, False

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._snapshot() if not e.on_gpu)

    @property
    def gpu_nbytes(self) -> int:
        return sum(e.nbytes for e in self._snapshot() if e.on_gpu)

    def _snapshot(self) -> list[CacheEntry]:
        """The entries, copied at once (under the GIL): memory accounting runs in other
        requests' threads while a click on the series adds entries."""
        return list(self._entries.values())

    def trim(self, max_bytes: int) -> int:
        """Drop least recently used host-memory entries until at most ``max_bytes`` remain."""
        held = self.nbytes
        freed = 0
        for key in list(self._entries):
            if held - freed <= max_bytes:
                break
            entry = self._entries[key]
            if not entry.on_gpu:
                del self._entries[key]
                freed += entry.nbytes
        return freed

    def clear(self) -> None:
        self._entries.clear()


def trim_largest_first(
    caches: Iterable[FeatureCache], held: Callable[[], int], max_bytes: int
) -> int:
    """Drop least recently used features, largest cache first, until ``held()`` (the owner's
    whole footprint, which the caches are part of) fits ``max_bytes``; the bytes freed."""
    freed = 0
    for cache in sorted(caches, key=lambda c: c.nbytes, reverse=True):
        excess = held() - max_bytes
        if excess <= 0:
            break
        freed += cache.trim(max(cache.nbytes - excess, 0))
    return freed
