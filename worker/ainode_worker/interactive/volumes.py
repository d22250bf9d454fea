"""Where a session's volume comes from: the :class:`VolumeLoader` boundary.

A loader turns a series reference (Orthanc id or SeriesInstanceUID) into the node's
:class:`~ainode_worker.volume.Volume` (float32 ``[slice, row, column]``, slices in position order
along the normal, with the slices' DICOM headers for writing a DICOM-SEG that references them).
Loaders: :class:`InMemoryVolumeLoader` (volumes handed over directly: tests, benchmarks,
embedding the service) and ``OrthancVolumeLoader`` in :mod:`.orthanc`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, overload

from pydicom import Dataset

from ainode_worker.results.sources import source_headers
from ainode_worker.volume import Volume, VolumeError
from ainode_worker.volume import volume_from_datasets as _build_volume

from .errors import SeriesNotFoundError, VolumeUnusableError

log = logging.getLogger(__name__)


class VolumeLoader(Protocol):
    """Turns a series reference (Orthanc id or SeriesInstanceUID) into a volume."""

    def load(self, series: str) -> Volume: ...


@dataclass
class InMemoryVolumeLoader:
    """Volumes registered by SeriesInstanceUID (and optionally other names, e.g. Orthanc ids)."""

    volumes: dict[str, Volume] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, volume: Volume, *aliases: str) -> None:
        with self._lock:
            for key in (volume.series_uid, *aliases):
                self.volumes[key] = volume

    def load(self, series: str) -> Volume:
        with self._lock:
            volume = self.volumes.get(series)
        if volume is None:
            raise SeriesNotFoundError(f"no series '{series}' is known to this service")
        return volume


def build_volume(datasets: Iterable[Dataset]) -> Volume:
    """The node's volume builder, its refusals told as the service's error (HTTP 422)."""
    try:
        return _build_volume(datasets)
    except VolumeError as error:
        raise VolumeUnusableError(f"the series is not a usable 3D volume: {error}") from error


def volume_from_datasets(datasets: Iterable[Dataset]) -> Volume:
    """The node's volume reader, with the pixel data dropped from the kept headers.

    A session keeps its volume for as long as the user works on it, so the decoded voxels
    should not be held twice (array and datasets); the headers are all a SEG writer needs.
    """
    volume = build_volume(datasets)
    return replace(volume, datasets=source_headers(volume.datasets))


class DeferredHeaders(Sequence[Dataset]):
    """A volume's slice headers (pixel data dropped), in slice order, read on first use.

    A click needs only the voxels; writing a SEG or a NIfTI needs the headers. ``read``
    returns the slices' datasets in the volume's slice order; it runs once, under a lock,
    and a failure is raised to the user that needed the headers (the next use tries again).
    """

    def __init__(self, read: Callable[[], Sequence[Dataset]]) -> None:
        self._read = read
        self._lock = threading.Lock()
        self._headers: list[Dataset] | None = None

    def _loaded(self) -> list[Dataset]:
        with self._lock:
            if self._headers is None:
                self._headers = source_headers(self._read())
            return self._headers

    @property
    def loaded(self) -> bool:
        return self._headers is not None

    def __len__(self) -> int:
        return len(self._loaded())

    @overload
    def __getitem__(self, index: int) -> Dataset: ...

    @overload
    def __getitem__(self, index: slice) -> list[Dataset]: ...

    def __getitem__(self, index: int | slice) -> Dataset | list[Dataset]:
        return self._loaded()[index]

    def __iter__(self) -> Iterator[Dataset]:
        return iter(self._loaded())
