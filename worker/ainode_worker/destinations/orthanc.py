"""Store results into this node's Orthanc with the worker's Orthanc client (POST /instances)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from ainode.jobs import Destination, DestinationKind
from ainode.settings import Settings
from ainode_worker.orthanc import OrthancClient, OrthancError

from .errors import DestinationError
from .http_status import is_retriable_status
from .registry import destination_type

logger = logging.getLogger(__name__)


@destination_type(DestinationKind.ORTHANC)
class OrthancSender:
    """Orthanc keeps one copy per SOP Instance UID, so re-sending a result is harmless."""

    def __init__(self, destination: Destination, settings: Settings) -> None:
        self.name = destination.name
        self.client = OrthancClient.from_settings(settings)

    def send(self, files: Sequence[Path]) -> list[str]:
        """Upload each file; return the Orthanc instance ids."""
        ids = []
        for path in files:
            try:
                ids.append(self.client.store(path.read_bytes()).orthanc_id)
            except OrthancError as error:
                # No answer (None) is worth another round; an answer by its status.
                retriable = error.status is None or is_retriable_status(error.status)
                raise DestinationError(str(error), retriable=retriable) from error
        logger.info("stored %d instances in Orthanc %r", len(ids), self.name)
        return ids
