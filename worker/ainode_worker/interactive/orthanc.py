"""The interactive service's side of Orthanc: series loaded through the worker's Orthanc client
(:mod:`ainode_worker.orthanc`), and its failures told as the service's own errors."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from pydicom import Dataset

from ainode_worker.orthanc import OrthancClient, OrthancDataError, OrthancError, OrthancNotFound
from ainode_worker.volume import Volume

from .errors import SeriesNotFoundError, UpstreamError, VolumeUnusableError
from .volumes import volume_from_datasets

log = logging.getLogger(__name__)


@contextmanager
def orthanc_errors() -> Iterator[None]:
    """Raise an Orthanc failure as the interactive error (and so HTTP status) it means here."""
    try:
        yield
    except OrthancNotFound as error:
        raise SeriesNotFoundError(str(error)) from error
    except OrthancDataError as error:
        raise VolumeUnusableError(str(error)) from error
    except OrthancError as error:
        raise UpstreamError(str(error)) from error


class OrthancVolumeLoader:
    """A :class:`~.volumes.VolumeLoader` reading series out of Orthanc."""

    def __init__(self, client: OrthancClient) -> None:
        self.client = client

    def load(self, series: str) -> Volume:
        with orthanc_errors():
            series_id = self.client.resolve_series(series)
            datasets: Sequence[Dataset] = self.client.series_datasets_parallel(series_id)
        log.info("loaded series %s from Orthanc: %d instances", series_id, len(datasets))
        return volume_from_datasets(datasets)
