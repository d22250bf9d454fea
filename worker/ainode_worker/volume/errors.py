"""Why a set of DICOM objects is not a volume a 3D model may run on.

Each reason has its own class so the worker can report it precisely (and tests can tell them
apart); all are :class:`VolumeError`, a ``ValueError``: the input is bad, retrying won't help.
Messages never contain patient data.
"""

from __future__ import annotations


class VolumeError(ValueError):
    """The series cannot be made into a 3D volume."""


class NoImageError(VolumeError):
    """Nothing in the input is an image (e.g. only SR, SEG or presentation states)."""


class SingleFrameError(VolumeError):
    """Only one image: a 3D model needs a stack of slices."""


class LocalizerError(VolumeError):
    """Only localizer (scout) images: projections, not slices of a volume."""


class MixedSeriesError(VolumeError):
    """Images of several series or frames of reference were given as one."""


class MixedOrientationError(VolumeError):
    """Slices do not share one ImageOrientationPatient."""


class InconsistentSizeError(VolumeError):
    """Slices differ in rows, columns or pixel spacing."""


class DuplicatePositionError(VolumeError):
    """Two or more slices lie at the same position (e.g. two acquisitions mixed)."""


class MissingSliceError(VolumeError):
    """A gap in the stack: slices are missing or were not (yet) received."""


class NonUniformSpacingError(VolumeError):
    """Slice spacing varies more than the tolerance (but no slice seems missing)."""


class GantryTiltError(VolumeError):
    """Slice positions are sheared (gantry tilt); resampling them is not supported."""


class PixelDataError(VolumeError):
    """Pixel data missing, not decodable (transfer syntax) or not greyscale."""


class UnsupportedMultiFrameError(VolumeError):
    """A multi-frame object this reader cannot turn into a volume."""


class VolumeTooLargeError(VolumeError):
    """The volume (or its extent on a model's grid) is over the job's voxel or memory budget."""
