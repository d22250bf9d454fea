"""STOW-RS results to a DICOMweb server with dicomweb-client."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pydicom
import requests
from dicomweb_client import DICOMwebClient
from dicomweb_client.session_utils import create_session, create_session_from_user_pass
from pydicom import Dataset

from ainode.jobs import Destination, DestinationKind
from ainode.settings import DicomWebServer, Settings

from .errors import DestinationError
from .http_status import is_retriable_status
from .registry import configured, destination_type

logger = logging.getLogger(__name__)

_TIMEOUT_S = 60.0
# STOW-RS failure reasons (PS3.18 Table 10.5.3-1) that pass: out of resources, processing.
_TRANSIENT_FAILURES = frozenset({0xA700, 0x0110})


@destination_type(DestinationKind.DICOMWEB)
class DicomWebSender:
    """A DICOMweb server from ``settings.dicomweb_servers[destination.name]``."""

    def __init__(self, destination: Destination, settings: Settings) -> None:
        self.server: DicomWebServer = configured(
            settings.dicomweb_servers, destination, "DICOMweb server"
        )
        self.name = destination.name

    def send(self, files: Sequence[Path]) -> list[str]:
        """STOW-RS all files in one request; return their SOP Instance UIDs."""
        datasets = [pydicom.dcmread(path) for path in files]
        try:
            answer = self._client().store_instances(datasets)
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            raise DestinationError(
                f"DICOMweb server {self.name!r} answered HTTP {status}",
                retriable=status == 0 or is_retriable_status(status),
            ) from exc
        except requests.RequestException as exc:
            raise DestinationError(
                f"DICOMweb server {self.name!r} is unreachable: {exc}", retriable=True
            ) from exc
        _raise_for_failures(answer, self.name)
        logger.info("sent %d instances to %r by STOW-RS", len(datasets), self.name)
        return [str(ds.SOPInstanceUID) for ds in datasets]

    def _client(self) -> DICOMwebClient:
        if self.server.username and self.server.password:
            session = create_session_from_user_pass(self.server.username, self.server.password)
        else:
            session = create_session()
        client = DICOMwebClient(url=self.server.url, session=session, timeout=_TIMEOUT_S)
        client.set_http_retry_params(retry=False)  # retries are the dispatcher's business
        return client


def _raise_for_failures(answer: Dataset, name: str) -> None:
    failed = answer.get("FailedSOPSequence") or []
    if not failed:
        return
    reasons = {int(item.get("FailureReason", 0)) for item in failed}
    raise DestinationError(
        f"DICOMweb server {name!r} refused {len(failed)} instance(s), reasons "
        + ", ".join(f"0x{r:04X}" for r in sorted(reasons)),
        retriable=reasons <= _TRANSIENT_FAILURES,
    )
