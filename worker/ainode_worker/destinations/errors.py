"""The one exception every destination raises, saying whether trying again could help."""

from __future__ import annotations


class DestinationError(Exception):
    """Sending to a destination failed.

    ``retriable`` is True for conditions that pass (peer down, timeout, out of resources,
    HTTP 5xx/408/429) and False for those that will not (wrong credentials or AE title, the
    peer refuses the SOP class or the object): retrying those would only repeat the refusal.
    """

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable

    def __reduce__(self) -> tuple[object, ...]:
        # keeps the keyword-only flag when the error crosses a process boundary (Celery)
        return (_rebuild, (str(self), self.retriable))


def _rebuild(message: str, retriable: bool) -> DestinationError:
    return DestinationError(message, retriable=retriable)
