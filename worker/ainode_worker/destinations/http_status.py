"""What an HTTP status means for a retry, shared by the REST and DICOMweb destinations."""

from __future__ import annotations

# Statuses worth trying again: the peer is busy, restarting or timed out.
RETRIABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def is_retriable_status(status: int) -> bool:
    return status in RETRIABLE_STATUSES
