"""Store results into this node's Orthanc through its REST API (``POST /instances``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import httpx

from ainode.credentials import orthanc_auth
from ainode.jobs import Destination, DestinationKind
from ainode.settings import Settings

from .errors import DestinationError
from .http_status import raise_for_status
from .registry import destination_type

logger = logging.getLogger(__name__)

_TIMEOUT = httpx.Timeout(60.0, connect=5.0)


@destination_type(DestinationKind.ORTHANC)
class OrthancSender:
    """Orthanc keeps one copy per SOP Instance UID, so re-sending a result is harmless."""

    def __init__(self, destination: Destination, settings: Settings) -> None:
        self.name = destination.name
        self.base_url = settings.orthanc_base_url
        self.auth = orthanc_auth(settings)

    def send(self, files: Sequence[Path]) -> list[str]:
        """Upload each file; return the Orthanc instance ids."""
        ids = []
        with httpx.Client(base_url=self.base_url, auth=self.auth, timeout=_TIMEOUT) as client:
            for path in files:
                ids.append(self._store(client, path))
        logger.info("stored %d instances in Orthanc %r", len(ids), self.name)
        return ids

    def _store(self, client: httpx.Client, path: Path) -> str:
        try:
            response = client.post(
                "/instances",
                content=path.read_bytes(),
                headers={"Content-Type": "application/dicom"},
            )
        except httpx.TransportError as exc:
            raise DestinationError(
                f"Orthanc at {self.base_url} is unreachable: {exc}", retriable=True
            ) from exc
        raise_for_status(response, f"Orthanc at {self.base_url}")
        try:
            answer = response.json()
        except ValueError:
            answer = response.text[:200]
        if not isinstance(answer, dict) or "ID" not in answer:
            raise DestinationError(
                f"Orthanc at {self.base_url} did not store the instance: {answer}",
                retriable=False,
            )
        return str(answer["ID"])
