"""Why writing a result can fail, as exceptions a hospital engineer can act on."""

from __future__ import annotations


class ResultError(Exception):
    """Base class of every error raised while turning a label map into DICOM or NIfTI."""


class EmptyResultError(ResultError):
    """The model found nothing: no described label is present in the label map.

    Not a failure of the node. The job records it (nothing is stored), because an empty
    DICOM-SEG or RTSTRUCT is not a valid object and would confuse a PACS or a viewer.
    """


class ResultInputError(ResultError, ValueError):
    """The label map, probabilities, label list or source series do not fit together."""
