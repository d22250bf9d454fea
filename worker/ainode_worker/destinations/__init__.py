"""Where results go: this node's Orthanc, remote DICOM modalities, DICOMweb servers.

Importing the package registers every destination type with the registry.
"""

from . import dicom, dicomweb, orthanc
from .dispatch import (
    DispatchOutcome,
    RetryPolicy,
    pending_statuses,
    send_to_destinations,
)
from .errors import DestinationError
from .registry import Sender, destination_type, make_sender, registered_kinds

__all__ = [
    "DestinationError",
    "DispatchOutcome",
    "RetryPolicy",
    "Sender",
    "destination_type",
    "dicom",
    "dicomweb",
    "make_sender",
    "orthanc",
    "pending_statuses",
    "registered_kinds",
    "send_to_destinations",
]
