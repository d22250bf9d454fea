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
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Protocol

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


def volume_from_datasets(datasets: Iterable[Dataset]) -> Volume:
    """The node's volume reader, with the pixel data dropped from the kept headers.

    A session keeps its volume for as long as the user works on it, so the decoded voxels
    should not be held twice (array and datasets); the headers are all a SEG writer needs.
    """
    try:
        volume = _build_volume(datasets)
    except VolumeError as error:
        raise VolumeUnusableError(f"the series is not a usable 3D volume: {error}") from error
    return replace(volume, datasets=source_headers(volume.datasets))
