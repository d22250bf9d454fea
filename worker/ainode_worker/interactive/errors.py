"""Why an interactive request fails, as exceptions a hospital engineer can act on.

The whole tree lives here so the REST layer maps each class to one HTTP status in one place
(:data:`ainode_worker.interactive.app.STATUS_OF`). Messages name the problem and the fix and
never carry patient data.
"""

from __future__ import annotations


class InteractiveError(Exception):
    """Base class of every error the interactive service reports to its caller."""


class BadRequestError(InteractiveError, ValueError):
    """The request itself is malformed (missing prompts, wrong types, bad parameters)."""


class PromptOutsideVolumeError(BadRequestError):
    """A click or box lies outside the series' voxel grid."""


class RegionTooLargeError(BadRequestError):
    """A click grows over most of the series: it was on the background, not a structure."""


class UnknownModelError(InteractiveError, LookupError):
    """The request names a model this service does not offer."""


class SeriesNotFoundError(InteractiveError, LookupError):
    """Orthanc does not hold the series (by Orthanc id or SeriesInstanceUID)."""


class SessionNotFoundError(InteractiveError, LookupError):
    """The session id is unknown: never created, expired after idling, or evicted for memory."""


class SeriesMismatchError(BadRequestError):
    """A request names a session and a different series."""


class VolumeUnusableError(InteractiveError, ValueError):
    """The series exists but is not a 3D volume (single image, mixed orientation, ...)."""


class ModelUnavailableError(InteractiveError):
    """The model is configured but cannot run: weights missing or failed to load."""


class BusyError(InteractiveError):
    """The service (or this session) stayed busy longer than the configured wait."""


class UpstreamError(InteractiveError):
    """Orthanc did not answer, or answered with an error, while loading or storing."""


class NothingToAcceptError(InteractiveError):
    """Accept was called on a session that holds no mask (or an empty one)."""
