"""What an HTTP status means for a retry, shared by the REST and DICOMweb destinations."""

from __future__ import annotations

import httpx

from .errors import DestinationError

# Statuses worth trying again: the peer is busy, restarting or timed out.
RETRIABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def is_retriable_status(status: int) -> bool:
    return status in RETRIABLE_STATUSES


def raise_for_status(response: httpx.Response, peer: str) -> None:
    """Turn a non-2xx answer into a :class:`DestinationError` a hospital engineer can act on."""
    status = response.status_code
    if 200 <= status < 300:
        return
    if status in (401, 403):
        hint = "check the node's credentials for it"
    elif status == 400:
        hint = "it refused the object"
    else:
        hint = response.text[:200]
    raise DestinationError(
        f"{peer} answered HTTP {status}: {hint}", retriable=is_retriable_status(status)
    )
