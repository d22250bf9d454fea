"""How a C-STORE's answer is read, the same for ``ainode push`` and the worker's DICOM sender."""

from __future__ import annotations

from pydicom import Dataset


def c_store_status(response: Dataset) -> int | None:
    """The status of the response to this C-STORE, or None when none came back for it.

    pynetdicom returns an empty dataset when the association was aborted or the DIMSE timeout
    passed, and also when its reactor thread took the response as unsolicited ("Received
    unexpected C-STORE service message", seen under load against Orthanc and storescp). Either
    way the association's answers no longer match its requests: abort it and send the rest on a
    new one.
    """
    code = getattr(response, "Status", None)
    return code if isinstance(code, int) else None
